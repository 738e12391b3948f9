#!/usr/bin/env python3
"""Rollout benchmark: a real agent-server (release build) drives a rollout of many simulated agents
(crates/e2e/src/bin/loadgen.rs), each answering an upgrade as a real agent does: it drops its socket,
reconnects --delay-ms later with the new version, and reports with the request's callback.

Prints the time to completion against two yardsticks measured in the same terms: the strategy's
own ideal schedule, computed from the waves the planner actually made (each wave of k agents takes
ceil(k / maxInFlight) rounds of the per-agent time, and the next starts when it ends), and the flat
minimum (members x per-agent time / maxInFlight). Then the server's peak memory, and the server's
CPU time per member. Last, where the time beyond the ideal went, from the members' rows in the
store (asked_at, finished_at) once the server stopped: a member's time from its claim to its
answer being filed (the simulated agent's own wait is the per-agent time), how full the window of
maxInFlight requests stayed in the largest wave, and the time before the first member was asked and
after the last answer.

  python3 bench/rollout.py [--agents 10000] [--max-in-flight 500] [--growth 2] [--no-build]
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REL, Server, row  # noqa: E402
from common import build, raise_open_files  # noqa: E402


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def start_rollout(server, query, body):
    req = urllib.request.Request(server.base + "fhir/R4/Agent/$upgrade?" + query, json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {server.token}", "Prefer": "respond-async"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 202, r.status
        return json.load(r)["id"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10000)
    ap.add_argument("--max-in-flight", type=int, default=500)
    ap.add_argument("--growth", type=float, default=2.0)
    ap.add_argument("--delay-ms", type=int, default=200)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--connection-threads", type=int, help="the server's --connection-threads (default: its own)")
    args = ap.parse_args()
    raise_open_files()
    if not args.no_build:
        build("-p", "edge-agent-server", "-p", "edge-agent-e2e")
    with tempfile.TemporaryDirectory(prefix="edge-agent-rollout-") as tmp:
        work = Path(tmp)
        threads = [] if args.connection_threads is None else ["--connection-threads", str(args.connection_threads)]
        server = Server(work, extra=threads)
        lg = subprocess.Popen([str(REL / "loadgen"), "--server", server.base, "--client-id", server.cid,
                               "--client-secret", server.secret, "--count", str(args.agents), "--prefix", "roll",
                               "--version", "1.0.0", "--upgrade-delay-ms", str(args.delay_ms)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = lg.stdout.readline()
        assert line.startswith("ready"), line
        time.sleep(2)
        pid = server.proc.pid
        cpu0, t0, wall0 = cpu_seconds(pid), time.monotonic(), time.time() * 1000
        rid = start_rollout(server, "name=roll", {"version": "2.0.0", "maxInFlight": args.max_in_flight,
                                                  "growth": args.growth, "timeout": 56000})
        while True:
            _, status = server.get(f"fhir/R4/Rollout/{rid}")
            if status["state"] not in ("active", "paused"):
                break
            time.sleep(0.01)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        assert status["state"] == "completed" and status["counts"]["succeeded"] == args.agents, status
        minimum = args.agents * args.delay_ms / 1000 / args.max_in_flight
        print(f"rollout of {args.agents} simulated agents, maxInFlight {args.max_in_flight}, growth {args.growth}, "
              f"per-agent time {args.delay_ms} ms, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
        # The canary (wave 0, one agent by default) starts with the rollout; each later wave says so.
        sizes = [1] + [int(e["text"].split("(")[1].split()[0]) for e in status["events"]
                       if e["text"].startswith("wave ") and " started (" in e["text"]]
        ideal = sum(-(-k // args.max_in_flight) for k in sizes) * args.delay_ms / 1000
        row("time to completion", f"{elapsed:.2f} s", "target <= 1.15x the ideal",
            f"{elapsed / ideal:.2f}x the ideal {ideal:.2f} s ({len(sizes)} waves: {', '.join(map(str, sizes))}); "
            f"{elapsed / minimum:.2f}x the flat minimum {minimum:.2f} s")
        again = sum(int(e["text"].split()[0]) for e in status["events"] if "sent again" in e["text"])
        row("requests sent again", f"{again}", "", "a member's request sent a second time (its answer not yet "
            "filed when the planner looked, or the node's wait broken): none expected on one node")
        row("agent-server peak resident memory", f"{peak_rss_kib(pid) / 1024:.1f} MiB", "target <= 150 MB",
            f"{args.agents} agents connected")
        row("agent-server CPU time per member (all work)", f"{cpu / args.agents * 1e6:.0f} us",
            "", f"{cpu:.2f} s in all")
        lg.stdin.close()
        lg.wait(timeout=30)
        server.stop()
        members = sqlite3.connect(work / "data" / "edge-agent-server.db").execute(
            "SELECT wave, asked_at, finished_at FROM rollout_members WHERE rollout_id = ? "
            "AND asked_at IS NOT NULL AND finished_at IS NOT NULL", (rid,)).fetchall()
        where_the_time_went(members, args, wall0, status["events"])


def where_the_time_went(members, args, wall0, events):
    """Rows from the members' stored times (ms since the epoch, the server's clock)."""
    took = sorted(f - a for _, a, f in members)
    mean = sum(took) / len(took)
    row("a member's time, asked to answer filed", f"{mean:.1f} ms", "",
        f"mean; p50 {took[len(took) // 2]}, p99 {took[len(took) * 99 // 100]} ms; the simulated agent waits "
        f"{args.delay_ms} ms of it, then reconnects and reports ({mean / args.delay_ms:.3f}x the per-agent time)")
    largest = max({w for w, _, _ in members}, key=lambda w: sum(1 for m in members if m[0] == w))
    spans = sorted((a, f) for w, a, f in members if w == largest)
    start, end = spans[0][0], max(f for _, f in spans)
    # Every 10 ms of the wave until its last round (the tail, where fewer than maxInFlight are
    # left, is the schedule's, not a slow refill).
    last_round = end - args.delay_ms
    points = range(start, max(start + 1, last_round), 10)
    fill = sum(sum(1 for a, f in spans if a <= t < f) for t in points) / len(points)
    row(f"requests in flight in the largest wave ({len(spans)} members)", f"{fill:.0f}", "",
        f"mean over its time less the last round, of maxInFlight {args.max_in_flight} "
        f"({fill / args.max_in_flight:.3f}): a slot freed waits for the next plan")
    first_ask = min(a for _, a, _ in members)
    done_at = [datetime.fromisoformat(e["at"]).timestamp() * 1000 for e in events if e["text"] == "completed"]
    tail = f"{done_at[-1] - max(f for _, _, f in members):.0f} ms" if done_at else "n/a"
    row("before the first request, after the last answer", f"{first_ask - wall0:.0f} / {tail}", "",
        "from this script's request to make the rollout to the first member asked (its members chosen and "
        "stored); from the last answer filed to the rollout stored as completed")


if __name__ == "__main__":
    main()
