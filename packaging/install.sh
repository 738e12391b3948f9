#!/bin/sh
# Installs edge-agent on a Linux host without the Debian package: the binary as the agent's own
# live copy, its configuration, and its systemd unit; then enables and starts it. Safe to re-run:
# a second run with the same arguments leaves the same files, and it never replaces a newer
# agent (one that upgraded itself) with an older binary.
set -eu

usage() {
  cat <<'USAGE'
usage: install.sh --binary PATH --base-url URL --client-id ID --agent-id ID
                  [--client-secret SECRET | EDGE_AGENT_CLIENT_SECRET in the environment]
                  [--releases-url URL (--trusted-key KEY)... | --releases-url URL --allow-unsigned]
                  [--root DIR] [--no-start]
The agent installs only releases signed by a --trusted-key (the release public key, the last line
of minisign.pub from `agent release keygen`; repeat it for several keys); --allow-unsigned accepts
unsigned releases instead, and the agent reports that as a warning.
USAGE
  exit 64
}

here=$(cd "$(dirname "$0")" && pwd)
root="" binary="" base_url="" client_id="" agent_id="" releases_url="" trusted_keys="" allow_unsigned="" start=yes
client_secret="${EDGE_AGENT_CLIENT_SECRET:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --base-url) base_url="$2"; shift 2 ;;
    --client-id) client_id="$2"; shift 2 ;;
    --client-secret) client_secret="$2"; shift 2 ;;
    --agent-id) agent_id="$2"; shift 2 ;;
    --releases-url) releases_url="$2"; shift 2 ;;
    --trusted-key) trusted_keys="${trusted_keys:+$trusted_keys, }\"$2\""; shift 2 ;;
    --allow-unsigned) allow_unsigned=yes; shift ;;
    --root) root="$2"; shift 2 ;;
    --no-start) start=no; shift ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage ;;
  esac
done
for pair in "binary:$binary" "base-url:$base_url" "client-id:$client_id" "client-secret:$client_secret" "agent-id:$agent_id"; do
  if [ -z "${pair#*:}" ]; then echo "install.sh: --${pair%%:*} is required" >&2; usage; fi
done
if [ -n "$trusted_keys" ] && [ -n "$allow_unsigned" ]; then
  echo "install.sh: --trusted-key and --allow-unsigned contradict each other: releases are either signed or not" >&2; exit 64
fi
if [ -n "$releases_url" ] && [ -z "$trusted_keys" ] && [ -z "$allow_unsigned" ]; then
  echo "install.sh: --releases-url needs --trusted-key KEY (the release public key: the last line of minisign.pub)," >&2
  echo "  or --allow-unsigned to accept unsigned releases; without either the agent refuses every upgrade" >&2
  exit 64
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable file" >&2; exit 66; }

state="$root/var/lib/edge-agent"
live="$state/bin/agent"
etc="$root/etc/edge-agent"
unit="$root/etc/systemd/system/edge-agent.service"

# The service user, on a real host only (a scratch root has no user database to change).
owner=""
if [ -z "$root" ]; then
  if ! getent passwd edge-agent >/dev/null; then
    useradd --system --home-dir /var/lib/edge-agent --no-create-home --shell /usr/sbin/nologin edge-agent
  fi
  owner=edge-agent
fi

install -d -m 0750 "$state" "$state/bin" "$etc"
[ -n "$owner" ] && chown "$owner:$owner" "$state" "$state/bin" "$etc"

version_of() { "$1" version --json 2>/dev/null | sed -n 's/.*"version":"\([^"]*\)".*/\1/p'; }
new_version=$(version_of "$binary")
[ -n "$new_version" ] || { echo "install.sh: $binary does not run here (agent version --json failed)" >&2; exit 66; }
if [ -x "$live" ]; then
  live_version=$(version_of "$live")
  # dpkg orders versions like semver once a pre-release dash becomes a tilde.
  if [ -n "$live_version" ] && dpkg --compare-versions "$(echo "$live_version" | tr - '~')" gt "$(echo "$new_version" | tr - '~')" 2>/dev/null; then
    echo "keeping the installed agent $live_version: it is newer than $new_version"
    binary=""
  fi
fi
if [ -n "$binary" ] && ! cmp -s "$binary" "$live" 2>/dev/null; then
  install -m 0755 "$binary" "$live.new"
  mv -f "$live.new" "$live"
  echo "installed agent $new_version at ${live#"$root"}"
fi
[ -n "$owner" ] && chown "$owner:$owner" "$live"

config=$(mktemp "$etc/.agent.toml.XXXXXX")
{
  echo "# written by install.sh"
  echo "base_url = \"$base_url\""
  echo "client_id = \"$client_id\""
  echo "client_secret = \"$client_secret\""
  echo "agent_id = \"$agent_id\""
  echo "state_dir = \"/var/lib/edge-agent\""
  [ -n "$releases_url" ] && echo "releases_url = \"$releases_url\""
  [ -n "$trusted_keys" ] && echo "trusted_keys = [$trusted_keys]"
  [ -n "$allow_unsigned" ] && echo "allow_unsigned = true"
  true
} > "$config"
chmod 0600 "$config"
[ -n "$owner" ] && chown "$owner:$owner" "$config"
mv -f "$config" "$etc/agent.toml"

install -d -m 0755 "$(dirname "$unit")" "$root/usr/local/bin"
install -m 0644 "$here/systemd/edge-agent.service" "$unit"
ln -sfn /var/lib/edge-agent/bin/agent "$root/usr/local/bin/agent"

if [ -z "$root" ] && [ "$start" = yes ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable edge-agent.service >/dev/null 2>&1
  systemctl restart edge-agent.service
  echo "edge-agent enabled and started: systemctl status edge-agent"
else
  echo "installed into ${root:-/}; not started"
fi
