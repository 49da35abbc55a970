"""``klpcore convert``: a compiled patch module's references to unexported kernel
symbols become livepatch relocations (:mod:`klpcore.convert`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import Any

from ...elf import ElfModule
from ...kernel import parse_version
from ..args import kernel_target
from ..codes import EXIT_OK
from ..parser import UsageError, add_module_arg, command
from ..render import (
    emit_json,
    json_destination,
    kernel_line,
    kernel_summary,
    print_diags,
    progress,
    progress_done,
    table,
)


def _arguments(sp: argparse.ArgumentParser) -> None:
    add_module_arg(sp)
    src = sp.add_mutually_exclusive_group()
    src.add_argument(
        "--symbols",
        "-s",
        metavar="FILE",
        action="append",
        default=[],
        help="the target kernel's symbols (repeatable): System.map, kallsyms (its [module] lines are modules), "
        "a vmlinux ELF, mod.ko@ADDR, Module.symvers (exports and namespaces)",
    )
    src.add_argument(
        "--target",
        metavar="DIR",
        help="an extracted distribution kernel (as 'klpcore check --target'): its System.map or vmlinux, "
        "Module.symvers and module tree",
    )
    sp.add_argument(
        "--object",
        metavar="NAME",
        default="vmlinux",
        help="the patched object: vmlinux (default) or a module name as the kernel names it ('-' becomes '_'); "
        "its unexported symbols are looked up there before vmlinux",
    )
    sp.add_argument(
        "--position",
        metavar="NAME=N",
        action="append",
        default=[],
        help="settle a symbol name that occurs N times in its object: the N-th, counted as the kernel counts "
        "(vmlinux: by address; a module: symbol-table order); repeatable",
    )
    sp.add_argument("--mark", action="store_true", help="add livepatch=Y to .modinfo when it is missing")
    sp.add_argument(
        "--format",
        choices=("final", "rfc2015"),
        default="final",
        help="final: .klp.rela/.klp.sym (Linux 4.7+, default); rfc2015: the 2015 RFC's __klp_rela_ sections "
        "and STB_LIVEPATCH_EXT symbols",
    )
    sp.add_argument("-o", "--output", metavar="OUT", required=True, help="write the converted module to OUT")


def _positions(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, eq, num = item.rpartition("=")
        if not eq or not name or not num.isdigit() or int(num) < 1:
            raise UsageError(f"--position {item}: expected NAME=N with N a position from 1")
        if name in out:
            raise UsageError(f"--position {name} given more than once")
        out[name] = int(num)
    return out


@command(
    "convert",
    help="turn references to unexported kernel symbols into livepatch relocations",
    description="Rewrite MODULE (a compiled patch module) so that every relocation against a symbol the target "
    "kernel does not export to it, and that the patched object (--object) or vmlinux defines, becomes a "
    "livepatch relocation (.klp.rela.OBJ.SEC, .klp.sym.OBJ.NAME,POS), as klp-build decides: symbols vmlinux "
    "exports stay ordinary, symbols a module exports always convert. Positions are counted as the kernel "
    "counts them; an ambiguous name needs --position. Exit 1 when the module cannot be converted.",
    groups=("json", "kernel"),
    arguments=_arguments,
)
def cmd_convert(args: argparse.Namespace) -> int:
    from ...convert.plan import convert, from_kernel_symbols, from_target
    from ...output import write_file
    from ...symbols import load_many

    if not args.symbols and not args.target:
        raise UsageError("convert: give the target kernel's symbols: --symbols FILE ... or --target DIR")
    positions = _positions(args.position)
    progress(f"reading {args.module} ...")
    elf = ElfModule.from_file(args.module)
    kernel = kernel_target(args, elf)
    if args.target:
        from ...check.target import Target

        tgt = Target(args.target)
        target = from_target(tgt)
        if args.kernel is None and tgt.release:
            with contextlib.suppress(ValueError):
                kernel = dataclasses.replace(
                    kernel, version=parse_version(tgt.release), version_source=f"target release {tgt.release}"
                )
    else:
        progress("reading symbols ...")
        vmlinux_elf = next((s for s in args.symbols if _is_elf(s)), None)
        target = from_kernel_symbols(load_many(args.symbols), vmlinux_elf)
    result = convert(
        elf,
        target,
        kernel,
        objname=args.object.replace("-", "_"),
        positions=positions,
        mark=args.mark,
        fmt="rfc" if args.format == "rfc2015" else "final",
    )
    progress_done()
    inputs = [args.module, *(s for s in args.symbols if "@" not in s)]
    write_file(args.output, result.data, what="converted module", inputs=inputs)
    doc: dict[str, Any] = {
        "module": elf.name,
        "output": args.output,
        "written": True,
        "format": args.format,
        "style": "none-type" if result.style == "objtool" else "removed",
        "object": args.object.replace("-", "_"),
        "converted": [c.as_dict() for c in result.converted],
        "kept": [{"symbol": k, "why": v} for k, v in result.kept.items()],
        "modinfo_added": result.modinfo_added,
        "kernel_rules": kernel_summary(kernel),
    }
    if json_destination(args):
        emit_json(args, doc, warnings=result.warnings)
        return EXIT_OK
    table(
        [(c.name, c.objname, c.sympos, c.relocations, c.how) for c in result.converted],
        ("symbol", "object", "pos", "relocations", "why converted"),
    )
    if result.kept:
        print("\nordinary relocations kept: " + ", ".join(f"{k} ({v})" for k, v in result.kept.items()))
    originals = "become R_*_NONE" if result.style == "objtool" else "are removed (the kernel takes no type 0 here)"
    print(
        f"\n{elf.name}: {sum(c.relocations for c in result.converted)} relocation(s) of {len(result.converted)} "
        f"symbol(s) converted ({args.format} format); the originals {originals}"
    )
    if result.modinfo_added:
        print(f"  .modinfo: added {', '.join(result.modinfo_added)}")
    print(f"  wrote {args.output}")
    print(f"  {kernel_line(kernel)}")
    print_diags(result.warnings)
    return EXIT_OK


def _is_elf(spec: str) -> bool:
    from ...constants import ELFMAG

    try:
        with open(spec, "rb") as fh:
            return fh.read(4) == ELFMAG
    except OSError:
        return False
