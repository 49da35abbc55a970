#!/usr/bin/env python3
"""Every module of a Debian tree checked against its own kernel: one process,
``--jobs 2``, ``--executor dask-local`` with 2 workers; baseline GNU ld linking
the same modules one process each (``ld -r``, sequentially), in the same run;
wall clock and CPU time (user + system of the processes started) of each.

    python bench/tree.py TARGET [--modules DIR] [--limit N] [--ld x86_64-linux-gnu-ld] [--skip dask]

TARGET is an extracted kernel (``lib/modules/<release>/``, System.map from the
-dbg package or the corpus, config, linux-headers' Module.symvers); the modules
are every ``.ko*`` below ``--modules`` (default: TARGET's module tree).  Each
klpcore run is the whole command (``klpcore check @LIST -t TARGET --format jsonl
-q``) as a subprocess, wall clock; the JSON lines of every run must be byte for
byte the same (they are compared).  ld: ``LD -r -o /dev/null MODULE`` per module
(compressed modules are decompressed first, outside the timing).  Prints the
times and the ratios.  No test asserts a time.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def modules_of(root: Path) -> list[str]:
    from klpcore.check.inputs import expand_modules

    return expand_modules([str(root)])


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def klpcore_run(listfile: str, target: str, extra: list[str]) -> tuple[float, float, bytes, int]:
    exe = shutil.which("klpcore", path=os.path.dirname(sys.executable)) or "klpcore"
    cmd = [exe, "check", f"@{listfile}", "-t", target, "--format", "jsonl", "-q", *extra]
    cpu0 = cpu_children()
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, check=False)
    dt = time.perf_counter() - start
    cpu = cpu_children() - cpu0
    if p.returncode not in (0, 1):
        sys.stderr.write(p.stderr.decode(errors="replace")[-2000:])
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}")
    return dt, cpu, p.stdout, p.returncode


def ld_run(ld: str, mods: list[str]) -> tuple[float, float]:
    from klpcore.compress import MODULE_LIMIT, read_input

    with tempfile.TemporaryDirectory() as tmp:
        plain = []
        for i, m in enumerate(mods):
            if m.endswith(".ko"):
                plain.append(m)
            else:
                p = os.path.join(tmp, f"{i}.ko")
                Path(p).write_bytes(read_input(m, limit=MODULE_LIMIT, what="module"))
                plain.append(p)
        out = os.path.join(tmp, "out.o")
        cpu0 = cpu_children()
        start = time.perf_counter()
        for m in plain:
            subprocess.run([ld, "-r", "-o", out, m], check=True, capture_output=True)
        return time.perf_counter() - start, cpu_children() - cpu0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("--modules", help="directory of the modules (default: the target's module tree)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N modules")
    ap.add_argument("--ld", default="x86_64-linux-gnu-ld")
    ap.add_argument("--skip", action="append", default=[], choices=["ld", "dask", "jobs2", "one"])
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--no-cache", action="store_true", help="klpcore runs without the target-read cache")
    args = ap.parse_args()
    root = Path(args.modules) if args.modules else next(Path(args.target).glob("lib/modules/*"))
    mods = modules_of(root)
    if args.limit:
        mods = mods[: args.limit]
    print(f"{len(mods)} modules under {root}; target {args.target}")
    fig: dict[str, object] = {"modules": len(mods)}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(mods) + "\n")
        listfile = fh.name
    outs: dict[str, bytes] = {}
    runs = [("one", ["--jobs", "1"]), ("jobs2", ["--jobs", "2"]), ("dask", ["--executor", "dask-local", "--jobs", "2"])]
    if args.no_cache:
        runs = [(n, [*e, "--no-cache"]) for n, e in runs]
    for name, extra in runs:
        if name in args.skip:
            continue
        dt, cpu, out, code = klpcore_run(listfile, args.target, extra)
        outs[name] = out
        last = json.loads(out.splitlines()[-1])
        print(f"klpcore check {' '.join(extra):<30} {dt:8.2f} s wall {cpu:8.2f} s CPU  exit {code}  {last['verdicts']}")
        fig[name] = dt
        fig[name + "_cpu"] = cpu
    digests = {k: hashlib.sha256(v).hexdigest()[:16] for k, v in outs.items()}
    same = len(set(digests.values())) <= 1
    print(f"JSON lines identical across runs: {same} {digests}")
    fig["identical"] = same
    if "ld" not in args.skip:
        dt, cpu = ld_run(args.ld, mods)
        print(f"baseline: {args.ld} -r, one process per module {dt:8.2f} s wall {cpu:8.2f} s CPU")
        fig["ld"] = dt
        fig["ld_cpu"] = cpu
    if "one" in fig and "jobs2" in fig:
        print(f"--jobs 2 vs 1 process: {fig['one'] / fig['jobs2']:.2f}x faster")  # type: ignore[operator]
    if "one" in fig and "dask" in fig:
        print(f"dask-local 2 workers vs 1 process: {fig['one'] / fig['dask']:.2f}x faster")  # type: ignore[operator]
    if "ld" in fig:
        for k in ("one", "jobs2", "dask"):
            if k in fig:
                print(
                    f"klpcore {k} / ld: wall {fig[k] / fig['ld']:.2f}, "  # type: ignore[operator]
                    f"CPU {fig[k + '_cpu'] / fig['ld_cpu']:.2f}"  # type: ignore[operator]
                )
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2) + "\n")
    os.unlink(listfile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
