"""The ``klpcore`` command line.

The contract (see ``docs/cli.md``):

* exit codes: 0 success; 1 the module will not load as asked (relocation,
  resolution or livepatch errors); 2 bad usage or unreadable input, including
  output files that cannot be written; 3 an internal error (a bug in
  klpcore: one line on stderr, the traceback with ``--debug``); 130
  interrupted;
* never a traceback unless ``--debug`` is given;
* with ``--json`` every outcome, success or failure (argument errors
  included), is one JSON document of schema 1 (``docs/json-schema.md``,
  ``klpcore/schema/v1.json``).

Adding a subcommand: write ``def cmd_x(args) -> int`` and register it with
:func:`command` (name, help, description, the shared option groups it takes,
and a function adding its own arguments).  Adding an option to several
subcommands: add it to a group in :data:`OPTION_GROUPS`.  Every subcommand runs
inside :func:`main`'s single error handler.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

from . import constants as C
from .addresses import parse_address
from .config import KernelConfig
from .elf import ElfModule
from .errors import Diagnostic, InputError, KlpError, OutputError
from .kernel import CORE_OPTIONS, KernelTarget, Setting, parse_version
from .loader import DEFAULT_BASE, LoadedModule, Loader, LoadingModule, resolve_module
from .modtree import ModuleTree
from .plugins import get_plugin_manager, installed_version, list_arch_plugins
from .symbols import KernelSymbols, load_many
from .versions import NEWEST, OLDEST

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: version of the JSON documents the CLI writes (docs/json-schema.md)
SCHEMA_VERSION = 1

DESCRIPTION = """\
klpcore does in user space what the Linux module loader and livepatch core do
when a (livepatch) module arrives: it lays the module out, resolves its symbols
against a kernel's symbol tables and writes every relocation exactly as the
kernel would, so you can see whether a patch will load and what it will write.
"""

EPILOG = """\
symbol files (--symbols, repeatable; the format is detected from the content;
gzip, xz and zstd compression is detected too):
  System.map                vmlinux symbols (exports are the __ksymtab_NAME entries)
  kallsyms                  /proc/kallsyms text; [module] lines become that module's symbols
  vmlinux                   an ELF with .symtab
  mod.ko@0xADDR[:NAME]      a module loaded at ADDR (laid out by klpcore)
  Module.symvers            export CRCs, GPL-only flags, namespaces (checked as resolve_symbol does)
with --module-tree DIR (/lib/modules/RELEASE or any directory of .ko files), a symbol no source
has is attributed to the module of DIR that exports it: one line per missing module.

exit codes: 0 success; 1 the module will not load (relocation, resolution or
livepatch errors); 2 bad usage, unreadable input or unwritable output;
3 internal error in klpcore (a bug; --debug shows the traceback); 130 interrupted.
With --json, every outcome is one JSON document of schema 1 (docs/json-schema.md).
"""


class UsageError(InputError):
    """A command-line argument is wrong (exit code 2)."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """Argument errors become :class:`UsageError`, handled (and reported as
    JSON when asked) by :func:`main` like every other error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}", self.format_usage())


# ---------------------------------------------------------------------------
# Shared option groups and the subcommand registry
# ---------------------------------------------------------------------------
def _add_kernel_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--kernel",
        metavar="VERSION",
        default=None,
        help=f"target kernel version whose rules apply: {OLDEST[0]}.{OLDEST[1]} or newer, e.g. 6.1 or 5.10, or "
        f"'newest' ({NEWEST[0]}.{NEWEST[1]}; a later release gets its rules and reports say so); default: the "
        "module's own vermagic (6.1.0-50-amd64 -> 6.1), else the release in the --config header, else newest "
        "(docs/versions.md lists what each release changes)",
    )
    sp.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="the target kernel's .config (gzip accepted, e.g. /boot/config-$(uname -r) or /proc/config.gz): "
        "page size, STRICT_MODULE_RWX, ftrace options ...; without it each architecture uses the common "
        "distribution setting and says so",
    )
    _add_kernel_option_flag(sp)


def _add_kernel_option_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "-O",
        "--kernel-option",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a kernel configuration fact for plugins (repeatable), e.g. dynamic_ftrace=false, "
        "kernel_toc=0xc000000001148100; 'klpcore plugins' lists the keys each plugin accepts",
    )


