"""The argument parser: the top-level options, the option groups subcommands share, and the registry
each subcommand module adds itself to with :func:`command`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ..errors import InputError
from ..plugins import installed_version
from ..versions import NEWEST, OLDEST

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
With --json, every outcome is one JSON document of schema 2 (docs/json-schema.md).
"""


class UsageError(InputError):
    """A command-line argument is wrong (exit code 2)."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """Argument errors become :class:`UsageError`, handled (and reported as
    JSON when asked) by :func:`main` like every other error.  No option is
    taken from an abbreviation (``check --kernel 6.1`` is not ``--kernel-option``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        #: the subcommands' parsers by name (on the top-level parser)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", self.format_usage())

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """As argparse's, but an argument a subcommand does not take is reported by that subcommand
        (its usage, not the top-level one)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = self.commands.get(getattr(ns, "command", None) or "")
            (sub or self).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def add_kernel_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--kernel",
        metavar="VERSION",
        default=None,
        help=f"target kernel version whose rules apply: {OLDEST[0]}.{OLDEST[1]} or newer, e.g. 6.1 or 5.10, or "
        f"'newest' ({NEWEST[0]}.{NEWEST[1]}; a later release gets its rules and reports say so); default: the "
        "module's own vermagic (6.1.0-50-<flavour> -> 6.1), else the release in the --config header, else newest "
        "(docs/versions.md lists what each release changes)",
    )
    sp.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="the target kernel's .config (gzip, xz or zstd accepted, e.g. /boot/config-$(uname -r) or "
        "/proc/config.gz): page size, STRICT_MODULE_RWX, ftrace options ...; without it each architecture uses "
        "the common distribution setting and says so",
    )
    add_kernel_option_flag(sp)


def add_kernel_option_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "-O",
        "--kernel-option",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a kernel configuration fact for plugins (repeatable), e.g. dynamic_ftrace=false, "
        "kernel_toc=0xc000000001148100; 'klpcore plugins' lists the keys each plugin accepts",
    )


def add_symbol_options(sp: argparse.ArgumentParser) -> None:
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
        help="module load address, page aligned (default: the start of the architecture's module area, "
        "shown as default_base by 'klpcore plugins --json')",
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


def add_json_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true", help="write one JSON document (schema 2) to stdout")


def add_debug(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an internal error, print the Python traceback",
    )


def add_module_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("module", metavar="MODULE", help="the module: .ko, or compressed .ko.xz / .ko.zst / .ko.gz")


#: option groups a subcommand can take by name
OPTION_GROUPS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "kernel": add_kernel_options,
    "symbols": add_symbol_options,
    "json": add_json_flag,
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


def build_parser() -> Parser:
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
        p.commands[cmd.name] = sp
        if cmd.arguments is not None:
            cmd.arguments(sp)
        for group in cmd.groups:
            OPTION_GROUPS[group](sp)
        add_debug(sp)
    return p
