#!/usr/bin/env python3
"""The cluster fault suite's long mode: for each seed, three nodes on PostgreSQL and Redis behind
nginx, 10 real agents and 1,000 simulated ones in a rollout between two builds, two more real and
20 simulated ones under single and bulk `$upgrade` calls from several clients, `$status` polling,
and `--minutes` of faults of every kind drawn from the seed (node and leader kills, PostgreSQL and
Redis restarts and 20 s stops, partitions of one node from PostgreSQL, Redis or both, an agent's
worker killed while it upgrades). Each run's history is judged by the checker inside the run and
again by the `fault-check` program here; a seed fails on any violation.

  python3 bench/faults.py [--seeds 20] [--first 1] [--minutes 3] [--out DIR]

Runs as root (network namespaces). The debug builds the tests use are built first.
"""

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first", type=int, default=1, help="the first seed")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--out", default=str(ROOT / "target" / "faults"), help="where the histories go")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--bins"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "test", "--no-run", "-p", "edge-agent-e2e", "--test", "e2e"], cwd=ROOT, check=True)
    check = ROOT / "target" / "debug" / "fault-check"
    rows, failed = [], []
    for seed in range(a.first, a.first + a.seeds):
        env = {"EA_FAULT_SEED": str(seed), "EA_FAULT_MINUTES": str(a.minutes), "EA_FAULT_HISTORY_DIR": str(out), "CI": "true"}
        started = time.time()
        run = subprocess.run(
            ["cargo", "test", "-q", "-p", "edge-agent-e2e", "--test", "e2e", "fault_suite::long_mode", "--", "--ignored", "--nocapture"],
            cwd=ROOT,
            env={**__import__("os").environ, **env},
            capture_output=True,
            text=True,
        )
        took = time.time() - started
        log = run.stdout + run.stderr
        (out / f"faults-{seed}.log").write_text(log)
        history = out / f"faults-{seed}.jsonl"
        judged = subprocess.run([check, history], capture_output=True, text=True)
        faults = len(re.findall(r"^  fault at \d+ ms: (?!rollout)", log, re.M))
        counts = re.search(r"rollout (\{[^}]*\})", log)
        ok = run.returncode == 0 and judged.returncode == 0
        rows.append((seed, faults, took, ok, counts.group(1) if counts else "?"))
        print(f"seed {seed}: {faults} faults, {took:.0f} s, {'pass' if ok else 'FAIL'}", flush=True)
        print("  " + judged.stdout.strip().replace("\n", "\n  "), flush=True)
        if not ok:
            failed.append(seed)
            print("\n".join(log.splitlines()[-30:]), flush=True)
    print()
    print("| seed | faults | run | result |")
    print("|---|---|---|---|")
    for seed, faults, took, ok, _ in rows:
        print(f"| {seed} | {faults} | {took:.0f} s | {'pass' if ok else 'FAIL'} |")
    total = sum(r[1] for r in rows)
    print(f"\n{len(rows)} seeds, {total} faults, {sum(r[2] for r in rows) / 60:.1f} min; failed: {failed or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
