"""Loading a module the way the kernel does, and applying its relocations.

:class:`Loader` runs the kernel's steps in the kernel's order:

1. ``rewrite_section_headers``: ``__versions``, ``.modinfo`` and the version
   extension sections lose ``SHF_ALLOC``;
2. the arch's ``module_frob_arch_sections`` (hook);
3. ``module_enforce_rwx_sections``, percpu section set aside,
   ``module_mark_ro_after_init``;
4. ``layout_sections`` at the chosen base, then the image is filled;
5. ``simplify_symbols``;
6. ``apply_relocations``: every ``SHT_RELA`` section whose target is
   ``SHF_ALLOC``, and the vmlinux livepatch sections (Linux 5.8+), module
   ``UNFORMED`` (phase ``load``), then ``module_finalize`` (hook);
7. ``complete_formation``: page permissions, module ``COMING``;
8. livepatch enable: each loaded patched object's livepatch sections
   (phase ``enable``), then the module goes ``LIVE``.

Later, :meth:`LoadedModule.coming` applies a patched module's sections when
that module loads, and :meth:`LoadedModule.going` clears them when it unloads.
Each phase is all-or-nothing.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy

from . import constants as C
from .arch import ArchSpec
from .constants import MemType, ModuleState
from .elf import ElfModule, Section
from .engine import ApplyContext, RelocFailure, SectionContext, StagedMemory
from .errors import (
    Diagnostic,
    ElfFormatError,
    KlpError,
    PlacementError,
    RelocationError,
    ResolutionError,
    SymbolFileError,
)
from .kernel import KernelTarget
from .layout import Layout, layout_sections
from .livepatch import KlpObject, KlpRelocSec, LivepatchInfo, discover
from .memory import BytesBackend, MemoryBackend, ModuleImage, Region, WriteRecord, default_policy
from .plugins import ArchHooks, get_plugin_manager, identify
from .symbols import KernelSymbols

DEFAULT_BASE = 0xFFFFFFFFC0000000
PERCPU_SECTION = ".data..percpu"
#: Refuse images larger than this (the kernel's module area is 1 GiB on x86_64).
MAX_IMAGE = 1 << 30
#: Sections ``rewrite_section_headers`` keeps out of module memory.
UNLOADED_SECTIONS = ("__versions", ".modinfo", "__version_ext_crcs", "__version_ext_names")
#: Sections ``module_mark_ro_after_init`` marks.
RO_AFTER_INIT_SECTIONS = (".data..ro_after_init", "__jump_table")


@dataclass(frozen=True)
class Example:
    """An example module shipped by a plugin."""

    name: str
    module: Path
    symbols: tuple[Path, ...]
    base: int = DEFAULT_BASE
    description: str = ""


@dataclass
class SymbolResolution:
    index: int
    name: str
    value: int
    how: str  # "exported", "weak-undefined", "ignored", "livepatch", "global"
    object: str | None = None
    phase: str = "load"


@dataclass
class PhaseResult:
    name: str
    sections: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[Diagnostic] = field(default_factory=list)
    writes: int = 0


@dataclass
class LoadingModule:
    """A module between parsing and the end of loading; what hooks see."""

    elf: ElfModule
    arch: ArchSpec
    hooks: ArchHooks
    kernel: KernelTarget
    klp: LivepatchInfo
    sections: list[Section]
    arch_state: dict[str, Any] = field(default_factory=dict)
    layout: Layout = field(default=None)  # type: ignore[assignment]
    extra_addresses: dict[int, int] = field(default_factory=dict)  # percpu

    @property
    def name(self) -> str:
        return self.elf.name

    def section_by_name(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None


class Loader:
    """Loads modules into a simulated kernel.

    :param pm: plugin manager (default: installed plugins).
    :param kernel: the target kernel.
    :param backend: memory backend factory for module images.
    :param percpu_base: address given to the module's percpu section.
    """

    def __init__(
        self,
        pm: pluggy.PluginManager | None = None,
        kernel: KernelTarget | None = None,
        backend: MemoryBackend | None = None,
        percpu_base: int = 0xFFFFFFFFA0000000,
    ) -> None:
        self.pm = pm or get_plugin_manager()
        self.kernel = kernel or KernelTarget()
        self.backend = backend
        self.percpu_base = percpu_base

    # --------------------------------------------------------------- opening
    def open(self, module: ElfModule | str | os.PathLike[str] | bytes, name: str | None = None) -> LoadingModule:
        """Parse a module, find its architecture plugin and livepatch contents."""
        if isinstance(module, ElfModule):
            elf = module
        elif isinstance(module, bytes):
            elf = ElfModule(module, name=name)
        else:
            elf = ElfModule.from_file(module, name=name)
        hooks = identify(self.pm, elf.machine, elf.elfclass, elf.byteorder, elf.e_flags, self.kernel)
        klp = discover(elf, self.kernel.ksym_name_len)
        return LoadingModule(
            elf=elf,
            arch=hooks.spec,
            hooks=hooks,
            kernel=self.kernel,
            klp=klp,
            sections=[s.copy() for s in elf.sections],
        )

    # ---------------------------------------------------------------- layout
    def prepare(self, mod: LoadingModule, base: int = DEFAULT_BASE) -> None:
        """Steps 1-4: section rewriting, arch setup, checks, layout."""
        for s in mod.sections:
            if s.name in UNLOADED_SECTIONS:
                s.flags &= ~C.SHF_ALLOC
        mod.hooks.klp_arch_frob_sections(module=mod, kernel=self.kernel)  # type: ignore[attr-defined]
        if self.kernel.strict_module_rwx:
            bad = [s for s in mod.sections if s.flags & C.SHF_WRITE and s.flags & C.SHF_EXECINSTR]
            if bad:
                raise ElfFormatError(
                    [
                        Diagnostic(
                            f"section has invalid WRITE|EXEC flags (index {s.index})",
                            module=mod.name,
                            section=s.name,
                            kernel_message=(
                                f"{mod.name}: section {s.name} (index {s.index}) has invalid WRITE|EXEC flags"
                            ),
                        )
                        for s in bad
                    ]
                )
        percpu = mod.section_by_name(PERCPU_SECTION)
        if percpu is not None and percpu.flags & C.SHF_ALLOC:
            percpu.flags &= ~C.SHF_ALLOC
            mod.extra_addresses[percpu.index] = self.percpu_base
        for s in mod.sections:
            if s.name in RO_AFTER_INIT_SECTIONS:
                s.flags |= C.SHF_RO_AFTER_INIT

        def is_init(name: str) -> bool:
            for answer in mod.hooks.klp_arch_is_init_section(name=name, kernel=self.kernel):  # type: ignore[attr-defined]
                if answer is not None:
                    return bool(answer)
            return name.startswith(".init")

        mod.layout = layout_sections(mod.sections, base, style=self.kernel.layout_style, is_init=is_init)
        spans = [(r.memtype.kernel_name, r.address, r.alloc_size) for r in mod.layout.regions.values() if r.alloc_size]
        for index, addr in mod.extra_addresses.items():
            size = mod.sections[index].size
            if size:
                spans.append((f"the per-CPU area ({mod.sections[index].name})", addr, size))
        self._check_size(mod)
        _check_placement(mod, spans)

    def _check_size(self, mod: LoadingModule) -> None:
        total = sum(r.alloc_size for r in mod.layout.regions.values())
        total += sum(mod.sections[i].size for i in mod.extra_addresses)
        if total > MAX_IMAGE:
            biggest = max(mod.sections, key=lambda s: s.size if s.is_alloc else 0)
            raise ElfFormatError(
                Diagnostic(
                    f"the module would need {total:#x} bytes of module memory (limit {MAX_IMAGE:#x}); "
                    f"largest section {biggest.name} has sh_size {biggest.size:#x}",
                    module=mod.name,
                    section=biggest.name,
                    kernel_message="module allocation fails (-ENOMEM)",
                )
            )

    def _image(self, mod: LoadingModule) -> ModuleImage:
        self._check_size(mod)
        regions = [Region(r.memtype, r.address, r.alloc_size) for r in mod.layout.regions.values() if r.alloc_size]
        extra = []
        for index, addr in mod.extra_addresses.items():
            size = mod.sections[index].size
            if size:
                extra.append(Region(MemType.DATA, addr, (size + C.PAGE_SIZE - 1) & ~(C.PAGE_SIZE - 1)))
        image = ModuleImage(regions + extra, backend=self.backend or BytesBackend(), module=mod.name)
        for p in mod.layout.placements.values():
            if mod.sections[p.index].is_nobits or mod.elf.sections[p.index].is_nobits:
                continue  # zero-filled by the allocation
            data = mod.elf.section_data(p.index)[: mod.sections[p.index].size]
            if data.strip(b"\0"):
                image.backend.write(p.address, data)
        for index, addr in mod.extra_addresses.items():
            if mod.elf.sections[index].is_nobits:
                continue
            data = mod.elf.section_data(index)
            if data.strip(b"\0"):
                image.backend.write(addr, data)
        return image

    # ------------------------------------------------------------------ load
    def load(
        self,
        module: LoadingModule | ElfModule | str | os.PathLike[str] | bytes,
        symbols: KernelSymbols,
        base: int = DEFAULT_BASE,
        *,
        enable: bool = True,
    ) -> LoadedModule:
        """Load ``module`` against ``symbols`` at ``base`` and, for a livepatch
        module, enable it for every patched object present in ``symbols``.

        Raises a :class:`~klpcore.errors.KlpError` subclass on the first phase
        that fails; the returned object records every phase that succeeded.
        """
        mod = module if isinstance(module, LoadingModule) else self.open(module)
        check_symbol_sources(mod, symbols)
        if mod.layout is None:
            self.prepare(mod, base)
        image = self._image(mod)
        loaded = LoadedModule(self, mod, image, symbols)
        errors = loaded._simplify_symbols()
        if errors:
            raise ResolutionError(errors)
        loaded._run_phase("load", loaded._load_sections(), finalize=True)
        image.form()
        if enable and mod.klp.objects:
            todo = list(loaded._enable_sections())
            if todo:
                loaded._run_phase("enable", todo)
        image.go_live() if enable else None
        return loaded


@dataclass
class ResolveReport:
    """Every undefined and livepatch symbol of a module, resolved or not."""

    module: LoadingModule
    resolutions: list[SymbolResolution]
    errors: list[Diagnostic]
    pending: list[str]  # patched objects with no symbols given (not loaded)
    #: one per pending object (not an error: ``apply`` loads the patch and applies
    #: those sections when the object comes, and so does the kernel)
    warnings: list[Diagnostic] = field(default_factory=list)


def resolve_module(
    loader: Loader, module: LoadingModule | str | os.PathLike[str], symbols: KernelSymbols, base: int = DEFAULT_BASE
) -> ResolveReport:
    """Resolve without applying: ``simplify_symbols`` plus ``klp_resolve_symbols``
    for every livepatch section, collecting every failure."""
    mod = module if isinstance(module, LoadingModule) else loader.open(module)
    check_symbol_sources(mod, symbols)
    if mod.layout is None:
        loader.prepare(mod, base)
    loaded = LoadedModule(loader, mod, loader._image(mod), symbols)
    errors = loaded._simplify_symbols()
    staged = StagedMemory(loaded.image, loaded._placed())
    ctx = ApplyContext(
        mod, mod.arch, loader.kernel, staged, loaded.symvals.copy(), {}, "resolve", kernel_symbols=symbols
    )
    pending = []
    warnings = []
    for obj in mod.klp.objects.values():
        if not obj.is_vmlinux and not symbols.has(obj.name):
            pending.append(obj.name)
            warnings.append(
                Diagnostic(
                    f"patched object '{obj.name}' is not loaded: its livepatch symbols resolve when it loads; "
                    f"give its symbols (kallsyms with [{obj.name}] lines, or {obj.name}.ko@ADDRESS) to resolve "
                    "them now",
                    severity="warning",
                    module=mod.name,
                    section=obj.reloc_secs[0].name if obj.reloc_secs else None,
                )
            )
            continue
        for rs in obj.reloc_secs:
            sctx = SectionContext.for_section(ctx, mod.sections[rs.index], mod.elf.relas(rs.index), rs.objname)
            loaded._resolve_klp(sctx, rs, loaded.resolutions)
    errors.extend(d for d in ctx.diagnostics if d.severity == "error")
    return ResolveReport(mod, loaded.resolutions, errors, pending, warnings + loaded.warnings)


class LoadedModule:
    """A module in the simulated kernel: its image, symbol values and history."""

    def __init__(self, loader: Loader, mod: LoadingModule, image: ModuleImage, symbols: KernelSymbols) -> None:
        self.loader = loader
        self.module = mod
        self.image = image
        self.symbols = symbols
        self.kernel = loader.kernel
        self.symvals = np.zeros(mod.elf.nsyms, dtype=np.uint64)
        self.resolutions: list[SymbolResolution] = []
        self.phases: list[PhaseResult] = []
        self.warnings: list[Diagnostic] = list(mod.klp.warnings)
        self.applied_objects: set[str] = set()

    # -------------------------------------------------------------- symbols
    def _simplify_symbols(self) -> list[Diagnostic]:
        """``simplify_symbols``: section-relative values become addresses,
        undefined symbols resolve to exported symbols."""
        mod = self.module
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
        if np.any(shndx == C.SHN_COMMON):
            for i in np.flatnonzero(shndx == C.SHN_COMMON).tolist():
                errors.append(
                    Diagnostic(
                        "common symbol; compile with -fno-common",
                        module=mod.name,
                        symbol=elf.symbol_names[i],
                        kernel_message=f"{mod.name}: please compile with -fno-common",
                    )
                )
        info = syms["st_info"]
        warned_no_exports = False
        for i in np.flatnonzero(shndx == C.SHN_UNDEF).tolist():
            if i == 0:
                continue
            name = elf.symbol_names[i]
            bind = int(info[i]) >> 4
            match = self.symbols.find_exported(name)
            if match is not None:
                vals[i] = np.uint64(match.address)
                self.resolutions.append(SymbolResolution(i, name, match.address, "exported", match.objname))
                continue
            if not self.symbols.has_export_info:
                found = self.symbols.find_global(name)
                if len({m.address for m in found}) == 1:
                    if not warned_no_exports:
                        self.warnings.append(
                            Diagnostic(
                                "the symbol sources carry no export information (__ksymtab_*); undefined symbols "
                                "resolve to any global symbol of that name",
                                severity="warning",
                                module=mod.name,
                            )
                        )
                        warned_no_exports = True
                    vals[i] = np.uint64(found[0].address)
                    self.resolutions.append(SymbolResolution(i, name, found[0].address, "global", found[0].objname))
                    continue
            if bind == C.STB_WEAK:
                self.resolutions.append(SymbolResolution(i, name, int(vals[i]), "weak-undefined"))
                continue
            if name in mod.arch.ignored_undefined:
                self.resolutions.append(SymbolResolution(i, name, int(vals[i]), "ignored"))
                continue
            found = self.symbols.find_global(name)
            why = (
                f"defined in {', '.join(sorted({m.objname for m in found}))} but not exported"
                if found
                else "not found in any symbol source" + self.symbols.missing_hint()
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
        self.symvals = vals
        return errors

    # --------------------------------------------------------------- phases
    def _placed(self) -> list[tuple[int, str, int, int]]:
        mod = self.module
        out = [(p.index, p.name, p.address, mod.sections[p.index].size) for p in mod.layout.placements.values()]
        out += [(i, mod.sections[i].name, a, mod.sections[i].size) for i, a in mod.extra_addresses.items()]
        return [p for p in out if p[3] > 0]

    def _load_sections(self) -> Iterator[tuple[Section, KlpRelocSec | None]]:
        """``apply_relocations``: the sections applied at module load."""
        mod = self.module
        klp_by_index = {rs.index: rs for rs in mod.klp.reloc_secs}
        n = len(mod.sections)
        for s in mod.sections[1:]:
            if s.type not in (C.SHT_RELA, C.SHT_REL):
                continue
            if s.info >= n:
                continue
            target = mod.sections[s.info]
            if not target.flags & C.SHF_ALLOC and not (s.info in mod.extra_addresses and self.kernel.relocates_percpu):
                continue
            rs = klp_by_index.get(s.index)
            if s.flags & C.SHF_RELA_LIVEPATCH or (rs is not None and rs.fmt == "rfc"):
                if rs is not None and rs.fmt == "final" and rs.objname == C.VMLINUX and self.kernel.early_vmlinux_klp:
                    yield s, rs
                continue
            yield s, None

    def _enable_sections(self) -> Iterator[tuple[Section, KlpRelocSec | None]]:
        """``klp_init_object_loaded`` for each patched object that is loaded."""
        for obj in self.module.klp.objects.values():
            if obj.is_vmlinux and self.module.klp.fmt == "final" and self.kernel.early_vmlinux_klp:
                self.applied_objects.add(obj.name)
                continue
            if not obj.is_vmlinux and not self.symbols.has(obj.name):
                continue  # not loaded: applied when it comes (see coming())
            self.applied_objects.add(obj.name)
            yield from self._object_sections(obj)

    def _object_sections(self, obj: KlpObject) -> Iterator[tuple[Section, KlpRelocSec | None]]:
        for rs in sorted(obj.reloc_secs, key=lambda r: r.index):
            if not self.module.sections[rs.target].flags & C.SHF_ALLOC:
                continue
            yield self.module.sections[rs.index], rs

    def _run_phase(
        self,
        phase: str,
        sections: Iterable[tuple[Section, KlpRelocSec | None]],
        *,
        finalize: bool = False,
        clear: bool = False,
    ) -> PhaseResult:
        mod = self.module
        staged = StagedMemory(self.image, self._placed())
        symvals = self.symvals.copy()
        state = _copy_state(mod.arch_state)

        def policy(image: ModuleImage, region: Region, address: int, size: int, hint: str | None) -> str | None:
            method = mod.hooks.klp_arch_write_method(  # type: ignore[attr-defined]
                image=image, region=region, address=address, size=size, kernel=self.kernel, hint=hint
            )
            return method if method is not None else default_policy(image, region, address, size, hint)

        ctx = ApplyContext(
            mod, mod.arch, self.kernel, staged, symvals, state, phase, write_policy=policy, kernel_symbols=self.symbols
        )
        result = PhaseResult(phase)
        resolutions: list[SymbolResolution] = []
        for s, rs in sections:
            if s.type == C.SHT_REL:
                ctx.diagnostics.append(
                    Diagnostic(
                        "SHT_REL relocation sections are not supported on this architecture",
                        module=mod.name,
                        section=s.name,
                        kernel_message=f"module {mod.name}: REL relocation unsupported",
                    )
                )
                continue
            try:
                relas = mod.elf.relas(s.index)
            except KlpError as exc:
                ctx.diagnostics.extend(exc.diagnostics)
                continue
            placement = mod.layout.placements.get(s.info)
            if placement is not None and placement.memtype.is_init and self.image.state == ModuleState.LIVE:
                ctx.diagnostics.append(
                    Diagnostic(
                        f"target section {mod.sections[s.info].name} is init memory, freed when the module went "
                        "live; the kernel would write to freed memory",
                        module=mod.name,
                        section=s.name,
                    )
                )
                continue
            sctx = SectionContext.for_section(ctx, s, relas, rs.objname if rs else None)
            if rs is not None and not clear and not self._resolve_klp(sctx, rs, resolutions):
                continue
            try:
                if clear:
                    mod.hooks.klp_arch_clear_section(ctx=sctx)  # type: ignore[attr-defined]
                else:
                    mod.hooks.klp_arch_apply_section(ctx=sctx)  # type: ignore[attr-defined]
            except RelocFailure as f:  # raised outside a per-entry handler: name the section
                ctx.diagnostics.append(
                    Diagnostic(f.message, module=mod.name, section=s.name, kernel_message=f.kernel_message)
                )
                continue
            result.sections.append(s.name)
        if finalize and not any(d.severity == "error" for d in ctx.diagnostics):
            try:
                mod.hooks.klp_arch_finalize(ctx=ctx)  # type: ignore[attr-defined]
            except RelocFailure as f:
                ctx.diagnostics.append(Diagnostic(f.message, module=mod.name, kernel_message=f.kernel_message))
        errors = [d for d in ctx.diagnostics if d.severity == "error"]
        if errors:
            raise RelocationError(errors)

        before = len(self.image.log)
        self.image.commit(staged.changes(), policy, phase)
        result.writes = len(self.image.log) - before
        self.symvals = symvals
        mod.arch_state.clear()
        mod.arch_state.update(state)
        self.resolutions.extend(resolutions)
        result.counts = dict(ctx.counts)
        result.warnings = [d for d in ctx.diagnostics if d.severity != "error"]
        self.warnings.extend(result.warnings)
        self.phases.append(result)
        return result

    def _resolve_klp(self, ctx: SectionContext, rs: KlpRelocSec, out: list[SymbolResolution]) -> bool:
        """``klp_resolve_symbols`` for one livepatch section; False on error."""
        mod = self.module
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
                        match = self.symbols.find_exported(name)
                        if match is None:
                            raise ResolutionError(
                                Diagnostic(f"external symbol '{name}' is not exported by any loaded object")
                            )
                        addr = match.address
                    else:
                        addr = self.symbols.find_object_symbol(None if sec_vmlinux else rs.objname, name, 0)
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
                    kernel_message=f"symbol {name} is not marked as a livepatch symbol",
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
            if not sec_vmlinux and sym_vmlinux and self.kernel.klp_vmlinux_symbol_check:
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
                addr = self.symbols.find_object_symbol(None if sym_vmlinux else p.objname, p.name, p.sympos)
            except ResolutionError as exc:
                for d in exc.diagnostics:
                    ctx.diag(d.message, i, sym=sym, kernel_message=d.kernel_message, **d.extra)
                ok = False
                continue
            ctx.symvals[sym] = np.uint64(addr)
            out.append(SymbolResolution(sym, name, addr, "livepatch", p.objname, ctx.phase))
        return ok

    # ------------------------------------------------------ later transitions
    def coming(self, objname: str, symbols: KernelSymbols | None = None) -> PhaseResult | None:
        """A patched module loads (``klp_module_coming``): apply its sections."""
        if objname == C.VMLINUX:
            raise KlpError(
                Diagnostic("vmlinux.ko: invalid module name", kernel_message="vmlinux.ko: invalid module name")
            )
        if symbols is not None:
            self.symbols.merge(symbols)
        obj = self.module.klp.objects.get(objname)
        if obj is None:
            return None
        result = self._run_phase(f"coming:{objname}", self._object_sections(obj))
        self.applied_objects.add(objname)
        return result

    def going(self, objname: str) -> PhaseResult | None:
        """A patched module unloads (``klp_module_going``): clear its sections."""
        obj = self.module.klp.objects.get(objname)
        if obj is None or objname not in self.applied_objects:
            return None
        result = self._run_phase(f"going:{objname}", self._object_sections(obj), clear=True)
        self.applied_objects.discard(objname)
        return result

    # --------------------------------------------------------------- access
    @property
    def pending_objects(self) -> list[str]:
        return [n for n in self.module.klp.objects if n not in self.applied_objects]

    def section_address(self, index: int) -> int | None:
        a = self.module.layout.address_of(index)
        return a if a is not None else self.module.extra_addresses.get(index)

    def section_bytes(self, index: int) -> bytes:
        addr = self.section_address(index)
        size = self.module.sections[index].size
        if addr is None or not size:
            return b""
        return self.image.backend.read(addr, size)

    @property
    def write_log(self) -> list[WriteRecord]:
        return self.image.log

    def relocation_counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for ph in self.phases:
            total.update({k: v for k, v in ph.counts.items() if k not in ("applied", "cleared")})
        return total


def check_symbol_sources(mod: LoadingModule, symbols: KernelSymbols) -> None:
    """Refuse symbol sources that cannot belong to ``mod``'s kernel: an ELF
    source of another machine, or a text source whose vmlinux code lies outside
    the architecture's kernel text range (``ArchSpec.kernel_text_range``): its
    ``_stext`` / ``_text``, which every System.map and kallsyms has, is checked."""
    for source, machine in symbols.machines.items():
        if machine != mod.elf.machine:
            raise SymbolFileError(
                f"{source} is an ELF file for machine {machine}, but module {mod.name} is {mod.arch.name} "
                f"(machine {mod.elf.machine}): these symbols belong to another architecture"
            )
    rng = mod.arch.kernel_text_range
    obj = symbols.objects.get(C.VMLINUX)
    if rng is None or obj is None or not len(obj):
        return
    lo, hi = rng
    where = f"{mod.arch.name} kernel code lies in {lo:#x}..{hi - 1:#x}"
    for marker in ("_stext", "_text"):
        for i in obj.positions(marker):
            if not lo <= obj.addrs[i] < hi:
                raise SymbolFileError(
                    f"{obj.sources[i]}: {marker} is at {obj.addrs[i]:#x}, but {where}: these symbols belong to "
                    f"another architecture than module {mod.name}"
                )


def _check_placement(mod: LoadingModule, spans: list[tuple[str, int, int]]) -> None:
    """Refuse module memory that runs past the 64-bit address space or whose
    parts overlap each other or the per-CPU area."""
    top = 1 << 64
    for name, start, size in spans:
        if start + size > top:
            raise PlacementError(
                Diagnostic(
                    f"{name} at {start:#x} ({size:#x} bytes) runs past the end of the 64-bit address space; "
                    "choose a lower --base",
                    module=mod.name,
                )
            )
    ordered = sorted(spans, key=lambda s: s[1])
    for (n1, a1, s1), (n2, a2, s2) in itertools.pairwise(ordered):
        if a2 < a1 + s1:
            raise PlacementError(
                Diagnostic(
                    f"{n1} {a1:#x}..{a1 + s1:#x} overlaps {n2} {a2:#x}..{a2 + s2:#x}; choose a --base whose "
                    "module memory does not overlap the per-CPU area",
                    module=mod.name,
                )
            )


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(state)


_PM_CACHE: list[pluggy.PluginManager] = []


def default_plugin_manager() -> pluggy.PluginManager:
    if not _PM_CACHE:
        _PM_CACHE.append(get_plugin_manager())
    return _PM_CACHE[0]


def layout_module_for_symbols(elf: ElfModule, base: int) -> Sequence[tuple[str, int, str]]:
    """Symbols a module loaded at ``base`` shows in kallsyms (klpcore's layout)."""
    loader = Loader(default_plugin_manager())
    mod = loader.open(elf)
    loader.prepare(mod, base)
    syms = elf.symbols
    out = []
    for i in range(1, elf.nsyms):
        shndx = int(syms["st_shndx"][i])
        stype = int(syms["st_info"][i]) & 0xF
        name = elf.symbol_names[i]
        if not name or stype in (C.STT_SECTION, C.STT_FILE) or shndx == C.SHN_UNDEF:
            continue
        if shndx >= C.SHN_LORESERVE:
            if shndx == C.SHN_ABS:
                out.append((name, int(syms["st_value"][i]), "a"))
            continue
        addr = mod.layout.address_of(shndx)
        if addr is None:
            continue
        sec = mod.sections[shndx]
        ch = "t" if sec.is_exec else ("b" if sec.is_nobits else ("d" if sec.is_write else "r"))
        bind = int(syms["st_info"][i]) >> 4
        out.append((name, addr + int(syms["st_value"][i]), ch.upper() if bind != C.STB_LOCAL else ch))
    return out
