# shellcheck shell=bash
# Sourced by .ci/arm (and by hand): the environment that builds the agent for ARM Linux with
# Debian's Rust and cross gcc, and runs it under QEMU user mode.
#   source .ci/qemu/env.sh; arm_cargo aarch64-unknown-linux-gnu build -p edge-agent --bin agent
ARM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The two targets: 64-bit ARM, and 32-bit ARMv7 with hardware floating point (Debian's armhf).
export ARM_TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"
# Its own target directory: the native build's cache (rustup's compiler) stays untouched.
export ARM_TARGET_DIR="${CARGO_TARGET_DIR:-$ARM_ROOT/target}/arm"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm-static -L /usr/arm-linux-gnueabihf"

# cargo for one ARM target: Debian's rustc and cargo (rustup cannot download ARM targets here),
# std built from Debian's rust-web-src. Callers name the agent's crates (`-p edge-agent`).
arm_cargo() {
  local target=$1 sub=$2
  shift 2
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo "$sub" -Zbuild-std=std,panic_abort,test \
    --target "$target" --target-dir "$ARM_TARGET_DIR" "$@"
}

# The machine name Debian and `uname -m` give each target, for file names.
arm_arch() {
  case "$1" in
    aarch64-*) echo aarch64 ;;
    armv7-*) echo armv7 ;;
  esac
}

# The sysroot QEMU loads each target's shared libraries from (QEMU_LD_PREFIX).
arm_sysroot() {
  case "$1" in
    aarch64-*) echo /usr/aarch64-linux-gnu ;;
    armv7-*) echo /usr/arm-linux-gnueabihf ;;
  esac
}

# Registers QEMU user mode with binfmt_misc (mounting it first if needed), as Debian's
# qemu-user-static describes it, so that an ARM executable runs when executed: the agent's own
# re-executions (self-check, worker, supervisor) run emulated too. Needs root.
arm_binfmt() {
  local dir=/proc/sys/fs/binfmt_misc arch
  [ -e "$dir/register" ] || mount -t binfmt_misc binfmt_misc "$dir"
  for arch in aarch64 arm; do
    [ -e "$dir/qemu-$arch" ] || cat "/usr/lib/binfmt.d/qemu-$arch.conf" >"$dir/register"
  done
}
