# shellcheck shell=bash
# Sourced by .ci/windows (and by hand): the environment that builds the agent for Windows with
# Debian's Rust and mingw-w64, and runs it under Wine in a prefix of its own inside target/.
#   source .ci/wine/env.sh; wine_prefix; win_cargo build -p edge-agent --bin agent
WIN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export WIN_TARGET=x86_64-pc-windows-gnu
# Its own target directory: the Linux build's cache (rustup's compiler) stays untouched.
export WIN_TARGET_DIR="${CARGO_TARGET_DIR:-$WIN_ROOT/target}/windows"
export WINEPREFIX="$WIN_TARGET_DIR/wine"
export WINEDEBUG=-all
# No Mono or Gecko prompts when the prefix is created.
export WINEDLLOVERRIDES="mscoree,mshtml="
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
export AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine

# cargo for the Windows target: Debian's rustc and cargo (rustup's toolchain has no Windows std),
# std built from Debian's rust-web-src. Callers name the agent's crates (`-p edge-agent`): the
# server's are never built for Windows.
win_cargo() {
  local sub=$1
  shift
  RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo "$sub" -Zbuild-std=std,panic_abort,test \
    --target "$WIN_TARGET" --target-dir "$WIN_TARGET_DIR" "$@"
}

# Creates the Wine prefix once (slow: a minute or so), with the stand-in bcryptprimitives.dll.
wine_prefix() {
  local dll="$WIN_TARGET_DIR/bcryptprimitives.dll"
  mkdir -p "$WIN_TARGET_DIR"
  x86_64-w64-mingw32-gcc -shared -O2 -o "$dll" "$WIN_ROOT/.ci/wine/bcryptprimitives.c" \
    "$WIN_ROOT/.ci/wine/bcryptprimitives.def" -ladvapi32
  if [ ! -f "$WINEPREFIX/system.reg" ]; then
    wineboot --init >/dev/null 2>&1
    wineserver --wait
  fi
  cp "$dll" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
}
