"""Benchmark: ``klpcore convert`` on a large module, against two baselines measured in the same run.

    python bench/convert.py --module amdgpu.ko --symbols System.map [--runs 5] [--unexport 0.5]

A real module references exported symbols only, so nothing would convert: the
run drops the ``__ksymtab_`` line of a fraction (``--unexport``) of the
module's undefined symbols from the System.map first, so that many references
become livepatch relocations (the writer's and the rules' worst case).  Baselines:
``objcopy`` copying the same module (GNU binutils rewriting the ELF) and
klpcore reading it (``ElfModule`` + livepatch discovery, what ``inspect`` does).
Best of ``--runs``; numbers on a shared machine are noisy.  No test asserts a time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Callable


def best(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", required=True)
    ap.add_argument("--symbols", required=True, help="the kernel's System.map")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--unexport", type=float, default=0.5)
    args = ap.parse_args()

    from klpcore import constants as C
    from klpcore.convert.plan import convert, from_kernel_symbols
    from klpcore.elf import ElfModule
    from klpcore.kernel import KernelTarget
    from klpcore.livepatch import discover
    from klpcore.symbols import load_many

    elf = ElfModule.from_file(args.module)
    shndx = elf.symbols["st_shndx"].tolist()
    und = sorted({n for i, n in enumerate(elf.symbol_names) if i and n and shndx[i] == C.SHN_UNDEF})
    step = max(1, round(1 / args.unexport)) if args.unexport > 0 else 0
    hidden = {f"__ksymtab_{n}" for n in und[::step]} if step else set()
    with tempfile.TemporaryDirectory() as tmp:
        smap = os.path.join(tmp, "System.map")
        with open(args.symbols) as src, open(smap, "w") as dst:
            dst.writelines(ln for ln in src if ln.split()[2] not in hidden)
        symbols = from_kernel_symbols(load_many([smap]))
        kernel = KernelTarget((6, 1))
        result = convert(elf, symbols, kernel, mark=True)
        moved = sum(c.relocations for c in result.converted)
        nrel = sum(s.size // C.RELA_SIZE for s in elf.rela_sections())
        out = os.path.join(tmp, "copy.ko")
        t_objcopy = best(lambda: subprocess.run(["objcopy", args.module, out], check=True), args.runs)
        t_read = best(lambda: discover(ElfModule.from_file(args.module)), args.runs)
        t_convert = best(lambda: convert(ElfModule.from_file(args.module), symbols, kernel, mark=True), args.runs)
    name = os.path.basename(args.module)
    print(f"{name}: {nrel} relocations, {len(und)} undefined symbols, {len(hidden)} unexported")
    print(f"  converted {len(result.converted)} symbols, {moved} relocations")
    print(f"  objcopy (baseline)        {t_objcopy * 1000:8.1f} ms")
    print(f"  klpcore read (baseline)   {t_read * 1000:8.1f} ms")
    print(f"  klpcore convert           {t_convert * 1000:8.1f} ms  ({t_convert / t_objcopy:.2f}x objcopy)")


if __name__ == "__main__":
    main()
