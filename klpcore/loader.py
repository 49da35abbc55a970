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
from dataclasses import dataclass, field, replace
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
    InputError,
    KlpError,
    LivepatchFormatError,
    PlacementError,
    RelocationError,
    ResolutionError,
    SymbolFileError,
)
from .exports import ExportChecker
from .kernel import KernelTarget, Setting, bool_setting, config_setting, page_size_setting
from .layout import Layout, Reservation, layout_sections
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
#: Marked too since 6.16 with ``CONFIG_HAVE_STATIC_CALL_INLINE``.
STATIC_CALL_SITES = ".static_call_sites"
#: Loaded outside module memory since 6.13 with ``CONFIG_MEM_ALLOC_PROFILING``.
CODETAG_SECTION = ".codetag.alloc_tags"


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
    #: build facts used for this module (page size, STRICT_MODULE_RWX, ...) and
    #: where they came from (config, arch default, core default)
    settings: dict[str, Setting] = field(default_factory=dict)
    #: warnings from preparing the module (layout facts the user should know)
    notes: list[Diagnostic] = field(default_factory=list)

    #: arch-owned memory placed before the sections of a memory type (see :meth:`reserve`)
    reservations: list[Reservation] = field(default_factory=list)

    def reserve(self, memtype: MemType, name: str, size: int, align: int = 1) -> Reservation:
        """Arch setup: reserve ``size`` bytes at the start of ``memtype``,
        before layout places any section there (after earlier reservations,
        at ``ALIGN(size so far, align)``), as s390's ``module_frob_arch_sections``
        grows ``MOD_TEXT`` for the module GOT and PLT.  After layout the address
        is ``layout.reserved[name].address``; relocation code writes there through
        ``ctx.write_uint`` like into any section, and ``klpcore apply`` shows the
        reservation as an extra section called ``name``."""
        if any(r.name == name for r in self.reservations):
            raise ValueError(f"reservation {name!r} exists already")
        r = Reservation(name, memtype, size, align)
        self.reservations.append(r)
        return r

    @property
    def page_size(self) -> int:
        setting = self.settings.get("PAGE_SIZE")
        return int(setting.value) if setting else C.PAGE_SIZE

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
    :param percpu_base: address given to the module's percpu section (default: the
        architecture's ``ArchSpec.percpu_base``).
    """

    def __init__(
        self,
        pm: pluggy.PluginManager | None = None,
        kernel: KernelTarget | None = None,
        backend: MemoryBackend | None = None,
        percpu_base: int | None = None,
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
    def settings(self, mod: LoadingModule) -> dict[str, Setting]:
        """The build facts the core uses for ``mod``, with their source."""
        k = self.kernel
        out = {
            "PAGE_SIZE": page_size_setting(mod.hooks, k),
            "STRICT_MODULE_RWX": bool_setting(mod.hooks, k, "STRICT_MODULE_RWX", k.strict_module_rwx),
            "ARCH_HAS_STRICT_MODULE_RWX": config_setting(mod.hooks, k, "ARCH_HAS_STRICT_MODULE_RWX"),
            "LIVEPATCH": bool_setting(mod.hooks, k, "LIVEPATCH", k.livepatch),
        }
        if k.has("static_call_sites_ro_after_init"):
            out["HAVE_STATIC_CALL_INLINE"] = config_setting(mod.hooks, k, "HAVE_STATIC_CALL_INLINE")
        if k.has("codetag_separate") and mod.section_by_name(CODETAG_SECTION) is not None:
            out["MEM_ALLOC_PROFILING"] = config_setting(mod.hooks, k, "MEM_ALLOC_PROFILING")
        return out

    def prepare(self, mod: LoadingModule, base: int = DEFAULT_BASE, init_base: int | None = None) -> None:
        """Steps 1-4: section rewriting, arch setup, checks, layout.

        ``init_base`` places the init memory (the kernel's separate init
        allocation) there; by default it follows the core memory."""
        if mod.klp.fmt == "rfc" and self.kernel.has("final_klp_format"):
            raise LivepatchFormatError(
                Diagnostic(
                    "2015 RFC livepatch format (__klp_rela_ sections, symbols in section 0xff21): only the RFC "
                    f"prototype kernels of the 4.3/4.4 era handled it (--kernel 4.4); Linux {self.kernel.label} "
                    "would apply these sections at load as ordinary relocations and index sechdrs[0xff21] "
                    "for their symbols",
                    module=mod.name,
                    section=mod.klp.reloc_secs[0].name if mod.klp.reloc_secs else None,
                )
            )
        if mod.klp.fmt == "final" and not self.kernel.has("final_klp_format"):
            raise LivepatchFormatError(
                Diagnostic(
                    f"the final livepatch format (.klp.rela sections, SHN_LIVEPATCH symbols) needs Linux 4.7 or "
                    f"later; Linux {self.kernel.label} would apply these sections at load as ordinary relocations "
                    "and index sechdrs[0xff20] for their symbols",
                    module=mod.name,
                    section=mod.klp.reloc_secs[0].name if mod.klp.reloc_secs else None,
                )
            )
        mod.settings = self.settings(mod)
        on = {name: st.value in ("y", "m") for name, st in mod.settings.items() if name != "PAGE_SIZE"}
        for s in mod.sections:
            if s.name in UNLOADED_SECTIONS:
                s.flags &= ~C.SHF_ALLOC
        mod.hooks.klp_arch_frob_sections(module=mod, kernel=self.kernel)  # type: ignore[attr-defined]
        if on["STRICT_MODULE_RWX"]:
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
            pcpu = self.percpu_base if self.percpu_base is not None else mod.arch.percpu_base
            mod.extra_addresses[percpu.index] = pcpu
        codetag = mod.section_by_name(CODETAG_SECTION)
        if on.get("MEM_ALLOC_PROFILING") and codetag is not None and codetag.size and codetag.flags & C.SHF_ALLOC:
            # layout_sections skips it (codetag_needs_module_section); it lives in the alloc-tag area
            codetag.flags &= ~C.SHF_ALLOC
            mod.notes.append(
                Diagnostic(
                    f"{CODETAG_SECTION} is loaded into the kernel's separate alloc-tag area, not module memory "
                    "(MEM_ALLOC_PROFILING, 6.13+): klpcore leaves it out of the layout as the kernel does, and "
                    "does not reproduce relocations into it or addresses of symbols in it",
                    severity="warning",
                    module=mod.name,
                    section=CODETAG_SECTION,
                )
            )
        if mod.klp.objects and not on["LIVEPATCH"]:
            mod.notes.append(
                Diagnostic(
                    "the target kernel has no CONFIG_LIVEPATCH"
                    + (" (from --config)" if mod.settings["LIVEPATCH"].source == "config" else "")
                    + ": its .klp.rela sections are never applied (klp_apply_section_relocs is a stub) and the "
                    "livepatch core's symbols (klp_enable_patch) are missing, so the kernel refuses this module",
                    severity="warning",
                    module=mod.name,
                )
            )
        ro_after_init: tuple[str, ...] = RO_AFTER_INIT_SECTIONS
        if on.get("HAVE_STATIC_CALL_INLINE"):
            ro_after_init += (STATIC_CALL_SITES,)
        for s in mod.sections:
            if s.name in ro_after_init:
                s.flags |= C.SHF_RO_AFTER_INIT

        def is_init(name: str) -> bool:
            for answer in mod.hooks.klp_arch_is_init_section(name=name, kernel=self.kernel):  # type: ignore[attr-defined]
                if answer is not None:
                    return bool(answer)
            return name.startswith(".init")

        # legacy layout: strict_align (5.19-6.3, CONFIG_STRICT_MODULE_RWX) or
        # debug_align (before 5.19, CONFIG_ARCH_HAS_STRICT_MODULE_RWX); else packed
        rwx = "STRICT_MODULE_RWX" if self.kernel.has("strict_align_config") else "ARCH_HAS_STRICT_MODULE_RWX"
        page_size = mod.page_size
        try:
            mod.layout = layout_sections(
                mod.sections,
                base,
                style=self.kernel.layout_style,
                is_init=is_init,
                page_size=page_size,
                init_base=init_base,
                page_align_rows=on[rwx],
                reserved=mod.reservations,
            )
        except ValueError as exc:
            raise InputError(Diagnostic(str(exc), module=mod.name)) from None
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
                extra.append(Region(MemType.DATA, addr, (size + mod.page_size - 1) & ~(mod.page_size - 1)))
        strict = mod.settings["STRICT_MODULE_RWX"].value in ("y", "m") if mod.settings else True
        image = ModuleImage(regions + extra, backend=self.backend or BytesBackend(), module=mod.name, strict_rwx=strict)
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
        init_base: int | None = None,
        enable: bool = True,
    ) -> LoadedModule:
        """Load ``module`` against ``symbols`` at ``base`` (init memory at
        ``init_base``, if given) and, for a livepatch module, enable it for
        every patched object present in ``symbols``.

        Raises a :class:`~klpcore.errors.KlpError` subclass on the first phase
        that fails; the returned object records every phase that succeeded.
        """
        mod = module if isinstance(module, LoadingModule) else self.open(module)
        check_symbol_sources(mod, symbols)
        if mod.layout is None:
            self.prepare(mod, base, init_base)
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
    loader: Loader,
    module: LoadingModule | str | os.PathLike[str],
    symbols: KernelSymbols,
    base: int = DEFAULT_BASE,
    init_base: int | None = None,
) -> ResolveReport:
    """Resolve without applying: ``simplify_symbols`` plus ``klp_resolve_symbols``
    for every livepatch section, collecting every failure."""
    mod = module if isinstance(module, LoadingModule) else loader.open(module)
    check_symbol_sources(mod, symbols)
    if mod.layout is None:
        loader.prepare(mod, base, init_base)
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
        self.warnings: list[Diagnostic] = [*mod.klp.warnings, *mod.notes]
        self.applied_objects: set[str] = set()
        #: livepatch sections whose symbols did not resolve in the last phase (nothing of them written)
        self._resolve_failed: set[str] = set()

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
                        if self.kernel.has("invalid_shndx_refused")
                        else " (this kernel reads past its section header table for it; 7.0+ refuses the module)"
                    ),
                    module=mod.name,
                    symbol=name,
                    kernel_message=(
                        f"{mod.name}: Symbol {name} has an invalid section index {n} (max {len(elf.sections) - 1})"
                        if self.kernel.has("invalid_shndx_refused")
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
        exports = ExportChecker(elf, self.symbols, self.kernel, mod.hooks)
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
            match = self.symbols.find_exported(name)
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
            if name in mod.arch.ignored_undefined and self.kernel.has("ignore_undef_symbol"):
                self.resolutions.append(SymbolResolution(i, name, int(vals[i]), "ignored"))
                continue
            found = self.symbols.find_global(name)
            why = (
                refusal.why
                if refusal is not None
                else f"defined in {', '.join(sorted({m.objname for m in found}))} but not exported"
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
        out += [(p.index, p.name, p.address, p.size) for p in mod.layout.reserved.values()]
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
        """``klp_init_object_loaded`` for each patched object that is loaded, in
        the order of the patch's ``klp_object`` array.  That order is C data
        klpcore does not read: ``-O klp_object_order=a,b`` gives it; otherwise
        objects go in order of their first section, with a warning when the
        order can change bytes (several objects applied at once)."""
        todo = []
        for obj in self.module.klp.objects.values():
            if obj.is_vmlinux and self.module.klp.fmt == "final" and self.kernel.early_vmlinux_klp:
                self.applied_objects.add(obj.name)
                continue
            if not obj.is_vmlinux and not self.symbols.has(obj.name):
                continue  # not loaded: applied when it comes (see coming())
            todo.append(obj)
        given = self.kernel.options.get("klp_object_order")
        if given:
            rank = {name.strip(): i for i, name in enumerate(str(given).split(","))}
            todo.sort(key=lambda o: rank.get(o.name, len(rank)))
        elif len(todo) > 1:
            self.warnings.append(
                Diagnostic(
                    f"objects {', '.join(o.name for o in todo)} are applied in the order of their first section; "
                    "the kernel uses the order of the patch's klp_object array, which can change which stub or "
                    "PLT slot each call gets: give it with -O klp_object_order=" + ",".join(o.name for o in todo),
                    severity="warning",
                    module=self.module.name,
                )
            )
        for obj in todo:
            self.applied_objects.add(obj.name)
            yield from self._object_sections(obj)

    def _object_sections(self, obj: KlpObject) -> Iterator[tuple[Section, KlpRelocSec | None]]:
        # the 2015 prototype built each object's list by inserting at the head: descending index order
        rfc = self.module.klp.fmt == "rfc"
        for rs in sorted(obj.reloc_secs, key=lambda r: r.index, reverse=rfc):
            if not self.module.sections[rs.target].flags & C.SHF_ALLOC:
                # klp_write_object_relocs does not check the target: its sh_addr points into the load copy
                note = Diagnostic(
                    f"target section {rs.target_name} is not loaded (no SHF_ALLOC); the kernel applies this "
                    "section anyway, writing into the module's freed temporary load copy; klpcore skips it",
                    severity="warning",
                    module=self.module.name,
                    section=rs.name,
                )
                if note not in self.warnings:
                    self.warnings.append(note)
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
        self._resolve_failed.clear()
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
            if s.info in mod.extra_addresses:
                # the per-CPU section (6.16+): the kernel relocates its template in the temporary load copy
                types = np.unique((relas["r_info"] & np.uint64(0xFFFFFFFF)).astype(np.int64)).tolist()
                prel = [mod.arch.type_name(t) for t in types if "P" in (getattr(mod.arch.types.get(t), "formula", ""))]
                if prel:
                    ctx.diagnostics.append(
                        Diagnostic(
                            f"PC-relative relocations ({', '.join(prel)}) into the per-CPU section: the kernel "
                            "computes P in its temporary copy of the template (an address klpcore does not know) "
                            "and copies the result to each CPU; klpcore uses the per-CPU base, so these values "
                            "differ by the distance between the two",
                            severity="warning",
                            module=mod.name,
                            section=s.name,
                        )
                    )
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
                self._resolve_failed.add(s.name)
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
                        # klp_find_external_symbol: an export, else the patch module's own kallsyms
                        match = self.symbols.find_exported(name)
                        if match is not None:
                            addr = match.address
                        else:
                            addr = self.symbols.find_object_symbol_rfc(mod.name, name, self._own_symbol(name))
                    else:
                        addr = self.symbols.find_object_symbol_rfc(None if sec_vmlinux else rs.objname, name)
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
                        if self.kernel.messages_with_index
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

    def _left_behind(
        self, objname: str, sections: Sequence[tuple[Section, KlpRelocSec | None]], errors: Sequence[Diagnostic]
    ) -> Diagnostic | None:
        """What a failing ``klp_module_coming`` leaves in the patch module (D6):
        the kernel writes entry by entry and section by section and stops at the
        first failure, and does not clean up the failing patch; klpcore writes
        nothing.  Returns a warning naming what the kernel would keep."""
        order = [s.name for s, _ in sections]
        failing = [(order.index(d.section), d.index) for d in errors if d.section in order]
        if not failing:
            return None
        pos, index = min(failing, key=lambda t: (t[0], t[1] if t[1] is not None else -1))
        done = order[:pos]
        partial = index if index is not None and order[pos] not in self._resolve_failed else 0
        parts = [f"{', '.join(done)} applied completely"] if done else []
        if partial:
            parts.append(f"the first {partial} relocation(s) of {order[pos]}")
        if not parts:
            return None
        x86 = self.module.arch.name == "x86_64"
        return Diagnostic(
            f"the kernel would leave behind in {self.module.name}: {' and '.join(parts)} (klp_module_coming does not "
            f"undo the failing patch); '{objname}' is refused"
            + (
                f", and every later load of '{objname}' fails at the first already-written place "
                "('existing value is nonzero') until the patch is removed"
                if x86
                else ""
            )
            + ". klpcore leaves the image unchanged (all or nothing).",
            severity="warning",
            module=self.module.name,
            section=order[pos],
        )

    def _own_symbol(self, name: str) -> list[int]:
        """Addresses of ``name`` among the module's own defined symbols (its kallsyms while it initialises)."""
        elf = self.module.elf
        shndx = elf.symbols["st_shndx"]
        return [
            int(self.symvals[i])
            for i, n in enumerate(elf.symbol_names)
            if n == name and i and int(shndx[i]) not in (C.SHN_UNDEF, C.SHN_LIVEPATCH, C.SHN_LIVEPATCH_RFC)
        ]

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
        if self.module.klp.fmt == "rfc":
            # the RFC era's module notifier only warned; the target module still loaded, unpatched
            try:
                result = self._run_phase(f"coming:{objname}", self._object_sections(obj))
            except KlpError as exc:
                self.warnings.extend(replace(d, severity="warning") for d in exc.diagnostics)
                self.warnings.append(
                    Diagnostic(
                        f"patch not applied to '{objname}': the RFC-era kernel warns and loads '{objname}' unpatched",
                        severity="warning",
                        module=self.module.name,
                        kernel_message=f"failed to apply patch '{self.module.name}' to module '{objname}' (-22)",
                    )
                )
                return None
            self.applied_objects.add(objname)
            return result
        sections = list(self._object_sections(obj))
        try:
            result = self._run_phase(f"coming:{objname}", sections)
        except KlpError as exc:
            note = self._left_behind(objname, sections, exc.diagnostics)
            if note is not None:
                exc.diagnostics.append(note)
            raise
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

    def reserved_bytes(self, name: str) -> tuple[int, bytes]:
        """Address and current contents of the reservation ``name`` (see
        :meth:`LoadingModule.reserve`)."""
        p = self.module.layout.reserved[name]
        return p.address, self.image.backend.read(p.address, p.size) if p.size else b""

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


