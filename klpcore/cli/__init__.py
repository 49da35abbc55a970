"""The ``klpcore`` command line.

The contract (see ``docs/cli.md``):

* exit codes: 0 success; 1 the module will not load as asked (relocation,
  resolution or livepatch errors); 2 bad usage or unreadable input, including
  output files that cannot be written; 3 an internal error (a bug in
  klpcore: one line on stderr, the traceback with ``--debug``); 130
  interrupted;
* never a traceback unless ``--debug`` is given;
* with ``--json`` every outcome, success or failure (argument errors
  included), is one JSON document of schema 2 (``docs/json-schema.md``,
  ``klpcore/schema/v2.json``).

Adding a subcommand: write ``def cmd_x(args) -> int`` and register it with
:func:`~klpcore.cli.parser.command` (name, help, description, the shared option groups it takes,
and a function adding its own arguments).  Adding an option to several
subcommands: add it to a group in :data:`~klpcore.cli.parser.OPTION_GROUPS`.  Every subcommand runs
inside :func:`~klpcore.cli.entry.main`'s single error handler.
"""

from __future__ import annotations

from . import commands  # noqa: F401  (registers every subcommand)
from .args import accepted_options, kernel_target
from .codes import EXIT_ERRORS, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, SCHEMA_VERSION
from .commands.apply import apply_report
from .entry import main
from .parser import COMMANDS, OPTION_GROUPS, Command, Parser, UsageError, build_parser, command
from .render import emit_json, kernel_line, kernel_summary

__all__ = [
    "COMMANDS",
    "EXIT_ERRORS",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "OPTION_GROUPS",
    "SCHEMA_VERSION",
    "Command",
    "Parser",
    "UsageError",
    "accepted_options",
    "apply_report",
    "build_parser",
    "command",
    "emit_json",
    "kernel_line",
    "kernel_summary",
    "kernel_target",
    "main",
]