def _add_symbol_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--symbols",
        "-s",
        metavar="FILE",
        action="append",
        default=[],
        help="kernel symbol source (required, repeatable): System.map, kallsyms, vmlinux, mod.ko@ADDR",
    )
    sp.add_argument(
        "--module-tree",
        metavar="DIR",
        default=None,
        help="the target's modules (/lib/modules/RELEASE, an extracted package root or any directory of "
        ".ko/.ko.xz/.ko.zst/.ko.gz): unresolved symbols are grouped by the module that exports them",
    )
    sp.add_argument(
        "--base",
        metavar="ADDR",
        default=None,
        help="module load address, page aligned (default: the architecture's module area, "
        f"e.g. {DEFAULT_BASE:#x} on x86_64)",
    )
    sp.add_argument(
        "--init-base",
        metavar="ADDR",
        default=None,
        help="address of the module's init memory, page aligned (the kernel allocates it separately; "
        "/sys/module/NAME/sections/.init.text shows it during init); default: after the core memory",
    )
    sp.add_argument(
        "--percpu-base",
        metavar="ADDR",
        default=None,
        help="address the kernel gave the module's per-CPU data (.data..percpu; an offset in the per-CPU "
        "chunk, not page aligned); default: the architecture's per-CPU area",
    )


def _add_json_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true", help="write one JSON document (schema 1) to stdout")


def _add_debug(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an internal error, print the Python traceback",
    )


#: option groups a subcommand can take by name
OPTION_GROUPS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "kernel": _add_kernel_options,
    "symbols": _add_symbol_options,
    "json": _add_json_flag,
}


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str
    groups: tuple[str, ...]
    arguments: Callable[[argparse.ArgumentParser], None] | None


#: every subcommand, in the order ``--help`` lists them
COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    *,
    help: str,
    description: str,
    groups: Sequence[str] = (),
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register a subcommand (a decorator)."""

    def register(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(name, func, help, description, tuple(groups), arguments)
        return func

    return register


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="klpcore",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"klpcore {installed_version()}")
    p.add_argument("--debug", action="store_true", help="on an internal error, print the Python traceback")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for cmd in COMMANDS.values():
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description)
        if cmd.arguments is not None:
            cmd.arguments(sp)
        for group in cmd.groups:
            OPTION_GROUPS[group](sp)
        _add_debug(sp)
    return p


# ---------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------
def _envelope(
    command: str | None, code: int, errors: Sequence[Diagnostic], warnings: Sequence[Diagnostic]
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "command": command,
        "klpcore_version": installed_version(),
        "ok": code == EXIT_OK,
        "exit_code": code,
        "errors": [d.as_dict() for d in errors],
        "warnings": [d.as_dict() for d in warnings],
    }


def emit_json(
    args: argparse.Namespace,
    data: dict[str, Any],
    code: int = EXIT_OK,
    *,
    errors: Sequence[Diagnostic] = (),
    warnings: Sequence[Diagnostic] = (),
) -> None:
    """Write ``data`` inside the schema-1 envelope to the command's JSON destination."""
    doc = _envelope(getattr(args, "command", None), code, errors, warnings)
    doc.update(data)
    _write_json(doc, _json_destination(args) or "-", inputs=_inputs(args))


def _write_json(doc: dict[str, Any], dest: str, inputs: Sequence[str] = ()) -> None:
    from .output import write_file

    write_file(dest, json.dumps(doc, indent=2, default=str) + "\n", what="JSON report", inputs=inputs)


def _json_destination(args: argparse.Namespace) -> str | None:
    """Where JSON goes: ``-`` (stdout), a file, or ``None`` (text output)."""
    report = getattr(args, "report", None)
    if isinstance(report, str):
        return report
    return "-" if getattr(args, "json", False) else None


def _inputs(args: argparse.Namespace) -> list[str]:
    out = [getattr(args, "module", None) or ""]
    out += [s.rpartition("@")[0] or s if not os.path.exists(s) else s for s in getattr(args, "symbols", []) or []]
    return [p for p in out if p]


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


# ---------------------------------------------------------------------------
# Validated arguments
# ---------------------------------------------------------------------------
def accepted_options() -> dict[str, str]:
    """``-O`` keys the core and the installed plugins read: key -> kind."""
    from .plugins import plugin_options

    out = dict(CORE_OPTIONS)
    out.update(plugin_options(get_plugin_manager()))
    return out


