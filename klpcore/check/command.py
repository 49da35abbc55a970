"""The ``klpcore check`` subcommand (registered by :mod:`klpcore.cli`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import InputError
from . import check_pair, json_report, write_text
from .report import PairResult, exit_code
from .target import Target

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
any is unknown, 2 bad input (a MODULE or --target that is not one), 3 internal
error (a bug)
"""


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.description = DESCRIPTION
    sp.formatter_class = argparse.RawDescriptionHelpFormatter
    sp.add_argument("modules", metavar="MODULE", nargs="+", help="module file (.ko, .ko.xz, .ko.zst, .ko.gz)")
    sp.add_argument(
        "--target",
        "-t",
        metavar="PATH",
        action="append",
        required=True,
        help="target kernel directory (repeatable); PATH:RELEASE picks a release; ROOT1,ROOT2[,...] is one "
        "kernel whose packages were extracted into several roots (image, modules, headers, -dbg)",
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
    # -O KEY=VALUE is added by the command line with the other subcommands' (klpcore.cli)


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{text}")
        sys.stderr.flush()


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


def parse_target_spec(spec: str) -> tuple[list[str], str | None]:
    """``PATH[,PATH...][:RELEASE]`` -> (roots, release): one kernel whose packages were
    extracted into one root or several (image, modules, headers, -dbg)."""
    if os.path.isdir(spec):
        return [spec], None
    body, release = spec, None
    if ":" in spec:
        head, _, tail = spec.rpartition(":")
        if all(os.path.isdir(p) for p in head.split(",")) and "/" not in tail:
            body, release = head, tail or None
    roots = [p for p in body.split(",") if p]
    for p in roots:
        if not os.path.isdir(p):
            raise InputError(f"--target {spec}: {p}: not a directory")
    if not roots:
        raise InputError(f"--target {spec!r}: no directory given")
    return roots, release


def _targets(specs: list[str], distribution: str | None = None) -> list[Target]:
    out = []
    for spec in specs:
        roots, release = parse_target_spec(spec)
        t = Target(roots, release, distribution)
        t.validate()
        out.append(t)
    return out


def run(args: argparse.Namespace, options: dict[str, Any], emit: Callable[[dict[str, Any], int], None]) -> int:
    """Judge every (module, target) pair; ``emit(document, exit_code)`` writes
    the JSON report (the CLI's schema-2 envelope) when ``--json`` is given."""
    for m in args.modules:
        if not os.path.isfile(m):
            raise InputError(f"{m}: no such module file")
        module_head_check(m)
    targets = _targets(args.target, None if args.distribution == "auto" else args.distribution)
    results: list[list[PairResult]] = []
    total = len(args.modules) * len(targets)
    n = 0
    start = time.monotonic()
    for m in args.modules:
        pairs = []
        for t in targets:
            n += 1
            _progress(f"[{n}/{total}] {time.monotonic() - start:5.1f} s  {os.path.basename(m)} on {t.label} ...")
            pairs.append(check_pair(m, t, options))
        results.append(pairs)
    _progress("")
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    code = exit_code([p.verdict for group in results for p in group])
    if args.report:
        emit(json_report(results), code)
    if args.report != "-":
        write_text(results, verbose=args.verbose)
    return code
