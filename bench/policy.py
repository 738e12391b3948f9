#!/usr/bin/env python3
"""Update policy benchmark: a real agent-server (release build) and 10,000 simulated agents
(crates/e2e/src/bin/loadgen.rs) in three groups, each agent answering an upgrade as a real agent
does (it drops its socket, reconnects --delay-ms later with the new version, reports).

Measured in the same run, on the same agents:
  1. the baseline: each group upgraded (1.0.0 to 2.0.0) by a rollout of its own, one after the
     other, started by hand: the sum of the three rollouts' times;
  2. the leader's CPU per evaluation of a policy with 10,000 agents, on a server of its own run
     first (see cpu_per_evaluation) (target <= 10 ms);
  3. the policy: the three groups with zero waits, to the next version; the time from setting it
     to every group converged, against the baseline (target <= 1.3x); with each group's time and
     the gaps between groups, from the policy's status.
  Then (--rounds) the rollouts by hand and the policy again, each to the next version, so a
  change of the machine's load meanwhile shows.

  python3 bench/policy.py [--groups 1000,3000,6000] [--max-in-flight 500] [--rounds 2] [--no-build]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REL, Server, row  # noqa: E402
from common import build, raise_open_files  # noqa: E402
from rollout import cpu_seconds, peak_rss_kib, start_rollout  # noqa: E402


# How often the CPU measure's server evaluates a converged policy.
EVERY_MS = 50


def put_policy(server, spec):
    req = urllib.request.Request(server.base + "fhir/R4/Policy", json.dumps(spec).encode(), method="PUT",
                                 headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200, r.status
        return json.load(r)


def metric(server, name):
    req = urllib.request.Request(server.base + "metrics", headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def evaluations(server):
    return int(metric(server, "agent_server_policy_evaluations_total"))


def evaluation_seconds(server):
    return metric(server, "agent_server_policy_evaluation_duration_seconds_sum")


def rollout_time(server, query, version, strategy):
    """Starts a rollout of the agents `query` finds, waits for it: its time in seconds."""
    t0 = time.monotonic()
    rid = start_rollout(server, query, {"version": version, **strategy})
    while True:
        _, status = server.get(f"fhir/R4/Rollout/{rid}")
        if status["state"] not in ("active", "paused"):
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    assert status["state"] == "completed", status
    return elapsed


def converge(server, spec, groups):
    """Sets the policy, waits until every group converged with all its agents on the target."""
    t0 = time.monotonic()
    put_policy(server, spec)
    while True:
        _, s = server.get("fhir/R4/Policy/$status")
        done = s["target"] == spec["target"] and all(
            g["state"] == "converged" and g["states"].get("on-target") == n for g, n in zip(s["groups"], groups))
        if done:
            return time.monotonic() - t0, s
        time.sleep(0.02)


def group_times(status):
    """Each group's time from its start to its convergence, and the gaps between groups, from the
    policy's status (its clock is the server's)."""
    def at(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    gs = status["groups"]
    spans = [at(g["convergedAt"]) - at(g["startedAt"]) for g in gs]
    gaps = [at(b["startedAt"]) - at(a["convergedAt"]) for a, b in zip(gs, gs[1:])]
    return " + ".join(f"{t:.2f}" for t in spans) + " s, gaps " + ", ".join(f"{g:.2f}" for g in gaps) + " s"


def start_agents(server, sizes, delay_ms):
    """The load generators, one per group (g1-…, g2-…, g3-…), their agents connected on 1.0.0."""
    gens = []
    for i, n in enumerate(sizes):
        lg = subprocess.Popen([str(REL / "loadgen"), "--server", server.base, "--client-id", server.cid,
                               "--client-secret", server.secret, "--count", str(n), "--prefix", f"g{i + 1}",
                               "--version", "1.0.0", "--upgrade-delay-ms", str(delay_ms)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = lg.stdout.readline()
        assert line.startswith("ready"), line
        gens.append(lg)
    return gens


def stop(server, gens):
    for lg in gens:
        lg.stdin.close()
        lg.wait(timeout=30)
    server.stop()


def cpu_per_evaluation(work, sizes, groups, args):
    """The CPU of one evaluation, on a server of its own that evaluates a converged policy
    EVERY_MS apart (the same work, more often than the default second, so that it stands out of
    the heartbeats' CPU): the server's CPU over a stretch with the policy, less a stretch just
    before it was set, over the evaluations. The agents are first upgraded once by a rollout, as
    in the main run. Returns (CPU per evaluation, evaluations, wall time per evaluation, CPU
    without and with the policy)."""
    work.mkdir()
    server = Server(work, extra=["--policy-every-ms", str(EVERY_MS)])
    gens = start_agents(server, sizes, args.delay_ms)
    pid = server.proc.pid
    time.sleep(2)
    strategy = {"maxInFlight": args.max_in_flight, "growth": args.growth, "timeout": 56000}
    rollout_time(server, "name=g", "2.0.0", strategy)
    time.sleep(2)
    idle = cpu_over(pid, args.idle_seconds)
    converge(server, {"target": "2.0.0", "unmatched": "leave", "groups": groups}, sizes)
    time.sleep(2)
    e0, w0 = evaluations(server), evaluation_seconds(server)
    busy = cpu_over(pid, args.idle_seconds)
    evals, wall = evaluations(server) - e0, evaluation_seconds(server) - w0
    stop(server, gens)
    return max(busy - idle, 0.0) / max(evals, 1), evals, wall / max(evals, 1), idle, busy


def cpu_over(pid, seconds):
    c0 = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - c0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", default="1000,3000,6000", help="agents in each of the three groups")
    ap.add_argument("--max-in-flight", type=int, default=500)
    ap.add_argument("--growth", type=float, default=2.0)
    ap.add_argument("--delay-ms", type=int, default=200)
    ap.add_argument("--idle-seconds", type=float, default=30.0, help="each stretch of the CPU measure")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of rollouts by hand, then the policy")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    sizes = [int(n) for n in args.groups.split(",")]
    assert len(sizes) == 3, "three groups"
    raise_open_files()
    if not args.no_build:
        build("-p", "edge-agent-server", "-p", "edge-agent-e2e")
    load_before = os.getloadavg()[0]
    strategy = {"maxInFlight": args.max_in_flight, "growth": args.growth, "timeout": 56000}
    groups = [{"name": f"g{i + 1}", "selector": f"name=g{i + 1}-", **strategy} for i in range(3)]
    with tempfile.TemporaryDirectory(prefix="edge-agent-policy-") as tmp:
        per_eval, evals, wall, idle_cpu, busy_cpu = cpu_per_evaluation(Path(tmp) / "cpu", sizes, groups, args)
        (Path(tmp) / "main").mkdir()
        server = Server(Path(tmp) / "main")
        gens = start_agents(server, sizes, args.delay_ms)
        pid = server.proc.pid
        time.sleep(2)
        version = iter(f"{v}.0.0" for v in range(2, 100))

        # Round 1: the hand-started rollouts, then the policy.
        v = next(version)
        baselines = [[rollout_time(server, f"name=g{i + 1}-", v, strategy) for i in range(3)]]
        cpu0 = cpu_seconds(pid)
        policies = [converge(server, {"target": next(version), "unmatched": "leave", "groups": groups}, sizes)]
        policy_cpu = cpu_seconds(pid) - cpu0
        # Later rounds, on a machine whose load changes: the rollouts by hand again (the policy,
        # converged, evaluated once a second meanwhile and leaves agents ahead of it alone), then
        # the policy to the next version.
        for _ in range(args.rounds - 1):
            v = next(version)
            baselines.append([rollout_time(server, f"name=g{i + 1}-", v, strategy) for i in range(3)])
            policies.append(converge(server, {"target": next(version), "unmatched": "leave", "groups": groups},
                                     sizes))

        total = sum(sizes)
        minimum = sum(n * args.delay_ms / 1000 / args.max_in_flight for n in sizes)
        load = os.getloadavg()[0]
        print(f"update policy over {total} simulated agents in groups of {', '.join(map(str, sizes))}, zero waits, "
              f"maxInFlight {args.max_in_flight}, growth {args.growth}, per-agent time {args.delay_ms} ms, "
              f"{os.cpu_count()} cores, load average {load_before:.1f} before and {load:.1f} after, "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
        for k, (rollouts, (took, status)) in enumerate(zip(baselines, policies)):
            baseline = sum(rollouts)
            row(f"round {k + 1}: three rollouts started by hand, one after the other", f"{baseline:.2f} s",
                "baseline", " + ".join(f"{t:.2f}" for t in rollouts) + f" s; {baseline / minimum:.2f}x the minimum "
                f"{minimum:.2f} s")
            row(f"round {k + 1}: policy, set to every group converged", f"{took:.2f} s", "target <= 1.3x baseline",
                f"{took / baseline:.2f}x the baseline; groups {group_times(status)}")
        baseline, took = sum(map(sum, baselines)), sum(t for t, _ in policies)
        row("all rounds: policy against rollouts by hand", f"{took / baseline:.2f}x", "target <= 1.3x",
            f"{took:.2f} s against {baseline:.2f} s")
        row("leader's CPU per evaluation, 10,000 agents, converged", f"{per_eval * 1000:.2f} ms", "target <= 10 ms",
            f"{evals} evaluations in {args.idle_seconds:.0f} s ({EVERY_MS} ms apart): {busy_cpu:.2f} s CPU against "
            f"{idle_cpu:.2f} s just before, with no policy")
        row("the same, wall time of an evaluation (its own measure)", f"{wall * 1000:.2f} ms", "",
            "gathering, deciding, acting; from agent_server_policy_evaluation_duration_seconds")
        row("agent-server CPU while the policy converged", f"{policy_cpu:.2f} s", "",
            f"{policy_cpu / total * 1e6:.0f} us per agent")
        row("agent-server peak resident memory", f"{peak_rss_kib(pid) / 1024:.1f} MiB", "", f"{total} agents")
        stop(server, gens)


if __name__ == "__main__":
    main()
