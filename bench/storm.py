#!/usr/bin/env python3
"""Reconnect storm: a real agent-server (release build, SQLite) with many simulated agents
(crates/e2e/src/bin/loadgen.rs with --reconnect 1 --heartbeat-every 10) is restarted on the same
port and data directory, and the fleet comes back as real agents do, with jittered backoff.

Prints, in one run: the server's resident memory per connected agent; its CPU with every agent
connected and idle (each agent sends a heartbeat every 10 s, as a real agent does, and the server
asks one of an agent it has not heard from in its own 10 s), and beside it, over the same 30 s,
the CPU of the floor: a minimal WebSocket server (crates/e2e/src/bin/floor.rs) answering as many
other simulated agents' heartbeats, the least a server does for them on this machine, then
restarted under its agents for its CPU per reconnection (both servers share the two cores with
every load generator while they are measured);
the time from the new process's start until every agent is connected again, with the failures the
agents met meanwhile (HTTP 5xx answers to their upgrade apart); and the heartbeat round trips the
connected agents measured during the storm, against those of 20 s of steady state after it.

    python3 bench/storm.py [--agents 18900] [--no-build]

Heartbeat percentiles: each loadgen reports p50/p99/max of the round trips since its previous
`stats`, and the script asks every 0.5 s; the figures printed are merged from those windows
conservatively (see merged_quantile), the same way for the storm and for the steady state.

Runs as any user; raises its own open-file limit. Progress goes to standard error.
"""

import argparse
import math
import re
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import row, rss_kib  # noqa: E402
from capacity import PER_LOADGEN, close_stdin_and_wait, keep, stop_proc  # noqa: E402
from common import REL, build, raise_open_files, sh  # noqa: E402
from rollout import cpu_seconds  # noqa: E402

# How often the script asks the loadgens for their counts during the storm and after it.
POLL = 0.5
# How long the fleet may take to come back before the run fails.
STORM_LIMIT = 60
# File descriptors agent-server keeps beyond its connections (limits/accept.rs, RESERVED_FDS): a
# quarter of the open-file limit, at most this many.
SERVER_RESERVED_FDS = 1000
# Connections kept under the server's cap for API clients while the agents hold the rest.
API_HEADROOM = 100


