"""``klpcore inspect``: a module's machine, livepatch objects, sections and relocation types."""

from __future__ import annotations

import argparse
from typing import Any

from ... import constants as C
from ...loader import LoadingModule
from ..args import open_module
from ..codes import EXIT_OK
from ..parser import add_module_arg, command
from ..render import emit_json, json_destination, kernel_line, kernel_summary, print_diags, progress_done, table


def _type_counts(mod: LoadingModule) -> dict[int, dict[str, int]]:
    """Relocation type counts per relocation section index."""
    import numpy as np

    out: dict[int, dict[str, int]] = {}
    for s in mod.elf.rela_sections():
        types = (mod.elf.relas(s.index)["r_info"] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        values, counts = np.unique(types, return_counts=True)
        c = {mod.arch.type_name(int(t)): int(k) for t, k in zip(values.tolist(), counts.tolist(), strict=True)}
        out[s.index] = dict(sorted(c.items()))
    return out


@command(
    "inspect",
    help="show a module's machine, livepatch objects, sections and relocation types",
    description="Show MODULE's machine and architecture plugin, its livepatch objects with their relocation "
    "sections, its livepatch symbols and the relocation types of each relocation section. Needs no symbols.",
    groups=("json", "kernel"),
    arguments=add_module_arg,
)
def cmd_inspect(args: argparse.Namespace) -> int:
    loader, mod = open_module(args)
    progress_done()
    klp = mod.klp
    counts = _type_counts(mod)
    n = len(mod.sections)
    data: dict[str, Any] = {
        "module": mod.name,
        "path": args.module,
        "machine": mod.elf.machine,
        "arch": mod.arch.name,
        "byteorder": mod.elf.byteorder,
        "livepatch": klp.is_livepatch,
        "klp_format": klp.fmt,
        "objects": [
            {
                "name": o.name,
                "reloc_secs": [
                    {"index": r.index, "name": r.name, "objname": r.objname, "target": r.target_name}
                    for r in o.reloc_secs
                ],
            }
            for o in klp.objects.values()
        ],
        "klp_symbols": [
            {
                "index": k.index,
                "name": k.raw,
                "object": k.parsed.objname if k.parsed else None,
                "symbol": k.parsed.name if k.parsed else k.raw,
                "sympos": k.parsed.sympos if k.parsed else None,
                "external": k.external,
                "error": k.error.message if k.error else None,
            }
            for k in klp.symbols
        ],
        "relocation_sections": [
            {
                "index": s.index,
                "name": s.name,
                "target": mod.sections[s.info].name if 0 < s.info < n else None,
                "entries": s.size // C.RELA_SIZE,
                "livepatch": bool(s.flags & C.SHF_RELA_LIVEPATCH),
                "types": counts.get(s.index, {}),
            }
            for s in mod.elf.rela_sections()
        ],
        "kernel_rules": kernel_summary(loader.kernel, loader.settings(mod)),
    }
    from ...check.patches import read_patch

    patch = read_patch(mod.elf)
    data["patch_producer"] = patch.producer
    data["patched_functions"] = [
        {"object": o.label, "old_name": f.old_name, "sympos": f.sympos, "replacement": f.new_func}
        for o, f in patch.functions
    ]
    if json_destination(args):
        emit_json(args, data, warnings=klp.warnings)
        return EXIT_OK
    print(f"module   {mod.name} ({args.module})")
    print(kernel_line(loader.kernel, loader.settings(mod)))
    print(f"machine  {mod.elf.machine} -> {mod.arch.name} ({mod.elf.byteorder}-endian), plugin {mod.arch.plugin_name}")
    print(f"livepatch  modinfo livepatch={'Y' if klp.is_livepatch else 'no'}, format: {klp.fmt or 'no klp sections'}")
    for o in klp.objects.values():
        print(f"\nobject {o.name}: {len(o.reloc_secs)} relocation section(s)")
        table([(r.index, r.name, r.target_name) for r in o.reloc_secs], ("index", "section", "target"))
    if klp.symbols:
        print(f"\nlivepatch symbols ({len(klp.symbols)})")
        table(
            [
                (
                    k.index,
                    k.parsed.objname if k.parsed else "-",
                    k.parsed.name if k.parsed else k.raw,
                    k.parsed.sympos if k.parsed else "-",
                )
                for k in klp.symbols
            ],
            ("index", "object", "symbol", "pos"),
        )
    print("\nrelocation sections")
    table(
        [
            (r["index"], r["name"], r["target"], r["entries"], ", ".join(f"{k} {v}" for k, v in r["types"].items()))
            for r in data["relocation_sections"]
        ],
        ("index", "section", "target", "entries", "types"),
    )
    if patch.functions:
        print(f"\npatched functions ({patch.producer})")
        table(
            [(r["object"], r["old_name"], r["sympos"], r["replacement"]) for r in data["patched_functions"]],
            ("object", "old_name", "sympos", "replacement"),
        )
    print_diags(klp.warnings)
    return EXIT_OK
