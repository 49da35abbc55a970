"""A target's module dependencies as depmod computes them and modprobe loads them.

``depmod`` writes ``modules.dep``: for every module, the modules exporting the
symbols it leaves undefined (every undefined symbol, weak ones included, that
some module of the tree exports), transitively, in the order ``modprobe``
loads them (dependencies before the modules needing them).  Distributions do
not ship ``modules.dep`` (depmod runs at install time), so where it is absent
the graph is computed the same way from the tree: which module exports a
symbol is read from the headers' ``Module.symvers`` (one line per export,
naming its module), else from the modules' own export tables.

The graph is built once per target and each module's dependencies are
computed once (:class:`DepGraph` lives in ``Target.cache``); the answer for a
module never depends on which other modules were asked about before it.  A
cycle is reported as depmod reports it (``depmod: ERROR: Cycle detected: a ->
b -> a``); depmod leaves the modules of a cycle out of ``modules.dep``, so
modprobe loads none of them with their dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..modtree import module_kernel_name

if TYPE_CHECKING:
    from ..elf import ElfModule
    from .target import Target


class DepGraph:
    """Dependencies of the modules of one target."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._direct: dict[str, list[str]] = {}
        self._closure: dict[str, list[str]] = {}
        #: module -> the cycle it is part of, as depmod prints it
        self.cycles: dict[str, str] = {}
        #: modules read to find their dependencies and not yet judged: name -> (bytes, ELF)
        self.parsed: dict[str, tuple[bytes, ElfModule]] = {}

    @classmethod
    def of(cls, target: Target) -> DepGraph:
        """The target's one graph (built on first use)."""
        got = target.cache.get("depgraph")
        if got is None:
            got = target.cache["depgraph"] = cls(target)
        return got  # type: ignore[no-any-return]

    # ------------------------------------------------------------ providers
    def providers(self, symbols: Iterable[str]) -> dict[str, str]:
        """``symbol -> module`` for the symbols some module of the tree exports."""
        names = list(symbols)
        sv = self.target.symvers
        if sv is not None:
            out = {}
            for n in names:
                e = sv.get(n)
                if e is not None and e.module != "vmlinux":
                    m = module_kernel_name(e.module)
                    if m in self.target.module_index:
                        out[n] = m
            return out
        tree = self.target.module_tree
        if tree is None:
            return {}
        return tree.providers(names)

    def direct(self, name: str, undefined: Iterable[str] | None = None) -> list[str]:
        """The modules ``name`` needs directly: its ``modules.dep`` line, else the
        providers of its undefined symbols (``undefined``: given for a module read
        by the caller, e.g. one outside the tree)."""
        key = module_kernel_name(name)
        if undefined is None and key in self._direct:
            return self._direct[key]
        dep = self.target.modules_dep
        if dep is not None and key in dep and undefined is None:
            out = [d for d in dep[key] if d != key]
        else:
            if undefined is None:
                undefined = self._undefined(key)
            prov = self.providers(undefined)
            out = sorted({m for m in prov.values() if m != key})
        if undefined is None:  # the tree's own module (a file given from elsewhere is not cached)
            self._direct[key] = out
        return out

    def _undefined(self, name: str) -> list[str]:
        from ..elf import ElfModule
        from ..errors import KlpError
        from .modinfo import undefined_symbols
        from .target import read_input

        path = self.target.find_module(name)
        if path is None:
            return []
        try:
            raw = read_input(path, "module", limit=1 << 30)
            elf = ElfModule(raw, path=str(path))
        except KlpError:
            return []
        self.parsed[name] = (raw, elf)  # judged next (judge_dependency takes it): read once
        return [sym for _i, sym, _weak in undefined_symbols(elf)]

    # ------------------------------------------------------------- closure
    def load_order(self, name: str, undefined: Iterable[str] | None = None) -> list[str]:
        """Every module modprobe loads before ``name``, in load order (each once)."""
        key = module_kernel_name(name)
        first = self.direct(key, undefined)
        out: list[str] = []
        for d in first:
            for m in [*self._closure_of(d, [key]), d]:
                if m not in out and m != key:
                    out.append(m)
        return out

    def _closure_of(self, name: str, stack: list[str]) -> list[str]:
        """Dependencies of ``name`` in load order (``stack``: the path that led here).  Memoised
        unless a cycle was met below ``name`` (then what is left out depends on the path)."""
        got = self._closure.get(name)
        if got is not None:
            return got
        out: list[str] = []
        path = [*stack, name]
        cyclic = False
        for d in self.direct(name):
            if d in path:
                cyc = path[path.index(d) :]
                i = cyc.index(min(cyc))  # one text for a cycle, whichever module it was entered from
                cyc = cyc[i:] + cyc[:i]
                text = "depmod: ERROR: Cycle detected: " + " -> ".join([*cyc, cyc[0]])
                for m in cyc:
                    self.cycles.setdefault(m, text)
                cyclic = True
                continue
            before = len(self.cycles)
            for m in [*self._closure_of(d, path), d]:
                if m not in out and m != name:
                    out.append(m)
            cyclic = cyclic or d not in self._closure or len(self.cycles) != before
        if not cyclic:
            self._closure[name] = out
        return out

    def cycle_of(self, name: str) -> str | None:
        """depmod's line for the cycle ``name`` is in (after :meth:`load_order` met it)."""
        return self.cycles.get(module_kernel_name(name))
