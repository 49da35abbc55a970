"""``klpcore resolve``: every livepatch and undefined symbol of a module, resolved without applying."""

from __future__ import annotations

import argparse

from ...loader import resolve_module
from ..args import address_option, base_address, kernel_symbols, module_tree, open_module
from ..codes import EXIT_ERRORS, EXIT_OK
from ..parser import add_module_arg, command
from ..render import (
    emit_json,
    json_destination,
    kernel_line,
    kernel_summary,
    print_diags,
    progress_done,
    symbol_rows,
    table,
)


@command(
    "resolve",
    help="resolve every livepatch and undefined symbol of a module",
    description="Resolve MODULE's livepatch symbols (.klp.sym.OBJ.NAME,POS, by the kernel's sympos rules) and its "
    "undefined symbols (exported symbols only, as simplify_symbols does) against the --symbols sources, "
    "without applying relocations. Exit 1 when a symbol does not resolve. Patched objects that are not loaded "
    "are reported, not failed: the kernel resolves them when they load.",
    groups=("json", "symbols", "kernel"),
    arguments=add_module_arg,
)
def cmd_resolve(args: argparse.Namespace) -> int:
    from ...explain import explain_errors

    symbols = kernel_symbols(args)
    loader, mod = open_module(args)
    tree = module_tree(args, mod)
    init_base = address_option(args, "init_base", "--init-base", page_aligned=True)
    report = resolve_module(loader, mod, symbols, base_address(args, mod), init_base)
    progress_done()
    errors = explain_errors(mod, report.errors, symbols, tree)
    code = EXIT_ERRORS if errors else EXIT_OK
    distinct = len({(r.name, r.object) for r in report.resolutions})
    if json_destination(args):
        emit_json(
            args,
            {
                "module": mod.name,
                "symbols": symbol_rows(report.resolutions),
                "distinct_symbols": distinct,
                "pending_objects": report.pending,
                "kernel_rules": kernel_summary(loader.kernel, mod.settings),
            },
            code,
            errors=errors,
            warnings=report.warnings,
        )
        return code
    table(
        [(r.index, r.name, f"{r.value:#018x}", r.how, r.object or "-") for r in report.resolutions],
        ("index", "symbol", "value", "how", "object"),
    )
    print_diags(errors)
    print_diags(report.warnings)
    uses = len(report.resolutions)
    print(
        f"\n{distinct} distinct symbol{'s' if distinct != 1 else ''} resolved ({uses} symbol table entr"
        f"{'ies' if uses != 1 else 'y'}), {len(errors)} error(s)"
        + (f"; not loaded: {', '.join(report.pending)}" if report.pending else "")
    )
    print(kernel_line(loader.kernel, mod.settings))
    return code
