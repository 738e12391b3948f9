#!/usr/bin/env python3
"""edge-agent benchmark: real release binaries on loopback; prints figures, targets, and ratios
against baselines measured in the same run (absolute times drift on a shared machine, ratios hold).

    python3 bench/bench.py            # builds what it needs; ~3 minutes after the builds
    python3 bench/bench.py --quick    # shorter waits and smaller fleets, for a smoke run
    python3 bench/bench.py --no-build --only memory   # one section (agent, memory, upgrade, server)

Needs: cargo, curl, openssl. Runs as any user; raises its own open-file limit.
"""

import argparse
import atexit
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REL, ROOT, build as build_release, build_next, get, raise_open_files, sh, signing_key, status,  # noqa: E402
                    status_of, token)

NEXT_DIR = ROOT / "target" / "bench-next"
MiB = 1024 * 1024


def version_of(binary):
    return json.loads(sh(str(binary), "version", "--json"))["version"]


def build():
    print("building release binaries (first run: several minutes)...", flush=True)
    build_release()
    current = version_of(REL / "agent")
    major, minor, _ = current.split("-")[0].split(".")
    nxt = f"{major}.{int(minor) + 1}.0"
    build_next(["--release"], nxt, NEXT_DIR / "release" / "agent")
    return current, nxt


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):  # it exited (ESRCH when it exits mid-read)
        pass
    return 0


def pss_kib(pid):
    """Proportional set size: pages shared between processes (the binary's own) counted once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid):
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out


def tree_rss_kib(pid):
    return rss_kib(pid) + sum(rss_kib(c) for c in children(pid))


# Every server and agent a bench starts, stopped when this script ends, a failed bench included:
# an agent left running reconnects to a server that is gone and loads the benches after it.
STARTED = []


@atexit.register
def stop_started():
    running = [p for p in STARTED if p.poll() is None]
    for p in running:
        p.terminate()
    for p in running:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


# `timeout` and `kill` stop a bench with SIGTERM: it exits (running the above) rather than dying.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Server:
    def __init__(self, work, releases=None, extra=()):
        self.data = work / "data"
        out = sh(str(REL / "agent-server"), "client", "add", "--admin", "--data", str(self.data))
        self.cid = re.search(r'client_id = "(.*)"', out).group(1)
        self.secret = re.search(r'client_secret = "(.*)"', out).group(1)
        args = [str(REL / "agent-server"), "--listen", "127.0.0.1:0", "--data", str(self.data)]
        if releases:
            args += ["--releases", str(releases)]
        args += list(extra)
        self.log = open(work / "server.log", "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        STARTED.append(self.proc)
        self.addr = self.proc.stdout.readline().strip().removeprefix("listening on ")
        self.base = f"http://{self.addr}/"
        self.token = self.fetch_token()

    def fetch_token(self):
        return token(self.base, self.cid, self.secret)

    def get(self, path):
        return get(self.base, path, self.token)

    def status(self, agent_id):
        return status(self.base, self.token, agent_id)

    def add_agent(self, name):
        out = sh(str(REL / "agent-server"), "agent", "add", "--name", name, "--base-url", self.base, "--data", str(self.data))
        return re.search(r'agent_id = "(.*)"', out).group(1), out

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def wait_for(check, limit=60, every=0.005):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        v = check()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError("condition not met")


class Agent:
    def __init__(self, work, server, binary, name, extra=""):
        self.home = work / name
        (self.home / "bin").mkdir(parents=True)
        self.bin = self.home / "bin" / "agent"
        shutil.copy(binary, self.bin)
        self.id, cfg = server.add_agent(name)
        (self.home / "agent.toml").write_text(cfg + f'state_dir = "{self.home / "state"}"\n' + extra)
        self.logfile = self.home / "agent.log"
        self.proc = None

    def start(self):
        self.started = time.time()
        self.proc = subprocess.Popen([str(self.bin), "run", "--config", str(self.home / "agent.toml")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.logfile, "w"))
        STARTED.append(self.proc)

    def worker(self):
        return wait_for(lambda: (children(self.proc.pid) or [None])[0], 10)

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)


def log_time(line):
    """The UTC timestamp that starts a text log line, as seconds since the epoch."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
    from datetime import datetime, timezone
    return datetime.fromisoformat(m.group(1)[:26]).replace(tzinfo=timezone.utc).timestamp()


