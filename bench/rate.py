#!/usr/bin/env python3
"""Relocations per second through the public ``Loader(...).load(...)``, per benchmark module.

    python bench/rate.py [--arch ppc64el] [--runs 7] [--hash] [--json FILE]

For each bench/data/<arch>/manifest.json (``bash bench/fetch.sh ARCH``): the symbols are loaded
once, then ``Loader(kernel=...).load(module, symbols, base)`` runs ``--runs`` times, the arches
interleaved round-robin so that load from other processes spreads over all of them; the best run
gives the rate (relocations of the module / seconds of one ``load()``).  ``--hash`` also prints the
SHA-256 of ``write_elf(load(...))``: the relocated module's bytes, to compare before/after a change.
No time is asserted; the target (issue 17) is 5 M relocations/s on every architecture.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TARGET_RATE = 5e6


def kernel_target(m: dict):  # type: ignore[no-untyped-def]
    from klpcore.kernel import KernelTarget

    opts = {
        k: int(v, 0) if isinstance(v, str) and v.startswith("0x") else v for k, v in m.get("kernel_options", {}).items()
    }
    return KernelTarget.from_string(m["kernel"], options=opts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=BENCH / "data")
    ap.add_argument("--arch", action="append", help="only these data directories")
    ap.add_argument("--runs", "-n", type=int, default=7)
    ap.add_argument("--hash", action="store_true", help="print the SHA-256 of each relocated module")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument(
        "--loads-only",
        type=int,
        metavar="K",
        help="set up, then run K untimed loads of each module and exit (for bench/instructions.sh: the instructions "
        "of K loads minus those of 1, under callgrind)",
    )
    args = ap.parse_args(argv)

    from klpcore.loader import Loader
    from klpcore.output import write_elf
    from klpcore.symbols import load_many

    manifests = sorted(args.data.glob("*/manifest.json"))
    if args.arch:
        manifests = [p for p in manifests if p.parent.name in args.arch]
    if not manifests:
        print(f"no inputs under {args.data}: run 'bash bench/fetch.sh ARCH' first", file=sys.stderr)
        return 2
    cases = []
    for p in manifests:
        m = json.loads(p.read_text())
        d = p.parent
        syms = load_many([str(d / s) for s in m["klpcore_symbols"]])
        cases.append((m, d / m["module"], syms, kernel_target(m), int(m["base"], 0)))
    if args.loads_only is not None:
        for _m, module, syms, kernel, base in cases:
            for _ in range(args.loads_only):
                Loader(kernel=kernel).load(module, syms, base)
        return 0
    times: dict[str, list[float]] = {m["arch"]: [] for m, *_ in cases}
    hashes: dict[str, str] = {}
    for m, module, syms, kernel, base in cases:  # warm-up (symbol index, imports)
        loaded = Loader(kernel=kernel).load(module, syms, base)
        if args.hash:
            hashes[m["arch"]] = hashlib.sha256(write_elf(loaded)).hexdigest()
    for _ in range(args.runs):
        for m, module, syms, kernel, base in cases:
            gc.collect()
            t0 = time.thread_time()
            Loader(kernel=kernel).load(module, syms, base)
            times[m["arch"]].append(time.thread_time() - t0)
    out = []
    for m, *_ in cases:
        best = min(times[m["arch"]])
        rate = m["relocations"] / best
        row = {
            "module": f"{m['arch']}/{m['module']}",
            "relocations": m["relocations"],
            "best": best,
            "rate": rate,
            "runs": times[m["arch"]],
        }
        if args.hash:
            row["sha256"] = hashes[m["arch"]]
        out.append(row)
        print(
            f"{row['module']:20} {m['relocations']:>9,} relocations  load {best * 1e3:7.1f} ms  "
            f"{rate / 1e6:6.2f} M/s ({'meets' if rate >= TARGET_RATE else 'misses'} 5 M/s)"
            + (f"  sha256 {row['sha256'][:16]}" if args.hash else "")
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
