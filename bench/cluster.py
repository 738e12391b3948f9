#!/usr/bin/env python3
"""edge-agent multi-node benchmark: three agent-server nodes on one PostgreSQL and one Redis behind
nginx, with simulated agents (crates/e2e/src/bin/loadgen.rs) connected through nginx. Prints each figure with
its target and a same-run baseline.

    python3 bench/cluster.py                          # 3 nodes x 10,000 agents
    python3 bench/cluster.py --agents-per-node 2000   # a smaller fleet
    python3 bench/cluster.py --no-build               # reuse target/release

Needs: cargo, PostgreSQL (/usr/lib/postgresql/*/bin), redis-server, redis-cli, nginx. As root,
PostgreSQL runs as the `postgres` user. Everything runs on free ports in temporary directories.
"""

import argparse
import glob
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REL, build, get, raise_open_files, token  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=30):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def row(name, value, target="", ratio=""):
    print(f"  {name:<58} {value:>14}  {target:<22} {ratio}", flush=True)


class Postgres:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ea-bench-pg-"))
        bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))[-1]
        pre = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            pre = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        subprocess.run(pre + [f"{bindir}/initdb", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-N",
                              "-D", str(data)], check=True, capture_output=True)
        self.port = free_port()
        self.proc = subprocess.Popen(pre + [f"{bindir}/postgres", "-D", str(data), "-p", str(self.port), "-k", str(self.dir),
                                            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                            # autovacuum looks every second, not every minute: the
                                            # fleet's statistics come sooner (see `analyzed`).
                                            "-c", "autovacuum_naptime=1"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "w"))
        wait_port(self.port)
        time.sleep(1)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self.psql = f"{bindir}/psql"

    def query(self, sql):
        """One value, as text."""
        return subprocess.run([self.psql, "-X", "-At", self.url, "-c", sql], check=True, capture_output=True,
                              text=True).stdout.strip()

    def analyzed(self, table, limit=120):
        """Waits until autovacuum has analyzed `table` (as it does in a running database within a
        minute of many changes): the planner's choices depend on it. The seconds waited."""
        t0 = time.monotonic()
        sql = f"SELECT last_autoanalyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = '{table}'"
        while self.query(sql) != "t":
            if time.monotonic() - t0 > limit:
                sys.exit(f"PostgreSQL's autovacuum did not analyze {table} within {limit} s: its log is "
                         f"{self.dir / 'log'}; the figures below would be of a table without statistics")
            time.sleep(0.5)
        return time.monotonic() - t0

    def stop(self):
        pid = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 2)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    def __init__(self, work):
        self.port = free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
        wait_port(self.port)
        self.url = f"redis://127.0.0.1:{self.port}/"

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], check=True, capture_output=True,
                              text=True).stdout

    def commands(self):
        return int(re.search(r"total_commands_processed:(\d+)", self.cli("INFO", "stats")).group(1))


