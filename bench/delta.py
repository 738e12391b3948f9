#!/usr/bin/env python3
"""edge-agent delta benchmark: compressed and patch releases, with the release binaries.

    python3 bench/delta.py              # builds what it needs (bench.py's builds); ~2 minutes after
    python3 bench/delta.py --no-build   # reuse them
    python3 bench/delta.py --only wire  # one section: wire (bytes on the wire), memory (100 MB patch)

- wire: the current build and the next one (the same sources, another version string: a
  one-line change, built as the tests build it) published by `agent release publish` with its
  defaults; the sizes of the patch and of the compressed copy against the binary's, and the bytes
  the release server actually sent (its access log) for a real upgrade.
- memory: both builds padded to 100 MB with the same random bytes, published at zstd level 3; an
  agent running the padded current build applies the patch to the next one while its worker's
  resident memory is sampled every 2 ms.

Needs what bench.py needs, and the `zstd` CLI for the interoperability check.
"""

import argparse
import json
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import bench as b

MiB = b.MiB


def publish(releases, version, binary, *extra):
    """Signed with a key made beside the release directory; the seconds it took."""
    key, _ = b.signing_key(b.REL / "agent", releases.parent)
    t = time.perf_counter()
    b.sh(str(b.REL / "agent"), "release", "publish", "--dir", str(releases), "--version", version, *extra,
         "--key", str(key), str(binary))
    return time.perf_counter() - t


def releases_lines(server, releases):
    """The configuration lines pointing an agent at `server`'s releases, trusting their key."""
    return f'releases_url = "{server.base}releases/"\n' + b.signing_key(b.REL / "agent", releases.parent)[1]


def asset(releases, version):
    return json.loads((releases / f"v{version}.json").read_text())["assets"][0]


def sent(server):
    """(path, bytes) of each release file the server sent, from its access log."""
    out = []
    for line in Path(server.log.name).read_text().splitlines():
        if "release file served" in line and "/download/" in line:
            path = re.search(r" path=(\S+)", line).group(1)
            out.append((path.rsplit("/", 1)[-1], int(re.search(r"bytes_sent=(\d+)", line).group(1))))
    return out


def upgrade(server, agent, version):
    t0 = time.perf_counter()
    code, body = server.get(f"fhir/R4/Agent/{agent.id}/$upgrade?version={version}&timeout=56000")
    elapsed = time.perf_counter() - t0
    text = body["issue"][0]["details"]["text"]
    assert (code, text) == (200, "All OK"), (code, text, agent.logfile.read_text()[-3000:])
    return elapsed


def bench_wire(work, current, nxt):
    print("\nbytes on the wire: release build, the next version differing by its version string")
    releases = work / "rel-wire"
    publish(releases, current, b.REL / "agent")
    secs = publish(releases, nxt, b.NEXT_DIR / "release" / "agent")
    a = asset(releases, nxt)
    raw, zst, patch = a["size"], a["compressed"]["size"], a["patches"][0]["size"]
    b.row("binary", f"{raw / MiB:.2f} MiB", "", f"published with its copy and patch in {secs:.1f} s (level 19)")
    b.row("patch from the previous version", f"{patch / 1024:.1f} KiB", "target <= 10%", f"{patch / raw:.2%} of the binary")
    b.row("compressed copy", f"{zst / MiB:.2f} MiB", "target <= 45%", f"{zst / raw:.1%} of the binary")
    server = b.Server(work / "srv-wire", releases)
    agent = b.Agent(work, server, b.REL / "agent", "wire", releases_lines(server, releases))
    agent.start()
    b.wait_for(lambda: server.status(agent.id)["status"] == "connected", 20)
    elapsed = upgrade(server, agent, nxt)
    b.wait_for(lambda: sent(server), 10)
    total = sum(n for _, n in sent(server))
    b.row("sent by the release server for the upgrade", f"{total / 1024:.1f} KiB", "target <= 10%",
          f"{total / raw:.2%} of the binary; {', '.join(name for name, _ in sent(server))}; All OK in {elapsed * 1000:.0f} ms")
    old = releases / "download" / f"v{current}" / f"agent-{current}-linux-{b.os.uname().machine}"
    out = work / "rebuilt"
    patch_file = releases / a["patches"][0]["browser_download_url"]
    subprocess.run(["zstd", "-q", "-f", "-d", f"--patch-from={old}", str(patch_file), "-o", str(out)], check=True)
    same = out.read_bytes() == (b.NEXT_DIR / "release" / "agent").read_bytes()
    b.row("zstd -d --patch-from rebuilds the binary", "yes" if same else "NO")
    agent.stop()
    server.stop()


