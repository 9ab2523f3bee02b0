#!/usr/bin/env bash
# Builds and runs maxd on embedded defaults (release build). Extra arguments go to maxd.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cmake pkg-config
fi
exec cargo run --release --bin maxd -- "$@"
