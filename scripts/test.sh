#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need when it is missing
# (Debian packages via apt-get), so it works on a fresh Debian machine with only the
# Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# PostgreSQL server binaries for the chat storage tests (each test starts its own
# private server in a temp dir and stops it).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# Headless Chromium and Node for the web client's browser tests (tests/browser.rs).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# Go and Pion 3.1 (Debian's sources, built offline) for the Pion WHIP publisher of
# tests/pion_consent.rs.
command -v go >/dev/null || need_apt+=(golang-go)
[ -f /usr/share/gocode/src/github.com/pion/webrtc/go.mod ] || need_apt+=(golang-github-pion-webrtc.v3-dev)
# nft cuts the media port off in the web client's outage test and in the TURN call
# test (run as root only).
command -v nft >/dev/null || need_apt+=(nftables)
# coturn: the TURN server the TURN-only call test starts (tests/calls_turn.rs).
command -v turnserver >/dev/null || need_apt+=(coturn)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# playwright-core (pinned in tests/browser/package-lock.json) drives that Chromium; it
# never downloads a browser of its own.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

# python-telegram-bot (pinned) in a venv under target/ for the Bot API test
# (signalling/tests/telegram_bot.rs), which runs a real echo bot written with it.
PTB_VERSION=22.8
if ! target/ptb-venv/bin/python3 -c "import telegram, sys; sys.exit(telegram.__version__ != '$PTB_VERSION')" 2>/dev/null; then
  python3 -c "import venv, ensurepip" 2>/dev/null || {
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
  }
  mkdir -p target
  python3 -m venv target/ptb-venv
  target/ptb-venv/bin/pip install -q "python-telegram-bot==$PTB_VERSION" || {
    echo "scripts/test.sh: could not install python-telegram-bot==$PTB_VERSION from PyPI (needed by signalling/tests/telegram_bot.rs)" >&2
    exit 1
  }
fi

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# Build everything once; the test binaries share the target directory.
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast -- --test-threads=2
