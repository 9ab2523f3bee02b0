//! Readiness (`maxd`'s `/readyz`): the plane is ready while its database answers, and
//! says why not when it does not.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_the_database_answers_and_says_why_not_when_it_does_not() {
    let s = start(config(None)).await;
    assert_eq!(s.sig.app().ready().await, Ok(()));
    s.sig.app().db.pool.close().await;
    let err = s.sig.app().ready().await.unwrap_err();
    assert!(err.starts_with("database: "), "{err}");
}
