//! A private PostgreSQL server for a test. Shared with the root package's `tests/chat_*.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// A private PostgreSQL server for one test: initdb into a temp dir, `postgres` on a
/// free port, run as the `postgres` OS user when we are root. Stopped on drop.
pub struct Postgres {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql missing): run scripts/test.sh, which installs it")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin: install the postgresql package")
}

fn as_pg_user(bin: &Path) -> Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

pub async fn postgres() -> Postgres {
    let bin = pg_bin();
    let dir = tempfile::Builder::new()
        .prefix("maxd-pg-")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status();
    let out = as_pg_user(&bin.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .output()
        .expect("running initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = as_pg_user(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=100",
        ])
        .arg("-k")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting postgres");
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let pg = Postgres {
        url,
        child,
        _dir: dir,
    };
    // Ready when pg_isready says so (polling a readiness probe, with a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new(bin.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg
}