def row(name, value, target="", ratio=""):
    print(f"  {name:<58} {value:>14}  {target:<18} {ratio}")


def bench_agent(work, server, current, quick):
    print("\nagent")
    size = (REL / "agent").stat().st_size
    row("stripped release binary", f"{size / MiB:.1f} MiB")
    # Process start floor: how long the binary takes just to run `agent version`.
    floors = []
    for _ in range(20):
        t = time.perf_counter()
        sh(str(REL / "agent"), "version")
        floors.append(time.perf_counter() - t)
    floor = statistics.median(floors)
    times = []
    for i in range(5):
        a = Agent(work, server, REL / "agent", f"start-{i}")
        a.start()
        wait_for(lambda: "connected url=" in a.logfile.read_text(), 20)
        line = next(l for l in a.logfile.read_text().splitlines() if "connected url=" in l)
        times.append(log_time(line) - a.started)
        a.stop()
    start = statistics.median(times)
    row("start to connected (median of 5)", f"{start * 1000:.1f} ms", "target <= 50 ms", f"{start / floor:.1f}x a bare `agent version` ({floor * 1000:.1f} ms)")
    a = Agent(work, server, REL / "agent", "idle")
    a.start()
    wait_for(lambda: server.status(a.id)["status"] == "connected", 20)
    settle = 10 if quick else 60
    time.sleep(settle)
    sup, worker = a.proc.pid, a.worker()
    pss = pss_kib(sup) + pss_kib(worker)
    row(f"memory after {settle} s connected, both processes (PSS)", f"{pss / 1024:.1f} MiB", "target <= 6 MB",
        f"worker {pss_kib(worker) / 1024:.1f} + supervisor {pss_kib(sup) / 1024:.1f} MiB")
    row("  the same as RSS (shared pages counted in each process)", f"{(rss_kib(sup) + rss_kib(worker)) / 1024:.1f} MiB", "",
        f"worker {rss_kib(worker) / 1024:.1f} + supervisor {rss_kib(sup) / 1024:.1f} MiB")
    return a


def padded(binary, size, seed):
    """`binary` followed by random bytes up to `size` (an ELF runs with trailing bytes): the same
    seed gives the same padding, as two versions of a large artifact share most of their bytes."""
    data = Path(binary).read_bytes()
    return data + random.Random(seed).randbytes(max(0, size - len(data)))


def serve_releases(work, releases_dir, current, nxt, size):
    """A release directory with `nxt` padded to `size` bytes of random padding, without its
    compressed copy: this measures the download of the asset itself (bench/delta.py measures
    the others)."""
    artifact = work / f"agent-{nxt}-padded-{size // MiB}"
    artifact.write_bytes(padded(NEXT_DIR / "release" / "agent", size, seed=size))
    key, _ = signing_key(REL / "agent", work)
    sh(str(REL / "agent"), "release", "publish", "--dir", str(releases_dir), "--version", nxt, "--level", "3",
       "--key", key, str(artifact))
    path = releases_dir / f"v{nxt}.json"
    manifest = json.loads(path.read_text())
    manifest["assets"][0].pop("compressed", None)
    path.write_text(json.dumps(manifest))
    return artifact


