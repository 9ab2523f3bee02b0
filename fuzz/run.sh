#!/usr/bin/env bash
# Runs the fuzz targets (all, or those named) for FUZZ_SECONDS each (600 by default),
# FUZZ_PARALLEL at a time (1 by default), each one libFuzzer process, from the committed
# seed corpus. New inputs go to fuzz/work/TARGET, crashes to fuzz/artifacts/TARGET,
# libFuzzer's output to fuzz/logs/TARGET.log; a summary line per target is printed.
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); runs on a stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1 CARGO_INCREMENTAL=0
secs=${FUZZ_SECONDS:-600}
par=${FUZZ_PARALLEL:-1}
cargo fuzz build -s none
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
mkdir -p fuzz/logs
one() {
  t=$1
  mkdir -p "fuzz/work/$t"
  if cargo fuzz run -s none "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1; then r=ok; else r=CRASH; fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/logs/$t.log" | grep -o '[0-9]*$' || true)
  cov=$(grep -o 'cov: [0-9]*' "fuzz/logs/$t.log" | tail -1 | grep -o '[0-9]*' || true)
  echo "$t: $r, ${runs:-?} executions in ${secs}s, coverage ${cov:-?} edges"
}
export -f one
export secs
printf '%s\n' "${targets[@]}" | xargs -P "$par" -I{} bash -c 'one {}'
