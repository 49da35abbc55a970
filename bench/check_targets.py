"""Time ``klpcore check`` of one module against N targets.

    python bench/check_targets.py MODULE TARGET [TARGET ...] [--repeat N]

Each TARGET is checked as its own Target object (every file read once, lazily),
so listing the same directory N times measures N cold targets.  Prints the
start-up time (imports), each pair's time and verdict, and the total.
"""

from __future__ import annotations

import argparse
import time

T0 = time.perf_counter()
from klpcore.check import Target, check_pair  # noqa: E402

T_IMPORT = time.perf_counter() - T0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("module")
    p.add_argument("targets", nargs="+")
    p.add_argument("--repeat", type=int, default=1, help="check each target this many times (cold each time)")
    args = p.parse_args()
    print(f"start-up (imports): {T_IMPORT:.3f} s")
    total = 0.0
    n = 0
    for _ in range(args.repeat):
        for path in args.targets:
            start = time.perf_counter()
            r = check_pair(args.module, Target(path))
            dt = time.perf_counter() - start
            total += dt
            n += 1
            print(f"{path}: {r.verdict} in {dt:.3f} s")
    print(f"{n} target(s): {total:.3f} s total, {total / n:.3f} s per target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
