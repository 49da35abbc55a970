#!/usr/bin/env python3
"""Apply every module of a Debian kernel package with klpcore (development script).

Each module is loaded at the start of the module area against vmlinux's
System.map and the symbols of *all other* modules of the package, laid out at
plausible addresses above it (each module page-aligned after the previous one,
its sections where klpcore's layout puts them; kallsyms format with
``[module]`` and the modules' ``__ksymtab_`` markers, so exports resolve as in
a kernel that has them loaded).  Prints how many modules apply without error,
the failures by first message, and the time.

    python bench/all_modules.py --modules DIR --system-map System.map.gz \\
        --base 0x3ff7fd00000 [--kernel 6.1] [--json out.json] [--limit N]

For Debian 6.1 s390x: ``dpkg-deb -x linux-image-6.1.0-50-s390x_*.deb X`` and
``--modules X/lib/modules/6.1.0-50-s390x``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from klpcore import KernelTarget, Loader, get_plugin_manager, load_many
from klpcore.elf import ElfModule
from klpcore.errors import KlpError
from klpcore.loader import layout_module_for_symbols
from klpcore.symbols import parse_symbol_text

PERCPU = ".data..percpu"


def module_symbols(paths: list[Path], start: int, percpu: int) -> str:
    """kallsyms lines for every module, each laid out after the previous one;
    per-CPU variables (``.data..percpu``, e.g. x_tables' exported ``xt_recseq``)
    at consecutive offsets of the per-CPU area from ``percpu``."""
    lines: list[str] = []
    addr = start
    for p in paths:
        elf = ElfModule.from_file(p)
        name = elf.name
        end = addr
        for sym, value, kind in layout_module_for_symbols(elf, addr):
            if not addr <= value < addr + (1 << 30):
                continue  # per-CPU variables at the loader's default per-CPU base: placed below instead
            lines.append(f"{value:016x} {kind} {sym}\t[{name}]")
            end = max(end, value)
        addr = (end + 0x100000 + 0xFFFFF) & ~0xFFFFF  # room for the last section, next MiB
        pcpu = elf.section_by_name(PERCPU)
        if pcpu is not None:
            for i in range(1, elf.nsyms):
                if int(elf.symbols["st_shndx"][i]) == pcpu.index and elf.symbol_names[i]:
                    lines.append(f"{percpu + int(elf.symbols['st_value'][i]):016x} d {elf.symbol_names[i]}\t[{name}]")
            percpu += (pcpu.size + 63) & ~63
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", required=True, help="directory with the package's .ko files (searched recursively)")
    ap.add_argument("--system-map", required=True, help="vmlinux System.map (.gz ok)")
    ap.add_argument("--base", type=lambda s: int(s, 0), required=True, help="load address of each module")
    ap.add_argument("--others", type=lambda s: int(s, 0), help="where the other modules go (default base + 64 MiB)")
    ap.add_argument(
        "--percpu", type=lambda s: int(s, 0), default=0x1000000, help="per-CPU variables of modules from here"
    )
    ap.add_argument("--kernel", default=None, help="kernel version (default: each module's vermagic)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N modules (sorted by path)")
    ap.add_argument("--json", help="write per-module results here")
    args = ap.parse_args(argv)

    paths = sorted(Path(args.modules).rglob("*.ko"))
    if args.limit:
        paths = paths[: args.limit]
    t0 = time.perf_counter()
    others = module_symbols(
        sorted(Path(args.modules).rglob("*.ko")), args.others or args.base + (64 << 20), args.percpu
    )
    symbols = load_many([args.system_map])
    symbols.merge(parse_symbol_text(others, source="modules"))
    t_syms = time.perf_counter() - t0
    kernel = KernelTarget.from_string(args.kernel) if args.kernel else None
    loader = Loader(get_plugin_manager(), kernel=kernel)
    results: dict[str, dict[str, object]] = {}
    failures: Counter[str] = Counter()
    relocs = 0
    t1 = time.perf_counter()
    for p in paths:
        t = time.perf_counter()
        try:
            lm = loader.load(str(p), symbols, args.base)
        except KlpError as exc:
            first = exc.diagnostics[0]
            results[p.name] = {"ok": False, "error": str(first), "kernel": first.kernel_message}
            failures[first.message.split(":")[0][:80]] += 1
            continue
        n = sum(v for ph in lm.phases for k, v in ph.counts.items() if k == "applied")
        relocs += n
        results[p.name] = {"ok": True, "relocations": n, "seconds": round(time.perf_counter() - t, 4)}
    elapsed = time.perf_counter() - t1
    ok = sum(1 for r in results.values() if r["ok"])
    print(f"{ok} of {len(paths)} modules applied without error; {relocs:,} relocations")
    print(
        f"time: {elapsed:.1f} s for the modules ({elapsed / max(len(paths), 1) * 1000:.1f} ms each on average), "
        f"{t_syms:.1f} s for the symbol sources ({os.cpu_count()} CPUs, one used)"
    )
    for msg, n in failures.most_common(20):
        print(f"  {n:5d}  {msg}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "ok": ok,
                    "modules": len(paths),
                    "relocations": relocs,
                    "seconds": elapsed,
                    "symbol_seconds": t_syms,
                    "results": results,
                },
                fh,
                indent=1,
            )
    return 0 if ok == len(paths) else 1


if __name__ == "__main__":
    sys.exit(main())
