//! The load-test simulator against a real `maxd`: a short audio+video scenario with
//! simulcast in two rooms (every expected track arrives, nothing is lost on loopback,
//! the report's fields are present and sane); churn and soak (the server lets go of
//! everyone, in time); runs that must fail, and the binary's exit code.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use loadtest::verdict::{EXIT_FAILED, EXIT_PASSED};
use loadtest::{RunOptions, Scenario};
use support::Maxd;

const SECRET: &str = "loadtest-e2e-secret-0123456789abcdef";

/// A server whose resume window and room grace are short, so that the end check (which
/// waits for them) takes seconds.
fn quick_maxd() -> Maxd {
    Maxd::start_with(
        r#"["sfu"]"#,
        &[
            ("MAXD_AUTH__SECRET", SECRET),
            ("MAXD_SFU__RESUME_WINDOW", "2s"),
            ("MAXD_SFU__EMPTY_ROOM_GRACE", "1s"),
        ],
    )
}

/// Runs a scenario on a runtime of its own, as the `loadtest` binary does.
fn run(sc: &Scenario) -> loadtest::Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(loadtest::run(sc, &RunOptions::default()))
        .expect("run")
}

#[test]
fn short_scenario_every_track_arrives_without_loss() {
    let m = quick_maxd();
    let sc = Scenario {
        name: "e2e".into(),
        url: m.base_url(),
        room_grace: Duration::from_secs(1),
        rooms: 2,
        publishers: 2,
        subscribers: 2,
        video: true,
        simulcast: true,
        duration: Duration::from_secs(3),
        warmup: Duration::from_secs(1),
        join_rate: 50.0,
        token_secret: Some(SECRET.into()),
        connect_timeout: Duration::from_secs(20),
        ..Scenario::default()
    };
    let r = run(&sc);
    let table = r.table();
    let ctx = format!("{table}\nmaxd log:\n{}", m.log());

    // 2 rooms x 2 publishers x (1 other publisher + 2 subscribers) x (audio + video).
    assert_eq!(r.tracks_expected, 2 * 2 * 3 * 2, "{ctx}");
    assert_eq!(r.tracks_received, r.tracks_expected, "{ctx}");
    assert_eq!(r.participants.planned, 8, "{ctx}");
    assert_eq!(r.participants.connected, 8, "{ctx}");
    assert_eq!(r.participants.failed, 0, "{ctx}");
    assert_eq!(r.participants.stopped_at_end, 8, "{ctx}");
    assert_eq!(r.errors, 0, "{ctx}");
    assert!(r.verdict.passed, "{ctx}");
    // Everyone left politely: the server let go of them at once, and of the rooms
    // after their grace.
    let e = r.end_check.as_ref().expect("end check");
    assert!(e.settled, "{ctx}");
    assert_eq!(e.resume_window_from, "server", "{ctx}");
    assert_eq!(e.resume_window_s, 2.0, "{ctx}");
    assert_eq!(
        e.end.as_ref().map(|c| (c.participants, c.rooms)),
        Some((0, 0)),
        "{ctx}"
    );

    // Loopback: nothing lost after NACK repair.
    assert!(r.packets_expected > 1000, "{ctx}");
    assert_eq!(r.packets_lost, 0, "{ctx}");
    assert_eq!(r.loss_ratio, 0.0, "{ctx}");
    assert_eq!(r.foreign_packets, 0, "{ctx}");
    assert!(r.packets_sent > 0, "{ctx}");

    // Delay measured on every packet with our trailer, and plausible on loopback.
    assert_eq!(r.delay_ms.count as u64, r.packets_received, "{ctx}");
    assert!(
        r.delay_ms.p50 > 0.0 && r.delay_ms.p50 <= r.delay_ms.p95,
        "{ctx}"
    );
    assert!(
        r.delay_ms.p95 <= r.delay_ms.p99 && r.delay_ms.p99 <= r.delay_ms.max,
        "{ctx}"
    );
    assert!(r.delay_ms.p50 < 200.0, "{ctx}");
    // The steady window (after a 1 s warm-up) saw packets too, none lost.
    assert!(
        r.steady.delay_ms.count > 0 && r.steady.packets_expected > 0,
        "{ctx}"
    );
    assert_eq!(r.steady.loss_ratio, 0.0, "{ctx}");

    // Join breakdown: every participant opened, joined and got its first packet, in order.
    let j = &r.join_ms;
    for (name, d, n) in [
        ("ws_open", &j.ws_open, 8),
        ("joined", &j.joined, 8),
        ("publisher_dtls", &j.publisher_dtls, 4),
        ("subscriber_dtls", &j.subscriber_dtls, 8),
        ("first_packet", &j.first_packet, 8),
    ] {
        assert_eq!(d.count, n, "{name}: {ctx}");
    }
    assert!(
        j.ws_open.p50 <= j.joined.p50 && j.subscriber_ice.p50 <= j.subscriber_dtls.p50,
        "{ctx}"
    );
    assert_eq!(r.time_to_first_audio_ms.count, 12, "{ctx}");
    assert_eq!(r.time_to_first_video_ms.count, 12, "{ctx}");
    assert_eq!(r.jitter_ms.count, 24, "{ctx}");
    // The SFU asks for a keyframe when a subscriber starts on a layer.
    assert!(r.keyframe_requests_received > 0, "{ctx}");

    // Both directions carried media; the server's /metrics was read.
    assert!(
        r.bitrate_out_kbps > 100.0 && r.bitrate_in_kbps > 100.0,
        "{ctx}"
    );
    assert!(r.server.reachable, "{ctx}");
    assert!(r.server.rss_mb_max.unwrap_or(0.0) > 1.0, "{ctx}");
    assert!(r.server.rtp_forwarded_per_s.unwrap_or(0.0) > 0.0, "{ctx}");
    assert!(!r.timeline.is_empty(), "{ctx}");

    // The JSON report carries the documented fields.
    let v = serde_json::to_value(&r).unwrap();
    for key in [
        "tracks_expected",
        "tracks_received",
        "loss_ratio",
        "join_ms",
        "server",
        "timeline",
    ] {
        assert!(v.get(key).is_some(), "{key} missing");
    }
    for q in ["p50", "p95", "p99"] {
        assert!(v["delay_ms"][q].as_f64().is_some(), "delay_ms.{q} missing");
    }
    let loss = v["loss_ratio"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&loss));

    // And the chart renders.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("chart.svg");
    loadtest::chart::write_svg(&svg, "e2e", &r.timeline).unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}

