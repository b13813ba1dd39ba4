#!/usr/bin/env bash
# Builds the device agent (no reference central) for ARM, and optionally runs the
# test suite for that target under qemu-user.
#
#   cross/build.sh [aarch64|armv7] [--test] [--install]
#
# On machines where rustup cannot download targets (this project's CI), Debian's
# packaged Rust for cross targets is used: rustc-web/cargo-web 1.96 with
# libstd-rust-web-dev:<arch> (the libstd must match rustc exactly), the gcc cross
# compiler, and qemu-user. --install installs them (root, apt). With internet and
# rustup, the usual route works too:
#   rustup target add aarch64-unknown-linux-gnu && cargo build --release --no-default-features --target aarch64-unknown-linux-gnu
# (or `cross build …`).
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

case $arch in
  aarch64) target=aarch64-unknown-linux-gnu; deb=arm64; gcc=aarch64-linux-gnu-gcc; sysroot=/usr/aarch64-linux-gnu ;;
  armv7) target=armv7-unknown-linux-gnueabihf; deb=armhf; gcc=arm-linux-gnueabihf-gcc; sysroot=/usr/arm-linux-gnueabihf ;;
  *) echo "arch must be aarch64 or armv7" >&2; exit 2 ;;
esac

if [ $install = 1 ]; then
  if ! dpkg -s "libstd-rust-web-dev:$deb" >/dev/null 2>&1 || ! command -v "$gcc" >/dev/null || ! command -v "qemu-${arch/armv7/arm}" >/dev/null; then
    dpkg --add-architecture "$deb"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web "libstd-rust-web-dev:$deb" \
      "gcc-${gcc%-gcc}" "libc6-dev-$deb-cross" qemu-user >/dev/null
  fi
fi

export RUSTC=/usr/bin/rustc
export "CC_${target//-/_}=$gcc"
# A target dir of its own: Debian's rustc differs from rustup's, and sharing one
# would rebuild everything on each switch.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cross}
export QEMU_LD_PREFIX=$sysroot

/usr/bin/cargo build --release --no-default-features --target "$target" --bin fieldsync
bin=$CARGO_TARGET_DIR/$target/release/fieldsync
echo "built $bin: $(stat -c %s "$bin") bytes"
"qemu-${arch/armv7/arm}" -L "$sysroot" "$bin" version

if [ $run_tests = 1 ]; then
  # The whole suite (agent, central, conformance, seeds) on the ARM target.
  /usr/bin/cargo test --target "$target"
fi
