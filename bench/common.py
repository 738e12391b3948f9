"""What every benchmark script uses: the workspace's paths, the release build, a release signing
key (agents install only signed releases), the client side of the REST API (a token, a GET, an
agent's $status), and the open-file limit raised to its hard cap.
"""

import json
import os
import resource
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# EDGE_AGENT_BIN_DIR runs another build's binaries (with --no-build): a profiling build with
# symbols, or an older build for a before-and-after figure.
REL = Path(os.environ.get("EDGE_AGENT_BIN_DIR", ROOT / "target" / "release"))

# The release binaries the benchmarks run: the agent, the server and the load generator.
BINS = ["-p", "edge-agent", "-p", "edge-agent-server", "-p", "edge-agent-e2e"]


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kw).stdout


def build(*packages):
    """`cargo build --release` of the binaries of `packages` (default: all that the benchmarks run)."""
    subprocess.run(["cargo", "build", "--release", "--bins", *(packages or BINS)], cwd=ROOT, check=True)


def build_next(flags, version, dest):
    """The agent built as `version` (`EDGE_AGENT_VERSION`) and copied to `dest`, then built as it
    is again: both in the main target directory, where each build compiles only the binary again
    (the version is stamped in it, not in the libraries under it), rather than every dependency a
    second time in a target directory of its own. `flags`: cargo's (`--release`, or none)."""
    profile = "release" if "--release" in flags else "debug"
    agent = ["cargo", "build", *flags, "-p", "edge-agent", "--bin", "agent"]
    subprocess.run(agent, cwd=ROOT, env=dict(os.environ, EDGE_AGENT_VERSION=version), check=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "target" / profile / "agent", dest)
    as_it_is = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_VERSION"}
    subprocess.run(agent, cwd=ROOT, env=as_it_is, check=True)


def ms(seconds):
    """A duration in milliseconds, for the tables the scripts print."""
    return f"{seconds * 1000:.2f} ms"


def signing_key(agent, work):
    """A release signing key without a password in `work`/keys, made once with `agent release
    keygen`: (the secret key's path, the `trusted_keys` line that makes an agent trust it)."""
    keys = Path(work) / "keys"
    if not (keys / "minisign.key").exists():
        sh(agent, "release", "keygen", "--no-password", "--out", keys)
    public = (keys / "minisign.pub").read_text().strip().splitlines()[-1]
    return keys / "minisign.key", f'trusted_keys = ["{public}"]\n'


def raise_open_files():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def token(base, cid, secret):
    body = f"grant_type=client_credentials&client_id={cid}&client_secret={secret}".encode()
    with urllib.request.urlopen(urllib.request.Request(base + "oauth2/token", body)) as r:
        return json.load(r)["access_token"]


def get(base, path, tok, timeout=120):
    """GET `path` with the bearer token: (status, JSON body)."""
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {tok}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def status_of(parameters):
    """A `$status` answer (a `Parameters` resource, also each result of `$bulk-status`) as a dict:
    status, version, lastUpdated."""
    return {p["name"]: p.get("valueCode") or p.get("valueString") for p in parameters["parameter"]}


def status(base, tok, agent_id):
    """An agent's `$status` as a dict: status, version, lastUpdated."""
    _, v = get(base, f"fhir/R4/Agent/{agent_id}/$status", tok)
    return status_of(v)
