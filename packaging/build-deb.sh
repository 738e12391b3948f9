#!/bin/sh
# Builds the Debian package: generates the completions and man page from the CLI definition, then
# runs cargo deb. `PROFILE=dev` packages the debug build (what the tests do); default: release.
# `NO_BUILD=1` packages the binaries already built (the tests: a build here would replace binaries
# other tests are running). `TARGET=aarch64-unknown-linux-gnu` (arm64) or
# `TARGET=armv7-unknown-linux-gnueabihf` (armhf) packages the agent alone for that ARM target,
# built as .ci/arm builds it (Debian's Rust and cross gcc, into target/arm/).
set -eu
cd "$(dirname "$0")/.."
profile="${PROFILE:-release}"
target="${TARGET:-}"
dir=release
[ "$profile" = dev ] && dir=debug
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
if [ -z "${NO_BUILD:-}" ]; then
  if [ -z "$target" ]; then
    cargo build --profile "$profile" --bins -p edge-agent -p edge-agent-server
  else
    # The host's agent too: it writes the completions and the man page below.
    cargo build --profile "$profile" -p edge-agent --bin agent
    # shellcheck disable=SC1091 # sourced from the repository: bash syntax, run by bash
    bash -c '. .ci/qemu/env.sh && arm_cargo "$1" build --profile "$2" -p edge-agent --bin agent' _ "$target" "$profile"
  fi
fi
mkdir -p target/assets
agent="target/$dir/agent"
"$agent" completions bash > target/assets/agent.bash
"$agent" completions zsh > target/assets/_agent
"$agent" completions fish > target/assets/agent.fish
"$agent" man > target/assets/agent.1
if [ -n "$target" ]; then
  # The agent alone (the `agent-only` variant), from the ARM target directory.
  set -- --target "$target" --variant agent-only "$@"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/arm"
fi
if [ "$profile" = dev ]; then
  cargo deb -p edge-agent --no-build --profile dev --fast --no-strip "$@"
else
  cargo deb -p edge-agent --no-build "$@"
fi