def _option_value(key: str, kind: str, text: str) -> Any:
    if kind == "bool":
        low = text.lower()
        if low in ("true", "yes", "on", "y", "1"):
            return True
        if low in ("false", "no", "off", "n", "0"):
            return False
        raise UsageError(f"-O {key}={text}: expected true or false")
    if kind == "address":
        return parse_address(text, what=f"-O {key}")
    if kind == "int":
        try:
            return int(text, 0)
        except ValueError:
            raise UsageError(f"-O {key}={text}: expected a number") from None
    return text


def _vermagic(elf: ElfModule | None) -> str | None:
    if elf is None:
        return None
    values = elf.modinfo.get("vermagic")
    return values[-1] if values else None


def _kernel(args: argparse.Namespace, elf: ElfModule | None = None) -> KernelTarget:
    """The target kernel: ``--kernel``, else the module's vermagic, else the
    ``--config`` header, else newest; ``--config`` and ``-O`` facts attached."""
    accepted: dict[str, str] | None = None
    options: dict[str, Any] = {}
    for item in getattr(args, "kernel_option", []):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"--kernel-option expects KEY=VALUE, got {item!r}")
        if accepted is None:
            accepted = accepted_options()
        if key not in accepted:
            raise UsageError(
                f"-O {key}: unknown option; the core and the installed plugins accept: "
                + (", ".join(sorted(accepted)) or "none")
            )
        options[key] = _option_value(key, accepted[key], value.strip())
    config = KernelConfig.from_file(args.config) if getattr(args, "config", None) else None
    kw: dict[str, Any] = {"options": options, "config": config}
    text = getattr(args, "kernel", None)
    if text is None:
        magic = _vermagic(elf)
        candidates = [(magic, f"vermagic {magic.split()[0]}" if magic else "")]
        if config is not None and config.release:
            candidates.append((config.release, f"--config header {config.release}"))
        for found, source in candidates:
            if not found:
                continue
            try:
                return KernelTarget(version=parse_version(found), version_source=source, **kw)
            except ValueError:
                continue
        text = "newest"
    try:
        return KernelTarget.from_string(text, **kw)
    except ValueError as exc:
        raise UsageError(f"--kernel {text}: {exc}") from None


def kernel_summary(kernel: KernelTarget, settings: dict[str, Setting] | None = None) -> dict[str, Any]:
    """What every report says about the rules it used (JSON key ``kernel_rules``)."""
    source = {"newest": "newest checked release", "option": "--kernel"}.get(
        kernel.version_source, kernel.version_source
    )
    if kernel.beyond_newest:
        source += f"; newer than the newest checked release {NEWEST[0]}.{NEWEST[1]}, whose rules are used"
    out: dict[str, Any] = {
        "version": kernel.label,
        "version_source": source,
        "config": kernel.config.source if kernel.config is not None else None,
    }
    if settings is not None:
        out["settings"] = {name: {"value": st.value, "source": st.source} for name, st in settings.items()}
    return out


def kernel_line(kernel: KernelTarget, settings: dict[str, Setting] | None = None) -> str:
    summary = kernel_summary(kernel, settings)
    text = f"kernel rules: Linux {summary['version']} ({summary['version_source']})"
    if settings:
        facts = ", ".join(f"{n}={st.value} ({st.source})" for n, st in settings.items())
        text += f"; {facts}"
    if kernel.config is None:
        text += "; no --config: each fact is the architecture's common distribution setting"
    return text


def _base(args: argparse.Namespace, mod: LoadingModule) -> int:
    """``--base`` (validated), else the architecture's module area."""
    if args.base is None:
        return mod.arch.default_base
    base = parse_address(str(args.base), what="--base", page_aligned=True)
    if base == 0:
        raise UsageError(
            f"--base 0: module memory at address 0 is not modelled (a symbol at 0 counts as not found); "
            f"the {mod.arch.name} module area starts at {mod.arch.default_base:#x}"
        )
    return base


def _module_tree(args: argparse.Namespace, mod: LoadingModule) -> ModuleTree | None:
    """``--module-tree`` (a directory, or a root whose lib/modules has the module's release)."""
    if not getattr(args, "module_tree", None):
        return None
    vermagic = (mod.elf.modinfo.get("vermagic") or [""])[-1]
    tree = ModuleTree.open(args.module_tree, release=vermagic.split(" ", 1)[0] or None)
    if not tree.index:
        raise UsageError(f"--module-tree {args.module_tree}: no .ko, .ko.xz, .ko.zst or .ko.gz files under {tree.root}")
    return tree


