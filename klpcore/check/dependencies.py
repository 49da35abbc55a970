"""Dependencies: the modules modprobe loads first (``modules.dep``, else depmod's rule:
:mod:`.depgraph`), each judged once per target, and the exports the module then sees (vmlinux's,
then each dependency's)."""

from __future__ import annotations

import os
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .. import constants as C
from ..elf import ElfModule
from ..errors import KlpError
from ..kernel import KernelTarget
from ..modtree import module_kernel_name
from ..plugins import arch_spec, default_plugin_manager
from ..symbols import KernelSymbols, symbols_from_elf
from .depgraph import DepGraph
from .modinfo import ModInfo, read_modinfo, undefined_symbols
from .modversions import ModversionSteps
from .pair import REFUSED, Finding, Stop
from .target import SymversEntry, Target, read_input

#: where dependencies and patched target modules are placed (apart from the checked module, which
#: is at the start of the architecture's module area): slots of DEP_STRIDE from DEP_OFFSET on, when
#: the module area holds them (see :func:`slot_layout` for a smaller one)
DEP_OFFSET = 0x10000000
DEP_STRIDE = 0x1000000
#: the first slots hold dependencies, the others patched target modules
DEP_SLOTS_FOR_DEPENDENCIES = 24
#: a module area that cannot hold this many slots of DEP_STRIDE after DEP_OFFSET is divided finer
MIN_PATCHED_SLOTS = 8
#: the module area assumed for a module no installed plugin claims
UNKNOWN_AREA = 1 << 30
_PAGE_SHIFT = 12


@dataclass(frozen=True)
class SlotLayout:
    """Where ``check`` places dependencies and patched modules in a module area: ``dependencies``
    slots then ``patched`` slots, each ``stride`` bytes, from ``offset`` (one stride kept free at the end)."""

    offset: int
    stride: int
    dependencies: int
    patched: int

    def address(self, first: int, count: int, index: int) -> int:
        """Offset in the area of the ``index``-th module of the region of ``count`` slots from slot
        ``first``: slot ``index % count``; the later rounds (``index // count``) start inside the slots
        at page-aligned fractions 1/2, 1/4, 3/4, 1/8 ... of a stride, so that no two of the first
        ``count * stride / page`` modules share an address."""
        rounds, slot = divmod(index, count)
        bits = self.stride.bit_length() - 1 - _PAGE_SHIFT
        rounds %= 1 << bits
        within = int(f"{rounds:0{bits}b}"[::-1], 2) << _PAGE_SHIFT if bits else 0
        return self.offset + (first + slot) * self.stride + within


