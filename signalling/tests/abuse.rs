//! Holding against abuse, through the real endpoints: login-code guessing (concurrent
//! too), per-IP and per-number limits, refresh-token reuse, revocation reaching every
//! plane, and WebSocket reaping. On SQLite, and on PostgreSQL where storage decides.

mod support;

use serde_json::{Value, json};
use support::*;

async fn verify(a: std::net::SocketAddr, phone: &str, code: &str) -> (u16, Value) {
    http(
        a,
        "POST",
        "/api/auth/verify",
        None,
        Some(json!({"phone": phone, "code": code})),
    )
    .await
}

/// 100 wrong guesses sent at once: exactly 5 are compared, the code is burnt, and the
/// right code is refused afterwards.
async fn concurrent_guesses(url: Option<&str>) {
    // One client address sends them all: lift the per-IP limit out of the way.
    let s = start(signalling::Config {
        verifies_per_ip_per_hour: 1000,
        ..config(url)
    })
    .await;
    let a = s.addr;
    let phone = "+79160000071";
    let (st, v) = http(
        a,
        "POST",
        "/api/auth/code",
        None,
        Some(json!({"phone": phone})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (code, _) = dev_code(&s.data_dir, phone);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let answers = futures_util::future::join_all((0..100).map(|_| verify(a, phone, wrong))).await;
    let count = |c: &str| {
        answers
            .iter()
            .filter(|(_, v)| v["error"].as_str() == Some(c))
            .count()
    };
    assert_eq!(
        (count("code_wrong"), count("code_expired")),
        (4, 96),
        "statuses: {:?}",
        answers.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    assert_eq!(s.sig.app().metrics.codes_wrong.get(), 5);
    let (st, v) = verify(a, phone, &code).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (401, Some("code_expired")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_burn_the_code_after_five_sqlite() {
    concurrent_guesses(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_on_postgres() {
    let pg = postgres().await;
    sqlx::any::install_default_drivers();
    for (i, name) in ["guesses"].iter().enumerate() {
        let db = format!("a{i}_{name}");
        let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&pg.url)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut c)
            .await
            .unwrap();
        let url = format!("{}/{db}", pg.url.rsplit_once('/').unwrap().0);
        if *name == "guesses" {
            concurrent_guesses(Some(&url)).await
        }
    }
}
