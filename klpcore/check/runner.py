"""``klpcore check`` over many modules and targets: inputs (:mod:`.inputs`) ->
an executor (:mod:`.executors`) -> outputs (:mod:`.outputs`), with progress
(:mod:`.progress`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from ..errors import InputError
from .executors import default_jobs  # light: the parser (built for every command) needs only this

FORMATS = ("table", "json", "jsonl", "csv")


def add_arguments(sp: argparse.ArgumentParser) -> None:
    """The options of a run at scale (the check command adds its own first)."""
    g = sp.add_argument_group("many modules and targets")
    g.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        default="table",
        help="stdout: table (a row per pair; for many pairs a summary, failures by cause and a module x target "
        "matrix), json (the report), jsonl (a line per pair as it is judged, then a summary line), csv",
    )
    g.add_argument(
        "--jobs",
        "-j",
        type=int,
        metavar="N",
        default=None,
        help=f"worker processes (default: the machine's cores, {default_jobs()} here; 1: in this process)",
    )
    g.add_argument(
        "--executor",
        metavar="NAME",
        default="processes",
        help="where pairs are judged: processes (default), inprocess, dask-local (a Dask LocalCluster of --jobs "
        "workers), dask://HOST:PORT (a Dask scheduler; pip install 'klpcore[dask]'), or a plugin's",
    )
    g.add_argument(
        "--compare",
        action="store_true",
        help="with two targets: the modules whose verdict changes from the first to the second, and why",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="read every target's System.map and Module.symvers from its files (default: parsed tables are kept "
        "between runs in $KLPCORE_CACHE_DIR or ~/.cache/klpcore, keyed by the files' content; KLPCORE_NO_CACHE=1)",
    )


def run(
    args: argparse.Namespace,
    options: dict[str, Any],
    emit: Callable[[dict[str, Any], int], None],
    distribution: str | None,
) -> int:
    from .batch import Cell, by_module, exit_code, run_plan
    from .executors import InProcess, choose
    from .inputs import expand_modules, expand_targets, plan
    from .outputs import Stream, compare, json_document, write_table
    from .progress import Progress

    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs {args.jobs}: must be 1 or more")
    if args.no_cache:
        os.environ["KLPCORE_NO_CACHE"] = "1"  # this process and the workers it starts
    modules = expand_modules(args.modules)
    targets = expand_targets(args.target, distribution)
    if args.compare and len(targets) != 2:
        raise InputError(f"--compare needs exactly two targets ({len(targets)} given)")
    p = plan(modules, targets)
    # a few pairs on one target: the workers would each read the target for little work
    if args.executor == "processes" and (args.jobs == 1 or (len(targets) == 1 and len(p.jobs) < 16)):
        executor: Any = InProcess()
    else:
        executor = choose(args.executor, args.jobs)
    fmt = "json" if args.report == "-" else args.format  # --json - : the report on stdout, as before
    stream = Stream(fmt, sys.stdout)
    progress = Progress(quiet=args.quiet)
    try:
        cells = run_plan(p, executor, options, on_pair=stream.pair, on_progress=progress.update)
    finally:
        progress.close()
        executor.close()
    groups: list[list[Cell]] = by_module(p, cells)
    code = exit_code(cells)
    comparison = compare(groups, p.labels, p.releases) if args.compare else None
    if args.report or fmt == "json":
        doc = json_document(groups, comparison)
        given = args.report
        for dest in dict.fromkeys(d for d in (given, "-" if fmt == "json" else None) if d):
            args.report = dest  # emit writes where args.report says
            emit(doc, code)
        args.report = given
    if fmt == "table":
        write_table(groups, p.labels, p.releases, sys.stdout, verbose=args.verbose, comparison=comparison)
    stream.summary(cells, code, comparison)
    return code
