#!/usr/bin/env bash
# The whole job on one machine: a control server that also hosts signed releases, an agent
# installed as version N, and an upgrade to N+1 (a second, genuinely different build) with one
# call. Everything runs on 127.0.0.1 in a scratch directory and stops when the demo ends.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
field() { sed -n "s/^$1 = \"\(.*\)\"$/\1/p"; }

say "building the agent twice: as it is, and as the next minor version"
# The next version first, kept aside; then this one (only the binary is compiled again: the
# version is stamped in it, not in the libraries under it).
CURRENT=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
NEXT=$(echo "$CURRENT" | awk -F. '{print $1"."$2+1".0"}')
mkdir -p target/tmp/next-build
EDGE_AGENT_VERSION=$NEXT cargo build --quiet -p edge-agent --bin agent
cp target/debug/agent target/tmp/next-build/agent
cargo build --quiet --bins -p edge-agent -p edge-agent-server
echo "built $CURRENT and $NEXT"

WORK=$(mktemp -d /tmp/edge-agent-demo.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

say "publishing both versions, signed, into a release directory"
export EDGE_AGENT_KEY_PASSWORD=demo-password
target/debug/agent release keygen --out "$WORK/keys"
target/debug/agent release publish --dir "$WORK/releases" --level 3 --version "$CURRENT" --key "$WORK/keys/minisign.key" target/debug/agent
target/debug/agent release publish --dir "$WORK/releases" --level 3 --version "$NEXT" --key "$WORK/keys/minisign.key" target/tmp/next-build/agent

say "starting agent-server (it also serves the releases at /releases/)"
target/debug/agent-server client add --admin --data "$WORK/data" > "$WORK/admin.toml"
target/debug/agent-server --listen 127.0.0.1:0 --data "$WORK/data" --releases "$WORK/releases" \
  > "$WORK/server.out" 2> "$WORK/server.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -qs "listening on" "$WORK/server.out" && break; sleep 0.1; done
grep -qs "listening on" "$WORK/server.out" || { cat "$WORK/server.log"; echo "agent-server did not start" >&2; exit 1; }
BASE="http://$(sed -n 's/^listening on //p' "$WORK/server.out")/"
echo "server at $BASE"

say "creating an agent and installing version $CURRENT"
# The server knows the release key from --releases (publish recorded it there): agent add writes
# it into the agent's trusted_keys, with releases_url, in a file only its owner can read.
target/debug/agent-server agent add --name demo-clinic --base-url "$BASE" --data "$WORK/data" \
  --releases "$WORK/releases" --out "$WORK/agent.toml"
echo "state_dir = \"$WORK/state\"" >> "$WORK/agent.toml"
grep -E "^(releases_url|trusted_keys)" "$WORK/agent.toml"
AGENT_ID=$(field agent_id < "$WORK/agent.toml")
mkdir -p "$WORK/bin" && cp target/debug/agent "$WORK/bin/agent"
"$WORK/bin/agent" run --config "$WORK/agent.toml" 2> "$WORK/agent.log" &
PIDS+=($!)

TOKEN=$(curl -s -d grant_type=client_credentials -d "client_id=$(field client_id < "$WORK/admin.toml")" \
  -d "client_secret=$(field client_secret < "$WORK/admin.toml")" "${BASE}oauth2/token" \
  | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
api() { curl -s -H "Authorization: Bearer $TOKEN" "${BASE}fhir/R4/$1"; echo; }
until api "Agent/$AGENT_ID/\$status" | grep -q '"connected"'; do sleep 0.1; done
echo "GET Agent/$AGENT_ID/\$status"
api "Agent/$AGENT_ID/\$status"

say "upgrading: GET Agent/$AGENT_ID/\$upgrade?version=$NEXT"
START=$(date +%s%N)
api "Agent/$AGENT_ID/\$upgrade?version=$NEXT"
echo "answered in $(( ($(date +%s%N) - START) / 1000000 )) ms"
api "Agent/$AGENT_ID/\$status"

say "asking for a version that does not exist: the agent says so, and keeps running"
api "Agent/$AGENT_ID/\$upgrade?version=9.9.9"

say "publishing a release without a signature: the agent refuses it before running anything"
printf '#!/bin/sh\ntouch "%s/it-ran"\n' "$WORK" > "$WORK/unsigned.sh"
target/debug/agent release publish --dir "$WORK/releases" --version 9.0.0 "$WORK/unsigned.sh:linux-$(uname -m)"
api "Agent/$AGENT_ID/\$upgrade?version=9.0.0"
if [ -e "$WORK/it-ran" ]; then echo "the unsigned script ran"; exit 1; else echo "the unsigned script never ran"; fi

say "what the agent logged"
grep -E "starting|connected url|downloading|signature verified|installed|result reported" "$WORK/agent.log" \
  | sed -E 's/^[0-9T:.-]+Z +//' | cut -c1-160
say "done: the binary on disk is now $("$WORK/bin/agent" version)"
