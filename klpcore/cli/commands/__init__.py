"""One module per subcommand; importing each registers it with :func:`~klpcore.cli.parser.command`.

Nothing is imported with this package: :func:`load` imports one subcommand's module (what a run of
that subcommand needs, so ``klpcore apply`` does not pay for ``check``'s imports) or all of them."""

from __future__ import annotations

import importlib

#: the subcommands' modules, in the order ``--help`` lists them
ORDER = ("plugins", "inspect", "resolve", "apply", "disasm", "check", "convert")


def load(name: str | None = None) -> None:
    """Register subcommand ``name`` (one of :data:`ORDER`), or every subcommand."""
    for n in ORDER if name is None else (name,):
        importlib.import_module(f"{__name__}.{n}")
