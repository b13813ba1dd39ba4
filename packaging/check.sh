#!/usr/bin/env bash
# Builds the .deb for a given agent binary and checks it: contents, control data,
# units (systemd-analyze verify, security exposure), then a real install and purge
# on this machine (root needed for that part; skipped otherwise).
#
#   packaging/check.sh ARCH BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
arch=$1
bin=$2
deb=$(packaging/build-deb.sh "$arch" "$bin" target/deb)
echo "package: $deb ($(stat -c %s "$deb") bytes)"

contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/fieldsync ./usr/lib/systemd/system/fieldsync-sync.service \
  ./usr/lib/systemd/system/fieldsync-sync.timer ./usr/lib/systemd/system/fieldsync.service \
  ./usr/lib/udev/rules.d/60-fieldsync-leds.rules ./etc/default/fieldsync \
  ./etc/NetworkManager/dispatcher.d/90-fieldsync ./etc/networkd-dispatcher/routable.d/50-fieldsync \
  ./usr/share/fieldsync/credential.conf; do
  grep -q " $path\$" <<<"$contents" || { echo "missing in package: $path" >&2; exit 1; }
done
if grep -q "fieldsync-central" <<<"$contents"; then echo "the device package must not carry the central" >&2; exit 1; fi
[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || { echo "wrong Architecture" >&2; exit 1; }
dpkg-deb -f "$deb" Depends | grep -q systemd

if command -v systemd-analyze >/dev/null; then
  tmp=$(mktemp -d)
  for u in systemd/*.service systemd/*.timer; do
    sed "s#/usr/bin/fieldsync#$(readlink -f "$bin")#" "$u" > "$tmp/$(basename "$u")"
  done
  # The variant with the site credential from systemd's store: the sync unit with
  # its drop-in, checked as one unit.
  { cat "$tmp/fieldsync-sync.service"; cat systemd/credential.conf; } > "$tmp/fieldsync-sync-credential.service"
  getent group fieldsync >/dev/null 2>&1 || [ "$(id -u)" != 0 ] || useradd --system --no-create-home fieldsync
  out=$(systemd-analyze verify "$tmp"/*.service "$tmp"/*.timer 2>&1 || true)
  # An ExecStart binary for another architecture cannot be checked here.
  out=$(grep -v "is not executable\|Exec format error" <<<"$out" || true)
  if [ -n "$out" ]; then echo "systemd-analyze verify:" >&2; echo "$out" >&2; exit 1; fi
  for s in fieldsync-sync.service fieldsync.service; do
    systemd-analyze security --offline=true "$tmp/$s" 2>/dev/null | grep "Overall exposure"
  done
  rm -rf "$tmp"
fi

if [ "$(id -u)" = 0 ] && [ "$arch" = "$(dpkg --print-architecture)" ]; then
  dpkg -i "$deb" >/dev/null
  /usr/bin/fieldsync version
  getent passwd fieldsync >/dev/null
  [ -d /var/lib/fieldsync ]
  [ "$(stat -c %a:%G /var/lib/fieldsync)" = "3770:fieldsync" ] || { echo "/var/lib/fieldsync is $(stat -c %a:%G /var/lib/fieldsync), want 3770:fieldsync" >&2; exit 1; }
  [ -e /etc/systemd/system/timers.target.wants/fieldsync-sync.timer ] || [ -d /run/systemd/system ]
  # A purge with records never sent keeps the data (with a central to make
  # some: the development build's, when this machine has one).
  central=${FIELDSYNC_CENTRAL_BIN:-target/debug/fieldsync-central}
  if [ -x "$central" ] && [ "$arch" = amd64 ]; then
    c=$(mktemp -d)
    PW=pw "$central" --db "$c/c.sqlite" site add moa --password-env PW >/dev/null
    "$central" --db "$c/c.sqlite" store add S_MOA --site moa >/dev/null
    "$central" --db "$c/c.sqlite" serve --listen 127.0.0.1:47291 2>"$c/log" &
    cpid=$!
    sleep 1
    db=/var/lib/fieldsync/fieldsync.sqlite
    as() { runuser -u fieldsync -- /usr/bin/fieldsync --db "$db" "$@"; }
    PW=pw runuser -u fieldsync -- env PW=pw /usr/bin/fieldsync --db "$db" init --url http://127.0.0.1:47291 \
      --allow-insecure-http --site moa --password-env PW >/dev/null
    as -q sync
    as put transact '{"ID":"T1","store_ID":"S_MOA"}'
    kill "$cpid"; wait "$cpid" 2>/dev/null || true
    rm -rf "$c"
    dpkg --purge fieldsync 2>"$c.err" >/dev/null
    kept=$(ls -d /var/lib/fieldsync.unsent-* 2>/dev/null | head -1)
    [ -n "$kept" ] && [ -e "$kept/fieldsync.sqlite" ] || { echo "purge deleted unsent records" >&2; exit 1; }
    grep -q "1 record(s) were never sent" "$c.err" || { echo "purge did not say why it kept the data" >&2; cat "$c.err" >&2; exit 1; }
    rm -rf "$kept" "$c.err"
    echo "purge with unsent records keeps them: ok"
    dpkg -i "$deb" >/dev/null
  fi
  dpkg --purge fieldsync >/dev/null
  for p in /usr/bin/fieldsync /usr/lib/systemd/system/fieldsync-sync.timer /etc/default/fieldsync /var/lib/fieldsync \
    /etc/systemd/system/timers.target.wants/fieldsync-sync.timer; do
    [ ! -e "$p" ] || { echo "left behind after purge: $p" >&2; exit 1; }
  done
  echo "install, run and purge: ok"
fi
echo "package check passed"