def bench_upgrade(work, current, nxt, quick):
    print("\nupgrade (release binaries, loopback)")
    results = {}
    for size_mib in ([20] if quick else [20, 100]):
        releases = work / f"releases-{size_mib}"
        releases.mkdir()
        server = Server(work / f"srv-up-{size_mib}", releases)
        artifact = serve_releases(work, releases, current, nxt, size_mib * MiB)
        trust = signing_key(REL / "agent", work)[1]
        a = Agent(work, server, REL / "agent", f"up-{size_mib}", f'releases_url = "{server.base}releases/"\n{trust}')
        a.start()
        wait_for(lambda: server.status(a.id)["status"] == "connected", 20)
        time.sleep(3)
        worker = a.worker()
        idle = rss_kib(worker)
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(worker))
                time.sleep(0.005)

        t = threading.Thread(target=sample)
        t.start()
        t0 = time.perf_counter()
        code, body = server.get(f"fhir/R4/Agent/{a.id}/$upgrade?version={nxt}&timeout=56000")
        elapsed = time.perf_counter() - t0
        done.set()
        t.join()
        text = body["issue"][0]["details"]["text"]
        assert (code, text) == (200, "All OK"), (code, text)
        log = Path(server.log.name).read_text().splitlines()
        disc = [log_time(l) for l in log if "agent disconnected" in l and a.id in l]
        conn = [log_time(l) for l in log if "agent connected" in l and a.id in l]
        gap = conn[-1] - disc[-1]
        # Baseline: the same file, same server, same run, through curl into openssl computing
        # what the agent computes on the way: the sha256 (with the CPU's SHA instructions, which
        # coreutils' sha256sum does not use) and the BLAKE2b-512 the signature is made over.
        url = f"{server.base}releases/download/v{nxt}/agent-{nxt}-linux-{os.uname().machine}"
        baseline = f"curl -s {url} | tee >(openssl dgst -sha256 > /dev/null) | openssl dgst -blake2b512 > /dev/null"
        curls = []
        for _ in range(5):
            t1 = time.perf_counter()
            subprocess.run(baseline, shell=True, check=True, executable="/bin/bash")
            curls.append(time.perf_counter() - t1)
        curl_rate = artifact.stat().st_size / MiB / statistics.median(curls)
        dl = [l for l in a.logfile.read_text().splitlines() if "download complete" in l]
        agent_rate = float(re.search(r"mib_per_sec=\"?([\d.]+)", dl[-1]).group(1))
        fsync_ms = int(re.search(r"fsync_ms=(\d+)", dl[-1]).group(1))
        signature_ms = int(re.search(r"signature_ms=(\d+)", dl[-1]).group(1))
        row(f"$upgrade to All OK, {size_mib} MB artifact", f"{elapsed * 1000:.0f} ms",
            "target <= 1 s" if size_mib == 20 else "target <= 200 ms")
        row(f"disconnected during the restart ({size_mib} MB)", f"{gap * 1000:.0f} ms", "target <= 200 ms")
        row(f"download+verify throughput ({size_mib} MB)", f"{agent_rate:.0f} MiB/s", "target >= 0.9x curl",
            f"{agent_rate / curl_rate:.2f}x curl|openssl sha256+blake2b512 ({curl_rate:.0f} MiB/s); then fsync {fsync_ms} ms, signature checked {signature_ms} ms after the last byte")
        row(f"worker peak resident while upgrading ({size_mib} MB)", f"{peak[0] / 1024:.1f} MiB", "target idle + 4 MB",
            f"idle {idle / 1024:.1f} MiB, +{(peak[0] - idle) / 1024:.1f} MiB")
        a.stop()
        server.stop()
        results[size_mib] = (elapsed, gap)
    return results


