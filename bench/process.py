#!/usr/bin/env python3
"""Whole-process ``klpcore apply`` against the interpreter floor, in the same run.

    python bench/process.py [--arch amd64] [--runs 9]

The floor is ``python -c "import numpy, elftools.elf.elffile, pluggy"`` (the interpreter with the
dependencies a klpcore command could need).  Both commands run ``--runs`` times, interleaved;
for each the best CPU time (user + system, from ``wait4``), the best wall clock and the peak
resident memory (``ru_maxrss``) are kept.  Targets (issue 17): apply within 1.6x the floor's
time, peak memory within the floor's + 3x the module's size.  No time is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
FLOOR = "import numpy, elftools.elf.elffile, pluggy"


def run(cmd: list[str]) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, peak RSS bytes) of one run of ``cmd``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{err}")
    return ru.ru_utime + ru.ru_stime, wall, ru.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=BENCH / "data")
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--runs", "-n", type=int, default=9)
    args = ap.parse_args(argv)
    d = args.data / args.arch
    m = json.loads((d / "manifest.json").read_text())
    module = d / m["module"]
    exe = shutil.which("klpcore", path=str(Path(sys.executable).parent)) or shutil.which("klpcore")
    klp = [exe] if exe else [sys.executable, "-m", "klpcore"]
    with tempfile.TemporaryDirectory(prefix="klpbench.") as tmp:
        cmd = [*klp, "apply", str(module)]
        for s in m["klpcore_symbols"]:
            cmd += ["--symbols", str(d / s)]
        cmd += ["--base", m["base"], "--kernel", m["kernel"], "-o", str(Path(tmp) / "out.ko")]
        for key, value in m.get("kernel_options", {}).items():
            cmd += ["-O", f"{key}={value}"]
        floor = [sys.executable, "-c", FLOOR]
        res: dict[str, list[tuple[float, float, int]]] = {"floor": [], "apply": []}
        for _ in range(args.runs):
            res["floor"].append(run(floor))
            res["apply"].append(run(cmd))
    size = module.stat().st_size
    best = {k: (min(r[0] for r in v), min(r[1] for r in v), max(r[2] for r in v)) for k, v in res.items()}
    fc, fw, fm = best["floor"]
    ac, aw, am = best["apply"]
    print(f"module: {m['arch']}/{m['module']} ({size / 2**20:.1f} MiB, {m['relocations']:,} relocations)")
    print(f"floor:  python -c {FLOOR!r}")
    print(f"apply:  {' '.join(cmd[:3])} ...")
    print(f"best of {args.runs}, interleaved     floor      apply   ratio  (target 1.6x)")
    print(f"  CPU time (user+sys)    {fc:7.3f} s  {ac:7.3f} s  {ac / fc:5.2f}x")
    print(f"  wall clock             {fw:7.3f} s  {aw:7.3f} s  {aw / fw:5.2f}x")
    print(
        f"  peak RSS               {fm / 2**20:7.1f} M  {am / 2**20:7.1f} M  floor + {(am - fm) / size:.2f}x module "
        "(target 3x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
