#!/usr/bin/env python3
"""edge-agent hostile-network benchmark: a release agent-server's resident memory and /healthcheck
latency (p50, p99, each check on a new connection) while 10,000 hostile connections are opened
(a third slow headers, a third half request lines, a third anonymous agent sockets that never
complete their handshake), against the same server idle in the same run; and what the limits
cost on the normal path: `$bulk-status?_count=100` and one `$upgrade`, with the default limits
and with every limit relaxed by its flag, alternated in the same run.

    python3 bench/hostile.py              # builds the release binaries if needed
    python3 bench/hostile.py --no-build   # uses target/release as it is

The attack runs twice: with the default limits (the deadlines and caps close or refuse much of
it: what stays open is counted), and with the deadlines and the anonymous-socket cap raised so
that all 10,000 stay open for the measurement. The hostile sockets come from 200 loopback
addresses (127.0.0.2 and up); the health checks from 127.0.0.250.
Needs: cargo. Runs as any user; raises its own open-file limit.
"""

import argparse
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REL, Server, percentile, row, rss_kib  # noqa: E402
from common import build, ms, raise_open_files  # noqa: E402

WATCHER = "127.0.0.250"
HOLD_ALL = ["--header-timeout", "120", "--handshake-timeout", "120", "--max-anonymous-sockets", "20000"]
RELAXED = ["--header-timeout", "86400", "--body-timeout", "86400", "--idle-timeout", "86400",
           "--max-connections", "1000000", "--max-anonymous-per-ip", "1000000", "--max-anonymous-sockets", "1000000",
           "--handshake-timeout", "86400", "--max-anonymous-frame", "16777216", "--auth-rate-per-ip", "1000000",
           "--issue-rate-per-client", "1000000", "--max-tokens-per-client", "1000000"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(work, extra):
    mport = free_port()
    server = Server(work, extra=["--metrics-listen", f"127.0.0.1:{mport}", *extra])
    server.metrics_port = mport
    return server


def gauge(server, name):
    with socket.create_connection(("127.0.0.1", server.metrics_port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    return next((float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " ")), 0.0)


def healthchecks(server, seconds):
    """/healthcheck on a new connection from WATCHER, every 20 ms for `seconds`: latencies, failures."""
    host, port = server.addr.rsplit(":", 1)
    lat, failed, end = [], 0, time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=5, source_address=(WATCHER, 0))
            c.request("GET", "/healthcheck")
            ok = c.getresponse().status == 200
            c.close()
        except OSError:
            ok = False
        lat.append(time.perf_counter() - t)
        failed += not ok
        time.sleep(0.02)
    return lat, failed


async def hostile(host, port, kind, i, stop, ready):
    src = f"127.0.0.{2 + i % 200}"
    try:
        r, w = await asyncio.open_connection(host, port, local_addr=(src, 0))
        if kind == 0:  # slow headers: a byte every 5 s
            w.write(b"GET /fhir/R4/Agent HTTP/1.1\r\nHost: x\r\n")
        elif kind == 1:  # half a request line, then nothing
            w.write(b"GET /fhir/R4/Ag")
        else:  # an agent socket that never sends its connect request
            w.write(b"GET /ws/agent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await w.drain()
        ready.append(i)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 5)
            except asyncio.TimeoutError:
                if kind == 0:
                    w.write(b"X")
                    await w.drain()
        w.close()
    except (OSError, ConnectionError):
        ready.append(i)


def attack(server, n, seconds):
    """Opens `n` hostile connections, then measures for `seconds`: (latencies, failures, RSS peak KiB, open)."""
    host, port = server.addr.rsplit(":", 1)
    stop_flag, out = threading.Event(), {}

    async def run():
        stop, ready = asyncio.Event(), []
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(hostile(host, int(port), i % 3, i, stop, ready)))
            while len(tasks) - len(ready) >= 500:  # at most 500 connecting at once
                await asyncio.sleep(0.001)
        while len(ready) < n:
            await asyncio.sleep(0.01)
        out["opened"] = True
        while not stop_flag.is_set():
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    t = threading.Thread(target=lambda: asyncio.run(run()))
    t.start()
    while "opened" not in out:
        time.sleep(0.05)
    time.sleep(1)
    peak = [rss_kib(server.proc.pid)]
    sampler_stop = threading.Event()

    def sample():
        while not sampler_stop.is_set():
            peak.append(rss_kib(server.proc.pid))
            time.sleep(0.1)
    s = threading.Thread(target=sample)
    s.start()
    held = gauge(server, "agent_server_connections")
    lat, failed = healthchecks(server, seconds)
    sampler_stop.set()
    s.join()
    stop_flag.set()
    t.join()
    return lat, failed, max(peak), held


