#!/usr/bin/env python3
"""Capacity coefficients of agent-server, every one measured in the same run on real release
binaries, with simulated agents (crates/e2e/src/bin/loadgen.rs):

1. one node on SQLite: resident memory per connected agent, and the kernel's socket memory;
2. the same node: CPU per heartbeat with every agent connected and idle;
3. one node on PostgreSQL: rows and bytes per agent in each table;
4. two nodes on that PostgreSQL and one Redis: Redis commands per request crossing nodes;
5. the PostgreSQL node: a rollout of every agent, with the transactions and row writes per
   member, its duration and the server's CPU per member.

Prints a Markdown table (coefficient, value, unit, how it was measured), then `json: {...}` with
the raw values. Progress goes to standard error.

    python3 bench/capacity.py [--agents 10000] [--seconds 30] [--no-build]

Needs what bench/cluster.py needs (PostgreSQL, redis-server, redis-cli) but not nginx, plus psql
and ss. Runs as any user; raises its own open-file limit.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Server, rss_kib  # noqa: E402
from cluster import Node, Postgres, Redis  # noqa: E402
from common import REL, build, get, raise_open_files, sh, token  # noqa: E402
from rollout import cpu_seconds, start_rollout  # noqa: E402

# Simulated agents per loadgen process: each holds one file per agent, and the open-file limit is
# per process. (loadgen spreads its sockets over 127.0.0.2-127.0.0.201 by itself.)
PER_LOADGEN = 9000
# A PostgreSQL backend flushes its statistics within 10 s of going idle: waiting longer than that
# makes pg_stat_* show all that was done before.
PG_STATS_SETTLE = 12


def log(msg):
    print(f"[capacity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Report:
    """The rows of the Markdown table, and the raw values for the JSON line."""

    def __init__(self):
        self.rows = []
        self.raw = {}

    def add(self, name, value, unit, how):
        self.rows.append((name, value, unit, how))

    def print(self, header, complete):
        print(header)
        if not complete:
            print("\n**Incomplete run: the parts below are those that finished.**")
        print("\n| coefficient | value | unit | how measured |")
        print("|---|---:|---|---|")
        for name, value, unit, how in self.rows:
            print(f"| {name} | {value} | {unit} | {how} |")
        print(f"\njson: {json.dumps(self.raw, sort_keys=True)}", flush=True)


def fmt(x, digits=2):
    return f"{x:,.{digits}f}"


def fmt_calls(calls, per):
    return ", ".join(f"{k} {c / per:.2f}" for k, c in sorted(calls.items())) or "none"


# --- processes ------------------------------------------------------------------------------------

def stop_proc(proc, sig=signal.SIGTERM, limit=30):
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def close_stdin_and_wait(proc):
    """A loadgen exits when its standard input closes (its agents' sockets with it)."""
    try:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        proc.wait(timeout=60)
    except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
        stop_proc(proc, signal.SIGKILL)


def stop_postgres(pg):
    try:
        pg.stop()
    except (OSError, ValueError, subprocess.TimeoutExpired):
        # Already gone (a Ctrl-C on the terminal reaches it too): make sure, then drop its files.
        stop_proc(pg.proc, signal.SIGINT)
        shutil.rmtree(pg.dir, ignore_errors=True)


def keep(stack, what, stop):
    """`what`, stopped by `stop(what)` when `stack` closes: on success, failure or Ctrl-C."""
    stack.callback(stop, what)
    return what


def fleet(stack, base, cid, secret, n, prefix, extra=()):
    """`n` simulated agents created through `base`'s API and connected to it, in loadgen processes
    of at most PER_LOADGEN agents (names `<prefix><i>-<n>`); returns once every one is connected,
    and they stay so until `stack` closes."""
    procs = []
    for i, start in enumerate(range(0, n, PER_LOADGEN)):
        count = min(PER_LOADGEN, n - start)
        p = subprocess.Popen([str(REL / "loadgen"), "--server", base, "--client-id", cid, "--client-secret", secret,
                              "--count", str(count), "--prefix", f"{prefix}{i}", *extra],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        keep(stack, p, close_stdin_and_wait)
        procs.append(p)
        t0 = time.monotonic()
        line = p.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"loadgen {i} ({count} agents) did not get them connected: {line!r}")
        log(f"  loadgen {i}: {count} agents created and connected in {time.monotonic() - t0:.0f} s "
            f"({start + count} of {n})")
    return procs


def health(base):
    with urllib.request.urlopen(base + "healthcheck", timeout=30) as r:
        return json.load(r)


def ws_received(base, tok):
    """The server's count of text messages received on agent sockets (from /metrics)."""
    req = urllib.request.Request(base + "metrics", headers={"Authorization": f"Bearer {tok}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        text = r.read().decode()
    m = re.search(r'^agent_server_websocket_messages(?:_total)?\{direction="received"\}\s+(\d+)', text, re.M)
    return int(m.group(1)) if m else None


# --- the kernel's share ---------------------------------------------------------------------------

def socket_memory(pid, port):
    """skmem of each established TCP socket that process `pid` holds on local port `port`, as
    dicts of r, rb, t, tb, f, w, o, bl, d (bytes)."""
    out = subprocess.run(["ss", "-tmnpH", "state", "established", "sport", "=", f":{port}"],
                         check=True, capture_output=True, text=True).stdout
    sockets, block = [], []
    for line in out.splitlines() + [""]:
        if line and not line[0].isspace():
            if block:
                sockets.append(" ".join(block))
            block = [line]
        elif line:
            block.append(line)
        elif block:
            sockets.append(" ".join(block))
            block = []
    mems = []
    for s in sockets:
        m = re.search(r"skmem:\(([^)]*)\)", s)
        if f"pid={pid}," in s and m:
            mems.append({k: int(v) for k, v in re.findall(r"([a-z]+)(\d+)", m.group(1))})
    return mems


def slab_per_socket():
    """Bytes of the kernel objects behind one TCP socket held by a process (its sock, inode,
    file, dentry and epoll entry), from the slab caches' object sizes and packing: (bytes, detail),
    or None when /proc/slabinfo cannot be read."""
    try:
        lines = Path("/proc/slabinfo").read_text().splitlines()
    except OSError:
        return None
    caches = {}
    for line in lines[2:]:
        f = line.split()
        # name active num objsize objperslab pagesperslab
        caches[f[0]] = int(f[5]) * os.sysconf("SC_PAGE_SIZE") / int(f[4])
    names = ["TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi"]
    if not all(n in caches for n in names):
        return None
    return sum(caches[n] for n in names), " + ".join(f"{n} {caches[n]:.0f}" for n in names)


# --- PostgreSQL and Redis -------------------------------------------------------------------------

def psql(pg, db, sql):
    out = sh("psql", "-X", "-q", "-h", "127.0.0.1", "-p", pg.port, "-U", "postgres", "-d", db, "-At", "-F", "\t",
             "-c", sql)
    return [line.split("\t") for line in out.splitlines() if line]


def database(pg, name):
    psql(pg, "postgres", f"CREATE DATABASE {name}")
    return f"postgres://postgres@127.0.0.1:{pg.port}/{name}"


def admin_client(db_url):
    out = sh(REL / "agent-server", "client", "add", "--admin", "--database", db_url)
    return re.search(r'client_id = "(.*)"', out).group(1), re.search(r'client_secret = "(.*)"', out).group(1)


def tables(pg, db):
    """{table: (bytes with its indexes and TOAST, rows)} of every table in `db`."""
    names = [r[0] for r in psql(pg, db, "SELECT relname FROM pg_stat_user_tables ORDER BY relname")]
    sql = " UNION ALL ".join(f"SELECT '{t}', pg_total_relation_size('{t}'::regclass), count(*) FROM \"{t}\""
                             for t in names)
    return {t: (int(size), int(rows)) for t, size, rows in psql(pg, db, sql)}


def pg_counters(pg, db):
    """The database's committed transactions and each table's (inserted, updated, deleted) rows."""
    rows = psql(pg, db, "SELECT '', xact_commit, 0, 0 FROM pg_stat_database WHERE datname = current_database() "
                        "UNION ALL SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables")
    out = {"xact_commit": 0, "tables": {}}
    for name, a, b, c in rows:
        if name == "":
            out["xact_commit"] = int(a)
        else:
            out["tables"][name] = (int(a), int(b), int(c))
    return out


def redis_stats(redis):
    """(total_commands_processed, {command: calls}) in one INFO call (which counts itself once)."""
    text = redis.cli("INFO", "stats", "commandstats")
    total = int(re.search(r"total_commands_processed:(\d+)", text).group(1))
    calls = {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_([\w|]+):calls=(\d+)", text)}
    return total, calls


class Monitor:
    """`redis-cli MONITOR` while the block runs: afterwards, the commands seen (INFO left out),
    as those that clients sent and those that ran inside scripts (MONITOR's source `lua`)."""

    def __init__(self, redis):
        self.redis = redis

    def __enter__(self):
        self.out = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(["redis-cli", "-p", str(self.redis.port), "MONITOR"], stdout=self.out, text=True)
        t0 = time.monotonic()
        while self.out.tell() == 0:  # "OK": attached
            if time.monotonic() - t0 > 10 or self.proc.poll() is not None:
                raise RuntimeError("redis-cli MONITOR did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)
        stop_proc(self.proc)
        self.out.seek(0)
        self.client, self.script = {}, {}
        for m in re.finditer(r'^[\d.]+ \[\d+ (\S+)\] "([^"]+)"', self.out.read(), re.M):
            cmd = m.group(2).lower()
            if cmd != "info":
                side = self.script if m.group(1) == "lua" else self.client
                side[cmd] = side.get(cmd, 0) + 1
        self.out.close()


def redis_delta(a, b):
    """Commands between two redis_stats snapshots, without the INFO call that took the first."""
    calls = {k: v - a[1].get(k, 0) for k, v in b[1].items() if k != "info" and v != a[1].get(k, 0)}
    return b[0] - a[0] - 1, calls


# --- the parts ------------------------------------------------------------------------------------

def single_node(work, report, n, seconds, interval):
    """Parts 1 and 2: memory per connected agent (process and kernel), CPU per heartbeat."""
    raw = report.raw.setdefault("single_node", {"agents": n, "heartbeat_interval_s": interval})
    with ExitStack() as stack:
        log("part 1: one node on SQLite")
        server = Server(work / "single", extra=["--heartbeat-interval", str(interval)])
        keep(stack, server, lambda s: (stop_proc(s.proc), s.log.close()))
        pid, port = server.proc.pid, int(server.addr.rsplit(":", 1)[1])
        time.sleep(2)
        idle_window = min(seconds, 10)
        log(f"  idle CPU over {idle_window} s")
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(idle_window)
        idle_cpu_rate = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        rss_idle = rss_kib(pid)
        log(f"  idle: {rss_idle / 1024:.1f} MiB resident; connecting {n} agents")
        t0 = time.monotonic()
        fleet(stack, server.base, server.cid, server.secret, n, "cap")
        connect_time = time.monotonic() - t0
        time.sleep(5)
        held = health(server.base)["agents"]
        if held != n:
            raise RuntimeError(f"the server holds {held} agents, not {n}")
        rss = rss_kib(pid)
        per_agent = (rss - rss_idle) / n
        raw.update(rss_idle_kib=rss_idle, rss_connected_kib=rss, rss_per_agent_kib=per_agent,
                   create_and_connect_s=connect_time)
        report.add("server RSS, idle", fmt(rss_idle / 1024, 1), "MiB",
                   f"VmRSS of agent-server (SQLite, no agent) {2 + idle_window:.0f} s after its start")
        report.add("server RSS per connected agent", fmt(per_agent), "KiB",
                   f"(VmRSS with {n} agents connected, 5 s after all were ready: {rss / 1024:.1f} MiB) minus idle, / {n}")

        mems = socket_memory(pid, port)
        if len(mems) < n:
            log(f"  warning: ss shows {len(mems)} established agent sockets of the server, not {n}")
        alloc = sum(m.get("r", 0) + m.get("t", 0) + m.get("f", 0) + m.get("w", 0) for m in mems)
        count = max(len(mems), 1)
        rb = sum(m.get("rb", 0) for m in mems) / count
        tb = sum(m.get("tb", 0) for m in mems) / count
        raw.update(sockets=len(mems), skmem_allocated_bytes=alloc, skmem_per_agent_bytes=alloc / n,
                   rb_mean_bytes=rb, tb_mean_bytes=tb, rb_max_bytes=max((m.get("rb", 0) for m in mems), default=0),
                   tb_max_bytes=max((m.get("tb", 0) for m in mems), default=0))
        report.add("kernel socket buffers allocated per agent (idle)", fmt(alloc / n, 1), "bytes",
                   f"`ss -tmnp` skmem r+t+f+w summed over the server's {len(mems)} established sockets on its port "
                   f"(agents' and API clients'), / {n}; the kernel allocates these only while data is queued")
        report.add("socket receive buffer limit (rb), per socket", fmt(rb / 1024, 0), "KiB",
                   "mean skmem rb: what one socket's receive queue may grow to")
        report.add("socket send buffer limit (tb), per socket", fmt(tb / 1024, 0), "KiB",
                   "mean skmem tb: what one socket's send queue may grow to")
        slab = slab_per_socket()
        if slab:
            raw["slab_per_socket_bytes"] = slab[0]
            report.add("kernel socket objects per agent (not in skmem)", fmt(slab[0], 0), "bytes",
                       f"slab object sizes with their packing, /proc/slabinfo: {slab[1]} (sizes, not a measured delta)")

        log(f"part 2: CPU with {n} agents connected and idle, over {seconds} s")
        m0 = ws_received(server.base, server.token)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        cpu, window = cpu_seconds(pid) - c0, time.monotonic() - t0
        m1 = ws_received(server.base, server.token)
        beats = n * window / interval
        counted = None if m0 is None or m1 is None else m1 - m0
        net = cpu - idle_cpu_rate * window
        raw.update(window_s=window, cpu_s=cpu, clock_tick_s=1 / os.sysconf("SC_CLK_TCK"), idle_cpu_per_s=idle_cpu_rate, heartbeats=beats,
                   messages_received=counted, cpu_pct_one_core=cpu / window * 100, us_per_heartbeat=cpu / beats * 1e6,
                   us_per_heartbeat_net_of_idle=net / beats * 1e6)
        report.add(f"server CPU with {n} idle agents", fmt(cpu / window * 100), "% of one core",
                   f"utime+stime of agent-server over {window:.1f} s, counted in {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms "
                   f"ticks (idle node alone: {idle_cpu_rate * 100:.2f} %)")
        report.add("server CPU per heartbeat", fmt(cpu / beats * 1e6), "µs",
                   f"that CPU / (N x {window:.1f} s / {interval} s = {beats:.0f} heartbeats, each a request sent and "
                   f"a response received; the server counted {counted} messages received); "
                   f"{net / beats * 1e6:.2f} µs net of the idle node's own CPU")


def relay(work, report, pg, redis, calls=100):
    """Part 4: Redis commands per request on node B for an agent whose socket node A holds."""
    raw = report.raw.setdefault("redis_relay", {"requests": calls})
    with ExitStack() as stack:
        log("part 4: two nodes on PostgreSQL and Redis, one agent on node A")
        db = database(pg, "relay")
        cid, secret = admin_client(db)
        a = keep(stack, Node(work, 0, db, redis.url), lambda n: (stop_proc(n.proc), n.log.close()))
        b = keep(stack, Node(work, 1, db, redis.url), lambda n: (stop_proc(n.proc), n.log.close()))
        fleet(stack, a.base, cid, secret, 1, "relay")
        tok = token(b.base, cid, secret)
        code, v = get(b.base, "fhir/R4/Agent/$bulk-status?name=relay&_count=1", tok)
        assert code == 200, (code, v)
        agent = v["entry"][0]["resource"]["parameter"][0]["resource"]["id"]
        holder = redis.cli("GET", f"ea:presence:{agent}").split(" ")[0]
        assert holder == a.id != b.id, (holder, a.id, b.id)
        ops = [("upgrade", f"fhir/R4/Agent/{agent}/$upgrade?version=9.9.9", "a frame forwarded to node A and the "
                "agent's reply routed back to B"),
               ("status", f"fhir/R4/Agent/{agent}/$status", "a presence read, no relay")]
        for name, path, what in ops:
            code, body = get(b.base, path, tok)  # warm-up: the scripts loaded, the pool open
            assert code == 200, (code, body)
            with Monitor(redis) as mon:
                s0, t0 = redis_stats(redis), time.monotonic()
                for _ in range(calls):
                    code, body = get(b.base, path, tok)
                    assert code == 200, (code, body)
                s1, busy = redis_stats(redis), time.monotonic() - t0
            if name == "upgrade":
                assert body.get("id") == "ok", body
            # What the two nodes send by themselves (presence renewal) over a quiet window, scaled.
            quiet = max(10.0, busy)
            time.sleep(quiet)
            s2 = redis_stats(redis)
            total, by_cmd = redis_delta(s0, s1)
            bg_total, bg_cmd = redis_delta(s1, s2)
            net = total - bg_total * busy / quiet
            publish = by_cmd.get("publish", 0) - bg_cmd.get("publish", 0) * busy / quiet
            sent, inside = sum(mon.client.values()), sum(mon.script.values())
            raw[name] = {"commands": total, "by_command": by_cmd, "seconds": busy, "background_commands": bg_total,
                         "background_seconds": quiet, "commands_per_request": total / calls,
                         "net_commands_per_request": net / calls, "publish_per_request": publish / calls,
                         "monitor_client_commands": mon.client, "monitor_script_commands": mon.script,
                         "round_trips_per_request": sent / calls, "script_commands_per_request": inside / calls}
            breakdown = ", ".join(f"{k.replace('|', ' ')} {c / calls:.2f}" for k, c in sorted(by_cmd.items()))
            report.add(f"Redis commands per cross-node ${name}", fmt(net / calls), "commands",
                       f"{calls} ${name} on node B, agent held by node A ({what}): total_commands_processed delta "
                       f"{total} less background {bg_total} in {quiet:.0f} s scaled to {busy:.2f} s, / {calls}; "
                       f"per request by `INFO commandstats`: {breakdown}")
            report.add(f"  of which sent by the nodes (round trips), per ${name}", fmt(sent / calls), "commands",
                       f"`redis-cli MONITOR` over the same requests: {fmt_calls(mon.client, calls)}; the other "
                       f"{inside / calls:.2f} ran inside those scripts ({fmt_calls(mon.script, calls)})")
            report.add(f"Redis PUBLISH per cross-node ${name}", fmt(publish / calls), "messages",
                       "cmdstat_publish delta / requests (each PUBLISH is one pub/sub message between nodes)")


def store_and_rollout(work, report, pg, redis, n, max_in_flight, growth, delay_ms):
    """Parts 3 and 5: rows and bytes per agent in PostgreSQL; a rollout of every agent: store
    writes, duration and CPU per member."""
    raw3 = report.raw.setdefault("postgres_per_agent", {"agents": n})
    raw5 = report.raw.setdefault("rollout", {"members": n, "max_in_flight": max_in_flight, "growth": growth,
                                             "agent_upgrade_delay_ms": delay_ms})
    with ExitStack() as stack:
        log(f"part 3: one node on PostgreSQL (with Redis), {n} agents")
        db = database(pg, "store")
        cid, secret = admin_client(db)
        node = keep(stack, Node(work, 2, db, redis.url), lambda x: (stop_proc(x.proc), x.log.close()))
        before = tables(pg, "store")
        fleet(stack, node.base, cid, secret, n, "cap",
              ["--version", "1.0.0", "--upgrade-delay-ms", str(delay_ms)])
        time.sleep(5)
        after = tables(pg, "store")
        grown = {t: (after[t][0] - before.get(t, (0, 0))[0], after[t][1] - before.get(t, (0, 0))[1]) for t in after}
        total = sum(b for b, _ in grown.values())
        raw3.update(tables_before=before, tables_after=after, bytes_per_agent=total / n,
                    per_table={t: {"bytes_per_agent": b / n, "rows_per_agent": r / n} for t, (b, r) in grown.items()})
        version = psql(pg, "store", "SHOW server_version")[0][0]
        report.add("PostgreSQL bytes per agent", fmt(total / n, 0), "bytes",
                   f"sum over all tables of pg_total_relation_size (heap, indexes, TOAST) after {n} agents were "
                   f"created and connected once, less before, / {n} (PostgreSQL {version}, no VACUUM)")
        for t, (b, r) in sorted(grown.items()):
            if b or r:
                report.add(f"  table {t}: rows per agent", fmt(r / n, 3), "rows",
                           f"count(*) delta / {n}; its bytes per agent: {b / n:,.0f}")

        log(f"part 5: rollout of {n} agents (waiting {PG_STATS_SETTLE} s for PostgreSQL's statistics first)")
        # Meanwhile, what N idle agents cost Redis: the node renews their presence records every
        # third of the presence TTL, in scripts of up to 1,000 records.
        r_idle, t_idle = redis_stats(redis), time.monotonic()
        time.sleep(PG_STATS_SETTLE)
        idle_s = time.monotonic() - t_idle
        idle_cmds, idle_calls = redis_delta(r_idle, redis_stats(redis))
        raw5.update(idle_redis_commands=idle_cmds, idle_redis_seconds=idle_s, idle_redis_calls=idle_calls)
        report.add("Redis commands per idle agent per second", fmt(idle_cmds / n / idle_s, 4), "commands",
                   f"total_commands_processed over {idle_s:.0f} s with {n} agents connected and idle on a node on "
                   f"Redis (presence renewals, keys written inside scripts included), / {n} / seconds; by command: "
                   + fmt_calls(idle_calls, 1))
        tok = token(node.base, cid, secret)
        pid = node.proc.pid
        s0, r0 = pg_counters(pg, "store"), redis_stats(redis)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        rid = start_rollout(types.SimpleNamespace(base=node.base, token=tok), "name=cap",
                            {"version": "2.0.0", "maxInFlight": max_in_flight, "growth": growth, "timeout": 56000})
        last = 0.0
        while True:
            _, status = get(node.base, f"fhir/R4/Rollout/{rid}", tok)
            if status["state"] not in ("active", "paused"):
                break
            if time.monotonic() - last > 10:
                last = time.monotonic()
                log(f"  rollout {status['state']}: {status.get('counts')}")
            time.sleep(0.05)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - c0
        r1 = redis_stats(redis)
        if status["state"] != "completed" or status["counts"]["succeeded"] != n:
            raise RuntimeError(f"the rollout did not complete with {n} succeeded: {status['state']} {status['counts']}")
        log(f"  rollout completed in {elapsed:.1f} s; waiting 2 x {PG_STATS_SETTLE} s for the statistics "
            "and the node's background writes")
        time.sleep(PG_STATS_SETTLE)
        s1 = pg_counters(pg, "store")
        time.sleep(PG_STATS_SETTLE)
        s2 = pg_counters(pg, "store")
        rolled = tables(pg, "store")

        def writes(a, b):
            return {t: tuple(x - y for x, y in zip(v, a["tables"].get(t, (0, 0, 0)))) for t, v in b["tables"].items()}

        span = elapsed + PG_STATS_SETTLE  # what s1 - s0 covers after the rollout's start
        xacts, bg_xacts = s1["xact_commit"] - s0["xact_commit"], s2["xact_commit"] - s1["xact_commit"]
        w, bg_w = writes(s0, s1), writes(s1, s2)
        ins_upd = sum(i + u for i, u, _ in w.values())
        bg_ins_upd = sum(i + u for i, u, _ in bg_w.values())
        scale = span / PG_STATS_SETTLE
        xacts_net, ins_upd_net = xacts - bg_xacts * scale, ins_upd - bg_ins_upd * scale
        redis_cmds, _ = redis_delta(r0, r1)
        growth_bytes = sum(rolled[t][0] - after.get(t, (0, 0))[0] for t in rolled)
        raw5.update(seconds=elapsed, cpu_s=cpu, us_cpu_per_member=cpu / n * 1e6, xact_commit=xacts,
                    background_xact_commit=bg_xacts, background_window_s=PG_STATS_SETTLE, covered_s=span,
                    xact_per_member=xacts / n, xact_per_member_net=xacts_net / n, tup_ins_upd=ins_upd,
                    background_tup_ins_upd=bg_ins_upd, tup_ins_upd_per_member=ins_upd / n,
                    tup_ins_upd_per_member_net=ins_upd_net / n,
                    per_table={t: {"ins": i / n, "upd": u / n, "del": d / n} for t, (i, u, d) in w.items() if i or u or d},
                    redis_commands=redis_cmds, redis_commands_per_member=redis_cmds / n,
                    bytes_per_member=growth_bytes / n,
                    rows_per_member={t: (rolled[t][1] - after.get(t, (0, 0))[1]) / n for t in rolled
                                     if rolled[t][1] != after.get(t, (0, 0))[1]})
        per_table = ", ".join(f"{t} +{i / n:.2f}/~{u / n:.2f}" for t, (i, u, _) in sorted(w.items()) if i or u)
        report.add("rollout duration", fmt(elapsed, 1), "s",
                   f"{n} members, maxInFlight {max_in_flight}, growth {growth}, each simulated agent back {delay_ms} ms "
                   "after its upgrade request; from the POST (Prefer: respond-async) to `completed`")
        report.add("PostgreSQL transactions per rollout member", fmt(xacts_net / n), "commits",
                   f"pg_stat_database xact_commit delta {xacts} (reads included) over the rollout + {PG_STATS_SETTLE} s, "
                   f"less the node's background ({bg_xacts} in the next {PG_STATS_SETTLE} s, scaled), / {n}; "
                   f"{xacts / n:.2f} before that correction")
        report.add("PostgreSQL rows written per rollout member", fmt(ins_upd_net / n), "rows",
                   f"pg_stat_user_tables n_tup_ins+n_tup_upd delta {ins_upd}, less the background ({bg_ins_upd}, "
                   f"scaled), / {n}; {ins_upd / n:.2f} before that; per table +ins/~upd per member: {per_table}")
        report.add("PostgreSQL bytes per rollout member", fmt(growth_bytes / n, 0), "bytes",
                   "pg_total_relation_size of all tables after the rollout less before it, / members")
        report.add("server CPU per rollout member (PostgreSQL)", fmt(cpu / n * 1e6, 0), "µs",
                   f"utime+stime of the node over the rollout ({cpu:.2f} s) / {n}: all its work, heartbeats included")
        report.add("Redis commands per rollout member", fmt(redis_cmds / n), "commands",
                   "total_commands_processed over the rollout / members (the node is on Redis; background included)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=30,
                    help="CPU window with every agent connected and idle (best a multiple of the heartbeat interval)")
    ap.add_argument("--heartbeat-interval", type=int, default=10, help="the server's (its default: 10 s)")
    ap.add_argument("--max-in-flight", type=int, default=500)
    ap.add_argument("--growth", type=float, default=2.0)
    ap.add_argument("--delay-ms", type=int, default=200, help="each simulated agent's upgrade time")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if args.seconds % args.heartbeat_interval:
        log(f"warning: --seconds {args.seconds:g} is no multiple of the heartbeat interval: each agent's heartbeats "
            "in the window are then one more or one fewer than counted, depending on when it connected")
    raise_open_files()
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.agents + 1000 > limit:
        sys.exit(f"one node holding {args.agents} agents needs about {args.agents + 1000} open files, and this machine "
                 f"allows {limit}: raise the hard limit (ulimit -Hn) or pass --agents {limit - 1000} or fewer")
    if not args.no_build:
        build("-p", "edge-agent-server", "-p", "edge-agent-e2e")

    def interrupted(signum, frame):
        # Once: the cleanup that follows is not to be interrupted again.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    report, complete = Report(), False
    version = sh(REL / "agent-server", "--version").strip()
    header = (f"# agent-server capacity coefficients\n\n{version}, {args.agents} simulated agents, heartbeat every "
              f"{args.heartbeat_interval} s, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    report.raw["run"] = {"version": version, "agents": args.agents, "cores": os.cpu_count(),
                         "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadgen_processes": -(-args.agents // PER_LOADGEN)}
    try:
        with ExitStack() as stack:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-agent-capacity-")))
            single_node(work, report, args.agents, args.seconds, args.heartbeat_interval)
            log("starting PostgreSQL and Redis")
            pg = keep(stack, Postgres(), stop_postgres)
            redis = keep(stack, Redis(work), stop_proc_of)
            relay(work, report, pg, redis)
            store_and_rollout(work, report, pg, redis, args.agents, args.max_in_flight, args.growth, args.delay_ms)
            complete = True
            log("done; stopping everything")
    except KeyboardInterrupt:
        log("interrupted: everything it started is stopped")
        sys.exit(130)
    finally:
        if report.rows:
            report.print(header, complete)


def stop_proc_of(x):
    stop_proc(x.proc)


if __name__ == "__main__":
    main()
