"""``klpcore disasm``: each relocation site of the executable sections, before and after."""

from __future__ import annotations

import argparse

from ..args import load_module
from ..codes import EXIT_OK
from ..parser import add_module_arg, command
from ..render import emit_json, json_destination, kernel_line, kernel_summary, print_diags


def _disasm_args(sp: argparse.ArgumentParser) -> None:
    add_module_arg(sp)
    sp.add_argument("--section", metavar="NAME", help="only this executable section (an error if none is loaded)")


@command(
    "disasm",
    help="show each relocation site in executable sections before and after",
    description="Load MODULE as 'apply' does and decode, in address order, each relocation site of its "
    "executable sections before and after relocation, with the address each instruction now reaches and the "
    "symbol there; calls through arch stubs/PLTs are shown as such.",
    groups=("json", "symbols", "kernel"),
    arguments=_disasm_args,
)
def cmd_disasm(args: argparse.Namespace) -> int:
    from ...disasm import relocation_sites

    _, loaded = load_module(args)
    sites = relocation_sites(loaded, args.section)
    if json_destination(args):
        emit_json(
            args,
            {
                "module": loaded.module.name,
                "kernel_rules": kernel_summary(loaded.kernel, loaded.module.settings),
                "sites": [s.as_dict() for s in sites],
            },
            warnings=loaded.warnings,
        )
        return EXIT_OK
    for s in sites:
        print(s.line())
        print(f"    before: {s.before}")
        print(f"    after:  {s.after}")
    print(f"\n{len(sites)} relocation site(s)")
    print(kernel_line(loaded.kernel, loaded.module.settings))
    print_diags(loaded.warnings)
    return EXIT_OK
