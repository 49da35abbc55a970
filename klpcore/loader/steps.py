"""The loader's steps: loading a module the way the kernel does, and applying its relocations.

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
from collections.abc import Mapping
from dataclasses import dataclass, field

import pluggy

from .. import constants as C
from ..constants import MemType
from ..elf import ElfModule
from ..engine import ApplyContext, SectionContext, StagedMemory
from ..errors import (
    Diagnostic,
    ElfFormatError,
    InputError,
    LivepatchFormatError,
    PlacementError,
    ResolutionError,
    SymbolFileError,
)
from ..kernel import KernelTarget, Setting, bool_setting, config_setting, page_size_setting
from ..layout import Layout, align, layout_sections
from ..livepatch import discover
from ..memory import BytesBackend, MemoryBackend, ModuleImage, Region
from ..plugins import get_plugin_manager, identify
from ..symbols import KernelSymbols
from .module import (
    CODETAG_SECTION,
    MAX_IMAGE,
    PERCPU_SECTION,
    RO_AFTER_INIT_SECTIONS,
    STATIC_CALL_SITES,
    UNLOADED_SECTIONS,
    LoadingModule,
    SymbolResolution,
)
from .phases import LoadedModule

#: x86's read-only-executable module text cache: one PMD (2 MiB) at a time (execmem ROX cache)
ROX_CACHE_SIZE = 2 << 20


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

    def prepare(
        self,
        mod: LoadingModule,
        base: int | None = None,
        init_base: int | None = None,
        *,
        region_bases: dict[MemType, int] | None = None,
        kernel_sections: Mapping[str, int] | None = None,
        sections_source: str = "",
    ) -> None:
        """Steps 1-4: section rewriting, arch setup, checks, layout.

        ``base`` is where the core memory starts (default: the architecture's
        module area, ``ArchSpec.default_base``); ``init_base`` places the init memory (the kernel's separate init
        allocation) there; by default it follows the core memory.
        ``region_bases`` pins memory types (6.4+; before, MOD_TEXT is the core
        and MOD_INIT_TEXT the init allocation).  ``kernel_sections`` (section
        name -> address, what ``/sys/module/NAME/sections`` shows) places every
        section where the kernel did, or refuses a placement the kernel could
        not have made (:func:`klpcore.placement.fit_sections`)."""
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
        base = mod.arch.default_base if base is None else base
        style = self.kernel.layout_style
        pinned = dict(region_bases or {})
        if pinned and style != "memory":
            other = sorted(mt.kernel_name for mt in pinned if mt not in (MemType.TEXT, MemType.INIT_TEXT))
            if other:
                raise InputError(
                    Diagnostic(
                        f"--region-base {', '.join(other)}: before Linux 6.4 (this target: {self.kernel.label}) a "
                        "module is one core and one init allocation; give MOD_TEXT (core) or MOD_INIT_TEXT (init)",
                        module=mod.name,
                    )
                )
            base = pinned.pop(MemType.TEXT, base)
            init_base = pinned.pop(MemType.INIT_TEXT, init_base)
        if region_bases:
            mod.layout_source = "region-base"

        text_base = None
        if style == "memory":
            mod.layout_facts = [
                "a fresh boot: the module is the first allocation at --base (a later module reuses freed "
                "memory; give the kernel's addresses with --sections)",
                "one vmalloc area per memory type in enum order (TEXT, DATA, RODATA, RO_AFTER_INIT, INIT_TEXT, "
                "INIT_DATA, INIT_RODATA), whole pages, each followed by a guard page",
            ]
            rox = config_setting(mod.hooks, self.kernel, "ARCH_HAS_EXECMEM_ROX")
            if rox.value == "y":
                # the shared read-only-executable text cache: 2 MiB, PMD aligned, taken by the first
                # text allocation; the data types then fill the module area from its lowest free page
                text_base = align(base, ROX_CACHE_SIZE)
                if text_base == base:
                    base += ROX_CACHE_SIZE + page_size
                mod.layout_facts.append(
                    f"ARCH_HAS_EXECMEM_ROX=y ({rox.source}): TEXT and INIT_TEXT packed in the 2 MiB read-only-"
                    f"executable cache at {text_base:#x}, no guard pages; data types from {base:#x}"
                )
            kallsyms_all = config_setting(mod.hooks, self.kernel, "KALLSYMS_ALL")
            mod.layout_facts.append(
                "the kallsyms copy (layout_symtab) grows MOD_DATA (core symbols) and MOD_INIT_DATA (.symtab, "
                f".strtab); KALLSYMS_ALL={kallsyms_all.value} ({kallsyms_all.source})"
            )
        else:
            mod.layout_facts = ["before 6.4: one core and one init allocation (core_layout/init_layout)"]

        tails: dict[MemType, int] = {}

        def lay_out(base: int, init_base: int | None, pinned: dict[MemType, int]) -> Layout:
            try:
                return layout_sections(
                    mod.sections,
                    base,
                    style=style,
                    is_init=is_init,
                    page_size=page_size,
                    init_base=init_base,
                    page_align_rows=on[rwx],
                    reserved=mod.reservations,
                    region_bases=pinned,
                    text_base=text_base,
                    tails=tails,
                )
            except ValueError as exc:
                raise InputError(Diagnostic(str(exc), module=mod.name)) from None

        mod.layout = lay_out(base, init_base, pinned)
        if style == "memory" and mod.elf.symtab_index:
            tails.update(self._kallsyms_tails(mod, mod.layout))
            mod.layout = lay_out(base, init_base, pinned)
        if kernel_sections is not None:
            from ..placement import fit_sections

            fit = fit_sections(mod.layout, kernel_sections, page_size, module=mod.name, source=sections_source)
            if style == "memory":
                mod.layout = lay_out(base, None, fit.bases)
            else:
                mod.layout = lay_out(fit.bases.get(MemType.TEXT, base), fit.bases.get(MemType.INIT_TEXT), {})
            for p in mod.layout.placements.values():  # the fit is exact by construction; say so if not
                if p.name in kernel_sections and kernel_sections[p.name] != p.address:
                    raise InputError(
                        Diagnostic(
                            f"--sections: klpcore could not place {p.name} at {kernel_sections[p.name]:#x} "
                            f"(its layout gives {p.address:#x})",
                            module=mod.name,
                            section=p.name,
                        )
                    )
            mod.layout_source = "kernel-sections"
        spans = [(r.memtype.kernel_name, r.address, r.alloc_size) for r in mod.layout.regions.values() if r.alloc_size]
        for index, addr in mod.extra_addresses.items():
            size = mod.sections[index].size
            if size:
                spans.append((f"the per-CPU area ({mod.sections[index].name})", addr, size))
        self._check_size(mod)
        _check_placement(mod, spans)

    def _kallsyms_tails(self, mod: LoadingModule, layout: Layout) -> dict[MemType, int]:
        from ..kallsyms_copy import kallsyms_tails

        elf = mod.elf
        symtab = elf.sections[elf.symtab_index]
        strtab = elf.sections[symtab.link]
        percpu = mod.section_by_name(PERCPU_SECTION)
        return kallsyms_tails(
            layout,
            nsyms=elf.nsyms,
            names=elf.symbol_names,
            shndx=[int(x) for x in elf.symbols["st_shndx"].tolist()],
            section_flags=[s.flags for s in mod.sections],
            symtab_size=symtab.size,
            symtab_align=symtab.addralign,
            strtab_size=strtab.size,
            strtab_align=strtab.addralign,
            percpu_index=percpu.index if percpu is not None else None,
            kallsyms_all=config_setting(mod.hooks, self.kernel, "KALLSYMS_ALL").value == "y",
            livepatch=bool(mod.klp.is_livepatch),
        )

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
        base: int | None = None,
        *,
        init_base: int | None = None,
        enable: bool = True,
        region_bases: dict[MemType, int] | None = None,
        kernel_sections: Mapping[str, int] | None = None,
        sections_source: str = "",
    ) -> LoadedModule:
        """Load ``module`` against ``symbols`` at ``base`` (default: the
        architecture's module area; init memory at ``init_base``, if given) and, for a livepatch module, enable it for
        every patched object present in ``symbols``.

        Raises a :class:`~klpcore.errors.KlpError` subclass on the first phase
        that fails; the returned object records every phase that succeeded.
        """
        mod = module if isinstance(module, LoadingModule) else self.open(module)
        check_symbol_sources(mod, symbols)
        if mod.layout is None:
            self.prepare(
                mod,
                base,
                init_base,
                region_bases=region_bases,
                kernel_sections=kernel_sections,
                sections_source=sections_source,
            )
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
    base: int | None = None,
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
