#!/usr/bin/env bash
# End-to-end check of an ARM device binary under qemu-user: the agent (release,
# no central; aarch64 or armv7, told apart by its ELF header) against a native
# reference central on loopback — initialise, pull, a local write, push, status,
# and the offline exit code. Programs run against Debian's multiarch libc
# (`-L /`); the whole suite runs with `cross/build.sh ARCH --test`.
#
#   cross/smoke.sh [AGENT_BINARY]        (default: the aarch64 cross/build.sh output)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/cross/aarch64-unknown-linux-gnu/release/fieldsync}
central=target/debug/fieldsync-central
[ -x "$central" ] || cargo build --bin fieldsync-central
# ELF e_machine: 183 aarch64, 40 arm.
machine=$(python3 -c 'import sys; d=open(sys.argv[1],"rb").read(20); print(int.from_bytes(d[18:20],"little") if d[:4]==b"\x7fELF" else 0)' "$bin")
case $machine in
  183) qemu=qemu-aarch64; arch=aarch64 ;;
  40) qemu=qemu-arm; arch=armv7 ;;
  *) echo "not an ARM binary: $bin" >&2; exit 1 ;;
esac
agent() { timeout 120 "$qemu" -L / "$bin" --db "$dir/agent.sqlite" "$@"; }
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { [ -n "${cpid:-}" ] && kill "$cpid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

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
echo "$arch agent under qemu: init, pull, push, status, offline exit code: ok"