def log(msg):
    print(f"[storm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    """A port free now on 127.0.0.1: the server must come back on the one it had, so it cannot be
    started on port 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """agent-server on SQLite in `work`/data, listening on a fixed port, started and restarted."""

    def __init__(self, work, port, extra=()):
        self.data = work / "data"
        # /metrics and /healthcheck on an address of their own, without a token: they answer while
        # the main listener's caps bite, and need no connection slot of the agents'.
        self.metrics = f"http://127.0.0.1:{free_port()}/"
        out = sh(REL / "agent-server", "client", "add", "--admin", "--data", self.data)
        self.cid = out.split('client_id = "', 1)[1].split('"', 1)[0]
        self.secret = out.split('client_secret = "', 1)[1].split('"', 1)[0]
        self.args = [str(REL / "agent-server"), "--listen", f"127.0.0.1:{port}", "--data", str(self.data),
                     "--metrics-listen", self.metrics.removeprefix("http://").rstrip("/"), *extra]
        self.base = f"http://127.0.0.1:{port}/"
        self.log_path = work / "server.log"
        self.proc = None

    def start(self):
        """Starts the process and returns once it listens."""
        with open(self.log_path, "a") as log_file:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log_file, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on"):
            sys.exit(f"agent-server did not start: {line!r}; its log:\n{self.log_tail()}")

    def stop(self):
        stop_proc(self.proc)

    def limit_hits(self):
        """{limit: times it bit} since this process started, those above 0."""
        with urllib.request.urlopen(self.metrics + "metrics", timeout=30) as r:
            text = r.read().decode()
        hits = re.findall(r'^agent_server_limit_hits(?:_total)?\{limit="(\w+)"\} (\d+)', text, re.M)
        return {k: int(v) for k, v in hits if int(v)}

    def log_tail(self, lines=20):
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Floor:
    """The `floor` server (crates/e2e/src/bin/floor.rs): the least a server on the same stack does
    for the same sockets, on a fixed port so that it can be restarted under its fleet."""

    def __init__(self, port):
        self.port = port
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([str(REL / "floor"), "--listen", f"127.0.0.1:{self.port}"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening"):
            sys.exit(f"the floor server did not start: {line!r}")

    def stop(self):
        stop_proc(self.proc)


def wait_connected(fleet, n, limit):
    """Seconds until `fleet` has `n` agents connected, or None past `limit` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        time.sleep(POLL)
        if total(fleet.stats(), "connected") == n:
            return time.monotonic() - t0
    return None


class Fleet:
    """The loadgen processes, at most PER_LOADGEN agents each (the open-file limit is per process)."""

    def __init__(self, stack, node, n, prefix="storm", floor=None):
        """`n` agents made through `node`'s API and connected to it; or, with `floor` (its
        WebSocket URL), agents with made-up ids connected to the floor server (none made)."""
        self.procs = []
        to = ["--floor", floor] if floor else ["--server", node.base, "--client-id", node.cid,
                                               "--client-secret", node.secret]
        for i, start in enumerate(range(0, n, PER_LOADGEN)):
            count = min(PER_LOADGEN, n - start)
            p = subprocess.Popen([str(REL / "loadgen"), *to, "--count", str(count), "--prefix", f"{prefix}{i}",
                                  "--reconnect", "1", "--heartbeat-every", "10"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            keep(stack, p, close_stdin_and_wait)
            self.procs.append(p)
            t0 = time.monotonic()
            line = p.stdout.readline()
            if not line.startswith("ready"):
                sys.exit(f"loadgen {i} ({count} agents) did not get them connected: {line!r}")
            log(f"  loadgen {i}: {count} agents created and connected in {time.monotonic() - t0:.0f} s "
                f"({start + count} of {n})")

    def stats(self):
        """Each loadgen's `stats` as a dict of ints (asked of all, then read: they answer at once)."""
        for p in self.procs:
            p.stdin.write("stats\n")
            p.stdin.flush()
        out = []
        for i, p in enumerate(self.procs):
            line = p.stdout.readline()
            if not line.startswith("stats "):
                sys.exit(f"loadgen {i} did not answer `stats`: {line!r}")
            out.append({k: int(v) for k, v in (f.split("=") for f in line.split()[1:])})
        return out


def total(stats, key):
    return sum(s[key] for s in stats)


def windows_of(stats):
    """The heartbeat windows (count, p50, p99, max) in one round of `stats`, empty ones left out."""
    return [(s["hb"], s["hb_p50_us"], s["hb_p99_us"], s["hb_max_us"]) for s in stats if s["hb"]]


def merged_quantile(windows, q):
    """An upper bound on the q-quantile (nearest rank) of all the samples of `windows`, each known
    only by (count, p50, p99, max): the smallest of those values that at most the share (1 - q) of
    all the samples can exceed. Above its p99, a window has at most n - ceil(0.99 n) samples, above
    its p50 at most n - ceil(0.5 n), above its max none. With one window: its own p50 or p99.
    Tighter than the max of the windows' p99 (which, for a window under 100 samples, is its max)."""
    n_all = sum(w[0] for w in windows)
    if not n_all:
        return None
    allowed = n_all - math.ceil(q * n_all)

    def may_exceed(t):
        out = 0
        for n, p50, p99, top in windows:
            if t >= top:
                continue
            if t >= p99:
                out += n - math.ceil(0.99 * n)
            elif t >= p50:
                out += n - math.ceil(0.5 * n)
            else:
                out += n
        return out

    return next(t for t in sorted({v for w in windows for v in w[1:]}) if may_exceed(t) <= allowed)


def latency(windows):
    """(samples, p50, p99, max, max of the windows' p99) in microseconds, or None without samples."""
    if not windows:
        return None
    return (sum(w[0] for w in windows), merged_quantile(windows, 0.50), merged_quantile(windows, 0.99),
            max(w[3] for w in windows), max(w[2] for w in windows))


def ms_us(us):
    return "n/a" if us is None else f"{us / 1000:.1f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=18900)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--connection-threads", type=int, help="the server's --connection-threads (default: its own)")
    args = ap.parse_args()
    raise_open_files()
    limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The server caps its connections at what its open-file limit allows (limits/accept.rs), at most
    # 19,000 by default: the cap is set to that very figure, so that a larger hard limit is used.
    fits = limit - min(SERVER_RESERVED_FDS, limit // 4)
    # The agents leave room under the cap for the loadgens' REST clients and the script's calls
    # (19,000 agents would fill it: the last loadgen's agents wait for idle API connections to
    # time out).
    if args.agents > fits - API_HEADROOM:
        sys.exit(f"agent-server holding {args.agents} agents needs an open-file limit of about "
                 f"{args.agents + SERVER_RESERVED_FDS}, and this machine allows {limit}: raise the hard limit "
                 f"(ulimit -Hn) or pass --agents {fits - API_HEADROOM} or fewer")
    if not args.no_build:
        build("-p", "edge-agent-server", "-p", "edge-agent-e2e")

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-agent-storm-")))
        port = free_port()
        threads = [] if args.connection_threads is None else ["--connection-threads", str(args.connection_threads)]
        node = Node(work, port, ["--max-connections", str(fits), *threads])
        log(f"a. agent-server on 127.0.0.1:{port} (SQLite, --max-connections {fits})")
        node.start()
        keep(stack, node, Node.stop)
        time.sleep(2)
        rss_idle = rss_kib(node.proc.pid)
        log(f"  idle: {rss_idle / 1024:.1f} MiB resident")

        log(f"b. {args.agents} agents in {-(-args.agents // PER_LOADGEN)} loadgen processes")
        fleet = Fleet(stack, node, args.agents)
        time.sleep(15)
        connected = total(fleet.stats(), "connected")
        rss = rss_kib(node.proc.pid)
        if connected != args.agents:
            sys.exit(f"only {connected} of {args.agents} agents are connected 15 s after all were ready")

        log(f"c. the floor: a minimal WebSocket server, and {args.agents} more agents that heartbeat to it")
        floor = Floor(free_port())
        floor.start()
        keep(stack, floor, Floor.stop)
        floor_fleet = Fleet(stack, node, args.agents, prefix="floor", floor=f"ws://127.0.0.1:{floor.port}/ws/agent")
        time.sleep(15)

        log("d. CPU of the server and of the floor over the same 30 s, every agent connected and idle")
        pid = node.proc.pid
        c0, f0, t0 = cpu_seconds(pid), cpu_seconds(floor.proc.pid), time.monotonic()
        time.sleep(30)
        cpu, window = cpu_seconds(pid) - c0, time.monotonic() - t0
        floor_cpu = cpu_seconds(floor.proc.pid) - f0

        log("e. the floor restarted: its agents reconnect (its CPU per reconnection)")
        floor.stop()
        t_lost = time.monotonic()
        while total(floor_fleet.stats(), "connected") and time.monotonic() - t_lost < 10:
            time.sleep(0.1)
        if still := total(floor_fleet.stats(), "connected"):
            log(f"  {still} of the floor's agents still connected 10 s after it stopped")
        floor.start()
        floor_back = wait_connected(floor_fleet, args.agents, STORM_LIMIT)
        floor_storm_cpu = cpu_seconds(floor.proc.pid)
        if floor_back is None:
            log(f"  the floor's agents were not all back within {STORM_LIMIT} s")
        for p in floor_fleet.procs:
            close_stdin_and_wait(p)
        floor.stop()
        time.sleep(5)

        log("f. restart: SIGTERM, wait for the exit, start again on the same port and data")
        before = fleet.stats()  # the counters to take differences from; forgets the heartbeats so far
        storm_windows = []
        t_term = time.monotonic()
        node.stop()
        stopped = time.monotonic() - t_term
        t_restart = time.monotonic()
        node.start()
        listening = time.monotonic() - t_restart
        back = None
        while True:
            time.sleep(POLL)
            now = fleet.stats()
            storm_windows += windows_of(now)
            elapsed = time.monotonic() - t_restart
            if total(now, "connected") == args.agents:
                back = elapsed
                # The new process's CPU from its start until every agent is back: its start-up,
                # and each agent's handshake, access token check and first statuses.
                storm_cpu = cpu_seconds(node.proc.pid)
                break
            if elapsed > STORM_LIMIT:
                break
        after = now
        # The new process counts from its start: what its caps refused or closed in the storm.
        hits = node.limit_hits()

        def delta(key):
            return total(after, key) - total(before, key)

        log(f"  {'all back' if back else 'NOT all back'} after {elapsed:.1f} s: "
            + " ".join(f"{k}={delta(k)}" for k in ("reconnected", "refused", "http5xx", "http_other", "connect_errors")))
        storm = latency(storm_windows)
        steady = None
        if back:
            log("g. 20 s of steady state")
            steady_windows = []
            t1 = time.monotonic()
            while time.monotonic() - t1 < 20:
                time.sleep(POLL)
                steady_windows += windows_of(fleet.stats())
            steady = latency(steady_windows)

        # The table.
        version = sh(REL / "agent-server", "--version").strip()
        print(f"reconnect storm: {version}, SQLite, {args.agents} simulated agents in {len(fleet.procs)} loadgen "
              f"processes, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
        row("server RSS per connected agent, over idle", f"{(rss - rss_idle) / connected:.1f} KiB",
            "target <= 5 KiB", f"VmRSS {rss / 1024:.1f} MiB with {connected} agents (15 s after ready), "
            f"{rss_idle / 1024:.1f} MiB idle")
        row("server CPU, every agent connected and idle", f"{cpu / window * 100:.2f} %", "target <= 5 % of a core",
            f"% of one core, utime+stime over {window:.1f} s; each agent's heartbeat every 10 s (the server asks "
            f"only agents it has not heard from): {cpu / (connected * window / 10) * 1e6:.1f} us per agent per 10 s")
        row("  the floor, in the same 30 s", f"{floor_cpu / window * 100:.2f} %", "",
            f"a minimal WebSocket server on the same stack (crates/e2e/src/bin/floor.rs: one thread, no token, "
            f"no record, no timer) answering {args.agents} other agents' heartbeats: the server is "
            f"{cpu / floor_cpu:.2f}x the floor" if floor_cpu else "no CPU time counted")
        if floor_back is not None:
            row("  the floor's CPU per reconnection", f"{floor_storm_cpu / args.agents * 1e6:.0f} us", "",
                f"the floor restarted under its agents, back in {floor_back:.1f} s: its utime+stime over "
                f"{args.agents} reconnections (TCP, the WebSocket upgrade, the connect request)")
        else:
            row("  the floor's CPU per reconnection", "n/a", "",
                f"its agents were not all back within {STORM_LIMIT} s of its restart")
        row("restart to every agent connected again",
            f"{back:.1f} s" if back else f"> {STORM_LIMIT} s", "target <= 30 s",
            f"from the new process's start, polled every {POLL} s; old one stopped in {stopped:.1f} s, "
            f"new one listening after {listening:.2f} s")
        if back:
            vs_floor = (f"; {storm_cpu / floor_storm_cpu:.2f}x the floor's" if floor_back and floor_storm_cpu else "")
            row("server CPU per reconnection in the storm", f"{storm_cpu / args.agents * 1e6:.0f} us", "",
                f"the new process's utime+stime from its start to every agent back ({storm_cpu:.2f} s), "
                f"over {args.agents} agents: the WebSocket upgrade, the access token's check, registering, "
                f"the statuses{vs_floor}")
        row("HTTP 5xx answers to reconnecting agents' upgrades", f"{delta('http5xx')}", "target 0",
            f"other statuses {delta('http_other')}, agent:error answers {delta('connect_errors')}; the server's "
            f"limit hits in the storm: {', '.join(f'{k} {v}' for k, v in sorted(hits.items())) or 'none'}")
        row("  sockets refused or lost before connect response", f"{delta('refused')}", "",
            f"{delta('reconnected')} reconnections; refused is expected while the server is down")
        if storm:
            row("heartbeat round trip in the storm, p50", ms_us(storm[1]), "",
                f"{storm[0]} heartbeats from SIGTERM to all connected; upper bounds merged from per-process "
                f"{POLL} s windows")
            row("heartbeat round trip in the storm, p99", ms_us(storm[2]), "",
                f"max {ms_us(storm[3])}; the max of the processes' per-window p99: {ms_us(storm[4])}")
        if steady:
            row("heartbeat round trip, steady state after, p50", ms_us(steady[1]), "",
                f"{steady[0]} heartbeats in 20 s, merged the same way")
            ratio = f"storm p99 {storm[2] / steady[2]:.1f}x steady" if storm and steady[2] else ""
            row("heartbeat round trip, steady state after, p99", ms_us(steady[2]), "",
                f"max {ms_us(steady[3])}; {ratio}")
        sys.stdout.flush()
        if not back:
            log(f"agent-server's log, last lines:\n{node.log_tail()}")
            sys.exit(f"only {total(after, 'connected')} of {args.agents} agents reconnected within {STORM_LIMIT} s "
                     "of the restart")
        log("done; stopping everything")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # The ExitStack has stopped the server and the loadgens on the way out.
        sys.exit(130)
