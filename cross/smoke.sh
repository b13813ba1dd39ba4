#!/usr/bin/env bash
# End-to-end check of the ARM device binary under qemu-user: the aarch64 agent
# (release, no central) against a native reference central on loopback —
# initialise, pull, a local write, push, status, and the offline exit code.
#
#   cross/smoke.sh [AGENT_BINARY]        (default: the cross/build.sh output)
#
# Why not the whole test suite under qemu: on this project's CI machines
# (Firecracker VMs, kernel 6.18) qemu-user 7.2 and 10.0 both hang at the first
# pthread_create of any aarch64 program, C or Rust; the test harness needs
# threads, the agent does not. `cross/build.sh aarch64 --test` runs the suite
# where qemu-user threads work.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/cross/aarch64-unknown-linux-gnu/release/fieldsync}
central=target/debug/fieldsync-central
[ -x "$central" ] || cargo build --bin fieldsync-central
agent() { timeout 120 qemu-aarch64 -L / "$bin" --db "$dir/agent.sqlite" "$@"; }
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { [ -n "${cpid:-}" ] && kill "$cpid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

# ELF e_machine 183 = aarch64.
python3 -c 'import sys; d=open(sys.argv[1],"rb").read(20); sys.exit(0 if d[:4]==b"\x7fELF" and int.from_bytes(d[18:20],"little")==183 else 1)' "$bin" \
  || { echo "not an aarch64 binary: $bin" >&2; exit 1; }
PW=pw "$central" --db "$dir/c.sqlite" site add kaw --code KAW --password-env PW >/dev/null
"$central" --db "$dir/c.sqlite" store add S_KAW --name "Kawakawa" --site kaw
"$central" --db "$dir/c.sqlite" put item '{"ID":"I1","item_name":"Paracetamol"}'
"$central" --db "$dir/c.sqlite" serve --listen "127.0.0.1:$port" 2>"$dir/central.log" &
cpid=$!
sleep 1

PW=pw agent init --url "http://127.0.0.1:$port" --site kaw --password-env PW >/dev/null
agent sync
[ "$(agent get item I1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["item_name"])')" = Paracetamol ]
agent put item_line '{"ID":"IL1","store_ID":"S_KAW","item_ID":"I1","quantity":3}'
[ "$(agent queue --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pending"])')" = 1 ]
agent sync
"$central" --db "$dir/c.sqlite" get item_line IL1 | grep -q '"quantity":3'
agent status | grep -q "waiting to send      0 record"
kill "$cpid"; wait "$cpid" 2>/dev/null || true; cpid=
set +e
agent sync 2>/dev/null
code=$?
set -e
[ $code = 10 ] || { echo "offline sync exited $code, want 10" >&2; exit 1; }
echo "aarch64 agent under qemu: init, pull, push, status, offline exit code: ok"