def _symbols(args: argparse.Namespace) -> KernelSymbols:
    if not args.symbols:
        raise UsageError("no symbol source given: use --symbols System.map (or kallsyms, vmlinux, mod.ko@ADDR)")
    _progress("reading symbols ...")
    return load_many(args.symbols)


def _address_option(args: argparse.Namespace, name: str, flag: str, *, page_aligned: bool) -> int | None:
    text = getattr(args, name, None)
    return None if text is None else parse_address(str(text), what=flag, page_aligned=page_aligned)


def _loader(args: argparse.Namespace) -> tuple[Loader, LoadingModule]:
    """Read the module, choose the kernel (its vermagic by default), open it."""
    _progress(f"reading {args.module} ...")
    elf = ElfModule.from_file(args.module)
    loader = Loader(
        kernel=_kernel(args, elf), percpu_base=_address_option(args, "percpu_base", "--percpu-base", page_aligned=False)
    )
    return loader, loader.open(elf)


# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------
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
    infos = list_arch_plugins(pm, _kernel(args))
    if _json_destination(args):
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
        print("no architecture plugins installed (pip install klpcore-x86_64, ...)")
        return EXIT_OK
    rows = []
    for i in infos:
        for a in i.archs:
            rows.append((a.name, i.distribution or i.name, i.version, a.machine, a.byteorder, len(a.types)))
    _table(rows, ("arch", "distribution", "version", "e_machine", "byte order", "types"))
    shown: set[tuple[str, tuple[str, ...]]] = set()
    for i in infos:
        for a in i.archs:
            key = (a.name, tuple(t.name for t in a.types.values()))
            if key in shown:  # the same arch in the other byte order: same table
                continue
            shown.add(key)
            if args.types:
                print(f"\n{a.name}: {a.description}")
                _table(
                    [(t.number, t.name, t.width, t.formula or "-", t.describe()["range"]) for t in a.types.values()],
                    ("num", "type", "bytes", "formula", "range"),
                )
            else:
                print(f"{a.name}: " + ", ".join(t.name for t in a.types.values()))
            if a.options:
                print(f"  -O options: {', '.join(f'{k} ({v})' for k, v in a.options.items())}")
    print(f"core -O options: {', '.join(f'{k} ({v})' for k, v in CORE_OPTIONS.items())}")
    return EXIT_OK


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


def _module_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("module", metavar="MODULE", help="the module: .ko, or compressed .ko.xz / .ko.zst / .ko.gz")


@command(
    "inspect",
    help="show a module's machine, livepatch objects, sections and relocation types",
    description="Show MODULE's machine and architecture plugin, its livepatch objects with their relocation "
    "sections, its livepatch symbols and the relocation types of each relocation section. Needs no symbols.",
    groups=("json", "kernel"),
    arguments=_module_arg,
)
def cmd_inspect(args: argparse.Namespace) -> int:
    loader, mod = _loader(args)
    _progress_done()
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
    from .check.patches import read_patch

    patch = read_patch(mod.elf)
    data["patch_producer"] = patch.producer
    data["patched_functions"] = [
        {"object": o.label, "old_name": f.old_name, "sympos": f.sympos, "replacement": f.new_func}
        for o, f in patch.functions
    ]
    if _json_destination(args):
        emit_json(args, data, warnings=klp.warnings)
        return EXIT_OK
    print(f"module   {mod.name} ({args.module})")
    print(kernel_line(loader.kernel, loader.settings(mod)))
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
            (r["index"], r["name"], r["target"], r["entries"], ", ".join(f"{k} {v}" for k, v in r["types"].items()))
            for r in data["relocation_sections"]
        ],
        ("index", "section", "target", "entries", "types"),
    )
    if patch.functions:
        print(f"\npatched functions ({patch.producer})")
        _table(
            [(r["object"], r["old_name"], r["sympos"], r["replacement"]) for r in data["patched_functions"]],
            ("object", "old_name", "sympos", "replacement"),
        )
    _print_diags(klp.warnings)
    return EXIT_OK


def _symbol_rows(resolutions: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"index": r.index, "name": r.name, "value": hex(r.value), "how": r.how, "object": r.object} for r in resolutions
    ]


