"""The entry point: :func:`main` runs one subcommand inside the one error handler that turns every
outcome into an exit code (and, when asked, a JSON document)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Sequence

from ..errors import Diagnostic, InputError, KlpError, OutputError
from ..plugins import installed_version
from .codes import EXIT_ERRORS, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .commands import ORDER
from .parser import COMMANDS, UsageError, build_parser
from .render import envelope, input_paths, json_destination, print_diags, progress_done, write_json


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
    progress_done()
    if usage:
        sys.stderr.write(usage)
    print_diags(diags)
    dest = json_destination(args) if args is not None else _argv_json_destination(argv)
    if isinstance(exc, OutputError) and exc.path == dest:
        dest = None
    if dest:
        doc = envelope(command_name, code, [d for d in diags if d.severity == "error"], [])
        if command_name == "apply":
            doc["written"] = False
        try:
            write_json(doc, dest, inputs=input_paths(args) if args is not None else ())
        except KlpError as exc:
            print_diags(exc.diagnostics)
            return EXIT_USAGE
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (never raises, apart from
    ``SystemExit`` for ``--help`` and ``--version``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _argv_flag(argv, "--debug")
    args: argparse.Namespace | None = None
    name: str | None = next((a for a in argv if a in ORDER or a in COMMANDS), None)
    first = next((a for a in argv if not a.startswith("-")), None)
    try:
        # the subcommand's module alone is imported when the first word names one; else all are
        parser = build_parser(first if first in ORDER else None)
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
        progress_done()
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as exc:
        if debug:
            traceback.print_exc()
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            version = installed_version()
        except BaseException:  # e.g. MemoryError again: reading package metadata imports and allocates
            from .. import __version__ as version
        line = f"internal error in klpcore {version} (a bug): {what}; " + (
            "the traceback is above" if debug else "rerun with --debug for the traceback"
        )
        return _failure(args, argv, name, EXIT_INTERNAL, [Diagnostic(line.splitlines()[0][:2000])])
