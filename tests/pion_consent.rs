//! Issue 10: a WHIP publisher built on Pion 3.1 that sends no STUN consent checks while it
//! streams stays forwarded. The server is ICE-lite: str0m drops a pair 15 s after its last
//! binding request and a WHIP session goes one resume window later, so before the fix the
//! subscribers' streams ended ~25 s after the publisher's last check although its media
//! kept arriving. Authenticated media on the path is proof of life now
//! (`sfu/src/engine/liveness.rs`).
//!
//! The publisher is a real Pion 3.1 peer (`tests/pion/whip_publisher.go`, keepalive
//! interval 0) behind a UDP proxy that counts what it sends, so the test proves it sent no
//! STUN at all for the whole hold; a webrtc-rs `/rtc` participant receives its media.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::udp_proxy::UdpProxy;
use support::{Maxd, metric, pion};
use testkit::{Client, RemoteTrackStats, TrackKind};

const T: Duration = Duration::from_secs(20);
/// Media must still arrive this long after the publisher's last STUN: well past the 15 s
/// ICE-lite timeout plus the 10 s resume window that ended it before the fix.
const HOLD: Duration = Duration::from_secs(45);
/// Forwarded media may pause no longer than this (20 ms audio packets).
const STALL: Duration = Duration::from_secs(5);

fn track(bob: &Client, pid: &str, kind: TrackKind) -> Option<RemoteTrackStats> {
    bob.stats()
        .into_iter()
        .find(|s| s.participant_id == pid && s.kind == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pion_whip_publisher_without_consent_checks_stays_forwarded() {
    let publisher = pion::build("whip_publisher");
    let m = Maxd::start(r#"["sfu"]"#);
    let base = m.base_url();
    let proxy = UdpProxy::start(m.media).await;
    let bob = Client::connect(&base, &m.room_token("main", "bob"))
        .await
        .unwrap();

    let mut cmd = Command::new(&publisher.bin);
    cmd.args([
        "-url",
        &base,
        "-room",
        "main",
        "-via",
        &proxy.addr.to_string(),
    ])
    .env("WHIP_TOKEN", m.room_token("main", "pion"));
    let pion = pion::Running::spawn(cmd);
    let pid = pion.wait_line("participant ", T).await;
    pion.wait_line("ice connected", T).await;
    let diag = |what: &str| -> String {
        format!(
            "{what}\nproxy: {:?}\nbob: {:?}\nmetrics: consent_by_media={} ice_timeouts={} left={}\npion stderr:\n{}\nmaxd log:\n{}",
            proxy.traffic(),
            bob.stats(),
            metric(&m.metrics(), "maxd_sfu_consent_by_media_total"),
            metric(&m.metrics(), "maxd_sfu_ice_timeouts_total"),
            metric(&m.metrics(), "maxd_sfu_participants_left_total"),
            pion.stderr(),
            m.log()
        )
    };
    for kind in [TrackKind::Audio, TrackKind::Video] {
        let s = bob
            .wait_media_from(&pid, kind, 25, T)
            .await
            .unwrap_or_else(|e| panic!("{}", diag(&format!("{e:#}"))));
        assert_eq!(
            (s.bad_payloads, s.foreign_payloads),
            (0, 0),
            "{kind:?} intact: {s:?}"
        );
    }

    // The checks that established the path are all the STUN it will ever send.
    let at_connect = proxy.traffic().from_client;
    let last_stun = at_connect
        .last_stun
        .expect("Pion connected without a STUN check through the proxy");
    let mark = last_stun + HOLD;

    // Media keeps arriving, without a pause, until well past the old cut-off.
    loop {
        let audio = track(&bob, &pid, TrackKind::Audio).unwrap();
        if audio.last_packet_at.is_some_and(|t| t >= mark) {
            break;
        }
        let since = last_stun.elapsed();
        bob.wait_stats(STALL, "audio to go on", |v| {
            v.iter().any(|s| {
                s.participant_id == pid
                    && s.kind == TrackKind::Audio
                    && s.packets >= audio.packets + 50
            })
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}",
                diag(&format!(
                    "media stopped {since:?} after the publisher's last STUN: {e:#}"
                ))
            )
        });
    }
    bob.wait_stats(STALL, "video past the mark", |v| {
        v.iter().any(|s| {
            s.participant_id == pid
                && s.kind == TrackKind::Video
                && s.last_packet_at.is_some_and(|t| t >= mark)
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{}", diag(&format!("{e:#}"))));

    // The publisher really sent no STUN in all that time, only media.
    let now = proxy.traffic().from_client;
    assert_eq!(
        (now.stun, now.last_stun),
        (at_connect.stun, at_connect.last_stun),
        "{}",
        diag("Pion sent STUN after connecting")
    );
    assert!(now.media > at_connect.media + 1000, "{now:?}");
    for kind in [TrackKind::Audio, TrackKind::Video] {
        let s = track(&bob, &pid, kind).unwrap();
        assert_eq!(
            (s.bad_payloads, s.foreign_payloads),
            (0, 0),
            "{kind:?} intact: {s:?}"
        );
    }

    // Kept alive by its media, counted; nothing timed out and nobody left. The counters
    // reach /metrics once a second: poll with a deadline.
    let deadline = Instant::now() + T;
    let text = loop {
        let text = m.metrics();
        if metric(&text, "maxd_sfu_consent_by_media_total") > 0.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // polling a counter
    };
    let t = proxy.traffic();
    eprintln!(
        "held {:?} past the publisher's last STUN; from pion: stun={} dtls={} media={}; from maxd: stun={} media={}; consent_by_media={}",
        last_stun.elapsed(),
        t.from_client.stun,
        t.from_client.dtls,
        t.from_client.media,
        t.from_server.stun,
        t.from_server.media,
        metric(&text, "maxd_sfu_consent_by_media_total")
    );
    assert!(
        metric(&text, "maxd_sfu_consent_by_media_total") > 0.0,
        "{}",
        diag("no consent by media")
    );
    assert_eq!(
        metric(&text, "maxd_sfu_ice_timeouts_total"),
        0.0,
        "{}",
        diag("an ICE timeout")
    );
    assert_eq!(
        metric(&text, "maxd_sfu_participants_left_total"),
        0.0,
        "{}",
        diag("a participant left")
    );
}
