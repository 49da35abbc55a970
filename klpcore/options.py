"""Kernel options (``-O KEY=VALUE`` on the command line, ``options=`` in the Python API): one
validation for both.

The keys are the core's (:data:`klpcore.kernel.CORE_OPTIONS`) and the installed plugins'
(``ArchSpec.options``), each with a kind: ``bool``, ``int``, ``address`` or ``str``.  A value is
either text (as the command line gives it: ``true``/``false``, a number, an address) or already of
its kind (``True``, ``16``, ``0xc000000000000000``).  Anything else is an
:class:`~klpcore.errors.InputError` naming the key, never a ``ValueError`` or ``TypeError`` from a
plugin that reads it later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    import pluggy

_TRUE = ("true", "yes", "on", "y", "1")
_FALSE = ("false", "no", "off", "n", "0")


def accepted_options(pm: pluggy.PluginManager | None = None) -> dict[str, str]:
    """The keys the core and the installed plugins read: key -> kind."""
    from .kernel import CORE_OPTIONS
    from .plugins import get_plugin_manager, plugin_options

    out = dict(CORE_OPTIONS)
    out.update(plugin_options(pm if pm is not None else get_plugin_manager()))
    return out


def option_value(key: str, kind: str, value: object) -> Any:
    """``value`` (text, or a value of ``kind``) checked and converted for option ``key``."""
    from .addresses import parse_address

    shown = f"-O {key}={value}" if isinstance(value, str) else f"option {key}={value!r}"
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise InputError(f"{shown}: expected true or false")
    if kind in ("int", "address"):
        if isinstance(value, int) and not isinstance(value, bool):
            if kind == "address" and not 0 <= value < 1 << 64:
                raise InputError(f"{shown}: outside the 64-bit address range")
            return value
        if isinstance(value, str):
            if kind == "address":
                return parse_address(value.strip(), what=f"-O {key}")
            try:
                return int(value.strip(), 0)
            except ValueError:
                raise InputError(f"{shown}: expected a number") from None
        raise InputError(f"{shown}: expected {'an address' if kind == 'address' else 'a number'}")
    if isinstance(value, str):
        return value
    raise InputError(f"{shown}: expected text")


def validate_options(options: object, pm: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """``options`` (a mapping, or ``None`` for none) with every key known and every value of its kind."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InputError(f"kernel options: expected a mapping of option name to value, got {type(options).__name__}")
    accepted: dict[str, str] | None = None
    out: dict[str, Any] = {}
    for key, value in options.items():
        if accepted is None:
            accepted = accepted_options(pm)
        if not isinstance(key, str) or key not in accepted:
            raise InputError(
                f"-O {key}: unknown option; the core and the installed plugins accept: "
                + (", ".join(sorted(accepted)) or "none")
            )
        out[key] = option_value(key, accepted[key], value)
    return out
