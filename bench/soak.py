#!/usr/bin/env python3
"""edge-agent random-kill soak: upgrades back and forth between two real builds while kill -9
hits the worker, the supervisor or both at random moments; `agent run` is started again whenever
the supervisor died (as a service manager would). It counts what users must be able to count on:

  - agents that fail to reconnect            (must be 0)
  - installed files that are neither build   (must be 0)
  - versions with partial downloads beside the binary (never more than 1 at once: a patch
    upgrade stages the patch and the file it decodes into, both of one version)
  - $upgrade calls that end in Timeout        (must be 0)

    python3 bench/soak.py                       # 200 upgrades, release builds (built if missing)
    python3 bench/soak.py --upgrades 50 --profile debug --no-build   # the builds `cargo test` made

Needs: cargo. Runs as any user. Exit code 1 when a must-be-0 figure is not 0.
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, build_next, get, sh, signing_key, status, token  # noqa: E402


def version_of(binary):
    return json.loads(sh(binary, "version", "--json"))["version"]


def binaries(profile, build):
    """(current agent, next agent, agent-server) for the profile, built when asked."""
    if profile == "release":
        cur, srv, nxt_dir = ROOT / "target/release/agent", ROOT / "target/release/agent-server", ROOT / "target/bench-next"
        nxt = nxt_dir / "release/agent"
        flags = ["--release"]
    else:
        cur, srv, nxt_dir = ROOT / "target/debug/agent", ROOT / "target/debug/agent-server", ROOT / "target/tmp/next-build"
        nxt = nxt_dir / "debug/agent"
        flags = []
    if build:
        subprocess.run(["cargo", "build", *flags, "--bins", "-p", "edge-agent", "-p", "edge-agent-server"], cwd=ROOT, check=True)
        major, minor, _ = version_of(cur).split("-")[0].split(".")
        build_next(flags, f"{major}.{int(minor) + 1}.0", nxt)
    return cur, nxt, srv


def children(pid):
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def sha256(path):
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class Server:
    def __init__(self, work, server_bin, releases):
        self.bin = server_bin
        self.data = work / "data"
        out = sh(server_bin, "client", "add", "--admin", "--data", self.data)
        cid, secret = re.search(r'client_id = "(.*)"', out).group(1), re.search(r'client_secret = "(.*)"', out).group(1)
        self.log = open(work / "server.log", "w")
        self.proc = subprocess.Popen([str(server_bin), "--listen", "127.0.0.1:0", "--data", str(self.data),
                                      "--releases", str(releases), "--heartbeat-interval", "1"],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.base = "http://" + self.proc.stdout.readline().strip().removeprefix("listening on ") + "/"
        self.token = token(self.base, cid, secret)

    def get(self, path, timeout=120):
        return get(self.base, path, self.token, timeout)

    def status(self, agent_id):
        return status(self.base, self.token, agent_id)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Agent:
    def __init__(self, work, server, binary):
        self.home = work / "agent"
        (self.home / "bin").mkdir(parents=True)
        self.bin = self.home / "bin" / "agent"
        shutil.copy(binary, self.bin)
        # The server knows the release key from the release directory: agent add trusts it.
        out = sh(server.bin, "agent", "add", "--name", "soak", "--base-url", server.base, "--data", server.data,
                 "--releases", work / "releases")
        self.id = re.search(r'agent_id = "(.*)"', out).group(1)
        (self.home / "agent.toml").write_text(
            out + f'state_dir = "{self.home / "state"}"\n'
            "heartbeat_interval = 1\nreconnect_min_delay = 0.05\nreconnect_max_delay = 0.5\nhealth_window = 20\n")
        self.log = open(self.home / "agent.log", "a")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([str(self.bin), "run", "--config", str(self.home / "agent.toml")],
                                     stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)

    def supervisor_alive(self):
        return self.proc.poll() is None

    def kill(self, what):
        """kill -9 of the worker, the supervisor or both; False when there was no worker to hit."""
        sup = self.proc.pid
        workers = children(sup)
        if what in ("worker", "both") and not workers:
            return False
        for pid in ([sup] if what != "worker" else []) + (workers if what != "supervisor" else []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it had just exited
        if what != "worker":
            self.proc.wait()
        return True

    def partials(self):
        """How many versions have staging files beside the binary (the raw download, or a
        compressed copy or patch with the file it decodes into)."""
        prefix = ".edge-agent-download-"
        try:
            names = [n[len(prefix):] for n in os.listdir(self.bin.parent) if n.startswith(prefix)]
        except OSError:
            return 0
        return len({re.sub(r"(\.new)?(\.exe)?$|\.zst$|\.patch$", "", n) for n in names})

    def stop(self):
        if self.supervisor_alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def wait_for(check, limit):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        v = check()
        if v:
            return v
        time.sleep(0.05)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upgrades", type=int, default=200, help="how many $upgrade calls (default 200)")
    ap.add_argument("--profile", choices=["release", "debug"], default="release")
    ap.add_argument("--no-build", action="store_true", help="use the builds that are there")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-kill-delay", type=float, default=1.5, help="kill at a random moment up to this many seconds after the call")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    cur_bin, next_bin, server_bin = binaries(args.profile, not args.no_build)
    versions = {version_of(cur_bin): sha256(cur_bin), version_of(next_bin): sha256(next_bin)}
    builds = set(versions.values())
    (a, b) = list(versions)
    with tempfile.TemporaryDirectory(prefix="edge-agent-soak-") as tmp:
        work = Path(tmp)
        releases = work / "releases"
        for v, binary in ((a, cur_bin), (b, next_bin)):
            sh(cur_bin, "release", "publish", "--dir", releases, "--version", v, "--level", "3",
               "--key", signing_key(cur_bin, work)[0], binary)
        server = Server(work, server_bin, releases)
        agent = Agent(work, server, cur_bin)
        counts = {"upgrades": 0, "killed worker": 0, "killed supervisor": 0, "killed both": 0, "agent run restarted": 0,
                  "failed to reconnect": 0, "installed neither build": 0, "Timeout": 0}
        answers = {}
        max_partials = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                max_partials[0] = max(max_partials[0], agent.partials())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        print(f"edge-agent soak: {args.upgrades} upgrades between {a} and {b} ({args.profile}), seed {seed}", flush=True)
        started = time.monotonic()
        for i in range(args.upgrades):
            connected = wait_for(lambda: (s := server.status(agent.id))["status"] == "connected" and s["version"] in versions and s, 30)
            if not connected:
                counts["failed to reconnect"] += 1
                agent.stop()
                agent.start()
                counts["agent run restarted"] += 1
                connected = wait_for(lambda: (s := server.status(agent.id))["status"] == "connected" and s, 30) or {"version": a}
            target = b if connected["version"] == a else a
            result = {}
            call = threading.Thread(target=lambda: result.update(
                r=server.get(f"fhir/R4/Agent/{agent.id}/$upgrade?version={target}&force=true&timeout=56000")))
            call.start()
            time.sleep(rnd.uniform(0, args.max_kill_delay))
            what = rnd.choice(["worker", "worker", "supervisor", "both"])
            if agent.kill(what):
                counts[f"killed {what}"] += 1
            if not agent.supervisor_alive():
                time.sleep(rnd.uniform(0, 0.5))
                agent.start()
                counts["agent run restarted"] += 1
            call.join()
            code, body = result["r"]
            text = body["issue"][0]["details"]["text"]
            key = "All OK" if text == "All OK" else re.sub(r"\d+\.\d+\.\d+(-[\w.]+)?", "V", text)[:90]
            answers[key] = answers.get(key, 0) + 1
            counts["Timeout"] += text == "Timeout"
            counts["upgrades"] += 1
            # Whole binaries only, whatever was killed when: wait for the agent to settle first.
            wait_for(lambda: server.status(agent.id)["status"] == "connected", 30)
            if sha256(agent.bin) not in builds:
                counts["installed neither build"] += 1
            if (i + 1) % 20 == 0:
                print(f"  {i + 1} upgrades, {time.monotonic() - started:.0f} s", flush=True)
        done.set()
        sampler.join()
        agent.stop()
        server.stop()
    counts["most versions partly downloaded at once"] = max_partials[0]
    print(f"\nafter {counts['upgrades']} upgrades in {time.monotonic() - started:.0f} s:")
    for k, v in counts.items():
        print(f"  {k:<34} {v}")
    print("answers:")
    for k, v in sorted(answers.items(), key=lambda kv: -kv[1]):
        print(f"  {v:>5}  {k}")
    print(json.dumps({"seed": seed, **counts, "answers": answers}))
    bad = counts["failed to reconnect"] or counts["installed neither build"] or counts["Timeout"] or max_partials[0] > 1
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
