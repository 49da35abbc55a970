"""The loaded module and its phases: ``load`` and ``enable`` while it loads, then ``coming`` and
``going`` as the modules it patches load and unload.  Each phase is all-or-nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import constants as C
from ..constants import ModuleState
from ..elf import Section
from ..engine import ApplyContext, RelocFailure, SectionContext, StagedMemory
from ..errors import Diagnostic, KlpError, RelocationError
from ..livepatch import KlpObject, KlpRelocSec
from ..memory import ModuleImage, Region, WriteRecord, default_policy
from ..symbols import KernelSymbols
from .module import LoadingModule, PhaseResult, SymbolResolution
from .resolve import own_symbol, resolve_klp, simplify_symbols

if TYPE_CHECKING:
    from .steps import Loader


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
    #: ``simplify_symbols`` and ``klp_resolve_symbols`` (:mod:`klpcore.loader.resolve`)
    _simplify_symbols = simplify_symbols
    _resolve_klp = resolve_klp
    _own_symbol = own_symbol

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
        # an arch whose apply_relocate_add refuses a place that is not zero refuses the rewrite too
        refuses_rewrite = any(t.require_zero for t in self.module.arch.types.values())
        return Diagnostic(
            f"the kernel would leave behind in {self.module.name}: {' and '.join(parts)} (klp_module_coming does not "
            f"undo the failing patch); '{objname}' is refused"
            + (
                f", and every later load of '{objname}' fails at the first already-written place "
                "('existing value is nonzero') until the patch is removed"
                if refuses_rewrite
                else ""
            )
            + ". klpcore leaves the image unchanged (all or nothing).",
            severity="warning",
            module=self.module.name,
            section=order[pos],
        )

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


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(state)