def slot_layout(area: int) -> SlotLayout:
    """The slots of a module area of ``area`` bytes: DEP_OFFSET and DEP_STRIDE when the area holds
    DEP_SLOTS_FOR_DEPENDENCIES + MIN_PATCHED_SLOTS (+ 1 free) such slots after DEP_OFFSET; else the
    checked module keeps the first half and the other half is divided into slots of a power of two
    (at least a page)."""
    want = DEP_SLOTS_FOR_DEPENDENCIES + MIN_PATCHED_SLOTS + 1
    offset, stride = DEP_OFFSET, DEP_STRIDE
    if area - offset < want * stride:
        offset = area // 2
        stride = 1 << max((max(area - offset, 1) // want).bit_length() - 1, _PAGE_SHIFT)
    total = max((area - offset) // stride - 1, DEP_SLOTS_FOR_DEPENDENCIES + 1)
    return SlotLayout(offset, stride, DEP_SLOTS_FOR_DEPENDENCIES, total - DEP_SLOTS_FOR_DEPENDENCIES)


def _layout(elf: ElfModule) -> SlotLayout:
    spec = arch_spec(default_plugin_manager(), elf.machine, elf.elfclass, elf.byteorder, elf.e_flags)
    return slot_layout(spec.module_area_size if spec is not None else UNKNOWN_AREA)


def module_base(target: Target, elf: ElfModule, kernel: KernelTarget | None = None) -> int:
    """Where the target kernel puts its first module: the architecture's answer from the target's own
    symbols (hook ``klp_arch_module_base``), else its ``default_base`` (0 when no plugin claims it)."""
    pm = default_plugin_manager()
    spec = arch_spec(pm, elf.machine, elf.elfclass, elf.byteorder, elf.e_flags)
    if spec is None:
        return 0
    key = f"module_base:{spec.name}"
    got = target.cache.get(key)
    if got is None:
        got = spec.default_base
        ks = target.symbols
        if ks is not None and ks.has(C.VMLINUX):
            vm = ks.objects[C.VMLINUX]

            def symbol(name: str) -> int | None:
                hits = vm.matches(name)
                return int(hits[0]) if hits else None

            if kernel is None:
                kernel = KernelTarget(version=_target_version(target))
            answer = pm.hook.klp_arch_module_base(arch=spec, kernel=kernel, symbol=symbol)
            if answer is not None:
                got = int(answer)
        target.cache[key] = got
    return int(got)


def percpu_base(target: Target, elf: ElfModule, kernel: KernelTarget) -> int | None:
    """Where the target kernel puts a module's per-CPU section (hook ``klp_arch_percpu_base`` with the
    target's own symbols); None: the architecture's default."""
    pm = default_plugin_manager()
    spec = arch_spec(pm, elf.machine, elf.elfclass, elf.byteorder, elf.e_flags)
    ks = target.symbols
    if spec is None or ks is None or not ks.has(C.VMLINUX):
        return None
    key = f"percpu_base:{spec.name}"
    if key not in target.cache:
        vm = ks.objects[C.VMLINUX]

        def symbol(name: str) -> int | None:
            hits = vm.matches(name)
            return int(hits[0]) if hits else None

        target.cache[key] = pm.hook.klp_arch_percpu_base(arch=spec, kernel=kernel, symbol=symbol)
    got = target.cache[key]
    return None if got is None else int(got)


def _target_version(target: Target) -> tuple[int, int]:
    from ..kernel import NEWEST, parse_version

    try:
        return parse_version(target.release or "")
    except ValueError:
        return NEWEST


def _area_base(elf: ElfModule, target: Target | None) -> int:
    if target is not None:
        return module_base(target, elf)
    spec = arch_spec(default_plugin_manager(), elf.machine, elf.elfclass, elf.byteorder, elf.e_flags)
    return spec.default_base if spec is not None else 0


def dependency_address(elf: ElfModule, index: int, target: Target | None = None) -> int:
    """Where ``check`` places the ``index``-th dependency module it reads (see :class:`SlotLayout`),
    from the target's module base when a target is given."""
    lay = _layout(elf)
    return _area_base(elf, target) + lay.address(0, lay.dependencies, index)


def patched_address(elf: ElfModule, index: int, target: Target | None = None) -> int:
    """Where ``check`` places the ``index``-th patched target module it reads: the slots after the
    dependencies'."""
    lay = _layout(elf)
    return _area_base(elf, target) + lay.address(lay.dependencies, lay.patched, index)


@dataclass
class Export:
    name: str
    owner: str  # "vmlinux" or a module name
    gpl: bool | None  # None: unknown (no Module.symvers)
    crc: int | None
    namespace: str


class DependencyCheck(Protocol):
    """What checking a dependency takes from the pair check (a :class:`~klpcore.check.steps.PairCheck`
    at depth 1): its module info, the steps that run before relocations, and its findings."""

    info: ModInfo | None
    findings: list[Finding]

    def step_modstruct(self) -> None: ...

    def step_modinfo(self) -> None: ...

    def step_symbols(self, deps: list[DepModule]) -> None: ...


class DependencySteps(ModversionSteps):
    """The dependency steps of :class:`~klpcore.check.steps.PairCheck`."""

    def dependency_check(self, path: str) -> DependencyCheck:
        """The check of the dependency at ``path`` (PairCheck makes one of its own kind)."""
        raise NotImplementedError

    def step_dependencies(self) -> list[DepModule]:
        """The modules modprobe loads first (the target's ``modules.dep``, else depmod's rule over the
        tree: the providers of the module's undefined symbols, transitively), each judged once per
        target, whatever else is checked and in whatever order."""
        info = self.info
        assert info is not None
        if self.target.modules_dir is None:
            if info.depends:
                self.not_checked(
                    "dependencies",
                    f"depends on {', '.join(info.depends)}; the target has no module tree (supplied by "
                    + self.target.supplier("module tree")
                    + ")",
                )
            return []
        tree_file = self.target.find_module(info.name)
        same = tree_file is not None and os.path.realpath(tree_file) == os.path.realpath(self.path)
        undefined = None if same else [sym for _i, sym, _weak in undefined_symbols(info.elf)]
        out = dependencies_of(self.target, info.name, self.dependency_check, undefined)
        DepGraph.of(self.target).parsed.pop(module_kernel_name(info.name), None)  # read again only if needed
        if not out:
            return []
        for d in out:
            if d.path is None:
                self.refuse(
                    "dependencies",
                    f"dependency '{d.name}' (modules.dep) is not in the target's module tree",
                    None,
                    dependency=d.name,
                )
            elif d.refused:
                first = d.refused[0]
                self.refuse(
                    "dependencies",
                    f"dependency '{d.name}' is refused: {first.message}",
                    first.kernel_message,
                    dependency=d.name,
                )
            for f in d.unchecked:
                self.not_checked("dependencies", f"dependency '{d.name}': {f.message.removeprefix('not checked: ')}")
        if any(f.outcome == REFUSED for f in self.findings if f.check == "dependencies"):
            raise Stop
        loaded = [d.name for d in out]
        self.add("dependencies", "info", f"loaded first: {', '.join(loaded)}")
        return out

    def exports(self, deps: list[DepModule]) -> Mapping[str, Export] | None:
        """Exports visible to the module: vmlinux's, then each loaded dependency's."""
        cache = self.target.cache
        base = cache.get("vmlinux_exports")
        if base is None:
            base = {}
            sv = self.target.symvers
            if sv is not None:
                for name, e in sv.items():
                    if e.module == C.VMLINUX:
                        base[name] = Export(name, C.VMLINUX, e.gpl, e.crc, e.namespace)
            elif self.target.symbols is not None and C.VMLINUX in self.target.symbols.exported:
                # the export table read from the kernel image (its struct kernel_symbol entries)
                meta = self.target.symbols.export_meta
                crcs = self.target.symbols.export_crcs.get(C.VMLINUX, {})
                for name in self.target.symbols.exported[C.VMLINUX]:
                    m = meta.get(name)
                    base[name] = Export(
                        name, C.VMLINUX, m.gpl_only if m else None, crcs.get(name), m.namespace if m else ""
                    )
            elif self.target.symbols is not None:
                for name in self.target.symbols.objects[C.VMLINUX].names if self.target.symbols.has(C.VMLINUX) else []:
                    if name.startswith("__ksymtab_"):
                        n = name[len("__ksymtab_") :]
                        base[n] = Export(n, C.VMLINUX, None, None, "")
            else:
                return None
            cache["vmlinux_exports"] = base
        out: dict[str, Export] = {}  # the dependencies' own, over vmlinux's (not a copy of vmlinux's per module)
        for d in deps:
            if d.info is None:
                continue
            for x in d.info.exports:
                if x.name in out or x.name in base:
                    continue
                entry: SymversEntry | None = self.target.symvers.get(x.name) if self.target.symvers else None
                out[x.name] = Export(
                    x.name,
                    d.name,
                    x.gpl,
                    entry.crc if entry and self.modversions else None,
                    entry.namespace if entry else "",
                )
        return ChainMap(out, base)


@dataclass(eq=False)
class DepModule:
    name: str
    path: str | None
    info: ModInfo | None = None
    symbols: KernelSymbols | None = None
    refused: list[Finding] = field(default_factory=list)
    #: its steps that could not be checked (they make the module that needs it "unknown")
    unchecked: list[Finding] = field(default_factory=list)


def judge_dependency(target: Target, name: str, new_check: Callable[[str], DependencyCheck]) -> DepModule:
    """The module ``name`` of the target's tree judged as a dependency (its own load steps, with its
    own dependencies loaded first, by a check ``new_check(path)`` makes), once per target: later calls
    return the same answer."""
    key = module_kernel_name(name)
    cache: dict[str, DepModule] = target.cache.setdefault("deps", {})
    got = cache.get(key)
    if got is not None:
        return got
    path = target.find_module(key)
    if path is None:
        d = cache[key] = DepModule(key, None)
        return d
    graph = DepGraph.of(target)
    try:
        got_parsed = graph.parsed.pop(key, None)
        if got_parsed is not None:
            raw, elf = got_parsed
        else:
            raw = read_input(path, "module", limit=1 << 30)
            elf = ElfModule(raw, path=str(path))
        info = read_modinfo(elf, str(path), raw)
    except KlpError as exc:
        d = cache[key] = DepModule(key, str(path), refused=[Finding("dependencies", "error", str(exc), None, REFUSED)])
        return d
    d = cache[key] = DepModule(info.name, str(path), info)  # before its dependencies: a cycle ends here
    chain = [judge_dependency(target, m, new_check) for m in graph.load_order(key)]
    cycle = graph.cycle_of(key)
    if cycle is not None:
        d.refused.append(
            Finding(
                "dependencies",
                "error",
                f"{info.name} is in a dependency cycle: depmod leaves it out of modules.dep, so modprobe "
                "loads none of its dependencies",
                cycle,
                REFUSED,
            )
        )
        return d
    pc = new_check(str(path))
    pc.info = info
    try:
        pc.step_modstruct()
        pc.step_modinfo()
        pc.step_symbols(chain)
    except Stop:
        pass
    d.refused = [f for f in pc.findings if f.outcome == REFUSED]
    d.unchecked = [f for f in pc.findings if f.severity == "not-checked"]
    index = len(cache)
    try:
        base = dependency_address(info.elf, index, target)
        d.symbols = symbols_from_elf(raw, str(path), base=base, objname=info.name)
    except KlpError as exc:
        d.refused.append(Finding("dependencies", "error", str(exc), None, REFUSED))
    return d


def dependencies_of(
    target: Target, name: str, new_check: Callable[[str], DependencyCheck], undefined: list[str] | None = None
) -> list[DepModule]:
    """Every module modprobe loads before ``name`` (in load order), each judged once per target.
    ``undefined``: the symbols a module file that is not the tree's own leaves undefined."""
    return [judge_dependency(target, m, new_check) for m in DepGraph.of(target).load_order(name, undefined)]