def normal_path(servers, rounds):
    """$bulk-status?_count=100 and one $upgrade on each server, alternated: latencies by name."""
    out = {name: {"bulk": [], "upgrade": []} for name, _, _ in servers}
    conns = {}
    for name, server, agent in servers:
        host, port = server.addr.rsplit(":", 1)
        conns[name] = http.client.HTTPConnection(host, int(port), timeout=60)
    for _ in range(rounds):
        for name, server, agent in servers:
            c = conns[name]
            for key, path in [("bulk", "/fhir/R4/Agent/$bulk-status?name=load&_count=100"),
                              ("upgrade", f"/fhir/R4/Agent/{agent}/$upgrade?version=9.9.9")]:
                t = time.perf_counter()
                c.request("GET", path, headers={"Authorization": f"Bearer {server.token}"})
                resp = c.getresponse()
                body = resp.read()
                out[name][key].append(time.perf_counter() - t)
                assert resp.status == 200, (path, resp.status, body[:200])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    raise_open_files()
    if not args.no_build:
        build("-p", "edge-agent-server", "-p", "edge-agent-e2e")
    load = os.getloadavg()
    print(f"edge-agent hostile bench: {args.connections} hostile connections, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    with tempfile.TemporaryDirectory(prefix="edge-agent-hostile-bench-") as tmp:
        for label, extra in [("default limits", []), ("deadlines raised, all held", HOLD_ALL)]:
            server = start(Path(tmp) / label.split()[0], extra)
            time.sleep(1)
            idle_rss = rss_kib(server.proc.pid)
            idle, _ = healthchecks(server, args.seconds)
            p50, p99 = statistics.median(idle), percentile(idle, 0.99)
            lat, failed, peak, held = attack(server, args.connections, args.seconds)
            a50, a99 = statistics.median(lat), percentile(lat, 0.99)
            print(f"\n{label}")
            row("idle: resident memory", f"{idle_rss / 1024:.1f} MiB")
            row("idle: /healthcheck p50 / p99", f"{ms(p50)} / {ms(p99)}")
            row("under attack: connections the server held", f"{held:.0f}", "", f"of {args.connections} opened")
            row("under attack: resident memory (peak)", f"{peak / 1024:.1f} MiB", "target <= 100 MB",
                f"+{(peak - idle_rss) / 1024:.1f} MiB over idle")
            row("under attack: /healthcheck p50 / p99", f"{ms(a50)} / {ms(a99)}", "target p99 <= 2x idle",
                f"p99 {a99 / p99:.2f}x idle; {failed} of {len(lat)} failed")
            server.stop()

        print("\nthe normal path, 100 agents connected to each server")
        servers, loads = [], []
        for name, extra in [("limits on", []), ("limits relaxed", RELAXED)]:
            server = start(Path(tmp) / name.replace(" ", "-"), extra)
            lg = subprocess.Popen([str(REL / "loadgen"), "--server", server.base, "--client-id", server.cid,
                                   "--client-secret", server.secret, "--count", "100", "--prefix", "load"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert lg.stdout.readline().startswith("ready")
            _, bundle = server.get("fhir/R4/Agent?name=load&_count=1")
            servers.append((name, server, bundle["entry"][0]["resource"]["id"]))
            loads.append(lg)
        results = normal_path(servers, args.rounds)
        base = results["limits relaxed"]
        for key, what in [("bulk", "$bulk-status?_count=100"), ("upgrade", "$upgrade, agent answering at once")]:
            for name in ["limits on", "limits relaxed"]:
                xs = results[name][key]
                ratio = f"{statistics.median(xs) / statistics.median(base[key]):.2f}x relaxed" if name == "limits on" else ""
                row(f"{what}, {name} (median of {len(xs)})", ms(statistics.median(xs)), "", f"p95 {ms(percentile(xs, 0.95))}; {ratio}")
        for lg in loads:
            lg.stdin.close()
            lg.wait(timeout=30)
        for _, server, _ in servers:
            server.stop()
    print(json.dumps({"load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
