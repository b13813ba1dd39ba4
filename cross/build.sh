#!/usr/bin/env bash
# Builds the device agent (no reference central) for ARM, and optionally runs the
# whole test suite for that target under qemu-user.
#
#   cross/build.sh [aarch64|aarch64-static|armv7] [--test] [--install]
#
# aarch64-static: one binary with no shared library and no interpreter (glibc
# linked statically, `-C target-feature=+crt-static`) for Android-class tablets
# (Termux, adb shell, an app's process); it resolves names with its own DNS client.
# Written with its SHA-256 to target/artefacts/.
#
# On machines where rustup cannot download targets (this project's CI), Debian's
# packaged Rust for cross targets is used: rustc-web/cargo-web 1.96 with
# libstd-rust-web-dev:<arch> (the libstd must match rustc exactly), the gcc cross
# compiler, and qemu-user. --install installs them (root, apt). With internet and
# rustup, the usual route works too:
#   rustup target add aarch64-unknown-linux-gnu && cargo build --release --no-default-features --target aarch64-unknown-linux-gnu
# (or `cross build …`).
#
# ARM programs run against Debian's multiarch libc (`qemu-aarch64 -L /`, the
# libc6:<arch> package), never the cross sysroot under /usr/<triple>: there, on
# these machines, the first pthread_create hangs. --test needs the kernel to run
# ARM binaries the tests spawn (binfmt_misc); this script mounts and registers it
# where it is missing, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-aarch64}
shift || true
run_tests=0
install=0
for a in "$@"; do
  case $a in
    --test) run_tests=1 ;;
    --install) install=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

static=0
case $arch in
  aarch64) target=aarch64-unknown-linux-gnu; deb=arm64; gcc=aarch64-linux-gnu-gcc; qemu=qemu-aarch64 ;;
  aarch64-static) target=aarch64-unknown-linux-gnu; deb=arm64; gcc=aarch64-linux-gnu-gcc; qemu=qemu-aarch64; static=1 ;;
  armv7) target=armv7-unknown-linux-gnueabihf; deb=armhf; gcc=arm-linux-gnueabihf-gcc; qemu=qemu-arm ;;
  *) echo "arch must be aarch64, aarch64-static or armv7" >&2; exit 2 ;;
esac
# libstd for the target from the security pool, checked against the (unsigned
# here) Packages index, when apt cannot install it: on these machines the armhf
# index of bookworm-security fails its size check ("Mirror sync in progress?"),
# so apt offers only main's older libstd, which must match rustc exactly. Only the
# rlibs are needed (std links statically); they go to /usr/lib/rustlib/<target>.
std_from_pool() {
  local pool=http://deb.debian.org/debian-security version tmp
  version=$(dpkg-query -W -f '${Version}' rustc-web)
  tmp=$(mktemp -d)
  curl -fsS --retry 3 -o "$tmp/Packages.xz" "$pool/dists/bookworm-security/main/binary-$deb/Packages.xz"
  local file sum
  file=$(xz -dc "$tmp/Packages.xz" | awk -v v="$version" '/^Package: libstd-rust-web-dev$/{p=1} p&&/^Version:/{ok=($2==v)} p&&ok&&/^Filename:/{print $2} /^$/{p=0;ok=0}' | head -1)
  sum=$(xz -dc "$tmp/Packages.xz" | awk -v v="$version" '/^Package: libstd-rust-web-dev$/{p=1} p&&/^Version:/{ok=($2==v)} p&&ok&&/^SHA256:/{print $2} /^$/{p=0;ok=0}' | head -1)
  [ -n "$file" ] || { echo "libstd-rust-web-dev $version for $deb is not in the pool's index" >&2; return 1; }
  curl -fsS --retry 3 -o "$tmp/std.deb" "$pool/$file"
  echo "$sum  $tmp/std.deb" | sha256sum -c --quiet
  dpkg -x "$tmp/std.deb" "$tmp/x"
  cp -r "$tmp/x/usr/lib/rustlib/$target" /usr/lib/rustlib/
  rm -rf "$tmp"
  echo "installed the $target standard library $version from the security pool (rlibs only)"
}

