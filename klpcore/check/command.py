"""The ``klpcore check`` subcommand (registered by :mod:`klpcore.cli`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from ..errors import InputError

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

verdicts: loads (every step that could refuse it was checked), refused (insmod
fails), patch-fails (loads, but a patched object fails when it is or later gets
loaded), unknown (nothing refused it, but a step was not checked: each is named
with the file or package that supplies what it needs)
exit codes: 0 every pair loads, 1 any is refused or patch-fails, 4 none is but
any is unknown, 2 bad input (a MODULE or --target that is not one, or the
executor could not run the pairs), 3 internal error (a bug); not-applicable
(the targets are of several architectures and this one is not the module's:
not judged) counts as 0

Many pairs run on every core (--jobs), or on a Dask cluster (--executor);
the output is the same, in the same order, whichever runs them.
"""


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.description = DESCRIPTION
    sp.formatter_class = argparse.RawDescriptionHelpFormatter
    sp.add_argument(
        "modules",
        metavar="MODULE",
        nargs="*",
        help="module file (.ko, .ko.xz, .ko.zst, .ko.gz), a directory (every module file below it) "
        "or @FILE (a list of these, one a line)",
    )
    sp.add_argument(
        "--example",
        action="store_true",
        help="check the example shipped with klpcore: two livepatch modules built for a Debian 6.1 kernel "
        "on a slice of that kernel (one loads; the other is refused with the line the real kernel printed)",
    )
    sp.add_argument(
        "--target",
        "-t",
        metavar="PATH",
        action="append",
        help="target kernel directory (repeatable); PATH:RELEASE picks a release; ROOT1,ROOT2[,...] is one "
        "kernel whose packages were extracted into several roots (image, modules, headers, -dbg); a part may "
        "be a .deb file (read without extracting) or a folder of .deb files; "
        "@FILE: a list of these, one a line",
    )
    sp.add_argument(
        "--distribution",
        choices=["auto", "debian", "upstream"],
        default="auto",
        help="whose kernel patches change load rules on the targets (default: from each target's config; "
        "debian: an import without a __versions entry is refused)",
    )
    sp.add_argument(
        "--json", metavar="FILE", dest="report", help="write the JSON report (schema 2) to FILE ('-' = stdout)"
    )
    sp.add_argument("-v", "--verbose", action="store_true", help="also show info findings and every pair's details")
    from .runner import add_arguments as add_run_arguments

    add_run_arguments(sp)
    # -O KEY=VALUE is added by the command line with the other subcommands' (klpcore.cli)


def example_arguments() -> tuple[list[str], list[str]]:
    """The example's modules and target (package data: klpcore/check/example/, a slice of Debian's
    6.1.0-50-amd64 and two livepatch modules built for it, from tests/check/fixtures/kernel/)."""
    from importlib import resources

    root = resources.files("klpcore") / "check" / "example"
    return [str(root / "kc_lp.ko"), str(root / "kc_lp_nosym.ko")], [str(root / "target")]


def module_head_check(path: str) -> None:
    """Bad input (exit 2, as every command treats it) when ``path`` (decompressed) is not an ELF file:
    a text file or a .deb given as MODULE is not a module the kernel could be asked to load."""
    from .. import compress
    from .. import constants as C

    heads: list[bytes] = []

    def limit(head: bytes) -> int:
        heads.append(head[:4])
        return 0  # the first bytes are all it needs: stop there

    try:
        compress.read_input(path, limit=limit, what="module")
    except InputError:
        if not heads:
            raise
    if heads and heads[0] != C.ELFMAG:
        kind = "a Debian package (extract it: dpkg-deb -x)" if heads[0] == b"!<ar" else "not an ELF file"
        raise InputError(f"{path}: {kind}; a MODULE is a .ko, .ko.xz, .ko.zst or .ko.gz file")


def _part_ok(p: str) -> bool:
    return os.path.isdir(p) or (p.endswith(".deb") and os.path.isfile(p))


def parse_target_spec(spec: str) -> tuple[list[str], str | None]:
    """``PART[,PART...][:RELEASE]`` -> (parts, release): one kernel whose packages were extracted into
    one root or several (image, modules, headers, -dbg), or given as the ``.deb`` files themselves
    (read without extracting), or a folder of such packages."""
    if _part_ok(spec):
        return [spec], None
    body, release = spec, None
    if ":" in spec:
        head, _, tail = spec.rpartition(":")
        if all(_part_ok(p) for p in head.split(",")) and "/" not in tail:
            body, release = head, tail or None
    roots = [p for p in body.split(",") if p]
    for p in roots:
        if not _part_ok(p):
            raise InputError(f"--target {spec}: {p}: not a directory or a .deb package")
    if not roots:
        raise InputError(f"--target {spec!r}: no directory given")
    return roots, release


def run(args: argparse.Namespace, options: dict[str, Any], emit: Callable[[dict[str, Any], int], None]) -> int:
    """Judge every (module, target) pair (:mod:`.runner`); ``emit(document, exit_code)``
    writes the JSON report (the CLI's schema-2 envelope) where ``args.report`` says."""
    from .runner import run as run_many

    if args.example:
        if args.modules or args.target:
            raise InputError("--example takes no MODULE and no --target (it brings both)")
        args.modules, args.target = example_arguments()
    elif not args.modules or not args.target:
        raise InputError("check needs MODULE ... and --target PATH (or --example)")
    return run_many(args, options, emit, None if args.distribution == "auto" else args.distribution)
