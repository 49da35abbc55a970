"""The ``klpcore`` command line.

Exit codes: 0 success; 1 relocation or resolution errors; 2 bad usage or
unreadable input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

from . import constants as C
from .errors import Diagnostic, InputError, KlpError
from .kernel import KernelTarget
from .loader import DEFAULT_BASE, LoadedModule, Loader, LoadingModule, resolve_module
from .plugins import get_plugin_manager, installed_version, list_arch_plugins
from .symbols import KernelSymbols, load_many

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
klpcore does in user space what the Linux module loader and livepatch core do
when a (livepatch) module arrives: it lays the module out, resolves its symbols
against a kernel's symbol tables and writes every relocation exactly as the
kernel would, so you can see whether a patch will load and what it will write.
"""

EPILOG = """\
symbol files (--symbols, repeatable; the format is detected from the content):
  System.map[.gz]           vmlinux symbols
  kallsyms                  /proc/kallsyms text; [module] lines become that module's symbols
  vmlinux                   an ELF with .symtab
  mod.ko@0xADDR[:NAME]      a module loaded at ADDR (laid out by klpcore)

exit codes: 0 success, 1 relocation or resolution errors, 2 bad usage or unreadable input
"""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="klpcore",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"klpcore {installed_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def common(sp: argparse.ArgumentParser, symbols: bool = True) -> None:
        sp.add_argument(
            "--kernel",
            metavar="VERSION",
            default="newest",
            help="target kernel version, e.g. 6.1 or 5.4 (default: newest); selects version-specific behaviour",
        )
        sp.add_argument(
            "-O",
            "--kernel-option",
            metavar="KEY=VALUE",
            action="append",
            default=[],
            help="a kernel configuration fact for plugins (repeatable), e.g. dynamic_ftrace=false, "
            "kernel_toc=0xc000000001148100; numbers and true/false are converted",
        )
        if symbols:
            sp.add_argument(
                "--symbols",
                "-s",
                metavar="FILE",
                action="append",
                default=[],
                help="kernel symbol source (repeatable): System.map, kallsyms, vmlinux, mod.ko@ADDR",
            )
            sp.add_argument(
                "--base",
                type=_int,
                default=None,
                metavar="ADDR",
                help=f"module load address (default: the architecture's module area, e.g. {DEFAULT_BASE:#x} on x86_64)",
            )

    sp = sub.add_parser("plugins", help="list installed architecture plugins and their relocation types")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--types", action="store_true", help="also list every relocation type")
    common(sp, symbols=False)

    sp = sub.add_parser("inspect", help="show a module's machine, livepatch objects, sections and relocation types")
    sp.add_argument("module", metavar="MODULE")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    common(sp, symbols=False)

    sp = sub.add_parser("resolve", help="resolve every livepatch and undefined symbol of a module")
    sp.add_argument("module", metavar="MODULE")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    common(sp)

    sp = sub.add_parser(
        "apply",
        help="lay out, resolve and apply every relocation; write the relocated module",
        description="Load MODULE as the kernel would and write OUT: an ELF with the input's sections in which each "
        "loaded section's sh_addr is its load address and its contents are the relocated bytes.",
    )
    sp.add_argument("module", metavar="MODULE", nargs="?")
    sp.add_argument("-o", "--output", metavar="OUT", help="relocated ELF to write")
    sp.add_argument("--json", metavar="REPORT", dest="report", help="write a JSON report to REPORT ('-' = stdout)")
    sp.add_argument(
        "--example",
        metavar="ARCH",
        nargs="?",
        const="",
        help="use the example module shipped with an installed plugin (default: the first)",
    )
    sp.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    common(sp)

    sp = sub.add_parser("disasm", help="show each relocation site in executable sections before and after")
    sp.add_argument("module", metavar="MODULE")
    sp.add_argument("--section", metavar="NAME", help="only this section")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    common(sp)

    from .check.command import add_parser as add_check_parser

    add_check_parser(sub)
    return p


# ---------------------------------------------------------------------------
def _emit_json(obj: Any, dest: str | None = "-") -> None:
    text = json.dumps(obj, indent=2, default=str) + "\n"
    if dest in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(dest, "w") as fh:
            fh.write(text)


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{message}")
        sys.stderr.flush()