def bench_pss_after_upgrades(work, current, nxt, quick):
    """Memory of both processes after three consecutive upgrades (the supervisor re-executes
    itself from the installed binary, so both map the same file again), against the same agent
    measured before its first upgrade."""
    print("\nmemory across upgrades (release binaries)")
    releases = work / "releases-pss"
    for v, binary in ((current, REL / "agent"), (nxt, NEXT_DIR / "release" / "agent")):
        sh(str(REL / "agent"), "release", "publish", "--dir", str(releases), "--version", v,
           "--key", signing_key(REL / "agent", work)[0], str(binary))
    server = Server(work / "srv-pss", releases)
    trust = signing_key(REL / "agent", work)[1]
    a = Agent(work, server, REL / "agent", "pss", f'releases_url = "{server.base}releases/"\n{trust}')
    a.start()
    wait_for(lambda: server.status(a.id)["status"] == "connected", 20)
    settle = 10 if quick else 30
    time.sleep(settle)
    before = pss_kib(a.proc.pid) + pss_kib(a.worker())
    for target in (nxt, current, nxt):
        code, body = server.get(f"fhir/R4/Agent/{a.id}/$upgrade?version={target}&timeout=56000")
        assert (code, body["issue"][0]["details"]["text"]) == (200, "All OK"), (code, body)
        wait_for(lambda: (lambda st: st["status"] == "connected" and st["version"] == target)(server.status(a.id)), 30, 0.05)
    time.sleep(settle)
    sup, worker = a.proc.pid, a.worker()
    same = os.stat(f"/proc/{sup}/exe").st_ino == os.stat(a.bin).st_ino == os.stat(f"/proc/{worker}/exe").st_ino
    after = pss_kib(sup) + pss_kib(worker)
    row(f"memory after 3 upgrades and {settle} s, both processes (PSS)", f"{after / 1024:.1f} MiB", "target <= 6 MB",
        f"{after / before:.2f}x before the first upgrade ({before / 1024:.1f} MiB); "
        f"worker {pss_kib(worker) / 1024:.1f} + supervisor {pss_kib(sup) / 1024:.1f} MiB; same pid {sup}, "
        f"{'both map the installed file' if same else 'NOT the same file'}")
    a.stop()
    server.stop()


