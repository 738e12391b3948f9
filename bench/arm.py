#!/usr/bin/env python3
"""edge-agent on ARM: the release binaries for aarch64 and armv7 (hard-float), built as .ci/arm
builds them (Debian's Rust and cross gcc), their sizes, and the idle memory of the supervisor
and the worker of each, run under QEMU user mode against a native release server; the native
x86_64 agent measured in the same run is the baseline.

    python3 bench/arm.py               # builds what it needs (several minutes the first time)
    python3 bench/arm.py --no-build --settle 10

Needs root once (binfmt_misc registration, as .ci/arm does). Under QEMU, a process's memory is
the emulator's: its own code and translation cache besides the agent's pages, so the ARM figures
are an upper bound of what the agent takes on an ARM host.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Agent, Server, children, pss_kib, row, rss_kib, wait_for  # noqa: E402
from common import REL, ROOT, build  # noqa: E402

ARM = ROOT / "target" / "arm"
TARGETS = [
    ("aarch64", "aarch64-unknown-linux-gnu", "/usr/aarch64-linux-gnu"),
    ("armv7", "armv7-unknown-linux-gnueabihf", "/usr/arm-linux-gnueabihf"),
]


def arm_build():
    script = '. .ci/qemu/env.sh && arm_binfmt && for t in $ARM_TARGETS; do arm_cargo "$t" build --release -p edge-agent --bin agent || exit 1; done'
    subprocess.run(["bash", "-c", script], cwd=ROOT, check=True)


def idle(work, server, name, binary, env, settle):
    """An agent connected for `settle` seconds: (supervisor, worker) as (PSS, RSS) in KiB."""
    a = Agent(work, server, binary, name)
    a.proc = subprocess.Popen([str(a.bin), "run", "--config", str(a.home / "agent.toml")],
                              stdout=subprocess.DEVNULL, stderr=open(a.logfile, "w"), env=dict(os.environ, **env))
    try:
        wait_for(lambda: server.status(a.id).get("status") == "connected", 120, 0.1)
        time.sleep(settle)
        sup = a.proc.pid
        worker = wait_for(lambda: (children(sup) or [None])[0], 10)
        return (pss_kib(sup), rss_kib(sup)), (pss_kib(worker), rss_kib(worker))
    finally:
        a.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--settle", type=int, default=60, help="seconds connected before measuring")
    args = ap.parse_args()
    if not args.no_build:
        build("-p", "edge-agent", "-p", "edge-agent-server")
        arm_build()
    native = REL / "agent"
    print(f"edge-agent on ARM, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    base = native.stat().st_size
    row("agent binary, stripped, x86_64 (baseline)", f"{base / 1048576:.2f} MiB")
    for arch, triple, _ in TARGETS:
        size = (ARM / triple / "release" / "agent").stat().st_size
        row(f"agent binary, stripped, {arch}", f"{size / 1048576:.2f} MiB", "", f"{size / base:.2f}x x86_64")
    with tempfile.TemporaryDirectory(prefix="edge-agent-arm-") as tmp:
        work = Path(tmp)
        server = Server(work / "srv")
        try:
            (s_pss, s_rss), (w_pss, w_rss) = idle(work, server, "native", native, {}, args.settle)
            row(f"x86_64 after {args.settle} s connected: supervisor + worker (PSS)",
                f"{(s_pss + w_pss) / 1024:.1f} MiB", "", f"worker {w_pss / 1024:.1f} + supervisor {s_pss / 1024:.1f}; RSS {(s_rss + w_rss) / 1024:.1f} MiB")
            for arch, triple, sysroot in TARGETS:
                binary = ARM / triple / "release" / "agent"
                (sp, sr), (wp, wr) = idle(work, server, arch, binary, {"QEMU_LD_PREFIX": sysroot}, args.settle)
                row(f"{arch} under QEMU, same: supervisor + worker (PSS)", f"{(sp + wp) / 1024:.1f} MiB", "",
                    f"worker {wp / 1024:.1f} + supervisor {sp / 1024:.1f}; RSS {(sr + wr) / 1024:.1f} MiB; "
                    f"{(sp + wp) / (s_pss + w_pss):.1f}x x86_64")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
