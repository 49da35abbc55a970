"""``klpcore apply``: lay out, resolve and apply every relocation; write the relocated module."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from typing import Any

from ... import constants as C
from ...loader import LoadedModule
from ...plugins import get_plugin_manager
from ..args import load_module
from ..codes import EXIT_OK
from ..parser import UsageError, command
from ..render import (
    emit_json,
    input_paths,
    json_destination,
    kernel_line,
    kernel_summary,
    print_diags,
    symbol_rows,
    table,
)


def apply_report(loaded: LoadedModule) -> dict[str, Any]:
    mod = loaded.module
    return {
        "module": mod.name,
        "arch": mod.arch.name,
        "kernel": loaded.kernel.label,
        "kernel_rules": kernel_summary(loaded.kernel, mod.settings),
        "base": hex(mod.layout.base),
        "layout_style": mod.layout.style,
        "layout_source": mod.layout_source,
        "layout_facts": mod.layout_facts if mod.layout_source != "kernel-sections" else [],
        "regions": [
            {"type": r.name, "address": hex(r.address), "size": r.size, "perms": str(r.perms)}
            for r in loaded.image.regions
        ],
        "sections": [
            {
                "index": s.index,
                "name": s.name,
                "address": hex(loaded.section_address(s.index) or 0),
                "size": s.size,
                "region": mod.layout.placements[s.index].memtype.kernel_name
                if s.index in mod.layout.placements
                else "percpu",
            }
            for s in mod.sections
            if loaded.section_address(s.index) is not None
        ],
        "phases": [
            {"name": p.name, "sections": p.sections, "counts": p.counts, "writes": p.writes} for p in loaded.phases
        ],
        "relocations": dict(loaded.relocation_counts()),
        "write_methods": dict(loaded.image.write_methods()),
        "symbols": symbol_rows(loaded.resolutions),
        "pending_objects": loaded.pending_objects,
    }


def _example(args: argparse.Namespace) -> None:
    if args.module:
        raise UsageError(f"apply: give either MODULE ({args.module}) or --example, not both")
    pm = get_plugin_manager()
    examples = [e for group in pm.hook.klp_arch_examples() for e in (group or [])]
    if not examples:
        raise UsageError("no installed plugin ships an example module")
    if not args.example:  # the host's architecture first (Example.hosts), else the order plugins were found in
        mine = os.uname().machine
        examples.sort(key=lambda e: mine not in e.hosts)
    chosen = [e for e in examples if not args.example or e.name == args.example]
    if not chosen:
        raise UsageError(f"no example named {args.example!r}; available: {', '.join(e.name for e in examples)}")
    ex = chosen[0]
    args.module = str(ex.module)
    args.symbols = [str(p) for p in ex.symbols] + list(args.symbols)
    if args.base is None:
        args.base = hex(ex.base)
    if not args.quiet and json_destination(args) != "-":
        print(f"example: {ex.description}\n  module  {ex.module}\n  symbols {', '.join(map(str, ex.symbols))}")


def _apply_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "module", metavar="MODULE", nargs="?", help="the module: .ko, or compressed .ko.xz / .ko.zst / .ko.gz"
    )
    sp.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="write the relocated module to OUT (without -o nothing is written; the summary says so)",
    )
    sp.add_argument(
        "--json",
        metavar="REPORT",
        dest="report",
        help="write the JSON report (schema 2) to REPORT ('-' = stdout), on success and on failure",
    )
    sp.add_argument(
        "--example",
        metavar="ARCH",
        nargs="?",
        const="",
        help="instead of MODULE, use the example module shipped with the plugin for ARCH (default: the host's "
        "architecture when its plugin is installed, else the first found)",
    )
    sp.add_argument(
        "--sections",
        metavar="PATH",
        help="place every section where a live kernel did: a /sys/module/NAME/sections directory, or a listing "
        "of 'name address' lines; refused unless the placement is one the kernel could make (each memory type "
        "page aligned, every section at its offset in its type, no overlap)",
    )
    sp.add_argument(
        "--region-base",
        metavar="TYPE=ADDR",
        action="append",
        default=[],
        help="start of one memory type, repeatable; the kernel's names: MOD_TEXT, MOD_DATA, MOD_RODATA, "
        "MOD_RO_AFTER_INIT, MOD_INIT_TEXT, MOD_INIT_DATA, MOD_INIT_RODATA (before 6.4: MOD_TEXT is the core, "
        "MOD_INIT_TEXT the init allocation); unpinned types follow --base",
    )
    sp.add_argument("-q", "--quiet", action="store_true", help="print only errors and warnings")


@command(
    "apply",
    help="lay out, resolve and apply every relocation; write the relocated module",
    description="Load MODULE as the kernel would: lay it out at --base, resolve its symbols against --symbols "
    "(required), apply every relocation at the kernel's moments (module load; livepatch enable for each patched "
    "object that is loaded) and, with -o OUT, write an ELF with the input's sections in which each loaded "
    "section's sh_addr is its load address and its contents are the relocated bytes.",
    groups=("symbols", "kernel"),
    arguments=_apply_args,
)
def cmd_apply(args: argparse.Namespace) -> int:
    from ...output import write_elf, write_file

    if args.example is not None:
        _example(args)
    if not args.module:
        raise UsageError("apply: no MODULE given (or use --example)")
    _, loaded = load_module(args)
    written = False
    if args.output:
        write_file(args.output, write_elf(loaded), what="relocated module", inputs=input_paths(args))
        written = True
    report = apply_report(loaded)
    report["output"] = args.output
    report["written"] = written
    if args.report:
        emit_json(args, report, warnings=loaded.warnings)
    if not args.quiet and args.report != "-":
        _apply_summary(args, loaded, report)
    print_diags(loaded.warnings)
    return EXIT_OK


def _apply_summary(args: argparse.Namespace, loaded: LoadedModule, report: dict[str, Any]) -> None:
    mod = loaded.module
    rows = []
    per_section: Counter[str] = Counter()
    n = len(mod.sections)
    for ph in loaded.phases:
        for name in ph.sections:
            relsec = mod.elf.section_by_name(name)
            if relsec is not None and 0 < relsec.info < n:
                per_section[mod.sections[relsec.info].name] += relsec.size // C.RELA_SIZE
    for s in report["sections"]:
        rows.append((s["name"], s["address"], s["region"], s["size"], per_section.get(s["name"], "")))
    table(rows, ("section", "address", "region", "size", "relocations"))
    total = sum(loaded.relocation_counts().values())
    types = ", ".join(f"{k} {v}" for k, v in sorted(loaded.relocation_counts().items()))
    print(f"\n{mod.name}: {total} relocations applied ({types})")
    for ph in loaded.phases:
        print(f"  phase {ph.name}: {len(ph.sections)} section(s), {ph.writes} write(s)")
    if loaded.pending_objects:
        print(f"  not applied (patched objects not loaded): {', '.join(loaded.pending_objects)}")
    methods = ", ".join(f"{k} {v}" for k, v in loaded.image.write_methods().items())
    print(f"  writes by method: {methods or 'none'}")
    if args.output:
        print(f"  wrote {args.output}")
    else:
        print("  nothing written: give -o OUT to write the relocated module")
    print(f"  {kernel_line(loaded.kernel, mod.settings)}")
    if mod.layout_source == "kernel-sections":
        print("  layout: every section where --sections says the kernel put it")
    else:
        print(
            "  layout: a model of the kernel's allocation"
            + (" (some types pinned by --region-base)" if mod.layout_source == "region-base" else "")
        )
        for fact in mod.layout_facts:
            print(f"    - {fact}")
