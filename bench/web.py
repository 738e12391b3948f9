#!/usr/bin/env python3
"""edge-agent web page benchmark: a release agent-server holding 10,000 agents (connected by the
load generator, on three versions); the time the server takes to give a signed-in browser
everything the agents page needs for its first render, p50 and p95, against /healthcheck measured
in the same run; and the page's total bytes.

    python3 bench/web.py              # builds the release binaries if needed
    python3 bench/web.py --no-build   # uses target/release as it is
    python3 bench/web.py --agents 2000 --rounds 50   # a smaller, quicker run

"First render" is, in order on one keep-alive connection: the document, its stylesheet and
script, the session check, and the first page (50 rows, sorted by name) of the agent table.
Needs: cargo. Runs as any user; raises its own open-file limit.
"""

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REL, Server, percentile, row  # noqa: E402
from common import build, ms, raise_open_files  # noqa: E402

FIRST_RENDER = ["/", "/ui/app.css", "/ui/app.js", "/ui/api/session", "/ui/api/agents?sort=name&dir=asc&page=0&size=50"]
HARD_QUERY = "/ui/api/agents?q=load-1&notVersion=1.4.0&sort=version&dir=desc&page=3&size=50"


class Browserish:
    """One keep-alive HTTP connection with the session cookie, as a browser would hold it."""

    def __init__(self, addr, cid, secret):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        body = json.dumps({"client_id": cid, "client_secret": secret})
        self.conn.request("POST", "/ui/api/login", body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        self.cookie = resp.getheader("Set-Cookie").split(";")[0]

    def get(self, path):
        self.conn.request("GET", path, headers={"Cookie": self.cookie})
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (path, resp.status, body[:200])
        return body


def timed(fn, rounds):
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--agents", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    raise_open_files()
    if not args.no_build:
        build()
    with tempfile.TemporaryDirectory(prefix="edge-agent-web-bench-") as tmp:
        server = Server(Path(tmp) / "srv")
        print(f"edge-agent web bench: {args.agents} agents, {args.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M')}")
        lg = subprocess.Popen([str(REL / "loadgen"), "--server", server.base, "--client-id", server.cid,
                               "--client-secret", server.secret, "--count", str(args.agents), "--prefix", "load",
                               "--version", "1.2.0,1.3.0,1.4.0"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = lg.stdout.readline()
        assert line.startswith("ready"), line
        time.sleep(2)
        b = Browserish(server.addr, server.cid, server.secret)
        page = json.loads(b.get(FIRST_RENDER[-1]))
        assert page["total"] == args.agents and len(page["rows"]) == 50, page["total"]
        weight = sum(len(b.get(p)) for p in FIRST_RENDER[:3])
        rows = len(b.get(FIRST_RENDER[-1]))

        first = timed(lambda: [b.get(p) for p in FIRST_RENDER], args.rounds)
        table = timed(lambda: b.get(FIRST_RENDER[-1]), args.rounds)
        hard_q = timed(lambda: b.get(HARD_QUERY), args.rounds)
        overview = timed(lambda: b.get("/ui/api/overview"), args.rounds)
        base = statistics.median(timed(lambda: b.get("/healthcheck"), args.rounds))

        def report(name, xs, target=""):
            med = statistics.median(xs)
            row(name, f"p50 {ms(med)}, p95 {ms(percentile(xs, 0.95))}", target, f"{med / base:.1f}x /healthcheck")

        print(f"\nweb page, {args.agents} agents connected (/healthcheck: {ms(base)})")
        report("agents page, first render (5 requests)", first, "target <= 50 ms")
        report("agent table, first page of 50", table)
        report("agent table, search + not-on-version + sort by version, page 4", hard_q)
        report("fleet overview (counts, versions, last results)", overview)
        row("page weight (document, CSS, JS)", f"{weight / 1024:.1f} KB", "target <= 150 KB",
            f"+ {rows / 1024:.1f} KB of agent rows")
        lg.stdin.close()
        lg.wait(timeout=60)
        server.stop()


if __name__ == "__main__":
    main()
