#!/usr/bin/env bash
# Builds fieldsync_<version>_<arch>.deb from an already built agent binary.
#
#   packaging/build-deb.sh ARCH BINARY [OUTDIR]      ARCH: amd64 | arm64 | armhf
#
# Installs the binary, the systemd units (and the credential drop-in under
# /usr/share/fieldsync), the network-up hooks, the LED udev rule and
# /etc/default/fieldsync; creates the fieldsync system user and its group (which
# the clinic app's users join); enables the timer. `apt install ./fieldsync_<ver>_arm64.deb` on a Raspberry Pi is the path.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=$1
bin=$2
out=${3:-target/deb}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

install -D -m 0755 "$bin" "$root/usr/bin/fieldsync"
for u in fieldsync-sync.service fieldsync-sync.timer fieldsync.service; do
  install -D -m 0644 "systemd/$u" "$root/usr/lib/systemd/system/$u"
done
install -D -m 0644 systemd/60-fieldsync-leds.rules "$root/usr/lib/udev/rules.d/60-fieldsync-leds.rules"
install -D -m 0755 systemd/90-fieldsync.nm-dispatcher "$root/etc/NetworkManager/dispatcher.d/90-fieldsync"
install -D -m 0755 systemd/50-fieldsync.networkd-dispatcher "$root/etc/networkd-dispatcher/routable.d/50-fieldsync"
install -D -m 0644 packaging/default.env "$root/etc/default/fieldsync"
install -D -m 0644 systemd/credential.conf "$root/usr/share/fieldsync/credential.conf"
install -D -m 0644 README.md "$root/usr/share/doc/fieldsync/README.md"
printf 'fieldsync\nLicense: MIT\n' | install -D -m 0644 /dev/stdin "$root/usr/share/doc/fieldsync/copyright"

mkdir -p "$root/DEBIAN"
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: fieldsync
Version: $version
Architecture: $arch
Maintainer: fieldsync developers <fieldsync@localhost>
Installed-Size: $size
Depends: adduser, systemd
Section: net
Priority: optional
Description: mSupply-style sync agent for clinic field devices
 Keeps the clinic's store in a local SQLite file, captures every local change,
 and syncs with the central server whenever a link appears.
CONTROL
cat > "$root/DEBIAN/conffiles" <<'CONFFILES'
/etc/default/fieldsync
/etc/NetworkManager/dispatcher.d/90-fieldsync
/etc/networkd-dispatcher/routable.d/50-fieldsync
CONFFILES
cat > "$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if ! getent passwd fieldsync >/dev/null; then
    # The home exists first (owned by root until install -d below), so adduser
    # has nothing to warn about.
    mkdir -p /var/lib/fieldsync
    adduser --system --group --home /var/lib/fieldsync --no-create-home fieldsync >/dev/null
  fi
  # 3770: the clinic app's users join the fieldsync group (setgid keeps their files
  # in it); sticky: they cannot remove or rename the agent's files (README, "Security").
  install -d -o fieldsync -g fieldsync -m 3770 /var/lib/fieldsync
  if command -v udevadm >/dev/null && [ -d /sys/class/leds ]; then
    udevadm control --reload-rules 2>/dev/null || true
    udevadm trigger --subsystem-match=leds --action=change 2>/dev/null || true
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable fieldsync-sync.timer >/dev/null 2>&1 || true
    systemctl start fieldsync-sync.timer || true
  else
    # No running systemd (a chroot, an image build): enable for the next boot.
    mkdir -p /etc/systemd/system/timers.target.wants
    ln -sf /usr/lib/systemd/system/fieldsync-sync.timer /etc/systemd/system/timers.target.wants/fieldsync-sync.timer
  fi
fi
POSTINST
cat > "$root/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl stop fieldsync-sync.timer fieldsync-sync.service fieldsync.service >/dev/null 2>&1 || true
  systemctl disable fieldsync-sync.timer fieldsync.service >/dev/null 2>&1 || true
fi
rm -f /etc/systemd/system/timers.target.wants/fieldsync-sync.timer
# Count what was never sent while the binary is still here: a purge keeps a
# database with unsent records (postrm), never deletes a clinic's work.
db=/var/lib/fieldsync/fieldsync.sqlite
if [ -e "$db" ]; then
  q=$(runuser -u fieldsync -- /usr/bin/fieldsync --db "$db" -q queue --json 2>/dev/null || true)
  n=$(printf '%s' "$q" | sed -n 's/.*"pending":\([0-9]*\).*"rejected":\([0-9]*\).*/\1 \2/p' | awk '{print $1 + $2}')
  if [ -z "$n" ]; then
    echo unknown > /var/lib/fieldsync/.unsent
  elif [ "$n" -gt 0 ]; then
    echo "$n" > /var/lib/fieldsync/.unsent
  else
    rm -f /var/lib/fieldsync/.unsent
  fi
fi
PRERM
cat > "$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
[ -d /run/systemd/system ] && systemctl daemon-reload || true
# The clinic's data stays on remove; only purge deletes it.
if [ "$1" = purge ]; then
  if [ -e /var/lib/fieldsync/.unsent ]; then
    kept=/var/lib/fieldsync.unsent-$(date +%Y%m%d%H%M%S)
    mv /var/lib/fieldsync "$kept"
    echo "fieldsync: $(cat "$kept/.unsent") record(s) were never sent to the central; the data is kept in $kept (reinstall and sync, or delete it once it is safe)" >&2
  else
    rm -rf /var/lib/fieldsync
  fi
  getent passwd fieldsync >/dev/null && deluser --system fieldsync >/dev/null 2>&1 || true
fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/fieldsync_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
