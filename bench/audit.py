#!/usr/bin/env python3
"""Audit benchmark: what recording the audit trail costs, and how fast it is searched.

1. A bulk $upgrade of 100 simulated agents (crates/e2e/src/bin/loadgen.rs), repeated, and a rollout
   of 10,000 simulated agents, each on a server that records the audit trail and on one started
   with the hidden --no-audit-for-benchmark (the baseline), in the same run: wall time and server
   CPU, with the ratio. Targets: audit adds <= 5 % wall time and <= 10 % server CPU.
2. GET /fhir/R4/AuditEvent on 1,000,000 stored events (written straight into the store), a page of
   100: newest first, by entity, and by date; on SQLite and on PostgreSQL. Target <= 20 ms.

  python3 bench/audit.py [--agents 10000] [--bulk-rounds 10] [--events 1000000] [--repeat 3] [--no-build]
"""

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Postgres  # noqa: E402
from common import REL, build, ms, raise_open_files, sh, token  # noqa: E402
from rollout import cpu_seconds, start_rollout  # noqa: E402


def row(name, value, target="", ratio=""):
    print(f"  {name:<52} {value:>14}  {target:<22} {ratio}", flush=True)


class Server:
    """A release agent-server on SQLite (`data`) or PostgreSQL (`database`), with an admin client."""

    def __init__(self, work, database=None, audit=True):
        self.store = ["--database", database] if database else ["--data", str(work / "data")]
        out = sh(REL / "agent-server", "client", "add", "--admin", *self.store)
        self.cid = re.search(r'client_id = "(.*)"', out).group(1)
        self.secret = re.search(r'client_secret = "(.*)"', out).group(1)
        extra = [] if audit else ["--no-audit-for-benchmark"]
        self.proc = subprocess.Popen([str(REL / "agent-server"), "--listen", "127.0.0.1:0", *self.store, *extra],
                                     stdout=subprocess.PIPE, stderr=open(work / "server.log", "a"), text=True)
        self.base = "http://" + self.proc.stdout.readline().strip().removeprefix("listening on ") + "/"
        self.token = token(self.base, self.cid, self.secret)

    def get(self, path):
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.load(r)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def fleet(server, count, prefix, delay_ms):
    lg = subprocess.Popen([str(REL / "loadgen"), "--server", server.base, "--client-id", server.cid, "--client-secret",
                           server.secret, "--count", str(count), "--prefix", prefix, "--version", "1.0.0",
                           "--upgrade-delay-ms", str(delay_ms)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert lg.stdout.readline().startswith("ready")
    time.sleep(2)
    return lg


def run_dir(work, name):
    d = work / name
    d.mkdir(exist_ok=True)
    return d


def bulk(work, audit, rounds):
    server = Server(run_dir(work, f"bulk-{audit}"), audit=audit)
    lg = fleet(server, 100, "bulk", 20)
    cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
    for i in range(rounds):
        code, answer = server.get(f"fhir/R4/Agent/$upgrade?name=bulk&_count=100&version={2 + i}.0.0")
        assert code == 200 and len(answer["entry"]) == 100, answer
    result = time.monotonic() - t0, cpu_seconds(server.proc.pid) - cpu0
    lg.stdin.close(), lg.wait(timeout=30), server.stop()
    return result


def rollout(work, audit, agents):
    server = Server(run_dir(work, f"rollout-{audit}"), audit=audit)
    lg = fleet(server, agents, "roll", 200)
    cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
    rid = start_rollout(server, "name=roll", {"version": "2.0.0", "maxInFlight": 500, "growth": 2, "timeout": 56000})
    while server.get(f"fhir/R4/Rollout/{rid}")[1]["state"] in ("active", "paused"):
        time.sleep(0.05)
    result = time.monotonic() - t0, cpu_seconds(server.proc.pid) - cpu0
    lg.stdin.close(), lg.wait(timeout=60), server.stop()
    return result


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def measured(work, measure, repeat):
    """`measure(work, audit)` `repeat` times each way, alternating (so that the machine's drift falls
    on both alike): the median wall time and server CPU without and with audit."""
    runs = {False: [], True: []}
    for i in range(repeat):
        for audit in (False, True):
            runs[audit].append(measure(run_dir(work, f"{i}"), audit))
    return {audit: (median([w for w, _ in r]), median([c for _, c in r])) for audit, r in runs.items()}


def compare(name, runs):
    (wall0, cpu0), (wall1, cpu1) = runs[False], runs[True]
    row(f"{name}: wall time with audit", f"{wall1:.2f} s", "target <= 1.05x", f"{wall1 / wall0:.3f}x ({wall0:.2f} s without)")
    row(f"{name}: server CPU with audit", f"{cpu1:.2f} s", "target <= 1.10x", f"{cpu1 / cpu0:.3f}x ({cpu0:.2f} s without)")


# One million events: one a minute from 2024-01-01, over 1,000 agents, written by the database itself.
SQLITE_FILL = """
WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ? - 1),
e AS (SELECT i, printf('%012d', i) AS id, strftime('%Y-%m-%dT%H:%M:%S.000Z', 1704067200 + i * 60, 'unixepoch') AS rec,
             'Agent/a' || (i % 1000) AS entity FROM s)
INSERT INTO audit_events (id, recorded, kind, subtype, outcome, actor, body)
SELECT id, rec, 'rest', 'upgrade', '0', 'ClientApplication/bench',
       '{"id":"' || id || '","recorded":"' || rec || '","kind":"rest","subtype":"upgrade","action":"E",'
       || '"outcome":"Success","description":"bench","who":{"reference":"ClientApplication/bench"},'
       || '"address":"127.0.0.1","entities":[{"reference":"' || entity || '"}]}' FROM e;
INSERT INTO audit_entities (entity, recorded, event_id) SELECT 'Agent/a' || (CAST(id AS INTEGER) % 1000), recorded, id
FROM audit_events WHERE actor = 'ClientApplication/bench';
"""

PG_FILL = """
INSERT INTO audit_events (id, recorded, kind, subtype, outcome, actor, body)
SELECT id, rec, 'rest', 'upgrade', '0', 'ClientApplication/bench',
       '{"id":"' || id || '","recorded":"' || rec || '","kind":"rest","subtype":"upgrade","action":"E",'
       || '"outcome":"Success","description":"bench","who":{"reference":"ClientApplication/bench"},'
       || '"address":"127.0.0.1","entities":[{"reference":"Agent/a' || (i % 1000) || '"}]}'
FROM (SELECT i, lpad(i::text, 12, '0') AS id,
             to_char(to_timestamp(1704067200 + i * 60) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS rec
      FROM generate_series(0, {n} - 1) AS i) e;
INSERT INTO audit_entities (entity, recorded, event_id)
SELECT 'Agent/a' || (id::bigint % 1000), recorded, id FROM audit_events WHERE actor = 'ClientApplication/bench';
ANALYZE audit_events; ANALYZE audit_entities;
"""


def search_latency(server, label, events):
    queries = {"newest 100": "_count=100", "one agent's newest 100": "entity=Agent/a7&_count=100",
               "a day, oldest first": "date=2024-01-15&_sort=date&_count=100"}
    for name, query in queries.items():
        server.get("fhir/R4/AuditEvent?" + query)
        times = []
        for _ in range(30):
            t0 = time.monotonic()
            code, bundle = server.get("fhir/R4/AuditEvent?" + query)
            times.append(time.monotonic() - t0)
            assert code == 200 and len(bundle["entry"]) == 100, bundle
        times.sort()
        row(f"{label}: {name} of {events:,}", ms(times[len(times) // 2]), "target <= 20 ms",
            f"p90 {ms(times[int(len(times) * 0.9)])}")


def searches(work, events):
    run_dir(work, "sq")
    Server(work / "sq").stop()
    db = sqlite3.connect(work / "sq" / "data" / "edge-agent-server.db")
    db.executescript(SQLITE_FILL.replace("?", str(events)))
    db.commit(), db.close()
    server = Server(work / "sq")
    search_latency(server, "SQLite", events)
    server.stop()
    pg = Postgres()
    try:
        run_dir(work, "pg")
        Server(work / "pg", database=pg.url).stop()
        psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
        subprocess.run([str(psql), pg.url, "-q", "-v", "ON_ERROR_STOP=1", "-c", PG_FILL.replace("{n}", str(events))],
                       check=True, capture_output=True)
        server = Server(work / "pg", database=pg.url)
        search_latency(server, "PostgreSQL", events)
        server.stop()
    finally:
        pg.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10000)
    ap.add_argument("--bulk-rounds", type=int, default=10)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs each way; the medians are compared")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    raise_open_files()
    if not args.no_build:
        build("-p", "edge-agent-server", "-p", "edge-agent-e2e")
    print(f"audit trail, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="edge-agent-audit-") as tmp:
        work = Path(tmp)
        runs = measured(work, lambda w, audit: bulk(w, audit, args.bulk_rounds), args.repeat)
        compare(f"bulk $upgrade of 100 agents x {args.bulk_rounds} (median of {args.repeat})", runs)
        runs = measured(work, lambda w, audit: rollout(w, audit, args.agents), args.repeat)
        compare(f"rollout of {args.agents:,} agents (median of {args.repeat})", runs)
        searches(work, args.events)


if __name__ == "__main__":
    main()
