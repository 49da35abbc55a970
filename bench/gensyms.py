#!/usr/bin/env python3
"""Generate the symbol files the benchmark needs for one module.

Debian's real System.map is in the huge -dbg package; the corpus keeps a copy
of it for vmlinux.  A module's other dependencies (drm, ttm, ...) are loaded
modules in a real kernel: their symbols come from /proc/kallsyms with
``[module]`` suffixes.  This script makes that part:

* ``modules.kallsyms``: every named symbol of every module the target module
  depends on (transitively, from ``.modinfo`` ``depends=``), laid out at
  plausible addresses above the target module (each dependency page-aligned
  after the previous one, its sections in kernel row order: text, read-only,
  writable), in kallsyms format with ``[module]`` suffixes.  The modules' own
  ``__ksymtab_<name>`` symbols are kept, so klpcore sees the exports.
  Without a System.map (``--system-map`` not given or missing), a synthetic
  vmlinux block is added too: every undefined symbol no dependency exports
  gets an address in kernel text and a ``__ksymtab_`` marker.
* ``ld.syms``: exactly one ``ADDR T NAME`` line per undefined symbol of the
  target module, resolved the way the kernel does (exported symbols only:
  vmlinux first, then the dependencies; an unresolved weak symbol is 0).
  GNU ld (through tools/ld_oracle.py) gets this file: it must be unambiguous,
  and System.map has same-named local symbols (e.g. ``kern_path``).

Only pyelftools is needed (no klpcore import: the benchmark's inputs must not
depend on the code under test).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys

from elftools.elf.elffile import ELFFile

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
KSYMTAB = "__ksymtab_"


def modinfo(elf: ELFFile) -> dict[str, str]:
    sec = elf.get_section_by_name(".modinfo")
    out: dict[str, str] = {}
    if sec is None:
        return out
    for item in sec.data().split(b"\0"):
        if b"=" in item:
            k, v = item.decode("utf-8", "replace").split("=", 1)
            out.setdefault(k, v)
    return out


def norm(name: str) -> str:
    return name.replace("-", "_")


def symbols(elf: ELFFile):
    symtab = elf.get_section_by_name(".symtab")
    return list(symtab.iter_symbols()) if symtab is not None else []


def layout_addresses(elf: ELFFile, base: int) -> tuple[dict[int, int], int]:
    """Section index -> address, and the end address (page aligned)."""
    secs = [(i, s) for i, s in enumerate(elf.iter_sections()) if s["sh_flags"] & SHF_ALLOC]

    def row(s) -> int:
        f = s["sh_flags"]
        if f & SHF_EXECINSTR:
            return 0
        if not f & SHF_WRITE:
            return 1
        return 2

    addr = base
    out = {}
    for r in range(3):
        for i, s in secs:
            if row(s) != r:
                continue
            align = max(1, s["sh_addralign"])
            addr = (addr + align - 1) // align * align
            out[i] = addr
            addr += s["sh_size"]
        addr = (addr + 0xFFF) & ~0xFFF
    return out, addr


def type_char(elf: ELFFile, sym) -> str | None:
    shndx = sym["st_shndx"]
    if not isinstance(shndx, int):
        return "a" if shndx == "SHN_ABS" else None
    sec = elf.get_section(shndx)
    f = sec["sh_flags"]
    if not f & SHF_ALLOC:
        return None
    ch = "t" if f & SHF_EXECINSTR else ("b" if sec["sh_type"] == "SHT_NOBITS" else ("d" if f & SHF_WRITE else "r"))
    bind = sym["st_info"]["bind"]
    if bind == "STB_WEAK":
        return "W" if ch == "t" else "V"
    return ch.upper() if bind == "STB_GLOBAL" else ch


def read_system_map(path: str) -> tuple[dict[str, list[tuple[int, str]]], set[str]]:
    opener = gzip.open if path.endswith(".gz") else open
    by_name: dict[str, list[tuple[int, str]]] = {}
    exports: set[str] = set()
    with opener(path, "rt") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3:
                continue
            addr, typ, name = int(parts[0], 16), parts[1], parts[2]
            by_name.setdefault(name, []).append((addr, typ))
            if name.startswith(KSYMTAB):
                exports.add(name[len(KSYMTAB) :])
    return by_name, exports


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", required=True, help="the target module (.ko)")
    ap.add_argument(
        "--modules-dir", required=True, help="directory holding the dependency .ko files (searched recursively)"
    )
    ap.add_argument("--system-map", help="vmlinux System.map (.gz ok)")
    ap.add_argument("--base", type=lambda s: int(s, 0), required=True, help="the target module's load address")
    ap.add_argument("--deps-base", type=lambda s: int(s, 0), help="first dependency address (default base + 16 MiB)")
    ap.add_argument(
        "--kernel-text",
        type=lambda s: int(s, 0),
        default=0xFFFFFFFF81000000,
        help="synthetic vmlinux addresses start here (only without System.map)",
    )
    ap.add_argument("--out-kallsyms", required=True)
    ap.add_argument("--out-ld", required=True)
    ap.add_argument("--out-info", help="JSON summary")
    ap.add_argument(
        "--linker-symbol",
        action="append",
        default=[".TOC.", "_GLOBAL_OFFSET_TABLE_"],
        help="undefined names the kernel/linker define themselves; left out of ld.syms "
        "(default: .TOC. _GLOBAL_OFFSET_TABLE_)",
    )
    args = ap.parse_args(argv)

    ko_paths: dict[str, str] = {}
    for root, _, files in os.walk(args.modules_dir):
        for f in files:
            if f.endswith(".ko"):
                ko_paths.setdefault(norm(f[:-3]), os.path.join(root, f))

    target = ELFFile(open(args.module, "rb"))
    mask = (1 << (64 if target.elfclass == 64 else 32)) - 1
    # dependencies, transitively, in the order found
    deps: list[str] = []
    todo = [d for d in modinfo(target).get("depends", "").split(",") if d]
    while todo:
        d = norm(todo.pop(0))
        if d in deps:
            continue
        if d not in ko_paths:
            print(f"gensyms: dependency {d} not found under {args.modules_dir}", file=sys.stderr)
            return 2
        deps.append(d)
        todo += [x for x in modinfo(ELFFile(open(ko_paths[d], "rb"))).get("depends", "").split(",") if x]

    undefined: dict[str, bool] = {}  # name -> weak
    for i, s in enumerate(symbols(target)):
        if i and s.name and s["st_shndx"] == "SHN_UNDEF" and s.name not in args.linker_symbol:
            undefined[s.name] = undefined.get(s.name, True) and s["st_info"]["bind"] == "STB_WEAK"

    lines: list[str] = []
    mod_exports: dict[str, dict[str, int]] = {}  # module -> exported name -> address
    addr = args.deps_base if args.deps_base is not None else args.base + 0x1000000
    for d in deps:
        elf = ELFFile(open(ko_paths[d], "rb"))
        where, end = layout_addresses(elf, addr)
        names: dict[str, list[tuple[int, str]]] = {}
        for s in symbols(elf):
            if not s.name or s["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
                continue
            ch = type_char(elf, s)
            if ch is None:
                continue
            a = s["st_value"] if ch == "a" else (where[s["st_shndx"]] + s["st_value"]) & mask
            lines.append(f"{a:016x} {ch} {s.name}\t[{d}]")
            names.setdefault(s.name, []).append((a, ch))
        exp = {}
        for n in names:
            if n.startswith(KSYMTAB):
                real = n[len(KSYMTAB) :]
                cands = [a for a, ch in names.get(real, []) if ch.isupper()] or [a for a, _ in names.get(real, [])]
                if cands:
                    exp[real] = cands[0]
        mod_exports[d] = exp
        addr = (end + 0xFFFFF) & ~0xFFFFF  # next MiB

    vmlinux: dict[str, int] = {}
    synthetic: list[str] = []
    if args.system_map and os.path.exists(args.system_map):
        by_name, exports = read_system_map(args.system_map)
        for n in exports:
            cands = [a for a, t in by_name.get(n, []) if t.isupper() and t != "U"] or [
                a for a, t in by_name.get(n, []) if t not in ("U", "u")
            ]
            if cands:
                vmlinux[n] = min(cands)  # System.map is in address order
    else:
        a = args.kernel_text
        for n in sorted(undefined):
            if any(n in e for e in mod_exports.values()):
                continue
            vmlinux[n] = a
            synthetic.append(f"{a:016x} T {n}")
            synthetic.append(f"{a + 0x10000000:016x} r {KSYMTAB}{n}")
            a += 0x40

    resolved: dict[str, tuple[int, str]] = {}
    missing = []
    for n, weak in sorted(undefined.items()):
        if n in vmlinux:
            resolved[n] = (vmlinux[n], "vmlinux")
            continue
        for d in deps:
            if n in mod_exports[d]:
                resolved[n] = (mod_exports[d][n], d)
                break
        else:
            if weak:
                resolved[n] = (0, "weak-undefined")
            else:
                missing.append(n)
    if missing:
        print(
            f"gensyms: {len(missing)} undefined symbols are exported by nothing: {', '.join(missing[:20])}",
            file=sys.stderr,
        )
        return 1

    with open(args.out_kallsyms, "w") as fh:
        fh.write("\n".join(synthetic + lines) + "\n")
    with open(args.out_ld, "w") as fh:
        for n, (a, _) in sorted(resolved.items()):
            fh.write(f"{a:016x} T {n}\n")
    by_obj: dict[str, int] = {}
    for _, o in resolved.values():
        by_obj[o] = by_obj.get(o, 0) + 1
    info = {
        "dependencies": deps,
        "kallsyms_lines": len(lines) + len(synthetic),
        "undefined": len(undefined),
        "resolved_from": by_obj,
        "synthetic_vmlinux": bool(synthetic),
    }
    if args.out_info:
        with open(args.out_info, "w") as fh:
            json.dump(info, fh, indent=1)
            fh.write("\n")
    print(
        f"gensyms: {len(undefined)} undefined symbols resolved ({', '.join(f'{k} {v}' for k, v in by_obj.items())}); "
        f"{len(deps)} dependencies, {info['kallsyms_lines']} kallsyms lines"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
