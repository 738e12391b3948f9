#!/bin/sh
# Packages a Windows build of the agent: the NSIS installer edge-agent-<V>-setup.exe and the plain
# zip edge-agent-<V>-windows-x86_64.zip (agent.exe, agent.toml.example, README.md, LICENSE.txt).
#   packaging/windows/build.sh AGENT_EXE VERSION OUT_DIR
# Needs makensis (Debian: nsis) and zip. The agent itself is built by .ci/windows (see README).
set -eu
[ $# -eq 3 ] || { echo "usage: $0 AGENT_EXE VERSION OUT_DIR" >&2; exit 64; }
exe=$(realpath "$1")
version=$2
out=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v makensis >/dev/null || { echo "makensis is missing: apt-get install nsis" >&2; exit 69; }
command -v zip >/dev/null || { echo "zip is missing: apt-get install zip" >&2; exit 69; }
mkdir -p "$out"
out=$(realpath "$out")
setup="$out/edge-agent-$version-setup.exe"
makensis -V2 -DVERSION="$version" -DAGENT_EXE="$exe" -DOUTFILE="$setup" -DROOT="$root" \
  "$root/packaging/windows/edge-agent.nsi"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$exe" "$stage/agent.exe"
cp "$root/packaging/windows/agent.toml.example" "$stage/agent.toml.example"
cp "$root/README.md" "$stage/README.md"
cp "$root/LICENSE" "$stage/LICENSE.txt"
zipfile="$out/edge-agent-$version-windows-x86_64.zip"
rm -f "$zipfile"
(cd "$stage" && zip -q -X "$zipfile" agent.exe agent.toml.example README.md LICENSE.txt)
echo "$setup"
echo "$zipfile"
