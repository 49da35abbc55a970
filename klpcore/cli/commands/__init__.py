"""One module per subcommand; importing each registers it with :func:`~klpcore.cli.parser.command`."""

from __future__ import annotations

import importlib

#: the subcommands' modules, in the order ``--help`` lists them
ORDER = ("plugins", "inspect", "resolve", "apply", "disasm", "check", "convert")

for _name in ORDER:
    importlib.import_module(f"{__name__}.{_name}")