/// A publisher alone in its room has nothing to receive: the server's subscriber offer
/// holds only a data channel. The simulator must connect it as a browser does (the
/// server drops a participant whose connection never completes DTLS, after ~30 s).
#[test]
fn publisher_alone_connects_its_subscriber_connection() {
    let m = quick_maxd();
    let sc = Scenario {
        url: m.base_url(),
        room_grace: Duration::from_secs(1),
        rooms: 1,
        publishers: 1,
        subscribers: 0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_secs(0),
        token_secret: Some(SECRET.into()),
        connect_timeout: Duration::from_secs(5),
        ..Scenario::default()
    };
    let r = run(&sc);
    let ctx = format!("{}\nmaxd log:\n{}", r.table(), m.log());
    assert_eq!(r.participants.connected, 1, "{ctx}");
    assert_eq!(r.participants.failed, 0, "{ctx}");
    assert_eq!(r.join_ms.subscriber_dtls.count, 1, "{ctx}");
    assert_eq!(r.errors, 0, "{ctx}");
}

/// Churn against a real server: participants leave every way (`leave`, `leave` and gone
/// at once, a close frame, a killed client) and new ones take their seats, for a short
/// soak, and everyone still in quits at once at the end; afterwards the
/// server holds no participant and no room, every leaver was let go within the resume
/// window + 1 s as the others in its room heard it, and every track that was there
/// long enough arrived.
#[test]
fn churn_run_ends_with_nothing_left_on_the_server() {
    let m = quick_maxd();
    let sc = Scenario {
        name: "churn e2e".into(),
        url: m.base_url(),
        rooms: 2,
        publishers: 2,
        subscribers: 2,
        soak: Some(Duration::from_secs(7)),
        warmup: Duration::from_secs(1),
        join_rate: 50.0,
        churn: 2.0,
        leave_mix: "leave=1,quit=1,close=1,vanish=1".parse().unwrap(),
        // With this seed the first departures include every kind of the mix.
        seed: Some(3),
        track_timeout: Duration::from_secs(2),
        room_grace: Duration::from_secs(1),
        token_secret: Some(SECRET.into()),
        ..Scenario::default()
    };
    let r = run(&sc);
    let ctx = format!("{}\nmaxd log:\n{}", r.table(), m.log());
    assert!(r.verdict.passed, "{ctx}");
    let p = &r.participants;
    assert_eq!(p.failed, 0, "{ctx}");
    let c = r.churn.as_ref().expect("churn figures");
    assert!(c.newcomers >= 10, "{ctx}");
    assert_eq!(p.started, 8 + c.newcomers, "{ctx}");
    for kind in ["leave", "quit", "close", "vanish"] {
        assert!(
            p.departures.get(kind).copied().unwrap_or(0) >= 1,
            "no {kind}: {ctx}"
        );
    }
    assert_eq!(p.departures.get("silent"), None, "{ctx}");
    // Each leaver's participant_left reached the others in time; those that closed
    // or vanished after the resume window, those that left at once.
    let rm = &c.removals;
    assert!(rm.judged >= 5, "{ctx}");
    assert_eq!((rm.late, rm.unseen), (0, 0), "{ctx}");
    for kind in ["leave", "quit"] {
        assert!(rm.after_ms[kind].max < 1000.0, "{kind}: {ctx}");
    }
    for kind in ["close", "vanish"] {
        if let Some(d) = rm.after_ms.get(kind) {
            assert!(d.p50 >= 1500.0 && d.max <= rm.limit_ms, "{kind}: {ctx}");
        }
    }
    assert!(r.tracks_expected > 0, "{ctx}");
    assert_eq!(r.tracks_received, r.tracks_expected, "{ctx}");
    // The end check, and the server's own gauges read here.
    let e = r.end_check.as_ref().expect("end check");
    assert!(e.settled && e.left_behind.is_empty(), "{ctx}");
    let metrics = m.metrics();
    assert_eq!(
        support::metric(&metrics, "maxd_sfu_participants"),
        0.0,
        "{ctx}"
    );
    assert_eq!(support::metric(&metrics, "maxd_sfu_rooms"), 0.0, "{ctx}");
    // A soak: the server's memory was sampled through the run.
    let soak = r.soak.as_ref().expect("soak figures");
    assert!(
        soak.samples >= 4 && soak.rss_mb_max.unwrap_or(0.0) > 1.0,
        "{ctx}"
    );
    assert!(
        r.timeline.iter().any(|t| t.joins > 0 && t.ends > 0),
        "{ctx}"
    );
}