def _progress_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, r in enumerate(cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def _print_diags(diags: Sequence[Diagnostic], out: TextIO | None = None) -> None:
    out = out or sys.stderr
    for d in diags:
        out.write(f"{d.severity}: {d}\n")


def _option_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on", "y"):
        return True
    if low in ("false", "no", "off", "n"):
        return False
    try:
        return int(text, 0)
    except ValueError:
        return text


def _kernel(args: argparse.Namespace) -> KernelTarget:
    options: dict[str, Any] = {}
    for item in getattr(args, "kernel_option", []):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise InputError(f"--kernel-option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = _option_value(value.strip())
    try:
        return KernelTarget.from_string(args.kernel, options=options)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _symbols(args: argparse.Namespace) -> KernelSymbols:
    if not args.symbols:
        raise InputError("no symbol source given: use --symbols System.map (or kallsyms, vmlinux, mod.ko@ADDR)")
    _progress("reading symbols ...")
    return load_many(args.symbols)


# ---------------------------------------------------------------------------
def cmd_plugins(args: argparse.Namespace) -> int:
    pm = get_plugin_manager()
    infos = list_arch_plugins(pm, _kernel(args))
    if args.json:
        _emit_json(
            [
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
                            "types": [t.describe() for t in a.types.values()],
                        }
                        for a in i.archs
                    ],
                }
                for i in infos
            ]
        )
        return EXIT_OK
    if not infos:
        print("no architecture plugins installed (pip install klpcore-x86_64, ...)")
        return EXIT_OK
    rows = []
    for i in infos:
        for a in i.archs:
            rows.append((a.name, i.distribution or i.name, i.version, a.machine, len(a.types)))
    _table(rows, ("arch", "distribution", "version", "e_machine", "types"))
    for i in infos:
        for a in i.archs:
            if args.types:
                print(f"\n{a.name}: {a.description}")
                _table(
                    [(t.number, t.name, t.width, t.formula or "-", t.describe()["range"]) for t in a.types.values()],
                    ("num", "type", "bytes", "formula", "range"),
                )
            else:
                print(f"{a.name}: " + ", ".join(t.name for t in a.types.values()))
    return EXIT_OK


def _open(args: argparse.Namespace, loader: Loader) -> LoadingModule:
    _progress(f"reading {args.module} ...")
    return loader.open(args.module)


