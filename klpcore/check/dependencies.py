"""Dependencies: the modules loaded first (``modules.dep`` or ``depends=``), each checked once per
target, and the exports the module then sees (vmlinux's, then each dependency's)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .. import constants as C
from ..elf import ElfModule
from ..errors import KlpError
from ..loader import DEFAULT_BASE
from ..symbols import KernelSymbols, symbols_from_elf
from .modinfo import ModInfo, read_modinfo
from .modversions import ModversionSteps
from .pair import REFUSED, Finding, Stop
from .target import SymversEntry, Target, read_input

#: where dependencies and patched target modules are placed (apart from the checked module)
DEP_BASE = DEFAULT_BASE + 0x10000000
DEP_STRIDE = 0x1000000
#: module area slots (the x86_64 module area ends at 0xffffffffff000000)
DEP_SLOTS = 46


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
        info = self.info
        assert info is not None
        deps_map = self.target.modules_dep
        names = deps_map.get(info.name) if deps_map is not None and info.name in deps_map else info.depends
        if not names:
            return []
        if self.target.modules_dir is None:
            self.not_checked("dependencies", f"depends on {', '.join(names)}; the target has no module tree")
            return []
        out: list[DepModule] = []
        for dep in names:
            for d in load_dependency(self.target, dep, set(), self.dependency_check):
                if d not in out:
                    out.append(d)
        for d in out:
            if d.path is None:
                self.add(
                    "dependencies",
                    "error",
                    f"dependency '{d.name}' is not in the target's module tree; its symbols stay unknown",
                    None,
                    REFUSED,
                )
            elif d.refused:
                first = d.refused[0]
                self.refuse(
                    "dependencies",
                    f"dependency '{d.name}' is refused: {first.message}",
                    first.kernel_message,
                    dependency=d.name,
                )
        if any(f.outcome == REFUSED for f in self.findings if f.check == "dependencies"):
            raise Stop
        loaded = [d.name for d in out]
        self.add("dependencies", "info", f"loaded first: {', '.join(loaded)}")
        return out

    def exports(self, deps: list[DepModule]) -> dict[str, Export] | None:
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
            elif self.target.symbols is not None:
                for name in self.target.symbols.objects[C.VMLINUX].names if self.target.symbols.has(C.VMLINUX) else []:
                    if name.startswith("__ksymtab_"):
                        n = name[len("__ksymtab_") :]
                        base[n] = Export(n, C.VMLINUX, None, None, "")
            else:
                return None
            cache["vmlinux_exports"] = base
        out = dict(base)
        for d in deps:
            if d.info is None:
                continue
            for x in d.info.exports:
                if x.name in out:
                    continue
                entry: SymversEntry | None = self.target.symvers.get(x.name) if self.target.symvers else None
                out[x.name] = Export(
                    x.name,
                    d.name,
                    x.gpl,
                    entry.crc if entry and self.modversions else None,
                    entry.namespace if entry else "",
                )
        return out


@dataclass(eq=False)
class DepModule:
    name: str
    path: str | None
    info: ModInfo | None = None
    symbols: KernelSymbols | None = None
    refused: list[Finding] = field(default_factory=list)


def load_dependency(
    target: Target, name: str, seen: set[str], new_check: Callable[[str], DependencyCheck]
) -> list[DepModule]:
    """``name`` and its own dependencies, depth first, each checked once per target by a check
    ``new_check(path)`` makes."""
    key = name.replace("-", "_")
    cache: dict[str, DepModule] = target.cache.setdefault("deps", {})
    if key in seen:
        return []
    seen.add(key)
    if key in cache:
        d = cache[key]
        chain: list[DepModule] = []
        if d.info is not None:
            for sub in _dep_names(target, d.info):
                chain += load_dependency(target, sub, seen, new_check)
        return [*chain, d]
    path = target.find_module(key)
    if path is None:
        d = DepModule(key, None)
        cache[key] = d
        return [d]
    chain = []
    try:
        raw = read_input(path, "module", limit=1 << 30)
        elf = ElfModule(raw, path=str(path))
        info = read_modinfo(elf, str(path), raw)
    except KlpError as exc:
        d = DepModule(key, str(path), refused=[Finding("dependencies", "error", str(exc), None, REFUSED)])
        cache[key] = d
        return [d]
    for sub in _dep_names(target, info):
        chain += load_dependency(target, sub, seen, new_check)
    d = DepModule(info.name, str(path), info)
    cache[key] = d
    pc = new_check(str(path))
    pc.info = info
    try:
        pc.step_modstruct()
        pc.step_modinfo()
        pc.step_symbols(chain)
    except Stop:
        pass
    d.refused = [f for f in pc.findings if f.outcome == REFUSED]
    index = len(cache)
    try:
        d.symbols = symbols_from_elf(raw, str(path), base=DEP_BASE + (index % 24) * DEP_STRIDE, objname=info.name)
    except KlpError as exc:
        d.refused.append(Finding("dependencies", "error", str(exc), None, REFUSED))
    return [*chain, d]


def _dep_names(target: Target, info: ModInfo) -> list[str]:
    dep = target.modules_dep
    if dep is not None and info.name in dep:
        return dep[info.name]
    return info.depends
