#!/usr/bin/env python3
"""``check`` every module of a kernel's tree against a target, in shuffled order (whole-tree run).

    nice -n 10 python bench/whole_tree.py --target ROOT[,ROOT...][:RELEASE] [--modules DIR]
        [--seed N] [--limit N] [--json OUT] [--baseline]

``--modules`` defaults to the target's own module tree (then every module must load); give another
release's tree to see each refused with the kernel's message.  One Target for the whole run, as
``klpcore check`` uses one per ``--target``: dependencies are judged once per target.

Prints the verdict counts, the first failure of each non-loading module grouped by message, and
the time: total, per module, and the baseline of the same run (``--baseline``: the time to read and
parse every module once, the floor of any whole-tree check).  Numbers taken while other work loads
the machine are noisy.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

from klpcore.check import Target, check_pair
from klpcore.check.command import parse_target_spec
from klpcore.modtree import MODULE_SUFFIXES, ModuleTree


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument("--target", required=True)
    p.add_argument("--modules", help="module tree to check (default: the target's own)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--limit", type=int, default=0, help="check only the first N modules of the shuffled order")
    p.add_argument("--json", help="per-module verdicts and first failures to this file")
    p.add_argument("--baseline", action="store_true", help="also time reading and parsing every module once")
    args = p.parse_args()
    roots, release = parse_target_spec(args.target)
    target = Target(roots, release)
    target.validate()
    tree = ModuleTree(args.modules) if args.modules else target.module_tree
    if tree is None:
        print(f"{args.target}: no module tree", file=sys.stderr)
        return 2
    paths = sorted(str(p) for p in tree.index.values() if str(p).endswith(MODULE_SUFFIXES))
    random.Random(args.seed).shuffle(paths)
    if args.limit:
        paths = paths[: args.limit]
    base_s = None
    if args.baseline:
        from klpcore.compress import read_input
        from klpcore.elf import ElfModule

        t0 = time.perf_counter()
        for m in paths:
            ElfModule(read_input(m, limit=1 << 30, what="module"), path=m)
        base_s = time.perf_counter() - t0
    counts: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    rows = []
    t0 = time.perf_counter()
    for n, m in enumerate(paths, 1):
        r = check_pair(m, target)
        counts[r.verdict] += 1
        why = None
        if r.verdict != "loads":
            f = r.first_error or (r.unchecked[0] if r.unchecked else None)
            why = f"{f.check}: {f.kernel_message or f.message}" if f else "?"
            reasons[why.replace(r.name, "<mod>")[:160]] += 1
        rows.append({"module": m, "name": r.name, "verdict": r.verdict, "why": why})
        if n % 250 == 0:
            print(f"  {n}/{len(paths)} {time.perf_counter() - t0:6.1f} s {dict(counts)}", file=sys.stderr)
    dt = time.perf_counter() - t0
    print(f"target {target.label} ({target.release}); modules {tree.root}: {len(paths)} (seed {args.seed})")
    print("verdicts: " + ", ".join(f"{v} {n}" for v, n in counts.most_common()))
    for why, n in reasons.most_common(15):
        print(f"  {n:5d}  {why}")
    print(f"time: {dt:.1f} s, {1000 * dt / max(len(paths), 1):.1f} ms per module")
    if base_s is not None:
        print(f"baseline (read + parse every module once): {base_s:.1f} s; check / baseline = {dt / base_s:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "seconds": dt, "modules": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
