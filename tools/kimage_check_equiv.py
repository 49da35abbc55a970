#!/usr/bin/env python3
"""Dev-only: does ``check`` say the same with only the shipped packages (the kernel image standing in
for the -dbg System.map/vmlinux) as with the -dbg package?

    python tools/kimage_check_equiv.py TARGET DBG_ROOT [MODULE ...] [--sample N] [--out FILE]

TARGET is an extracted target as shipped (placeholder System.map, no vmlinux), DBG_ROOT the extracted
-dbg package of the same release.  Each module (default: every N-th module of the target's tree, plus
the ones named) is checked against ``Target(TARGET)`` and ``Target([TARGET, DBG_ROOT])``; the verdicts
and the kernel lines of the findings are compared.  Needs the real packages; tests do not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target")
    p.add_argument("dbg")
    p.add_argument("modules", nargs="*")
    p.add_argument("--sample", type=int, default=40, help="take every N-th module of the tree (0: none)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from klpcore.check import Target, check_pair

    image_only = Target(args.target)
    with_dbg = Target([args.target, args.dbg])
    mods = list(args.modules)
    if args.sample:
        tree = sorted(str(v) for v in image_only.module_index.values())
        mods += tree[:: args.sample]
    same = 0
    differ = []
    t_img = t_dbg = 0.0
    for m in mods:
        t = time.perf_counter()
        a = check_pair(m, image_only)
        t_img += time.perf_counter() - t
        t = time.perf_counter()
        b = check_pair(m, with_dbg)
        t_dbg += time.perf_counter() - t
        ka = (a.verdict, sorted(str(getattr(f, "kernel_message", "")) for f in a.findings if f.severity != "info"))
        kb = (b.verdict, sorted(str(getattr(f, "kernel_message", "")) for f in b.findings if f.severity != "info"))
        if ka == kb:
            same += 1
        else:
            differ.append({"module": os.path.basename(m), "image_only": ka, "with_dbg": kb})
    out = {
        "target": args.target,
        "modules": len(mods),
        "same_verdict_and_kernel_lines": same,
        "differ": differ,
        "image_notes": image_only.notes,
        "seconds_image_only": round(t_img, 2),
        "seconds_with_dbg": round(t_dbg, 2),
    }
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
