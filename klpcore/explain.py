"""Turning many near-identical failures into the few lines a user can act on.

Unresolved undefined symbols usually have one cause: the module that exports
them is not among the symbol sources.  The kernel only resolves a module's
undefined symbols against *exported* symbols of vmlinux and of loaded modules;
in ``System.map`` and kallsyms an export of ``foo`` shows as a symbol named
``__ksymtab_foo`` next to ``foo`` itself, which is how klpcore tells exported
symbols from others.  A module lists the modules it needs in ``.modinfo``
(``depends=a,b``), so the unresolved symbols can be attributed to the missing
ones: one line per missing module, with the count and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import Diagnostic

if TYPE_CHECKING:
    from .loader import LoadingModule
    from .symbols import KernelSymbols

#: unresolved symbols named in one grouped message
EXAMPLES = 5


def _norm(name: str) -> str:
    return name.strip().replace("-", "_")


def depends(mod: LoadingModule) -> list[str]:
    """The modules ``mod`` needs (``depends=`` in ``.modinfo``), normalized to
    the kernel's module names (``-`` becomes ``_``)."""
    values = mod.elf.modinfo.get("depends", [])
    out: list[str] = []
    for value in values:
        out += [_norm(n) for n in value.split(",") if n.strip()]
    return list(dict.fromkeys(out))


def _names(diags: Sequence[Diagnostic]) -> str:
    shown = ", ".join(d.symbol or "?" for d in diags[:EXAMPLES])
    return shown + (f", ... ({len(diags) - EXAMPLES} more)" if len(diags) > EXAMPLES else "")


def explain_errors(mod: LoadingModule, diags: Sequence[Diagnostic], symbols: KernelSymbols) -> list[Diagnostic]:
    """``diags`` with the unknown-symbol errors grouped by the module that
    provides them (when knowable from ``depends=``); other diagnostics are kept
    as they are, in order.  A single unknown symbol keeps its own line."""
    unknown = [d for d in diags if d.extra.get("kind") == "unknown-symbol"]
    if len(unknown) < 2:
        return list(diags)
    rest = [d for d in diags if d.extra.get("kind") != "unknown-symbol"]
    loaded = {_norm(n) for n in symbols.objects}
    missing = [m for m in depends(mod) if m not in loaded]
    fix = "give --symbols {m}.ko@ADDRESS (where it is loaded), or a kallsyms dump taken with {m} loaded"
    grouped: list[Diagnostic] = []
    if len(missing) == 1:
        m = missing[0]
        grouped.append(
            Diagnostic(
                f"{len(unknown)} unknown symbols ({_names(unknown)}) are presumably exported by module {m}, which "
                f"{mod.name} depends on (depends= in .modinfo) but is not among the symbol sources; " + fix.format(m=m),
                module=mod.name,
                kernel_message=f"{mod.name}: Unknown symbol {unknown[0].symbol} (err -2)",
                extra={"kind": "missing-module", "provider": m, "count": len(unknown), "symbols": _syms(unknown)},
            )
        )
    elif missing:
        for m in missing:
            grouped.append(
                Diagnostic(
                    f"module {m}, which {mod.name} depends on (depends= in .modinfo), is not among the symbol "
                    f"sources; " + fix.format(m=m),
                    module=mod.name,
                    extra={"kind": "missing-module", "provider": m},
                )
            )
        grouped.append(
            Diagnostic(
                f"{len(unknown)} unknown symbols ({_names(unknown)}), exported by one of {', '.join(missing)}",
                module=mod.name,
                kernel_message=f"{mod.name}: Unknown symbol {unknown[0].symbol} (err -2)",
                extra={"kind": "unknown-symbols", "count": len(unknown), "symbols": _syms(unknown)},
            )
        )
    else:
        where = (
            f"all modules in depends= ({', '.join(depends(mod))}) are among the sources"
            if depends(mod)
            else "the module declares no dependencies (depends= is empty)"
        )
        grouped.append(
            Diagnostic(
                f"{len(unknown)} unknown symbols ({_names(unknown)}) are not exported by any symbol source; {where}: "
                "check that the sources are for this kernel build and include __ksymtab_ entries "
                "(System.map and kallsyms do)" + symbols.missing_hint(),
                module=mod.name,
                kernel_message=f"{mod.name}: Unknown symbol {unknown[0].symbol} (err -2)",
                extra={"kind": "unknown-symbols", "count": len(unknown), "symbols": _syms(unknown)},
            )
        )
    return grouped + rest


def _syms(diags: Sequence[Diagnostic]) -> list[str]:
    return [d.symbol or "" for d in diags]