#: the environment variables that choose the plugins (see :mod:`klpcore.plugins`)
_PLUGIN_ENV = ("KLPCORE_LOAD_PLUGINS", "KLPCORE_DISABLE_PLUGIN_AUTOLOAD", "KLPCORE_PLUGINS", "KLPCORE_TRACE_PLUGINS")
_PM_CACHE: dict[tuple[str | None, ...], pluggy.PluginManager] = {}


def default_plugin_manager() -> pluggy.PluginManager:
    """The installed plugins, built once per plugin-choosing environment."""
    key = tuple(os.environ.get(k) for k in _PLUGIN_ENV)
    pm = _PM_CACHE.get(key)
    if pm is None:
        pm = _PM_CACHE[key] = get_plugin_manager()
    return pm


def examples(pm: pluggy.PluginManager | None = None) -> dict[str, Example]:
    """The example modules the installed plugins ship, by name (``klpcore
    apply --example NAME`` uses them too)."""
    pm = pm or default_plugin_manager()
    return {e.name: e for group in pm.hook.klp_arch_examples() for e in (group or [])}


def layout_module_for_symbols(elf: ElfModule, base: int, *, coming: bool = False) -> Sequence[tuple[str, int, str]]:
    """Symbols a module loaded at ``base`` shows in kallsyms once it is LIVE
    (``is_core_symbol`` with ``CONFIG_KALLSYMS_ALL``, which livepatch needs):
    named symbols of loaded, non-init sections and of the per-CPU section (at
    the loader's default per-CPU base); no undefined, absolute or FILE symbols.

    ``coming=True``: while the module is COMING its kallsyms is the whole
    symbol table (only undefined symbols are skipped when searching): init
    and absolute (FILE) symbols count too; a symbol of a section that is not
    loaded keeps its section offset (its load-copy address is unknown)."""
    loader = Loader(default_plugin_manager())
    mod = loader.open(elf)
    loader.prepare(mod, base)
    syms = elf.symbols
    out = []
    for i in range(1, elf.nsyms):
        shndx = int(syms["st_shndx"][i])
        name = elf.symbol_names[i]
        bind = int(syms["st_info"][i]) >> 4
        if coming and name and shndx != C.SHN_UNDEF:
            value = int(syms["st_value"][i])
            if shndx >= C.SHN_LORESERVE:
                out.append((name, value, "a" if bind == C.STB_LOCAL else "A"))
                continue
            if shndx not in mod.extra_addresses and mod.layout.placements.get(shndx) is None:
                out.append((name, value, "n"))
                continue
        if not name or shndx == C.SHN_UNDEF or shndx >= min(len(mod.sections), C.SHN_LORESERVE):
            continue
        if shndx in mod.extra_addresses:  # the per-CPU section
            out.append(
                (
                    name,
                    (mod.extra_addresses[shndx] + int(syms["st_value"][i])) & 0xFFFFFFFFFFFFFFFF,
                    "D" if bind else "d",
                )
            )
            continue
        p = mod.layout.placements.get(shndx)
        if p is None or (p.memtype.is_init and not coming):
            continue
        sec = mod.sections[shndx]
        ch = "t" if sec.is_exec else ("b" if sec.is_nobits else ("d" if sec.is_write else "r"))
        value = (p.address + int(syms["st_value"][i])) & 0xFFFFFFFFFFFFFFFF  # unsigned long, as the kernel adds
        out.append((name, value, ch.upper() if bind != C.STB_LOCAL else ch))
    return out