/// Every participant fails (tokens signed with the wrong secret): the run fails, and
/// the `loadtest` binary exits with the code for a failed check (3), not 0.
#[test]
fn every_participant_failing_fails_the_run_and_the_exit_code() {
    let m = quick_maxd();
    let sc = Scenario {
        url: m.base_url(),
        rooms: 1,
        publishers: 1,
        subscribers: 1,
        duration: Duration::from_secs(1),
        token_secret: Some("not-the-servers-secret-0123456789abcdef".into()),
        room_grace: Duration::from_secs(1),
        ..Scenario::default()
    };
    let r = run(&sc);
    let ctx = format!("{}\nmaxd log:\n{}", r.table(), m.log());
    assert_eq!(r.participants.failed_joins, 2, "{ctx}");
    assert!(!r.verdict.passed, "{ctx}");
    assert_eq!(r.verdict.exit_code, EXIT_FAILED, "{ctx}");
    let checks: Vec<_> = r.verdict.failures.iter().map(|f| f.check).collect();
    assert!(
        checks.contains(&"participants") && checks.contains(&"errors"),
        "{ctx}"
    );

    // The binary, as CI runs it.
    let args = |secret: &str| {
        let mut c = Command::new(loadtest_bin());
        c.args(["--url", &m.base_url(), "--rooms", "1", "--publishers", "1"])
            .args(["--subscribers", "1", "--duration", "1s", "--quiet"])
            .args(["--room-grace", "1s", "--token-secret", secret]);
        c
    };
    let out = args("not-the-servers-secret-0123456789abcdef")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(EXIT_FAILED), "{stdout}");
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");
    // And with the right secret it passes: the code tells the two apart.
    let out = args(SECRET).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(EXIT_PASSED), "{stdout}");
}