def status_kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def bench_memory(work, current, nxt):
    print("\nmemory while applying a patch to a 100 MB binary (release build)")
    releases = work / "rel-mem"
    base, new = work / "base-100", work / "new-100"
    base.write_bytes(b.padded(b.REL / "agent", 100 * MiB, seed=100))
    new.write_bytes(b.padded(b.NEXT_DIR / "release" / "agent", 100 * MiB, seed=100))
    base.chmod(0o755)
    new.chmod(0o755)
    publish(releases, current, base, "--level", "3")
    secs = publish(releases, nxt, new, "--level", "3")
    a = asset(releases, nxt)
    b.row("patch between the two 100 MB binaries", f"{a['patches'][0]['size'] / 1024:.0f} KiB", "",
          f"published in {secs:.1f} s (level 3)")
    server = b.Server(work / "srv-mem", releases)
    agent = b.Agent(work, server, base, "mem", releases_lines(server, releases))
    agent.start()
    b.wait_for(lambda: server.status(agent.id)["status"] == "connected", 20)
    time.sleep(3)
    worker = agent.worker()
    idle = {f: status_kib(worker, f) for f in ("VmRSS", "RssAnon", "RssFile")}
    peak = dict(idle)
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                for f in peak:
                    peak[f] = max(peak[f], status_kib(worker, f))
            except FileNotFoundError:
                return
            time.sleep(0.002)

    t = threading.Thread(target=sample)
    t.start()
    elapsed = upgrade(server, agent, nxt)
    done.set()
    t.join()
    log = agent.logfile.read_text()
    assert "rebuilt the new binary from the patch" in log, log[-3000:]
    grow = (peak["VmRSS"] - idle["VmRSS"]) / 1024
    b.row("worker peak resident while patching (RSS)", f"{peak['VmRSS'] / 1024:.1f} MiB", "target idle + 8 MB",
          f"idle {idle['VmRSS'] / 1024:.1f} MiB, +{grow:.1f} MiB (anonymous peak +{(peak['RssAnon'] - idle['RssAnon']) / 1024:.1f}, "
          f"file-backed peak +{(peak['RssFile'] - idle['RssFile']) / 1024:.1f})")
    rate = re.findall(r"download complete bytes=(\d+) mib_per_sec=\"?([\d.]+)", log)
    b.row("$upgrade to All OK with the patch, 100 MB binary", f"{elapsed * 1000:.0f} ms", "",
          f"{', '.join(name for name, _ in sent(server))} sent; rebuilt at {rate[-1][1] if rate else '?'} MiB/s of patch")
    agent.stop()
    server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--only", choices=["wire", "memory"])
    args = ap.parse_args()
    if args.no_build:
        current, nxt = b.version_of(b.REL / "agent"), b.version_of(b.NEXT_DIR / "release" / "agent")
    else:
        current, nxt = b.build()
    with tempfile.TemporaryDirectory(prefix="edge-agent-delta-") as tmp:
        work = Path(tmp)
        print(f"edge-agent delta bench: {current} -> {nxt}, {b.os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
        if args.only in (None, "wire"):
            bench_wire(work, current, nxt)
        if args.only in (None, "memory"):
            bench_memory(work, current, nxt)


if __name__ == "__main__":
    main()
