"""What an architecture says about converting relocations: the result of the
``klp_arch_convert_rules`` hook (:mod:`klpcore.hookspecs`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..kernel import KernelTarget
from ..versions import Behaviour

#: ``(type number, target section name) -> reason`` a relocation of that type must
#: stay an ordinary relocation, or None
KeepType = Callable[[int, str], "str | None"]
#: ``(type number, target section name, target writable after load, kernel) ->``
#: the version-table row (a :class:`~klpcore.versions.Behaviour`) whose absence
#: makes the kernel unable to write that relocation late, or None when it can
LateHazard = Callable[[int, str, bool, KernelTarget], "Behaviour | None"]


def _no_keep(rtype: int, section: str) -> str | None:
    return None


def _no_hazard(rtype: int, section: str, writable: bool, kernel: KernelTarget) -> Behaviour | None:
    return None


@dataclass(frozen=True)
class ConvertRules:
    """One architecture's conversion rules.

    ``keep_symbols`` / ``keep_prefixes``: references to these names always stay
    ordinary relocations (ppc64 ``.TOC.``, s390 expoline thunks), with the reason.
    ``keep_type``: relocation types that must stay ordinary where they are; a
    symbol that needs converting but is referenced by one is an error.
    ``late_hazard``: late-applied relocations the kernel cannot write safely.
    ``none_type``: the ``R_*_NONE`` number the original relocation becomes, or
    None when the kernel refuses type 0 (the entry is then removed).
    """

    keep_symbols: dict[str, str] = field(default_factory=dict)
    keep_prefixes: dict[str, str] = field(default_factory=dict)
    keep_type: KeepType = _no_keep
    late_hazard: LateHazard = _no_hazard
    none_type: int | None = 0

    def keep_symbol(self, name: str) -> str | None:
        """Why references to ``name`` stay ordinary, or None."""
        why = self.keep_symbols.get(name)
        if why is not None:
            return why
        for prefix, reason in self.keep_prefixes.items():
            if name.startswith(prefix):
                return reason
        return None
