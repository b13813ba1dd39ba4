#!/usr/bin/env bash
# The benchmark: one command, one machine, one run.
#   bench/run.sh              → bench/report.md, bench/results.json, bench/plot.svg
# FIELDSYNC_BENCH_SIZES=1000,10000 and FIELDSYNC_BENCH_2G=N shorten a run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The test kit: the bench's own binary, and the agent's usage report (peak memory,
# CPU, bytes written) that the bench reads.
cargo build --release --bins --features testkit
# PouchDB 9 + pouchdb-server 4 from the npm registry, for the side-by-side run.
if command -v npm >/dev/null 2>&1 && [ ! -d bench/pouchdb/node_modules/pouchdb-server ]; then
  (cd bench/pouchdb && npm install --no-audit --no-fund --silent) || echo "note: PouchDB not installed; its comparison is skipped"
fi
if [ -d bench/pouchdb/node_modules/pouchdb-server ]; then
  export FIELDSYNC_POUCH_DIR=$PWD/bench/pouchdb
fi
./target/release/fieldsync-bench bench
echo "report: bench/report.md  plot: bench/plot.svg"
