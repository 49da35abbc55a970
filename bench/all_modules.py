#!/usr/bin/env python3
"""Apply every module of a Debian kernel package with klpcore (development script).

    python bench/all_modules.py --modules-dir DIR --system-map System.map.gz \
        [--config config.gz] [--kernel 6.1] [--base 0xffff800000d00000] [--json OUT]

DIR is the extracted package (``dpkg-deb -x linux-image-...deb DIR``; every
``*.ko`` below it is used).  As if every module of the package were loaded,
the modules are laid out one after another (text, read-only, writable rows,
each module page-aligned, as ``bench/gensyms.py`` lays out dependencies), from
``--others-base`` (default: 256 MiB below ``--base``, so calls to a module
more than 128 MiB away go through module PLTs, as under KASLR, while every
PREL32 stays in range) and their symbols become one kallsyms source with
``[module]`` suffixes (cached in ``--cache``); vmlinux's symbols come from
System.map.  Then each module is loaded on its own at ``--base`` with
``Loader.load`` (layout, symbol resolution against vmlinux and the other
modules' exports, every relocation, module PLTs, the ftrace trampoline).

Prints how many apply without error, the errors grouped by message, and the
time; ``--json`` writes the per-module results.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gensyms import layout_addresses, modinfo, norm, symbols, type_char


def module_paths(root: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".ko"):
                out.setdefault(norm(f[:-3]), os.path.join(d, f))
    return dict(sorted(out.items()))


def kallsyms_of_all(paths: dict[str, str], start: int) -> tuple[str, int]:
    """kallsyms lines of every module laid out from ``start``; (text, end)."""
    from elftools.elf.elffile import ELFFile

    lines: list[str] = []
    addr = start
    for name, path in paths.items():
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            name = norm(modinfo(elf).get("name", name))
            where, end = layout_addresses(elf, addr)
            for s in symbols(elf):
                if not s.name or s["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
                    continue
                ch = type_char(elf, s)
                if ch is None:
                    continue
                a = s["st_value"] if ch == "a" else (where[s["st_shndx"]] + s["st_value"]) & ((1 << 64) - 1)
                lines.append(f"{a:016x} {ch} {s.name}\t[{name}]")
        addr = end  # page aligned
    return "\n".join(lines) + "\n", addr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules-dir", required=True)
    ap.add_argument("--system-map", required=True)
    ap.add_argument("--config", help="the kernel's .config (gzip ok)")
    ap.add_argument("--kernel", default="6.1")
    ap.add_argument("--base", type=lambda s: int(s, 0), default=0xFFFF800000D00000)
    ap.add_argument("--others-base", type=lambda s: int(s, 0))
    ap.add_argument("-O", dest="options", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--limit", type=int, default=0, help="only the first N modules (0: all)")
    ap.add_argument("--cache", help="kallsyms file of the other modules: read if present, else written")
    ap.add_argument("--json", help="per-module results")
    a = ap.parse_args(argv)

    from klpcore import KernelTarget, Loader, get_plugin_manager, load_symbols
    from klpcore.errors import KlpError
    from klpcore.symbols import parse_symbol_text

    paths = module_paths(a.modules_dir)
    if a.limit:
        paths = dict(list(paths.items())[: a.limit])
    t0 = time.perf_counter()
    others = a.others_base if a.others_base is not None else a.base - (256 << 20)
    if a.cache and os.path.exists(a.cache):
        text = Path(a.cache).read_text()
        end = max(int(line[:16], 16) for line in text.splitlines() if line and line[17] != "a")
    else:
        text, end = kallsyms_of_all(module_paths(a.modules_dir), others)
        if a.cache:
            Path(a.cache).write_text(text)
    syms = load_symbols(a.system_map)
    syms.merge(parse_symbol_text(text, "modules.kallsyms"))
    t_syms = time.perf_counter() - t0
    print(
        f"all_modules: {len(paths)} modules; other modules' symbols at {others:#x}..{end:#x} "
        f"({text.count(chr(10))} lines), symbols ready in {t_syms:.1f} s",
        file=sys.stderr,
    )
    config = None
    if a.config:
        from klpcore.config import KernelConfig

        config = KernelConfig.from_file(a.config)
    opts = dict(o.split("=", 1) for o in a.options)
    kernel = KernelTarget.from_string(a.kernel, options=opts, config=config)
    pm = get_plugin_manager()
    results = []
    errors: collections.Counter[str] = collections.Counter()
    relocs = 0
    t1 = time.perf_counter()
    for i, (name, path) in enumerate(paths.items()):
        t = time.perf_counter()
        try:
            lm = Loader(pm, kernel=kernel).load(path, syms, a.base)
        except KlpError as exc:
            d = exc.diagnostics[0]
            key = (d.kernel_message or d.message).split(":")[-1].strip()[:90]
            errors[f"{type(exc).__name__}: {d.rtype or ''} {key}"] += 1
            results.append({"module": name, "ok": False, "error": str(exc).splitlines()[0][:300]})
        else:
            n = sum(v for k, v in lm.relocation_counts().items() if k.startswith("R_"))
            relocs += n
            plt = lm.module.arch_state.get("plt", {})
            results.append(
                {
                    "module": name,
                    "ok": True,
                    "relocations": n,
                    "seconds": round(time.perf_counter() - t, 4),
                    "plt_slots": sum(v["num"] for v in plt.values()) if plt else 0,
                }
            )
        if (i + 1) % 500 == 0:
            print(f"all_modules: {i + 1} done, {time.perf_counter() - t1:.1f} s", file=sys.stderr)
    elapsed = time.perf_counter() - t1
    ok = sum(r["ok"] for r in results)
    print(f"modules: {len(results)}; applied without error: {ok}; failed: {len(results) - ok}")
    print(f"relocations applied: {relocs:,}; time {elapsed:.1f} s (+ {t_syms:.1f} s symbols)")
    print(f"PLT slots used in total: {sum(r.get('plt_slots', 0) for r in results):,}")
    for msg, n in errors.most_common(20):
        print(f"  {n:5d}  {msg}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"kernel": kernel.label, "base": hex(a.base), "results": results}, fh, indent=1)
    return 0 if ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
