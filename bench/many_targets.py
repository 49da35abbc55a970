#!/usr/bin/env python3
"""One (livepatch) module against many real targets, cold and warm: the whole
``klpcore check MODULE -t T1 -t T2 ... --format jsonl -q`` as a subprocess.

    python bench/many_targets.py MODULE TARGET [TARGET ...] [--jobs N] [--runs 3]

cold: an empty target-read cache (a new ``KLPCORE_CACHE_DIR``); warm: the same
command again (the cache filled by the cold run); baseline in the same run: the
same command with ``--no-cache`` (every target's files parsed again).  The page
cache is not dropped (the machine is shared): "cold" is klpcore's cache only.
A TARGET may be given as PATH:RELEASE to count the same kernel twice (a target
of its own: read again).  The JSON lines of every run are compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

CPU: list[float] = []


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    """Wall clock, and the CPU time of the run (all its processes) in CPU[-1]."""
    cpu0 = cpu_children()
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, env=env, check=False)
    dt = time.perf_counter() - start
    CPU.append(cpu_children() - cpu0)
    if p.returncode not in (0, 1, 4):
        sys.stderr.write(p.stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"exit {p.returncode}")
    return dt, p.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("module")
    ap.add_argument("targets", nargs="+")
    ap.add_argument("--jobs", default="2")
    ap.add_argument("--runs", type=int, default=3, help="warm and no-cache runs: best of N")
    args = ap.parse_args()
    exe = shutil.which("klpcore", path=os.path.dirname(sys.executable)) or "klpcore"
    cmd = [exe, "check", args.module, "--format", "jsonl", "-q", "--jobs", args.jobs]
    for t in args.targets:
        cmd += ["-t", t]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, KLPCORE_CACHE_DIR=cache)
        cold, out_cold = run(cmd, env)
        cold_cpu = CPU[-1]
        warm = min(run(cmd, env)[0] for _ in range(args.runs))
        warm_cpu = min(CPU[-args.runs :])
        _, out_warm = run(cmd, env)
        nocache = min(run([*cmd, "--no-cache"], env)[0] for _ in range(args.runs))
        nocache_cpu = min(CPU[-args.runs :])
    last = json.loads(out_cold.splitlines()[-1])
    same = hashlib.sha256(out_cold).digest() == hashlib.sha256(out_warm).digest()
    name = os.path.basename(args.module)
    print(f"{name} against {len(args.targets)} targets (--jobs {args.jobs}): {last['verdicts']}")
    print(f"cold (empty cache)        {cold:7.2f} s wall {cold_cpu:7.2f} s CPU")
    print(f"warm (cache filled)       {warm:7.2f} s wall {warm_cpu:7.2f} s CPU   best of {args.runs}")
    print(
        f"baseline: --no-cache      {nocache:7.2f} s wall {nocache_cpu:7.2f} s CPU   best of {args.runs}   "
        f"warm/no-cache {warm / nocache:.2f} wall, {warm_cpu / nocache_cpu:.2f} CPU"
    )
    print(f"JSON lines identical cold and warm: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