@command(
    "resolve",
    help="resolve every livepatch and undefined symbol of a module",
    description="Resolve MODULE's livepatch symbols (.klp.sym.OBJ.NAME,POS, by the kernel's sympos rules) and its "
    "undefined symbols (exported symbols only, as simplify_symbols does) against the --symbols sources, "
    "without applying relocations. Exit 1 when a symbol does not resolve. Patched objects that are not loaded "
    "are reported, not failed: the kernel resolves them when they load.",
    groups=("json", "symbols", "kernel"),
    arguments=_module_arg,
)
def cmd_resolve(args: argparse.Namespace) -> int:
    from .explain import explain_errors

    symbols = _symbols(args)
    loader, mod = _loader(args)
    tree = _module_tree(args, mod)
    init_base = _address_option(args, "init_base", "--init-base", page_aligned=True)
    report = resolve_module(loader, mod, symbols, _base(args, mod), init_base)
    _progress_done()
    errors = explain_errors(mod, report.errors, symbols, tree)
    code = EXIT_ERRORS if errors else EXIT_OK
    distinct = len({(r.name, r.object) for r in report.resolutions})
    if _json_destination(args):
        emit_json(
            args,
            {
                "module": mod.name,
                "symbols": _symbol_rows(report.resolutions),
                "distinct_symbols": distinct,
                "pending_objects": report.pending,
                "kernel_rules": kernel_summary(loader.kernel, mod.settings),
            },
            code,
            errors=errors,
            warnings=report.warnings,
        )
        return code
    _table(
        [(r.index, r.name, f"{r.value:#018x}", r.how, r.object or "-") for r in report.resolutions],
        ("index", "symbol", "value", "how", "object"),
    )
    _print_diags(errors)
    _print_diags(report.warnings)
    uses = len(report.resolutions)
    print(
        f"\n{distinct} distinct symbol{'s' if distinct != 1 else ''} resolved ({uses} symbol table entr"
        f"{'ies' if uses != 1 else 'y'}), {len(errors)} error(s)"
        + (f"; not loaded: {', '.join(report.pending)}" if report.pending else "")
    )
    print(kernel_line(loader.kernel, mod.settings))
    return code


def _load(args: argparse.Namespace) -> tuple[Loader, LoadedModule]:
    symbols = _symbols(args)
    loader, mod = _loader(args)
    tree = _module_tree(args, mod)
    init_base = _address_option(args, "init_base", "--init-base", page_aligned=True)
    _progress(f"applying {mod.name} ...")
    try:
        loaded = loader.load(mod, symbols, _base(args, mod), init_base=init_base)
    except KlpError as exc:
        from .explain import explain_errors

        exc.diagnostics = explain_errors(mod, exc.diagnostics, symbols, tree)
        raise
    _progress_done()
    return loader, loaded


def apply_report(loaded: LoadedModule) -> dict[str, Any]:
    mod = loaded.module
    return {
        "module": mod.name,
        "arch": mod.arch.name,
        "kernel": loaded.kernel.label,
        "kernel_rules": kernel_summary(loaded.kernel, mod.settings),
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
        "symbols": _symbol_rows(loaded.resolutions),
        "pending_objects": loaded.pending_objects,
    }


