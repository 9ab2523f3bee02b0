//! One scheme for command-line options, environment variables and config keys, and
//! CLI verbs that find the server's data directory or say what to pass - on the real
//! `maxd` binary.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{Maxd, bin};

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every variable the docs name for the CLI or for a plane, set at once: `maxd` starts.
/// (They were all read as config keys: "unknown field `config_file`".)
#[test]
fn every_documented_variable_leaves_maxd_starting() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/maxd.toml");
    let example = example.to_str().unwrap();
    let m = Maxd::start_with(
        r#"["sfu","signalling","relay"]"#,
        &[
            ("MAXD_CONFIG_FILE", example),
            ("MAXD_FILES_SERVER", "127.0.0.1:4433"),
            ("MAXD_FILES_TOKEN", "not-a-token"),
            ("MAXD_FILES_PIN", "00ff"),
            ("MAXD_RELAY_NO_DIRECT_IO", "1"),
            ("MAXD_SKIP_BROWSER_TESTS", "1"),
            ("MAXD_SIGNALLING__CODES_PER_IP_PER_HOUR", "77"),
        ],
    );
    assert_eq!(support::http_get(m.http, "/healthz").0, 200);
    // The config file was read (MAXD_CONFIG_FILE) and MAXD_SECTION__KEY still overrides it.
    let out = Command::new(bin())
        .arg("config")
        .env("MAXD_CONFIG_FILE", example)
        .env("MAXD_FILES_TOKEN", "x")
        .env("MAXD_SIGNALLING__CODES_PER_IP_PER_HOUR", "77")
        .env("MAXD_DEV", "false")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let cfg = String::from_utf8_lossy(&out.stdout);
    assert!(cfg.contains("codes_per_ip_per_hour = 77"), "{cfg}");
    assert!(cfg.contains("dev = false"), "{cfg}");
}

/// A misspelt key is still refused with its name, in a section or at the top.
#[test]
fn an_unknown_config_key_in_the_environment_is_refused_by_name() {
    for (var, name) in [
        ("MAXD_HTTP__LISTN", "listn"),
        ("MAXD_SFU__UDP_LISEN", "udp_lisen"),
    ] {
        let out = Command::new(bin())
            .arg("config")
            .env(var, "127.0.0.1:1")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var} was accepted:\n{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(name) && err.contains("unknown field"),
            "{var}: {err}"
        );
    }
    // A variable that names no key and no option is not a key: it is named in a
    // warning and ignored, never silently.
    let out = Command::new(bin())
        .arg("config")
        .env("MAXD_DATADIR", "/x")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MAXD_DATADIR") && err.contains("ignored"),
        "{err}"
    );
}

/// `maxd token` and `maxd files` run away from the server's data directory make no
/// secret of their own: they fail saying what to pass, and create nothing.
#[test]
fn cli_verbs_elsewhere_create_no_secret_and_say_what_to_pass() {
    let elsewhere = tempfile::tempdir().unwrap();
    for args in [
        &["token", "--identity", "a"][..],
        &["files", "stat", "0123"][..],
    ] {
        let out = Command::new(bin())
            .args(args)
            .current_dir(elsewhere.path())
            .env_remove("MAXD_DATA_DIR")
            .env_remove("MAXD_CONFIG_FILE")
            .env_remove("MAXD_AUTH__SECRET")
            .env_remove("MAXD_FILES_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded:\n{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--data-dir") && err.contains("dev-secret"),
            "{args:?}: {err}"
        );
        let left: Vec<_> = std::fs::read_dir(elsewhere.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }
}

/// `--data-dir` points a CLI verb at the server's data directory from anywhere, and the
/// token it prints is accepted by that server.
#[test]
fn token_with_data_dir_is_accepted_by_the_server() {
    let m = Maxd::start(r#"["relay"]"#);
    let data = m.dir.path().join("data");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args([
            "token",
            "--identity",
            "bob",
            "--grants",
            "files",
            "--data-dir",
        ])
        .arg(&data)
        .current_dir(elsewhere.path())
        .env_remove("MAXD_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // A file that does not exist: 404 for an accepted token (401 for a refused one).
    let (status, body) = get_with_bearer(m.http, "/files/0123456789abcdef0123456789abcdef", &token);
    assert_eq!(status, 404, "{body}");
    let (status, _) = get_with_bearer(m.http, "/files/0123456789abcdef0123456789abcdef", "x.y.z");
    assert_eq!(status, 401);
}

fn get_with_bearer(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, buf)
}

/// `/readyz` says which planes run and that each can serve; `/metrics` says which maxd
/// this is (`maxd_build_info`).
#[test]
fn readyz_names_the_planes_and_build_info_the_version() {
    let m = Maxd::start(r#"["sfu","signalling","relay"]"#);
    let (status, body) = support::http_get(m.http, "/readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true, "{v}");
    for plane in ["sfu", "signalling", "relay"] {
        assert_eq!(v["planes"][plane]["ready"], true, "{v}");
    }
    let metrics = m.metrics();
    let line = format!("maxd_build_info{{roles=\"sfu,signalling,relay\",version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(metrics.lines().any(|l| l == line), "no {line} in /metrics");

    let m = Maxd::start(r#"["signalling"]"#);
    let (status, body) = support::http_get(m.http, "/readyz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["planes"].as_object().unwrap().keys().collect::<Vec<_>>(), ["signalling"], "{v}");
}
