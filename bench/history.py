#!/usr/bin/env python3
"""What a long rollout history costs the node that drives rollouts, while nothing happens.

The driving node keeps every agent's last rollout result (shown in searches and `$status`). It
holds the `rollouts` lease whether or not a rollout runs, and reads those results from the store
every second. This starts a release server on SQLite with an empty history (the baseline), then
on one holding `--rollouts` finished rollouts of `--members` members each (written straight into
the store), and measures the server's CPU while idle, in the same run.

On the server with the history, it also times reading it: `GET Rollout` (every rollout with its
members' counts) and `GET Rollout/<id>` of one finished rollout, against `/healthcheck` from the
same client.

With `--live N`, a third server holds one active rollout of N members whose agents are offline
(they wait for their agents until the rollout's deadline, a day): what a long-running rollout
costs the driving node each second while nothing happens. Both servers with a history also time
starting (and cancelling) a rollout of 100 other agents: its check that no agent is in another
open rollout reads the open rollouts' members.

  python3 bench/history.py [--rollouts 100] [--members 10000] [--live 100000] [--seconds 20] [--no-build]
"""

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit import Server, row  # noqa: E402
from common import build  # noqa: E402
from rollout import cpu_seconds, peak_rss_kib  # noqa: E402

# `rollouts` finished rollouts of `members` members each, over `members` agents, one a minute.
FILL = """
WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < {rollouts} - 1)
INSERT INTO rollouts (id, version, state, strategy, selection, created_at, wave, events)
SELECT printf('r%04d', i), printf('1.%d.0', i), 'completed', '{{}}', 'name=bench', 1704067200000 + i * 60000, 3, '[]'
FROM r;
WITH RECURSIVE m(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM m WHERE j < {rollouts} * {members} - 1)
INSERT INTO rollout_members (rollout_id, agent_id, seq, name, state, wave, callback, asked_at, finished_at, reason)
SELECT printf('r%04d', j / {members}), printf('a%06d', j % {members}), j % {members}, printf('bench-%06d', j % {members}),
       'succeeded', 0, NULL, 1704067200000 + (j / {members}) * 60000, 1704067200000 + (j / {members}) * 60000 + 1000, NULL
FROM m;
"""


# One active rollout, created now, of `members` pending members whose agents are not connected.
LIVE = """
INSERT INTO rollouts (id, version, state, strategy, selection, created_at, wave, events)
VALUES ('live', '9.0.0', 'active', '{{}}', 'name=bench', {now}, 0, '[]');
WITH RECURSIVE m(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM m WHERE j < {members} - 1)
INSERT INTO rollout_members (rollout_id, agent_id, seq, name, state, wave, callback, asked_at, finished_at, reason)
SELECT 'live', printf('o%07d', j), j, printf('offline-%07d', j), 'pending', NULL, NULL, NULL, NULL, NULL FROM m;
"""


# 100 agents no rollout holds, never connected: what a new rollout is started on.
FRESH = """
WITH RECURSIVE f(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM f WHERE k < 99)
INSERT INTO agents (id, name, last_updated) SELECT printf('f%03d', k), printf('fresh-%03d', k), '2026-01-01T00:00:00Z' FROM f;
"""