def vm_hwm_kib(pid):
    """The peak resident memory of `pid` so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise ValueError(f"no VmHWM for {pid}")


def bench_bulk_upgrade(work, current, nxt, quick):
    """One bulk `$upgrade` of 100 real agents at once, each downloading the next build from the
    server's release directory and reconnecting: the server's peak memory over it (VmHWM), once
    with patches published (what `agent release publish` makes by default: each agent fetches a
    patch) and once without (each fetches the compressed copy)."""
    count = 20 if quick else 100
    print(f"\nbulk $upgrade of {count} real agents (release binaries)")
    key, trust = signing_key(REL / "agent", work)
    for patches in ("3", "0"):
        releases = work / f"releases-bulk-{patches}"
        for v, binary in ((current, REL / "agent"), (nxt, NEXT_DIR / "release" / "agent")):
            sh(str(REL / "agent"), "release", "publish", "--dir", str(releases), "--version", v, "--key", key,
               "--level", "3", "--patches", patches, str(binary))
        server = Server(work / f"srv-bulk-{patches}", releases)
        fleet = [Agent(work, server, REL / "agent", f"bulk{patches}-{i:03d}",
                       f'releases_url = "{server.base}releases/"\n{trust}') for i in range(count)]
        for a in fleet:
            a.start()

        def on(version):
            code, v = server.get(f"fhir/R4/Agent/$bulk-status?name=bulk{patches}-&_count={count}")
            if code != 200:
                return False
            states = [status_of(e["resource"]["parameter"][1]["resource"]) for e in v["entry"]]
            return len(states) == count and all(st["status"] == "connected" and st["version"] == version
                                                for st in states)

        wait_for(lambda: on(current), 60, 0.2)
        time.sleep(3)
        pid = server.proc.pid
        before, hwm_before = rss_kib(pid), vm_hwm_kib(pid)
        t = time.perf_counter()
        code, body = server.get(f"fhir/R4/Agent/$upgrade?name=bulk{patches}-&_count={count}&version={nxt}"
                                "&timeout=60000")
        answered = time.perf_counter() - t
        assert code == 200, (code, body)
        wait_for(lambda: on(nxt), 60, 0.2)
        hwm = vm_hwm_kib(pid)
        what = "a patch each" if patches != "0" else "the compressed copy each"
        row(f"server peak resident, {count} agents upgrading at once ({what})", f"{hwm / 1024:.1f} MiB",
            "target <= 30 MB", f"{before / 1024:.1f} MiB with them connected before (peak so far "
            f"{hwm_before / 1024:.1f}); +{(hwm - before) / 1024:.1f} MiB; all answered in {answered:.1f} s")
        for a in fleet:
            a.stop()
        server.stop()


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def bench_server(work, quick):
    print("\nagent-server")
    server = Server(work / "srv-load")
    time.sleep(1)
    idle = rss_kib(server.proc.pid)
    row("resident memory idle", f"{idle / 1024:.1f} MiB", "target <= 15 MB")
    fleets = [100, 1000] if quick else [100, 1000, 10000]
    held = []
    for n in fleets:
        have = sum(h[1] for h in held)
        lg = subprocess.Popen([str(REL / "loadgen"), "--server", server.base, "--client-id", server.cid,
                               "--client-secret", server.secret, "--count", str(n - have), "--prefix", f"load{n}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = lg.stdout.readline()
        assert line.startswith("ready"), line
        held.append((lg, n - have))
        time.sleep(3)
        rss = rss_kib(server.proc.pid)
        per_k = (rss - idle) / 1024 / (n / 1000)
        row(f"resident with {n} agents connected", f"{rss / 1024:.1f} MiB", "target <= +10 MB/1000" if n >= 1000 else "",
            f"+{per_k:.1f} MiB per 1000 over idle")
        if n == 100:
            # Each answer is timed to its last byte; the client's own parse of its JSON (about
            # 47 KB for 100 agents, a quarter of a millisecond in Python) is timed apart.
            bulk = urllib.request.Request(server.base + "fhir/R4/Agent/$bulk-status?name=load100&_count=100",
                                          headers={"Authorization": f"Bearer {server.token}"})
            lat, parsed, base = [], [], []
            for _ in range(200):
                t = time.perf_counter()
                with urllib.request.urlopen(bulk) as r:
                    body = r.read()
                lat.append(time.perf_counter() - t)
                v = json.loads(body)
                parsed.append(time.perf_counter() - t)
                assert len(v["entry"]) == 100, v
                t = time.perf_counter()
                urllib.request.urlopen(server.base + "healthcheck").read()
                base.append(time.perf_counter() - t)
            med, hc = statistics.median(lat), statistics.median(base)
            row("$bulk-status?_count=100, 100 connected (median of 200)", f"{med * 1000:.2f} ms", "target <= 5 ms",
                f"p95 {percentile(lat, 0.95) * 1000:.2f} ms; {med / hc:.2f}x /healthcheck ({hc * 1000:.2f} ms) "
                f"to the last byte of {len(body)} bytes; with the client parsing it, "
                f"{statistics.median(parsed) * 1000:.2f} ms, {statistics.median(parsed) / hc:.2f}x")
    for lg, _ in held:
        lg.stdin.close()
        lg.wait(timeout=30)
    server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--only", choices=["agent", "memory", "upgrade", "server", "bulk"], help="run one section")
    args = ap.parse_args()
    raise_open_files()
    if args.no_build:
        # The next build is needed only to upgrade to.
        upgrades = args.only in (None, "memory", "upgrade", "bulk")
        current = version_of(REL / "agent")
        nxt = version_of(NEXT_DIR / "release" / "agent") if upgrades else "(not built)"
    else:
        current, nxt = build()
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp:
        work = Path(tmp)
        print(f"edge-agent bench: {current} -> {nxt}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
        run = lambda section: args.only in (None, section)  # noqa: E731
        if run("agent"):
            server = Server(work / "srv-agent")
            idle_agent = bench_agent(work, server, current, args.quick)
            idle_agent.stop()
            server.stop()
        if run("memory"):
            bench_pss_after_upgrades(work, current, nxt, args.quick)
        if run("upgrade"):
            bench_upgrade(work, current, nxt, args.quick)
        if run("server"):
            bench_server(work, args.quick)
        if run("bulk"):
            bench_bulk_upgrade(work, current, nxt, args.quick)


if __name__ == "__main__":
    main()
