#!/bin/sh
# Builds the Debian package: generates the completions and man page from the CLI definition, then
# runs cargo deb. `PROFILE=dev` packages the debug build (what the tests do); default: release.
# `NO_BUILD=1` packages the binaries already built (the tests: a build here would replace binaries
# other tests are running).
set -eu
cd "$(dirname "$0")/.."
profile="${PROFILE:-release}"
dir=release
[ "$profile" = dev ] && dir=debug
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --profile "$profile" --bins -p edge-agent -p edge-agent-server
fi
mkdir -p target/assets
agent="target/$dir/agent"
"$agent" completions bash > target/assets/agent.bash
"$agent" completions zsh > target/assets/_agent
"$agent" completions fish > target/assets/agent.fish
"$agent" man > target/assets/agent.1
if [ "$profile" = dev ]; then
  cargo deb -p edge-agent --no-build --profile dev --fast --no-strip "$@"
else
  cargo deb -p edge-agent --no-build "$@"
fi