def _example(args: argparse.Namespace) -> None:
    if args.module:
        raise UsageError(f"apply: give either MODULE ({args.module}) or --example, not both")
    pm = get_plugin_manager()
    examples = [e for group in pm.hook.klp_arch_examples() for e in (group or [])]
    if not examples:
        raise UsageError("no installed plugin ships an example module")
    if not args.example:  # the host's architecture first, else the order plugins were found in
        host = {"aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x", "x86_64": "x86_64"}
        mine = host.get(os.uname().machine, "x86_64")
        examples.sort(key=lambda e: e.name != mine)
    chosen = [e for e in examples if not args.example or e.name == args.example]
    if not chosen:
        raise UsageError(f"no example named {args.example!r}; available: {', '.join(e.name for e in examples)}")
    ex = chosen[0]
    args.module = str(ex.module)
    args.symbols = [str(p) for p in ex.symbols] + list(args.symbols)
    if args.base is None:
        args.base = hex(ex.base)
    if not args.quiet and _json_destination(args) != "-":
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
        help="write the JSON report (schema 1) to REPORT ('-' = stdout), on success and on failure",
    )
    sp.add_argument(
        "--example",
        metavar="ARCH",
        nargs="?",
        const="",
        help="instead of MODULE, use the example module shipped with the plugin for ARCH (default: the host's "
        "architecture when its plugin is installed, else the first found)",
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
    from .output import write_elf, write_file

    if args.example is not None:
        _example(args)
    if not args.module:
        raise UsageError("apply: no MODULE given (or use --example)")
    _, loaded = _load(args)
    written = False
    if args.output:
        write_file(args.output, write_elf(loaded), what="relocated module", inputs=_inputs(args))
        written = True
    report = apply_report(loaded)
    report["output"] = args.output
    report["written"] = written
    if args.report:
        emit_json(args, report, warnings=loaded.warnings)
    if not args.quiet and args.report != "-":
        _apply_summary(args, loaded, report)
    _print_diags(loaded.warnings)
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
    else:
        print("  nothing written: give -o OUT to write the relocated module")
    print(f"  {kernel_line(loaded.kernel, mod.settings)}")


def _disasm_args(sp: argparse.ArgumentParser) -> None:
    _module_arg(sp)
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
    from .disasm import relocation_sites

    _, loaded = _load(args)
    sites = relocation_sites(loaded, args.section)
    if _json_destination(args):
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
    _print_diags(loaded.warnings)
    return EXIT_OK


def _check_args(sp: argparse.ArgumentParser) -> None:
    from .check.command import add_arguments

    add_arguments(sp)
    _add_kernel_option_flag(sp)


@command(
    "check",
    help="judge whether modules load on target kernels (and whether a livepatch applies)",
    description="Run the kernel's load sequence for each MODULE on each --target kernel directory.",
    arguments=_check_args,
)
def cmd_check(args: argparse.Namespace) -> int:
    from .check.command import run

    options = _kernel(argparse.Namespace(kernel="newest", kernel_option=args.kernel_option)).options
    return run(args, options, lambda doc, code: emit_json(args, doc, code))


# ---------------------------------------------------------------------------
# The one error handler
# ---------------------------------------------------------------------------
def _argv_flag(argv: Sequence[str], flag: str) -> bool:
    for a in argv:
        if a == "--":
            return False
        if a == flag:
            return True
    return False


def _argv_json_destination(argv: Sequence[str]) -> str | None:
    """The JSON destination when parsing failed: ``--json`` (stdout) or
    ``apply --json REPORT`` / ``check --json REPORT``."""
    is_apply = "apply" in argv or "check" in argv
    for k, a in enumerate(argv):
        if a == "--":
            break
        if a == "--json":
            if is_apply:
                nxt = argv[k + 1] if k + 1 < len(argv) else None
                return nxt if nxt and (nxt == "-" or not nxt.startswith("-")) else "-"
            return "-"
        if a.startswith("--json="):
            return a.partition("=")[2] or "-"
    return None


def _failure(
    args: argparse.Namespace | None,
    argv: Sequence[str],
    command_name: str | None,
    code: int,
    diags: Sequence[Diagnostic],
    usage: str = "",
    exc: BaseException | None = None,
) -> int:
    """Report a failure: text lines on stderr, and the JSON document when asked
    (unless writing that very document is what failed)."""
    _progress_done()
    if usage:
        sys.stderr.write(usage)
    _print_diags(diags)
    dest = _json_destination(args) if args is not None else _argv_json_destination(argv)
    if isinstance(exc, OutputError) and exc.path == dest:
        dest = None
    if dest:
        doc = _envelope(command_name, code, [d for d in diags if d.severity == "error"], [])
        if command_name == "apply":
            doc["written"] = False
        try:
            _write_json(doc, dest, inputs=_inputs(args) if args is not None else ())
        except KlpError as exc:
            _print_diags(exc.diagnostics)
            return EXIT_USAGE
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (never raises, apart from
    ``SystemExit`` for ``--help`` and ``--version``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _argv_flag(argv, "--debug")
    args: argparse.Namespace | None = None
    name: str | None = next((a for a in argv if a in COMMANDS), None)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        name = args.command
        if not name:
            parser.print_help()
            return EXIT_USAGE
        return COMMANDS[name].run(args)
    except UsageError as exc:
        return _failure(args, argv, name, EXIT_USAGE, exc.diagnostics, exc.usage)
    except InputError as exc:
        return _failure(args, argv, name, EXIT_USAGE, exc.diagnostics, exc=exc)
    except KlpError as exc:
        return _failure(args, argv, name, EXIT_ERRORS, exc.diagnostics, exc=exc)
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        _progress_done()
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as exc:
        if debug:
            traceback.print_exc()
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        line = f"internal error in klpcore {installed_version()} (a bug): {what}; " + (
            "the traceback is above" if debug else "rerun with --debug for the traceback"
        )
        return _failure(args, argv, name, EXIT_INTERNAL, [Diagnostic(line.splitlines()[0][:2000])])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
