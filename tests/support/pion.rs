//! Pion (Go) test peers from `tests/pion/`, built offline against Debian's
//! `golang-github-pion-webrtc.v3-dev` (Pion 3.1) into a temp dir, and run as child
//! processes whose standard output lines are events a test waits on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use testkit::stats::Observed;

/// Where Debian installs Go sources (`golang-*-dev` packages).
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// Panics, saying what to install, unless `go` and Debian's Pion 3.1 sources are here
/// (the Pion tests fail, not skip, without them, as the PostgreSQL ones do).
pub fn require() {
    let go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    let pion = Path::new(DEBIAN_GOPATH)
        .join("src/github.com/pion/webrtc/go.mod")
        .exists();
    assert!(
        go && pion,
        "the Pion tests need `go` and Pion 3.1 sources: apt-get install golang-go \
         golang-github-pion-webrtc.v3-dev (scripts/test.sh installs them)"
    );
}

/// A program built from `tests/pion/<name>.go`; the binary lives as long as this.
pub struct Program {
    _dir: tempfile::TempDir,
    pub bin: PathBuf,
}

/// Builds `tests/pion/<name>.go` with no network: GOPATH mode over Debian's sources.
///
/// The program sits in a private GOPATH next to `tests/pion/go.mod`: Go resolves
/// `github.com/pion/webrtc/v3` to Debian's `github.com/pion/webrtc` (whose go.mod names
/// it `.../v3`) only for code in a tree with a go.mod ("minimal module compatibility").
/// The build cache is kept under the target dir, so later builds take a second.
pub fn build(name: &str) -> Program {
    require();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pion");
    let dir = tempfile::tempdir().expect("temp dir");
    let pkg = dir.path().join("src").join(name);
    std::fs::create_dir_all(&pkg).unwrap();
    for f in [format!("{name}.go"), "go.mod".to_string()] {
        std::fs::copy(src.join(&f), pkg.join(&f)).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
    let bin = dir.path().join(name);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gocache");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&pkg)
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:{DEBIAN_GOPATH}", dir.path().display()),
        )
        .env("GOCACHE", cache)
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build {name}.go failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Program { _dir: dir, bin }
}

/// A running Pion program; killed on drop.
pub struct Running {
    child: Child,
    /// Its standard output, a line each.
    pub lines: Arc<Observed<Vec<String>>>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts `cmd` (its standard output read into [`Running::lines`], its standard
    /// error kept for [`Running::stderr`]).
    pub fn spawn(mut cmd: Command) -> Running {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = dir.path().join("stderr");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn Pion program");
        let lines = Observed::new(Vec::new());
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.update(|v| v.push(line));
            }
        });
        Running {
            child,
            lines,
            stderr,
            _dir: dir,
        }
    }

    /// Waits for a line starting with `prefix`; returns the rest of it.
    pub async fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let r = self
            .lines
            .wait(
                timeout,
                &format!("a line starting {prefix:?}"),
                |v| {
                    v.iter()
                        .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
                },
                |v| v.join("\n"),
            )
            .await;
        r.unwrap_or_else(|e| panic!("{e:#}\nstderr:\n{}", self.stderr()))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
