//! Manual check against a running maxd: every token joins, publishes audio+video, and
//! waits to receive everyone else's media; prints what each received.
//!
//! Set `TESTKIT_TRICKLE=1` to also trickle the clients' ICE candidates.
//!
//! ```text
//! cargo run -p maxd-testkit --example call -- http://127.0.0.1:8080 TOKEN_A TOKEN_B TOKEN_C
//! ```

use std::time::Duration;

use anyhow::{Context, Result};
use testkit::Client;

#[tokio::main]
async fn main() -> Result<()> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let mut args = std::env::args().skip(1);
    let base = args.next().context("usage: call BASE_URL TOKEN...")?;
    let tokens: Vec<String> = args.collect();
    let mut clients = Vec::new();
    for token in &tokens {
        let options = testkit::ClientOptions {
            trickle: std::env::var_os("TESTKIT_TRICKLE").is_some(),
            ..Default::default()
        };
        let c = Client::connect_with(&base, token, options).await?;
        println!("joined as {} ({})", c.participant_id(), c.identity());
        c.publish_av().await?;
        clients.push(c);
    }
    let ids: Vec<String> = clients.iter().map(|c| c.participant_id()).collect();
    let mut failed = false;
    for c in &clients {
        let others: Vec<String> = ids
            .iter()
            .filter(|id| **id != c.participant_id())
            .cloned()
            .collect();
        let res = c
            .wait_av_from_all(&others, 50, Duration::from_secs(15))
            .await;
        println!(
            "{}: {}",
            c.participant_id(),
            if res.is_ok() { "ok" } else { "FAILED" }
        );
        if let Err(e) = res {
            println!("  {e:#}");
            failed = true;
        }
        for s in c.stats() {
            println!(
                "  from {} {:?} (track {} mid {}): {} packets, {} frames, {} keyframes, {} bytes, {} bad, {} foreign, {} with ext",
                s.participant_id,
                s.kind,
                s.track_id,
                s.mid,
                s.packets,
                s.frames,
                s.keyframes,
                s.bytes,
                s.bad_payloads,
                s.foreign_payloads,
                s.packets_with_extensions
            );
        }
        println!("  sent {:?}", c.send_stats());
        println!("  errors {:?}", c.errors());
        let types: Vec<&str> = c.messages().iter().map(|r| r.msg.type_name()).collect();
        println!("  received {types:?}");
    }
    for c in &clients {
        c.close().await;
    }
    anyhow::ensure!(!failed, "some participant did not receive everyone's media");
    Ok(())
}
