"""``klpcore plugins``: the installed architecture plugins and their relocation types."""

from __future__ import annotations

import argparse

from ...kernel import CORE_OPTIONS
from ...plugins import get_plugin_manager, list_arch_plugins
from ..args import kernel_target
from ..codes import EXIT_OK
from ..parser import command
from ..render import emit_json, json_destination, table


def _plugins_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--types", action="store_true", help="also list every relocation type with formula and range")


@command(
    "plugins",
    help="list installed architecture plugins and their relocation types",
    description="List the installed architecture plugins: distribution, version, ELF machine, relocation types "
    "and the -O options each accepts.",
    groups=("json", "kernel"),
    arguments=_plugins_args,
)
def cmd_plugins(args: argparse.Namespace) -> int:
    pm = get_plugin_manager()
    infos = list_arch_plugins(pm, kernel_target(args))
    if json_destination(args):
        emit_json(
            args,
            {
                "plugins": [
                    {
                        "name": i.name,
                        "distribution": i.distribution,
                        "version": i.version,
                        "archs": [
                            {
                                "name": a.name,
                                "machine": a.machine,
                                "byteorder": a.byteorder,
                                "description": a.description,
                                "default_base": hex(a.default_base),
                                "options": dict(a.options),
                                "types": [t.describe() for t in a.types.values()],
                            }
                            for a in i.archs
                        ],
                    }
                    for i in infos
                ],
                "core_options": dict(CORE_OPTIONS),
            },
        )
        return EXIT_OK
    if not infos:
        print("no architecture plugins installed (pip install klpcore-<arch>: one distribution per architecture)")
        return EXIT_OK
    rows = []
    for i in infos:
        for a in i.archs:
            rows.append((a.name, i.distribution or i.name, i.version, a.machine, a.byteorder, len(a.types)))
    table(rows, ("arch", "distribution", "version", "e_machine", "byte order", "types"))
    shown: set[tuple[str, tuple[str, ...]]] = set()
    for i in infos:
        for a in i.archs:
            key = (a.name, tuple(t.name for t in a.types.values()))
            if key in shown:  # the same arch in the other byte order: same table
                continue
            shown.add(key)
            if args.types:
                print(f"\n{a.name}: {a.description}")
                table(
                    [(t.number, t.name, t.width, t.formula or "-", t.describe()["range"]) for t in a.types.values()],
                    ("num", "type", "bytes", "formula", "range"),
                )
            else:
                print(f"{a.name}: " + ", ".join(t.name for t in a.types.values()))
            if a.options:
                print(f"  -O options: {', '.join(f'{k} ({v})' for k, v in a.options.items())}")
    print(f"core -O options: {', '.join(f'{k} ({v})' for k, v in CORE_OPTIONS.items())}")
    return EXIT_OK
