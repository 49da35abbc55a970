"""The module image: memory regions, page permissions and the module state.

A :class:`ModuleImage` holds one region per kernel memory type.  While the
module is ``UNFORMED`` every region is writable (the loader uses ``memcpy``).
:meth:`ModuleImage.form` applies the kernel's ``complete_formation``
permissions: text read-only and executable, rodata read-only, data
non-executable; ro_after_init becomes read-only when the module goes live.

Every write is checked against the regions' bounds.  Once the module is
formed, how a write may reach memory is decided by the architecture's
memory-protection hook (``klp_arch_write_method``), e.g. ``text_poke`` on
x86_64 since Linux 5.8; a write that no hook allows is an error, as it would
be a fault in the kernel.

Embedders supply their own storage by implementing :class:`MemoryBackend`.
"""

from __future__ import annotations

import bisect
import enum
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .constants import MemType, ModuleState
from .errors import Diagnostic, MemoryAccessError


class Perm(enum.Flag):
    NONE = 0
    R = enum.auto()
    W = enum.auto()
    X = enum.auto()

    def __str__(self) -> str:
        return "".join(c if self & getattr(Perm, c.upper()) else "-" for c in "rwx")


@runtime_checkable
class MemoryBackend(Protocol):
    """Storage for the module image.  Addresses are kernel virtual addresses."""

    def map(self, address: int, size: int) -> None:
        """Allocate ``size`` zero bytes at ``address`` (called once per region)."""

    def read(self, address: int, size: int) -> bytes:
        """Return ``size`` bytes at ``address``."""

    def write(self, address: int, data: bytes) -> None:
        """Store ``data`` at ``address``."""