if [ $install = 1 ]; then
  if [ ! -d "/usr/lib/rustlib/$target" ] || ! dpkg -s "libc6:$deb" >/dev/null 2>&1 || ! command -v "$gcc" >/dev/null || ! command -v "$qemu" >/dev/null; then
    dpkg --add-architecture "$deb"
    apt-get update -qq || true # a broken foreign index is handled below
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web \
      "libc6:$deb" "gcc-${gcc%-gcc}" "libc6-dev-$deb-cross" qemu-user qemu-user-binfmt curl xz-utils >/dev/null
    local_rustc=$(/usr/bin/rustc --version | awk '{print $2}')
    if [ "$(apt-cache policy "libstd-rust-web-dev:$deb" | awk '/Candidate:/{print $2}' | cut -d+ -f1)" = "$local_rustc" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libstd-rust-web-dev:$deb" >/dev/null
    else
      std_from_pool
    fi
  fi
fi

export RUSTC=/usr/bin/rustc
export "CC_${target//-/_}=$gcc"
# A target dir of its own: Debian's rustc differs from rustup's, and sharing one
# would rebuild everything on each switch.
if [ $static = 1 ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cross-static}
  export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cross}
fi
# The multiarch libc, for the runner and for binaries the kernel hands to qemu.
export QEMU_LD_PREFIX=/

# The device agent is optimised for size (opt-level z, ~3.5% smaller than the
# workspace's s); native release builds (the bench's central) keep s for speed.
CARGO_PROFILE_RELEASE_OPT_LEVEL=${CARGO_PROFILE_RELEASE_OPT_LEVEL:-z} \
  /usr/bin/cargo build --release --no-default-features --target "$target" --bin fieldsync
bin=$CARGO_TARGET_DIR/$target/release/fieldsync
echo "built $bin: $(stat -c %s "$bin") bytes"
if [ $static = 1 ]; then
  # Nothing for a loader to find: no NEEDED entry, no interpreter.
  if readelf -d -l "$bin" | grep -qE '\(NEEDED\)|INTERP'; then
    echo "$bin is not static:" >&2; readelf -d -l "$bin" | grep -E 'NEEDED|INTERP' >&2; exit 1
  fi
  empty=$(mktemp -d)
  "$qemu" -L "$empty" "$bin" version
  rmdir "$empty"
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
  mkdir -p target/artefacts
  art=target/artefacts/fieldsync-$version-aarch64-linux-static
  cp "$bin" "$art"
  (cd target/artefacts && sha256sum "$(basename "$art")" > "$(basename "$art").sha256")
  echo "artefact $art ($(stat -c %s "$art") bytes), SHA-256 $(cut -d' ' -f1 "$art.sha256")"
else
  "$qemu" -L / "$bin" version
fi

# The kernel runs ARM binaries through qemu once binfmt_misc knows the format.
ensure_binfmt() {
  local name=$qemu entry=/proc/sys/fs/binfmt_misc/$qemu conf=/usr/lib/binfmt.d/$qemu.conf
  [ -e "$entry" ] && return 0
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
      || { echo "cannot mount binfmt_misc (root needed): ARM binaries the tests spawn will not start" >&2; return 1; }
    echo "mounted binfmt_misc at /proc/sys/fs/binfmt_misc"
  fi
  [ -f "$conf" ] || { echo "no $conf (package qemu-user-binfmt)" >&2; return 1; }
  cat "$conf" > /proc/sys/fs/binfmt_misc/register
  echo "registered $name with binfmt_misc from $conf"
}

if [ $run_tests = 1 ]; then
  ensure_binfmt
  # The whole suite (unit, agent, central, conformance, faults, interop, seeds…)
  # for the ARM target: the test binaries and every binary they spawn run under
  # qemu. Threads: the harness runs tests two at a time, as on the 2-core CI.
  started=$(date +%s)
  # Everything runs about ten times slower emulated: the tests' hang guards and
  # wait bounds scale by this (tests/common: patience); counts never do.
  export FIELDSYNC_TEST_PATIENCE=${FIELDSYNC_TEST_PATIENCE:-10}
  # Doctests are skipped: they build for the host, and rustdoc finds no target std here.
  # The examples run as programs (tests/apps.rs), so they are built as such.
  /usr/bin/cargo build --target "$target" --examples
  /usr/bin/cargo test --no-fail-fast --target "$target" --lib --bins --tests -- --test-threads 2
  echo "the whole suite for $target under qemu: passed in $(( $(date +%s) - started )) s (build included)"
fi