def _type_counts(mod: LoadingModule) -> dict[str, dict[str, int]]:
    import numpy as np

    out: dict[str, dict[str, int]] = {}
    for s in mod.elf.rela_sections():
        types = (mod.elf.relas(s.index)["r_info"] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        c = Counter(mod.arch.type_name(int(t)) for t in types.tolist())
        out[s.name] = dict(sorted(c.items()))
    return out


def cmd_inspect(args: argparse.Namespace) -> int:
    loader = Loader(kernel=_kernel(args))
    mod = _open(args, loader)
    _progress_done()
    klp = mod.klp
    counts = _type_counts(mod)
    data = {
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
                "target": mod.sections[s.info].name if 0 < s.info < len(mod.sections) else None,
                "entries": s.size // C.RELA_SIZE,
                "livepatch": bool(s.flags & C.SHF_RELA_LIVEPATCH),
                "types": counts.get(s.name, {}),
            }
            for s in mod.elf.rela_sections()
        ],
        "warnings": [d.as_dict() for d in klp.warnings],
    }
    if args.json:
        _emit_json(data)
        return EXIT_OK
    print(f"module   {mod.name} ({args.module})")
    print(f"machine  {mod.elf.machine} -> {mod.arch.name} ({mod.elf.byteorder}-endian), plugin {mod.arch.plugin_name}")
    print(f"livepatch  modinfo livepatch={'Y' if klp.is_livepatch else 'no'}, format: {klp.fmt or 'no klp sections'}")
    for o in klp.objects.values():
        print(f"\nobject {o.name}: {len(o.reloc_secs)} relocation section(s)")
        _table([(r.index, r.name, r.target_name) for r in o.reloc_secs], ("index", "section", "target"))
    if klp.symbols:
        print(f"\nlivepatch symbols ({len(klp.symbols)})")
        _table(
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
    _table(
        [
            (
                r["index"],
                r["name"],
                r["target"],
                r["entries"],
                ", ".join(f"{k} {v}" for k, v in r["types"].items()),  # type: ignore[attr-defined]
            )
            for r in data["relocation_sections"]  # type: ignore[union-attr]
        ],
        ("index", "section", "target", "entries", "types"),
    )
    _print_diags(klp.warnings)
    return EXIT_OK


def cmd_resolve(args: argparse.Namespace) -> int:
    loader = Loader(kernel=_kernel(args))
    symbols = _symbols(args)
    mod = _open(args, loader)
    report = resolve_module(loader, mod, symbols, args.base or mod.arch.default_base)
    _progress_done()
    if args.json:
        _emit_json(
            {
                "module": mod.name,
                "resolved": [
                    {"index": r.index, "name": r.name, "value": hex(r.value), "how": r.how, "object": r.object}
                    for r in report.resolutions
                ],
                "errors": [d.as_dict() for d in report.errors],
                "pending_objects": report.pending,
            }
        )
    else:
        _table(
            [(r.index, r.name, f"{r.value:#018x}", r.how, r.object or "-") for r in report.resolutions],
            ("index", "symbol", "value", "how", "object"),
        )
        for d in report.errors:
            print(f"error: {d}", file=sys.stderr)
        n = len(report.resolutions)
        print(f"\n{n} symbol{'s' if n != 1 else ''} resolved, {len(report.errors)} error(s)")
    return EXIT_ERRORS if report.errors else EXIT_OK


def _load(args: argparse.Namespace) -> tuple[Loader, LoadedModule]:
    loader = Loader(kernel=_kernel(args))
    symbols = _symbols(args)
    mod = _open(args, loader)
    _progress(f"applying {mod.name} ...")
    loaded = loader.load(mod, symbols, args.base or mod.arch.default_base)
    _progress_done()
    return loader, loaded


def apply_report(loaded: LoadedModule) -> dict[str, Any]:
    mod = loaded.module
    return {
        "module": mod.name,
        "arch": mod.arch.name,
        "kernel": loaded.kernel.label,
        "base": hex(mod.layout.base),
        "layout_style": mod.layout.style,
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
        "symbols": [
            {"index": r.index, "name": r.name, "value": hex(r.value), "how": r.how, "object": r.object}
            for r in loaded.resolutions
        ],
        "pending_objects": loaded.pending_objects,
        "warnings": [d.as_dict() for d in loaded.warnings],
        "errors": [],
    }


def _example(args: argparse.Namespace) -> None:
    pm = get_plugin_manager()
    examples = [e for group in pm.hook.klp_arch_examples() for e in (group or [])]
    if not examples:
        raise InputError("no installed plugin ships an example module")
    chosen = [e for e in examples if not args.example or e.name == args.example]
    if not chosen:
        raise InputError(f"no example named {args.example!r}; available: {', '.join(e.name for e in examples)}")
    ex = chosen[0]
    args.module = str(ex.module)
    args.symbols = [str(p) for p in ex.symbols] + list(args.symbols)
    if args.base is None:
        args.base = ex.base
    if not args.output:
        args.output = f"{ex.module.stem}.relocated.ko"
    if not args.quiet:
        print(f"example: {ex.description}\n  module  {ex.module}\n  symbols {', '.join(map(str, ex.symbols))}")


def cmd_apply(args: argparse.Namespace) -> int:
    from .output import write_elf

    if args.example is not None:
        _example(args)
    if not args.module:
        raise InputError("no MODULE given (or use --example)")
    try:
        _, loaded = _load(args)
    except KlpError as exc:
        _progress_done()
        if args.report:
            _emit_json(
                {"module": args.module, "errors": [d.as_dict() for d in exc.diagnostics], "written": False},
                args.report,
            )
        raise
    if args.output:
        data = write_elf(loaded)
        with open(args.output, "wb") as fh:
            fh.write(data)
    report = apply_report(loaded)
    report["output"] = args.output
    if args.report:
        _emit_json(report, args.report)
    if not args.quiet and args.report != "-":
        mod = loaded.module
        rows = []
        per_section: Counter[str] = Counter()
        for ph in loaded.phases:
            for name in ph.sections:
                relsec = mod.elf.section_by_name(name)
                assert relsec is not None
                per_section[mod.sections[relsec.info].name] += relsec.size // C.RELA_SIZE
        for s in report["sections"]:
            rows.append((s["name"], s["address"], s["region"], s["size"], per_section.get(s["name"], "")))
        _table(rows, ("section", "address", "region", "size", "relocations"))
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
    _print_diags(loaded.warnings)
    return EXIT_OK


def cmd_disasm(args: argparse.Namespace) -> int:
    from .disasm import relocation_sites

    _, loaded = _load(args)
    sites = relocation_sites(loaded, args.section)
    if args.json:
        _emit_json([s.as_dict() for s in sites])
        return EXIT_OK
    for s in sites:
        target = f" -> {s.target:#x}" if s.target is not None else ""
        print(f"{s.section}+{s.offset:#x} {s.address:#x} {s.rtype} {s.symbol}{target}")
        print(f"    before: {s.before}")
        print(f"    after:  {s.after}")
    print(f"\n{len(sites)} relocation site(s)")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .check.command import run

    options = _kernel(argparse.Namespace(kernel="newest", kernel_option=args.kernel_option)).options
    return run(args, options)


COMMANDS = {
    "check": cmd_check,
    "plugins": cmd_plugins,
    "inspect": cmd_inspect,
    "resolve": cmd_resolve,
    "apply": cmd_apply,
    "disasm": cmd_disasm,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except InputError as exc:
        _progress_done()
        _print_diags(exc.diagnostics)
        return EXIT_USAGE
    except KlpError as exc:
        _progress_done()
        _print_diags(exc.diagnostics)
        return EXIT_ERRORS
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