def post(server, path, body, headers=()):
    req = urllib.request.Request(server.base + path, json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {server.token}", **dict(headers)})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, json.load(r)


def creations(server, times=5):
    """The median time to start a rollout of the 100 fresh agents (each cancelled after), in ms."""
    took = []
    for i in range(times):
        t0 = time.monotonic()
        code, r = post(server, "fhir/R4/Agent/$upgrade?name=fresh-", {"version": f"9.1.{i}"},
                       {"Prefer": "respond-async"})
        took.append((time.monotonic() - t0) * 1000)
        assert code == 202, (code, r)
        post(server, f"fhir/R4/Rollout/{r['id']}/$cancel", {})
    return sorted(took)[len(took) // 2]


def filled(work, sql):
    """A server's data directory (made by starting it once) with `sql` run on its database."""
    Server(work).stop()
    db = sqlite3.connect(work / "data" / "edge-agent-server.db")
    db.executescript(sql)
    db.commit(), db.close()


def idle(work, seconds, reads=(), create=False):
    """The server's CPU share while idle and its peak RSS; then the median time of each GET of
    `reads` (five each, in turn), in ms, and of starting a rollout when `create`."""
    server = Server(work)
    time.sleep(10)  # the lease taken, the first full read done
    pid = server.proc.pid
    cpu0 = cpu_seconds(pid)
    time.sleep(seconds)
    cpu = cpu_seconds(pid) - cpu0
    rss = peak_rss_kib(pid) / 1024
    times = {path: [] for path in reads}
    for _ in range(5):
        for path in reads:
            t0 = time.monotonic()
            server.get(path)
            times[path].append((time.monotonic() - t0) * 1000)
    medians = {path: sorted(t)[len(t) // 2] for path, t in times.items()}
    if create:
        medians["create"] = creations(server)
    server.stop()
    return cpu / seconds, rss, medians


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollouts", type=int, default=100)
    ap.add_argument("--members", type=int, default=10000)
    ap.add_argument("--live", type=int, default=0, help="members of one live rollout of offline agents")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        build("-p", "edge-agent-server")
    rows = args.rollouts * args.members
    print(f"idle driving node, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="edge-agent-history-") as tmp:
        empty, full = Path(tmp) / "empty", Path(tmp) / "full"
        empty.mkdir(), full.mkdir()
        base_cpu, base_rss, _ = idle(empty, args.seconds)
        filled(full, FILL.format(rollouts=args.rollouts, members=args.members) + FRESH)
        one = f"fhir/R4/Rollout/r{args.rollouts // 2:04d}"
        cpu, rss, took = idle(full, args.seconds, ("healthcheck", "fhir/R4/Rollout", one), create=True)
        row("idle CPU, empty history", f"{base_cpu * 100:.2f} %", "of one core")
        row(f"idle CPU, {rows:,} finished members", f"{cpu * 100:.2f} %", "of one core",
            f"{cpu / max(base_cpu, 1e-9):.2f}x the empty history")
        row(f"peak RSS, empty / {rows:,} members", f"{base_rss:.1f} / {rss:.1f} MiB", "", f"{args.members:,} agents' last results held")
        health = took["healthcheck"]
        row(f"GET Rollout, {args.rollouts} finished", f"{took['fhir/R4/Rollout']:.1f} ms", "",
            f"{took['fhir/R4/Rollout'] / health:.0f}x /healthcheck ({health:.2f} ms), median of 5: every rollout with "
            "its members' counts")
        row(f"GET Rollout/<id>, one of {args.members:,} members", f"{took[one]:.1f} ms", "",
            f"{took[one] / health:.0f}x /healthcheck, median of 5: its counts, events and failures")
        row("start a rollout of 100, no other open", f"{took['create']:.1f} ms", "", "median of 5, each cancelled after")
        if args.live:
            live = Path(tmp) / "live"
            live.mkdir()
            filled(live, LIVE.format(now=int(time.time() * 1000), members=args.live) + FRESH)
            cpu, rss, took_live = idle(live, args.seconds, create=True)
            row(f"idle CPU, a live rollout of {args.live:,} offline members", f"{cpu * 100:.2f} %", "of one core",
                f"{cpu / max(base_cpu, 1e-9):.2f}x the empty history")
            row(f"peak RSS, that rollout", f"{rss:.1f} MiB", "", "its members held in memory")
            row(f"start a rollout of 100 beside it", f"{took_live['create']:.1f} ms", "",
                f"{took_live['create'] / took['create']:.2f}x with no other open: its overlap check")


if __name__ == "__main__":
    main()