class Node:
    def __init__(self, work, i, db, redis):
        self.log = open(work / f"node{i}.log", "w")
        # nginx, on this host, is the proxy in front: every agent's connection comes through it.
        self.proc = subprocess.Popen([str(REL / "agent-server"), "--listen", "127.0.0.1:0", "--database", db,
                                      "--redis", redis, "--trusted-proxy", "127.0.0.1"],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.addr = self.proc.stdout.readline().strip().removeprefix("listening on ")
        self.base = f"http://{self.addr}/"
        self.health()

    def health(self):
        with urllib.request.urlopen(self.base + "healthcheck") as r:
            v = json.load(r)
        self.id = v["node"]
        return v


class Nginx:
    def __init__(self, work, nodes, workers=1):
        self.port = free_port()
        d = work / "nginx"
        d.mkdir()
        servers = "".join(f"    server {n.addr};\n" for n in nodes)
        user = "user root;\n" if os.geteuid() == 0 else ""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # Each worker has the open-file limit to itself; the kernel spreads connections over the
        # workers (reuseport).
        (d / "nginx.conf").write_text(f"""{user}worker_processes {workers};
worker_rlimit_nofile {limit};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {limit}; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream agent_servers {{
{servers}  }}
  server {{
    listen 127.0.0.1:{self.port} backlog=65535 reuseport;
    location / {{
      proxy_pass http://agent_servers;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 1h;
    }}
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"])
        wait_port(self.port)
        self.base = f"http://127.0.0.1:{self.port}/"


def timed(f, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents-per-node", type=int, default=10000)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    raise_open_files()
    if not args.no_build:
        build()
    per_node = args.agents_per_node
    total = 3 * per_node
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # nginx holds two sockets per agent (client and upstream), spread over its workers, each with
    # the open-file limit to itself (and a third more, as the spread is uneven); the load
    # generator holds one per agent in one process.
    workers = max(1, -(-(2 * total * 4 // 3) // (limit - 1000)))
    if total + 1000 > limit:
        sys.exit(f"{total} agents need about {total + 1000} open files in the load generator, and this "
                 f"machine allows {limit}: raise the hard limit (ulimit -Hn) or pass a smaller "
                 f"--agents-per-node (at most {(limit - 1000) // 3} here)")
    with tempfile.TemporaryDirectory(prefix="edge-agent-cluster-bench-") as tmp:
        work = Path(tmp)
        pg, redis = Postgres(), Redis(work)
        try:
            run(work, pg, redis, per_node, total, workers)
        finally:
            pg.stop()
            redis.proc.terminate()


def run(work, pg, redis, per_node, total, workers):
    out = subprocess.run([str(REL / "agent-server"), "client", "add", "--admin", "--database", pg.url],
                         check=True, capture_output=True, text=True).stdout
    cid = re.search(r'client_id = "(.*)"', out).group(1)
    secret = re.search(r'client_secret = "(.*)"', out).group(1)
    nodes = [Node(work, i, pg.url, redis.url) for i in range(3)]
    nginx = Nginx(work, nodes, workers)
    print(f"edge-agent cluster bench: 3 nodes x {per_node} agents through nginx, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    time.sleep(1)
    idle = [rss_kib(n.proc.pid) for n in nodes]
    lg = subprocess.Popen([str(REL / "loadgen"), "--server", nginx.base, "--client-id", cid,
                           "--client-secret", secret, "--count", str(total), "--prefix", "load"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    line = lg.stdout.readline()
    assert line.startswith("ready"), line
    print(f"  ({total} agents created and connected in {time.monotonic() - t0:.0f} s)", flush=True)
    print(f"  (PostgreSQL's autovacuum analyzed the agents {pg.analyzed('agents'):.0f} s later)", flush=True)
    time.sleep(5)
    try:
        measure(nodes, redis, idle, cid, secret, total)
    finally:
        lg.stdin.close()
        lg.wait(timeout=60)
        nginx.proc.terminate()
        for n in nodes:
            n.proc.terminate()
            n.proc.wait(timeout=30)


def measure(nodes, redis, idle, cid, secret, total):
    for i, n in enumerate(nodes):
        held = n.health()["agents"]
        rss = rss_kib(n.proc.pid)
        per_k = (rss - idle[i]) / 1024 / max(held / 1000, 0.001)
        row(f"node {i}: resident with {held} agents", f"{rss / 1024:.1f} MiB", "<= +10 MB per 1,000",
            f"+{per_k:.1f} MiB per 1,000 over idle ({idle[i] / 1024:.1f} MiB)")

    tok = token(nodes[0].base, cid, secret)
    code, v = get(nodes[0].base, "fhir/R4/Agent/$bulk-status?name=load&_count=100", tok)
    assert code == 200 and len(v["entry"]) == 100, code
    ids = [e["resource"]["parameter"][0]["resource"]["id"] for e in v["entry"]]
    spread = {n.id: 0 for n in nodes}
    for value in redis.cli("MGET", *[f"ea:presence:{i}" for i in ids]).splitlines():
        if value.split(" ")[0] in spread:
            spread[value.split(" ")[0]] += 1
    lat = timed(lambda: get(nodes[0].base, "fhir/R4/Agent/$bulk-status?name=load&_count=100", tok), 200)
    base = timed(lambda: urllib.request.urlopen(nodes[0].base + "healthcheck").read(), 200)
    med, hc = statistics.median(lat), statistics.median(base)
    row("$bulk-status?_count=100 through node 0 (median of 200)", f"{med * 1000:.2f} ms", "<= 5 ms",
        f"{med / hc:.1f}x /healthcheck ({hc * 1000:.2f} ms); held per node {sorted(spread.values())}")

    by_id = "fhir/R4/Agent/$bulk-status?_count=100&_id=" + ",".join(ids)
    lat = timed(lambda: get(nodes[0].base, by_id, tok), 200)
    row("$bulk-status of the same 100 by _id (median of 200)", f"{statistics.median(lat) * 1000:.2f} ms", "<= 5 ms",
        "what `medplum agent status <ids>` calls")
    lat = timed(lambda: get(nodes[0].base, "fhir/R4/Agent?name=load&_count=100", tok), 200)
    row("search of the same page, name=load (median of 200)", f"{statistics.median(lat) * 1000:.2f} ms", "",
        "the store's share of the first figure")

    agent = ids[0]
    holder_id = redis.cli("GET", f"ea:presence:{agent}").split(" ")[0]
    h = next(i for i, n in enumerate(nodes) if n.id == holder_id)
    other = (h + 1) % 3
    path = f"fhir/R4/Agent/{agent}/$upgrade?version=9.9.9"
    same, cross = [], []
    for _ in range(100):
        same += timed(lambda: get(nodes[h].base, path, tok), 1)
        cross += timed(lambda: get(nodes[other].base, path, tok), 1)
    assert get(nodes[other].base, path, tok)[1]["id"] == "ok"
    ms, mc = statistics.median(same) * 1000, statistics.median(cross) * 1000
    row("$upgrade round trip, cross-node (median of 100)", f"{mc:.2f} ms", "<= same-node + 3 ms",
        f"same-node {ms:.2f} ms: +{mc - ms:.2f} ms")

    window = 30
    before = redis.commands()
    time.sleep(window)
    delta = redis.commands() - before - 1
    heartbeats = total * window / 10
    row(f"Redis commands per agent heartbeat ({window} s, {total} agents)", f"{delta / heartbeats:.4f}", "",
        f"{delta} commands for {heartbeats:.0f} heartbeats (presence renewal only)")


if __name__ == "__main__":
    main()
