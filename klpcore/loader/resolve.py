"""Symbol resolution: ``simplify_symbols`` (section-relative values become addresses, undefined
symbols resolve to exports) and ``klp_resolve_symbols`` (livepatch symbols by object and sympos), as
:class:`~klpcore.loader.phases.LoadedModule` runs them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import constants as C
from ..engine import SectionContext
from ..errors import Diagnostic, ResolutionError
from ..exports import ExportChecker
from ..livepatch import KlpRelocSec
from .module import SymbolResolution

if TYPE_CHECKING:
    from .phases import LoadedModule


def simplify_symbols(loaded: LoadedModule) -> list[Diagnostic]:
    """``simplify_symbols``: section-relative values become addresses,
    undefined symbols resolve to exported symbols."""
    mod = loaded.module
    elf = mod.elf
    syms = elf.symbols
    vals = syms["st_value"].astype(np.uint64).copy()
    shndx = syms["st_shndx"].astype(np.int64)
    for idx in np.unique(shndx[(shndx > 0) & (shndx < C.SHN_LORESERVE)]).tolist():
        addr = mod.layout.address_of(idx)
        if addr is None:
            addr = mod.extra_addresses.get(idx, 0)
        vals[shndx == idx] += np.uint64(addr)
    errors: list[Diagnostic] = []
    handled = (C.SHN_UNDEF, C.SHN_ABS, C.SHN_COMMON, C.SHN_LIVEPATCH)
    bad = np.flatnonzero((shndx >= len(elf.sections)) & ~np.isin(shndx, handled))
    for i in bad.tolist():
        if i == 0 or (int(shndx[i]) == C.SHN_LIVEPATCH_RFC and mod.klp.fmt == "rfc"):
            continue  # the RFC-era kernel handled its own section index
        name = elf.symbol_names[i]
        n = int(shndx[i])
        errors.append(
            Diagnostic(
                f"symbol has section index {n:#x}, past the {len(elf.sections)} section headers"
                + (
                    ""
                    if loaded.kernel.has("invalid_shndx_refused")
                    else " (this kernel reads past its section header table for it; 7.0+ refuses the module)"
                ),
                module=mod.name,
                symbol=name,
                kernel_message=(
                    f"{mod.name}: Symbol {name} has an invalid section index {n} (max {len(elf.sections) - 1})"
                    if loaded.kernel.has("invalid_shndx_refused")
                    else None
                ),
            )
        )
    if np.any(shndx == C.SHN_COMMON):
        for i in np.flatnonzero(shndx == C.SHN_COMMON).tolist():
            if elf.symbol_names[i].startswith("__gnu_lto"):
                continue  # simplify_symbols ignores LTO's common markers
            errors.append(
                Diagnostic(
                    "common symbol; compile with -fno-common",
                    module=mod.name,
                    symbol=elf.symbol_names[i],
                    kernel_message=f"{mod.name}: please compile with -fno-common",
                )
            )
    info = syms["st_info"]
    exports = ExportChecker(elf, loaded.symbols, loaded.kernel, mod.hooks)
    layout_refusal = exports.check_modstruct()
    if layout_refusal is not None:
        return [
            Diagnostic(
                layout_refusal.why,
                module=mod.name,
                symbol="module_layout",
                kernel_message="\n".join(layout_refusal.kernel_lines),
            )
        ]
    warned_no_exports = False
    for i in np.flatnonzero(shndx == C.SHN_UNDEF).tolist():
        if i == 0:
            continue
        name = elf.symbol_names[i]
        bind = int(info[i]) >> 4
        match = loaded.symbols.find_exported(name)
        refusal = exports.check(name) if match is not None else None
        if refusal is not None and refusal.errno == -2:
            match = None  # find_symbol hides a GPL-only export from a proprietary module
        elif refusal is not None:
            errors.append(
                Diagnostic(
                    f"exported symbol {name} refused: {refusal.why}",
                    module=mod.name,
                    symbol=name,
                    kernel_message="\n".join(
                        [*refusal.kernel_lines, f"{mod.name}: Unknown symbol {name} (err {refusal.errno})"]
                    ),
                )
            )
            continue
        if match is not None:
            vals[i] = np.uint64(match.address)
            loaded.resolutions.append(SymbolResolution(i, name, match.address, "exported", match.objname))
            continue
        if not loaded.symbols.has_export_info:
            found = loaded.symbols.find_global(name)
            if len({m.address for m in found}) == 1:
                if not warned_no_exports:
                    loaded.warnings.append(
                        Diagnostic(
                            "the symbol sources carry no export information (__ksymtab_*); undefined symbols "
                            "resolve to any global symbol of that name",
                            severity="warning",
                            module=mod.name,
                        )
                    )
                    warned_no_exports = True
                vals[i] = np.uint64(found[0].address)
                loaded.resolutions.append(SymbolResolution(i, name, found[0].address, "global", found[0].objname))
                continue
        if bind == C.STB_WEAK:
            loaded.resolutions.append(SymbolResolution(i, name, int(vals[i]), "weak-undefined"))
            continue
        if name in mod.arch.ignored_undefined and loaded.kernel.has("ignore_undef_symbol"):
            loaded.resolutions.append(SymbolResolution(i, name, int(vals[i]), "ignored"))
            continue
        found = loaded.symbols.find_global(name)
        why = (
            refusal.why
            if refusal is not None
            else f"defined in {', '.join(sorted({m.objname for m in found}))} but not exported"
            if found
            else "not found in any symbol source" + loaded.symbols.missing_hint()
        )
        errors.append(
            Diagnostic(
                f"unknown symbol {name}: {why}",
                module=mod.name,
                symbol=name,
                kernel_message=f"{mod.name}: Unknown symbol {name} (err -2)",
                extra={"kind": "not-exported" if found else "unknown-symbol"},
            )
        )
    loaded.symvals = vals
    return errors


def resolve_klp(loaded: LoadedModule, ctx: SectionContext, rs: KlpRelocSec, out: list[SymbolResolution]) -> bool:
    """``klp_resolve_symbols`` for one livepatch section; False on error."""
    mod = loaded.module
    elf = mod.elf
    klp_syms = {k.index: k for k in mod.klp.symbols}
    shndx = elf.symbols["st_shndx"]
    sec_vmlinux = rs.objname == C.VMLINUX
    ok = True
    done: set[int] = set()
    syms = (ctx.relas["r_info"] >> np.uint64(32)).astype(np.int64)
    for i, sym in enumerate(syms.tolist()):
        if sym in done:
            continue
        done.add(sym)
        name = elf.symbol_names[sym]
        if rs.fmt == "rfc":
            if int(shndx[sym]) != C.SHN_LIVEPATCH_RFC:
                continue  # ordinary symbol, already simplified
            k = klp_syms.get(sym)
            try:
                if k is not None and k.external:
                    # klp_find_external_symbol: an export, else the patch module's own kallsyms
                    match = loaded.symbols.find_exported(name)
                    if match is not None:
                        addr = match.address
                    else:
                        addr = loaded.symbols.find_object_symbol_rfc(mod.name, name, loaded._own_symbol(name))
                else:
                    addr = loaded.symbols.find_object_symbol_rfc(None if sec_vmlinux else rs.objname, name)
            except ResolutionError as exc:
                for d in exc.diagnostics:
                    ctx.diag(d.message, i, sym=sym, kernel_message=d.kernel_message, **d.extra)
                ok = False
                continue
            ctx.symvals[sym] = np.uint64(addr)
            out.append(SymbolResolution(sym, name, addr, "livepatch", rs.objname, ctx.phase))
            continue
        if int(shndx[sym]) != C.SHN_LIVEPATCH:
            ctx.diag(
                "symbol is not marked as a livepatch symbol (st_shndx is not SHN_LIVEPATCH)",
                i,
                sym=sym,
                kernel_message=(
                    # 6.19 prints the symbol table's index where it says "rela sec" (klp_resolve_symbols' symndx)
                    f"symbol {name} at rela sec {elf.symtab_index} idx {i} is not marked as a livepatch symbol"
                    if loaded.kernel.messages_with_index
                    else f"symbol {name} is not marked as a livepatch symbol"
                ),
            )
            ok = False
            continue
        k = klp_syms.get(sym)
        if k is None or k.parsed is None:
            if k is not None and k.error is not None:
                ctx.diag(k.error.message, i, sym=sym, kernel_message=k.error.kernel_message)
            ok = False
            continue
        p = k.parsed
        sym_vmlinux = p.objname == C.VMLINUX
        if not sec_vmlinux and sym_vmlinux and loaded.kernel.klp_vmlinux_symbol_check:
            ctx.diag(
                "module-specific livepatch relocation section references a vmlinux symbol",
                i,
                sym=sym,
                kernel_message=f"invalid access to vmlinux symbol '{p.name}' from module-specific livepatch "
                "relocation section",
            )
            ok = False
            continue
        try:
            addr = loaded.symbols.find_object_symbol(None if sym_vmlinux else p.objname, p.name, p.sympos)
        except ResolutionError as exc:
            for d in exc.diagnostics:
                ctx.diag(d.message, i, sym=sym, kernel_message=d.kernel_message, **d.extra)
            ok = False
            continue
        ctx.symvals[sym] = np.uint64(addr)
        out.append(SymbolResolution(sym, name, addr, "livepatch", p.objname, ctx.phase))
    return ok


def own_symbol(loaded: LoadedModule, name: str) -> list[int]:
    """Addresses of ``name`` among the module's own defined symbols (its kallsyms while it initialises)."""
    elf = loaded.module.elf
    shndx = elf.symbols["st_shndx"]
    return [
        int(loaded.symvals[i])
        for i, n in enumerate(elf.symbol_names)
        if n == name and i and int(shndx[i]) not in (C.SHN_UNDEF, C.SHN_LIVEPATCH, C.SHN_LIVEPATCH_RFC)
    ]