/// A client whose network goes away (its TCP connection stays open but silent, its
/// media stops) must be let go too. The server used to keep it: the `/rtc` WebSocket
/// had no ping or idle timeout, and an ICE disconnect of a WebSocket participant only
/// logged, so the resume window never started. Now the server pings and closes a socket
/// silent for its idle timeout, and the session ends after the resume window.
#[test]
fn silent_client_is_let_go() {
    let m = Maxd::start_with(
        r#"["sfu"]"#,
        &[
            ("MAXD_AUTH__SECRET", SECRET),
            ("MAXD_SFU__RESUME_WINDOW", "2s"),
            ("MAXD_SFU__EMPTY_ROOM_GRACE", "1s"),
            ("MAXD_SFU__WS_PING_INTERVAL", "1s"),
            ("MAXD_SFU__WS_IDLE_TIMEOUT", "2s"),
        ],
    );
    let sc = Scenario {
        url: m.base_url(),
        rooms: 1,
        publishers: 2,
        subscribers: 2,
        duration: Duration::from_secs(10),
        churn: 0.5,
        leave_mix: "silent=1".parse().unwrap(),
        seed: Some(1),
        room_grace: Duration::from_secs(1),
        ws_idle: Duration::from_secs(3),
        token_secret: Some(SECRET.into()),
        ..Scenario::default()
    };
    let r = run(&sc);
    let ctx = format!("{}\nmaxd log:\n{}", r.table(), m.log());
    assert!(r.participants.departures["silent"] >= 2, "{ctx}");
    assert!(r.verdict.passed, "{ctx}");
}

/// The `loadtest` binary of this workspace, built now if need be (the README's test
/// command builds every target first, so this is then a no-op).
fn loadtest_bin() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "maxd-loadtest",
            "--bin",
            "loadtest",
        ])
        .args((!cfg!(debug_assertions)).then_some("--release"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p maxd-loadtest failed");
    support::bin().with_file_name("loadtest")
}

#[test]
fn chat_mode_delivers_every_message() {
    let m = Maxd::start_with(
        r#"["signalling"]"#,
        &[
            ("MAXD_SIGNALLING__CODES_PER_IP_PER_HOUR", "100000"),
            ("MAXD_SIGNALLING__VERIFIES_PER_IP_PER_HOUR", "100000"),
        ],
    );
    let sc = Scenario {
        mode: loadtest::Mode::Chat,
        url: m.base_url(),
        rooms: 2,
        chat_group_size: 5,
        chat_senders: 2,
        chat_rate: 5.0,
        duration: Duration::from_secs(2),
        data_dir: Some(m.dir.path().join("data").display().to_string()),
        ..Scenario::default()
    };
    let r = run(&sc);
    let ctx = format!("{}\nmaxd log:\n{}", r.table(), m.log());
    let c = r.chat.as_ref().expect("chat figures");
    assert_eq!(c["users"], 10, "{ctx}");
    assert_eq!(r.participants.connected, 10, "{ctx}");
    assert!(c["messages_acked"].as_u64().unwrap() >= 10, "{ctx}");
    assert_eq!(c["messages_acked"], c["messages_sent"], "{ctx}");
    // Each message reaches the 4 other members of its group.
    assert_eq!(
        c["deliveries_expected"].as_u64(),
        Some(c["messages_acked"].as_u64().unwrap() * 4),
        "{ctx}"
    );
    assert_eq!(c["deliveries"], c["deliveries_expected"], "{ctx}");
    assert_eq!(r.loss_ratio, 0.0, "{ctx}");
    assert!(
        r.delay_ms.p50 > 0.0 && r.delay_ms.p99 >= r.delay_ms.p50,
        "{ctx}"
    );
    assert_eq!(r.errors, 0, "{ctx}");
    assert!(r.verdict.passed, "{ctx}");
}

#[test]
fn files_mode_moves_every_file_both_ways() {
    let relay = format!("127.0.0.1:{}", support::free_port());
    let m = Maxd::start_with(
        r#"["relay"]"#,
        &[
            ("MAXD_AUTH__SECRET", SECRET),
            ("MAXD_RELAY__LISTEN", relay.as_str()),
        ],
    );
    let sc = Scenario {
        mode: loadtest::Mode::Files,
        url: m.base_url(),
        relay_addr: Some(relay.clone()),
        data_dir: Some(m.dir.path().join("data").display().to_string()),
        file_clients: 3,
        file_size: 3 << 20,
        token_secret: Some(SECRET.into()),
        ..Scenario::default()
    };
    let r = run(&sc);
    let ctx = format!("{}\nmaxd log:\n{}", r.table(), m.log());
    let f = r.files.as_ref().expect("file figures");
    for phase in ["upload", "download"] {
        assert_eq!(f[phase]["ok"], 3, "{phase}: {ctx}");
        assert_eq!(
            f[phase]["bytes"].as_u64(),
            Some(3 * (3 << 20)),
            "{phase}: {ctx}"
        );
        assert!(
            f[phase]["mib_per_s"].as_f64().unwrap() > 0.0,
            "{phase}: {ctx}"
        );
    }
    assert_eq!(r.errors, 0, "{ctx}");
    assert!(r.verdict.passed, "{ctx}");
}
