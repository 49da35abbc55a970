"""Turning many near-identical failures into the few lines a user can act on.

Unresolved undefined symbols usually have one cause: the module that exports
them is not among the symbol sources.  The kernel only resolves a module's
undefined symbols against *exported* symbols of vmlinux and of loaded modules;
in ``System.map`` and kallsyms an export of ``foo`` shows as a symbol named
``__ksymtab_foo`` next to ``foo`` itself, which is how klpcore tells exported
symbols from others.  A module lists the modules it needs in ``.modinfo``
(``depends=a,b``), so the unresolved symbols can be attributed to the missing
ones: one line per missing module, with the count and the fix.  Given a
module tree (``--module-tree``, :class:`klpcore.modtree.ModuleTree`), the
symbols are attributed by name: the tree's module whose export sections list
the symbol provides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import Diagnostic

if TYPE_CHECKING:
    from .loader import LoadingModule
    from .modtree import ModuleTree
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


def explain_errors(
    mod: LoadingModule, diags: Sequence[Diagnostic], symbols: KernelSymbols, tree: ModuleTree | None = None
) -> list[Diagnostic]:
    """``diags`` with the unknown-symbol errors grouped by the module that
    provides them: by name in ``tree`` when given, else from ``depends=``;
    other diagnostics are kept as they are, in order.  Without a tree a single
    unknown symbol keeps its own line."""
    unknown = [d for d in diags if d.extra.get("kind") == "unknown-symbol"]
    if not unknown or (len(unknown) < 2 and tree is None):
        return list(diags)
    rest = [d for d in diags if d.extra.get("kind") != "unknown-symbol"]
    loaded = {_norm(n) for n in symbols.objects}
    grouped: list[Diagnostic] = []
    if tree is not None:
        grouped, unknown = _by_tree(mod, unknown, loaded, tree)
        if len(unknown) < 2:
            return grouped + unknown + rest
        loaded |= {d.extra["provider"] for d in grouped}
    missing = [m for m in depends(mod) if m not in loaded]
    if tree is not None:  # a module of the tree was read: it does not export what is left
        missing = [m for m in missing if tree.find(m) is None]
    fix = "give --symbols {m}.ko@ADDRESS (where it is loaded), or a kallsyms dump taken with {m} loaded"
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
        if tree is not None:
            where = f"no module in {tree.root} exports them either"
        else:
            where = (
                f"all modules in depends= ({', '.join(depends(mod))}) are among the sources"
                if depends(mod)
                else "the module declares no dependencies (depends= is empty)"
            ) + "; --module-tree /lib/modules/RELEASE would name the modules that export them"
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


def _by_tree(
    mod: LoadingModule, unknown: list[Diagnostic], loaded: set[str], tree: ModuleTree
) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """One diagnostic per module of ``tree`` that exports some of ``unknown``
    and is not among the sources; and the unknown symbols left over."""
    names = [d.symbol for d in unknown if d.symbol]
    provider = tree.providers(names, prefer=depends(mod))
    by_module: dict[str, list[Diagnostic]] = {}
    left: list[Diagnostic] = []
    for d in unknown:
        m = provider.get(d.symbol or "")
        if m is None or m in loaded:
            left.append(d)
        else:
            by_module.setdefault(m, []).append(d)
    out: list[Diagnostic] = []
    for m, ds in by_module.items():
        path = tree.find(m)
        n = len(ds)
        verb = "are" if n > 1 else "is"
        out.append(
            Diagnostic(
                f"{n} unknown symbol{'s' if n > 1 else ''} ({_names(ds)}) {verb} exported by module {m} ({path}), "
                f"which is not among the symbol sources; give --symbols {path}@ADDRESS (where {m} is loaded), "
                f"or a kallsyms dump taken with {m} loaded",
                module=mod.name,
                kernel_message=f"{mod.name}: Unknown symbol {ds[0].symbol} (err -2)",
                extra={"kind": "missing-module", "provider": m, "count": n, "symbols": _syms(ds), "path": str(path)},
            )
        )
    return out, left
