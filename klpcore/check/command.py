"""The ``klpcore check`` subcommand (registered by :mod:`klpcore.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

HELP = "judge whether modules load on target kernels (and whether a livepatch applies)"
DESCRIPTION = """\
Run the kernel's load sequence for each MODULE on each target kernel: ELF and
architecture, module_layout CRC, vermagic, symbol CRCs, GPL-only exports,
namespaces, unknown symbols, dependencies from the target's module tree,
relocations, duplicate exports, and for a livepatch module every patched
function (object name, old_name by the sympos rule, ftrace location).

A target PATH is a directory: the root of an installed system or of extracted
kernel packages (boot/, lib/modules/<release>/, usr/lib/debug/boot/,
usr/src/linux-headers-<release>/), or a flat directory with System.map,
config, Module.symvers, vmlinux and .ko files.  --target / uses /proc/kallsyms.

verdicts: loads, refused (insmod fails), patch-fails (loads, but a patched
object fails when it is or later gets loaded); not-applicable (the targets are
of several architectures and this one is not the module's: not judged)
exit codes: 0 every pair loads, 1 any does not, 2 bad input (or the executor
could not run the pairs), 3 internal error (a bug)

Many pairs run on every core (--jobs), or on a Dask cluster (--executor);
the output is the same, in the same order, whichever runs them.
"""


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.description = DESCRIPTION
    sp.formatter_class = argparse.RawDescriptionHelpFormatter
    sp.add_argument(
        "modules",
        metavar="MODULE",
        nargs="+",
        help="module file (.ko, .ko.xz, .ko.zst, .ko.gz), a directory (every module file below it) "
        "or @FILE (a list of these, one a line)",
    )
    sp.add_argument(
        "--target",
        "-t",
        metavar="PATH",
        action="append",
        required=True,
        help="target kernel directory (repeatable); PATH:RELEASE picks a release; @FILE: a list of these, one a line",
    )
    sp.add_argument(
        "--distribution",
        choices=["auto", "debian", "upstream"],
        default="auto",
        help="whose kernel patches change load rules on the targets (default: from each target's config; "
        "debian: an import without a __versions entry is refused)",
    )
    sp.add_argument(
        "--json", metavar="FILE", dest="report", help="write the JSON report (schema 1) to FILE ('-' = stdout)"
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="also show info findings and every pair's details")
    from .runner import add_arguments as add_run_arguments

    add_run_arguments(sp)
    # -O KEY=VALUE is added by the command line with the other subcommands' (klpcore.cli)


def run(args: argparse.Namespace, options: dict[str, Any], emit: Callable[[dict[str, Any], int], None]) -> int:
    """Judge every (module, target) pair (:mod:`.runner`); ``emit(document, exit_code)``
    writes the JSON report (the CLI's schema-1 envelope) where ``args.report`` says."""
    from .runner import run as run_many

    return run_many(args, options, emit, None if args.distribution == "auto" else args.distribution)