class BytesBackend:
    """The default backend: one ``bytearray`` per mapped range."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._bufs: list[bytearray] = []

    def map(self, address: int, size: int) -> None:
        i = bisect.bisect_left(self._starts, address)
        self._starts.insert(i, address)
        self._bufs.insert(i, bytearray(size))

    def _find(self, address: int, size: int) -> tuple[bytearray, int]:
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            raise MemoryAccessError(f"address {address:#x} is not mapped")
        buf = self._bufs[i]
        off = address - self._starts[i]
        if off + size > len(buf):
            raise MemoryAccessError(f"access {address:#x}+{size:#x} is not mapped")
        return buf, off

    def read(self, address: int, size: int) -> bytes:
        buf, off = self._find(address, size)
        return bytes(memoryview(buf)[off : off + size])  # one copy (a bytearray slice would be a second)

    def write(self, address: int, data: bytes) -> None:
        buf, off = self._find(address, len(data))
        buf[off : off + len(data)] = data

    def view(self, address: int, size: int) -> memoryview:
        """A read-only view of ``size`` bytes at ``address`` (no copy; it sees later writes)."""
        buf, off = self._find(address, size)
        return memoryview(buf)[off : off + size].toreadonly()


@dataclass
class Region:
    memtype: MemType
    address: int
    size: int
    perms: Perm = Perm.R | Perm.W

    @property
    def end(self) -> int:
        return self.address + self.size

    @property
    def name(self) -> str:
        return self.memtype.kernel_name


@dataclass(frozen=True)
class Change:
    """Changed bytes of one section, as staged by a phase."""

    address: int
    data: bytes
    hints: set[str | None]  # write-method hints staged in it (None: plain stores)
    segments: Callable[[], list[tuple[int, int, str | None]]]  # (start, end, hint), relative to ``address``
    #: when set, ``hints`` holds the named hints only and this says (computed on demand, as it
    #: costs a pass over the section) whether bytes outside every hinted write changed too (None)
    plain: Callable[[], bool] | None = None

    def all_hints(self) -> set[str | None]:
        """The hints with None when plain stores changed bytes too."""
        if self.plain is not None and None not in self.hints and self.plain():
            return {*self.hints, None}
        return self.hints


@dataclass(frozen=True)
class WriteRecord:
    address: int
    size: int
    method: str
    region: str
    phase: str


#: Decides how a write reaches a region: returns a method name ("memcpy",
#: "text_poke", ...) or None when the write would fault.
WritePolicy = Callable[["ModuleImage", Region, int, int, "str | None"], "str | None"]


@dataclass
class ModuleImage:
    regions: list[Region]
    backend: MemoryBackend = field(default_factory=BytesBackend)
    state: ModuleState = ModuleState.UNFORMED
    log: list[WriteRecord] = field(default_factory=list)
    module: str = ""
    #: ``CONFIG_STRICT_MODULE_RWX``: without it ``module_enable_ro``/``_nx`` do
    #: nothing and every region stays writable (e.g. ppc64 before 5.14)
    strict_rwx: bool = True

    def __post_init__(self) -> None:
        self.regions.sort(key=lambda r: r.address)
        self._starts = [r.address for r in self.regions]
        for r in self.regions:
            self.backend.map(r.address, r.size)

    # ---------------------------------------------------------------- lookup
    def region_at(self, address: int, size: int = 1) -> Region:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            r = self.regions[i]
            if address + size <= r.end:
                return r
        raise MemoryAccessError(
            Diagnostic(
                f"write of {size} bytes at {address:#x} is outside the module image",
                module=self.module or None,
            )
        )

    def read(self, address: int, size: int) -> bytes:
        self.region_at(address, size)
        return self.backend.read(address, size)

    def view(self, address: int, size: int) -> memoryview | bytes:
        """The ``size`` bytes at ``address`` without a copy when the backend can give a view
        (``BytesBackend.view``: it sees later writes), else a copy (:meth:`read`)."""
        self.region_at(address, size)
        view = getattr(self.backend, "view", None)
        if view is None:
            return self.backend.read(address, size)
        out: memoryview = view(address, size)
        return out

    # ------------------------------------------------------------- protection
    def form(self) -> None:
        """``complete_formation``: rodata RO, data NX, text RO+X; state COMING.
        Without ``strict_rwx`` every region stays read-write-execute."""
        for r in self.regions:
            if not self.strict_rwx:
                r.perms = Perm.R | Perm.W | Perm.X
            elif r.memtype.is_text:
                r.perms = Perm.R | Perm.X
            elif r.memtype in (MemType.RODATA, MemType.INIT_RODATA):
                r.perms = Perm.R
            else:
                r.perms = Perm.R | Perm.W
        self.state = ModuleState.COMING

    def go_live(self) -> None:
        """After ``do_init_module``: ro_after_init RO, init memory freed, state LIVE."""
        for r in self.regions:
            if r.memtype == MemType.RO_AFTER_INIT and self.strict_rwx:
                r.perms = Perm.R
        self.regions = [r for r in self.regions if not r.memtype.is_init]
        self._starts = [r.address for r in self.regions]
        self.state = ModuleState.LIVE

    def commit(self, changes: Iterable[Change], policy: WritePolicy, phase: str) -> None:
        """Store every change, or nothing.

        The write method depends on the region, the module state and the hint,
        so ``policy`` is asked once per region and hint (with the first such
        write's address and size).  A change whose hints all get the same
        method is stored as one write; otherwise each run of one hint is
        stored with its own method.  Every write is checked before any byte
        is stored.
        """
        plan: list[tuple[int, bytes, str, Region]] = []
        problems: list[Diagnostic] = []
        decided: dict[tuple[int, str | None], str | None] = {}

        def method_for(region: Region, addr: int, size: int, hint: str | None) -> str | None:
            key = (region.address, hint)
            if key not in decided:
                decided[key] = policy(self, region, addr, size, hint)
            return decided[key]

        for ch in changes:
            try:
                region = self.region_at(ch.address, len(ch.data))
            except MemoryAccessError as exc:
                problems.extend(exc.diagnostics)
                continue
            methods = {h: method_for(region, ch.address, len(ch.data), h) for h in ch.hints or {None}}
            if ch.plain is not None and None not in methods:
                # whether plain stores are in the change matters only when they would get another method
                same = set(methods.values())
                if len(same) != 1 or method_for(region, ch.address, len(ch.data), None) not in same:
                    methods = {h: method_for(region, ch.address, len(ch.data), h) for h in ch.all_hints()}
            if len(set(methods.values())) == 1 and None not in methods.values():
                plan.append((ch.address, ch.data, next(iter(methods.values())), region))  # type: ignore[arg-type]
                continue
            for s, e, hint in ch.segments():
                method = method_for(region, ch.address + s, e - s, hint)
                if method is None:
                    problems.append(
                        Diagnostic(
                            f"write of {e - s} bytes at {ch.address + s:#x} in {region.name} ({region.perms}) would "
                            f"fault: the module is {self.state.name} and no memory-protection hook allows it",
                            module=self.module or None,
                        )
                    )
                    continue
                plan.append((ch.address + s, ch.data[s:e], method, region))
        if problems:
            raise MemoryAccessError(problems)
        for addr, data, method, region in plan:
            self.backend.write(addr, data)
            self.log.append(WriteRecord(addr, len(data), method, region.name, phase))

    def write_methods(self) -> Counter[str]:
        return Counter(rec.method for rec in self.log)


def default_policy(image: ModuleImage, region: Region, address: int, size: int, hint: str | None = None) -> str | None:
    """Plain stores while unformed or into writable memory; otherwise a fault."""
    if image.state == ModuleState.UNFORMED:
        return "memcpy"
    if region.perms & Perm.W:
        return "store"
    return None
