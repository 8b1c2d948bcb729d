#!/bin/bash
# Builds airlock and airlock-bench in release mode and runs the whole benchmark, saving the
# printed table, the JSON results (raw samples included) and the servers' logs.
#
# Usage (as root, from anywhere):  bench/run.sh [airlock-bench flags, e.g. --skip-podman]
# Results go to $AIRLOCK_BENCH_OUT (default: target/bench/<UTC time>/).
set -euo pipefail

cd "$(dirname "$0")/.."

case " $* " in
    *" --skip-podman "*) ;;
    *) command -v podman >/dev/null 2>&1 || bench/setup-podman.sh ;;
esac

cargo build --release -p airlock -p airlock-bench

out="${AIRLOCK_BENCH_OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
./target/release/airlock-bench \
    --airlock-bin target/release/airlock \
    --json "$out/results.json" \
    --logs "$out" \
    "$@" | tee "$out/table.txt"
echo "results in $out"
