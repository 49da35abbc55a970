"""A plugin whose identify hook fails with a plain Python exception: the CLI
must report it as an internal error (exit 3), never a traceback."""

from __future__ import annotations

from klpcore import hookimpl


@hookimpl(tryfirst=True)
def klp_arch_identify(machine: int, elfclass: int, byteorder: str, e_flags: int) -> None:
    raise RuntimeError("simulated bug in a plugin")
