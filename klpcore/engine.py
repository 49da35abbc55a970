"""The relocation engine.

Writes are staged: every relocation of a phase (module load, patch enable, a
target module coming) is computed into copies of the affected sections, and
only when the whole phase succeeds are the changed bytes committed to the
module image.  Any error leaves the image exactly as it was.

The generic engine applies an architecture's type table to a whole section
with numpy: entries are grouped by type and each group is computed, checked
and encoded as arrays.  Types with a sequential ``handler`` run afterwards,
one entry at a time, in section order.  A section in which two relocations
write overlapping bytes is applied strictly in order, entry by entry, so the
result matches the kernel's sequential loop.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .arch import ArchSpec, Entry, RelocType, low_bits
from .elf import Section
from .errors import Diagnostic, RelocationError
from .kernel import KernelTarget
from .memory import Change, ModuleImage, WritePolicy

if TYPE_CHECKING:
    from .symbols import KernelSymbols

if TYPE_CHECKING:
    from .loader import LoadingModule

U64 = np.uint64
MAX_DIAGS_PER_KIND = 20


class RelocFailure(RelocationError):
    """Raised by handlers to refuse one relocation.

    The engine turns it into a diagnostic naming the relocation; it derives
    from :class:`~klpcore.errors.RelocationError` so that one raised outside a
    handler still cannot escape the :class:`~klpcore.errors.KlpError`
    hierarchy."""

    def __init__(self, message: str, kernel_message: str | None = None) -> None:
        super().__init__(Diagnostic(message, kernel_message=kernel_message))
        self.message = message
        self.kernel_message = kernel_message


class StagedMemory:
    """Copy-on-write buffers of the module's placed sections for one phase."""

    def __init__(self, image: ModuleImage, placed: list[tuple[int, str, int, int]]) -> None:
        self.image = image
        self._placed = sorted(placed, key=lambda p: p[2])  # (index, name, address, size)
        self._starts = [p[2] for p in self._placed]
        self._by_index = {p[0]: p for p in self._placed}
        self.buffers: dict[int, np.ndarray] = {}
        self._orig: dict[int, np.ndarray] = {}
        #: per section: (offset, end, hint) of writes staged with a method hint
        self.hints: dict[int, list[tuple[int, int, str]]] = {}
        #: per section: hinted writes staged as arrays (:meth:`hint_many`), each with the length
        #: of :attr:`hints` at that moment, so that the order of all hinted writes is kept
        self._hint_arrays: dict[int, list[tuple[int, np.ndarray, np.ndarray, str]]] = {}

    def buffer(self, index: int) -> np.ndarray:
        buf = self.buffers.get(index)
        if buf is None:
            placed = self._by_index.get(index)
            if placed is None:
                raise RelocFailure(f"section [{index}] has no bytes in module memory")
            _, _, addr, size = placed
            # the image's bytes, not a copy where the backend allows: the image changes only when the
            # phase commits, after every change has been computed from these
            orig = np.frombuffer(self.image.view(addr, size), dtype=np.uint8) if size else np.zeros(0, np.uint8)
            self._orig[index] = orig
            buf = self.buffers[index] = orig.copy()
        return buf

    def address_of(self, index: int) -> int:
        return self._by_index[index][2]

    def locate(self, address: int, size: int) -> tuple[int, int]:
        """(section index, offset) of ``size`` bytes at ``address``; they must
        lie inside one placed section."""
        i = bisect.bisect_right(self._starts, address) - 1
        while i >= 0:
            index, _name, start, ssize = self._placed[i]
            if address + size <= start + ssize:
                return index, address - start
            if start + ssize <= address:
                break
            i -= 1
        raise RelocFailure(f"access of {size} bytes at {address:#x} is outside every section of the module")

    def read(self, address: int, size: int) -> bytes:
        index, off = self.locate(address, size)
        return self.buffer(index)[off : off + size].tobytes()

    def write(self, address: int, data: bytes, hint: str | None = None) -> None:
        """Stage ``data`` at ``address``.  ``hint`` names the kernel primitive
        the kernel uses for this particular write (e.g. ``patch_instruction``);
        it reaches the ``klp_arch_write_method`` hook when committing."""
        index, off = self.locate(address, len(data))
        self.buffer(index)[off : off + len(data)] = np.frombuffer(data, dtype=np.uint8)
        if hint is not None:
            self.hints.setdefault(index, []).append((off, off + len(data), hint))

    def hint_many(self, index: int, starts: np.ndarray, width: int, hint: str) -> None:
        """Record ``width``-byte writes at section offsets ``starts`` as staged with ``hint``
        (what :meth:`write` records one at a time), as one array."""
        if not len(starts):
            return
        begin = np.asarray(starts, dtype=np.int64)
        self._hint_arrays.setdefault(index, []).append(
            (len(self.hints.get(index, ())), begin, begin + np.int64(width), hint)
        )

    def _hint_table(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Every hinted write of section ``index`` in staging order: starts, ends, hint ids
        (indexes into the returned names)."""
        singles = self.hints.get(index, [])
        names: list[str] = []
        ids: dict[str, int] = {}

        def hid(h: str) -> int:
            if h not in ids:
                ids[h] = len(names)
                names.append(h)
            return ids[h]

        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

        def add_singles(lo: int, hi: int) -> None:
            if hi > lo:
                part = singles[lo:hi]
                parts.append(
                    (
                        np.fromiter((r[0] for r in part), np.int64, hi - lo),
                        np.fromiter((r[1] for r in part), np.int64, hi - lo),
                        np.fromiter((hid(r[2]) for r in part), np.int32, hi - lo),
                    )
                )

        done = 0
        for pos, begin, end, hint in self._hint_arrays.get(index, []):
            add_singles(done, pos)
            done = max(done, pos)
            parts.append((begin, end, np.full(begin.size, hid(hint), dtype=np.int32)))
        add_singles(done, len(singles))
        if not parts:
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0, np.int32), names
        if len(parts) == 1:
            return (*parts[0], names)
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
            names,
        )

    def changes(self) -> Iterator[Change]:
        """One :class:`Change` per section: its first to last changed byte,
        the hints staged in it, and (lazily) the runs of each hint."""
        for index, buf in self.buffers.items():
            orig = self._orig[index]
            span = _changed_span(buf, orig)
            if span is None:
                continue
            s, e = span
            starts, ends, ids, names = self._hint_table(index)
            keep = (ends > s) & (starts < e)
            ranges = _Ranges(starts[keep], ends[keep], ids[keep], names)
            data = buf[s:e].tobytes()
            if not ranges.size:
                ends_mask = _span_mask(buf.size, s, e)
                yield Change(self.address_of(index) + s, data, {None}, _segmenter(buf, _Lazy.of(ends_mask), ranges, s))
                continue
            hints: set[str | None] = {names[int(h)] for h in unique_sorted(ranges.ids)}
            diff = _Lazy(_Diff(buf, orig))
            yield Change(
                self.address_of(index) + s, data, hints, _segmenter(buf, diff, ranges, s), plain=_Plain(ranges, diff)
            )


class _Diff:
    """``buf != orig``, when asked."""

    def __init__(self, buf: np.ndarray, orig: np.ndarray) -> None:
        self.buf, self.orig = buf, orig

    def __call__(self) -> np.ndarray:
        out: np.ndarray = self.buf != self.orig
        return out


class _Plain:
    """Did bytes outside every hinted write change?"""

    def __init__(self, ranges: _Ranges, changed: Callable[[], np.ndarray]) -> None:
        self.ranges, self.changed = ranges, changed

    def __call__(self) -> bool:
        return not _covers(self.ranges, self.changed())


class _Lazy:
    """A value computed on first use (the changed-byte mask of a section)."""

    def __init__(self, make: Callable[[], np.ndarray]) -> None:
        self._make: Callable[[], np.ndarray] | None = make
        self._value: np.ndarray | None = None

    @classmethod
    def of(cls, value: np.ndarray) -> _Lazy:
        made = cls(lambda: value)
        made()
        return made

    def __call__(self) -> np.ndarray:
        if self._value is None:
            assert self._make is not None
            self._value, self._make = self._make(), None
        return self._value


@dataclass
class _Ranges:
    """Hinted writes of one section, in staging order: [starts, ends) with a hint id each."""

    starts: np.ndarray
    ends: np.ndarray
    ids: np.ndarray
    names: list[str]

    @property
    def size(self) -> int:
        return int(self.starts.size)

    def mask(self, n: int) -> np.ndarray:
        """True at every byte of ``n`` that some hinted write covers."""
        depth = np.bincount(self.starts, minlength=n + 1)[: n + 1] - np.bincount(self.ends, minlength=n + 1)[: n + 1]
        return np.cumsum(depth[:n]) > 0

    def last_writer(self, n: int) -> np.ndarray:
        """Per byte of ``n``: 1 + the hint id of the last write covering it (later writes win, as in
        memory), 0 where none does."""
        lengths = self.ends - self.starts
        total = int(lengths.sum())
        out = np.zeros(n, dtype=np.int32)
        if not total:
            return out
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        pos = np.repeat(self.starts, lengths) + (np.arange(total, dtype=np.int64) - first)
        who = np.repeat(self.ids + 1, lengths)
        order = np.argsort(pos, kind="stable")
        pos = pos[order]
        last = np.ones(pos.size, dtype=bool)
        last[:-1] = pos[1:] != pos[:-1]
        out[pos[last]] = who[order][last]
        return out


def _changed_span(buf: np.ndarray, orig: np.ndarray) -> tuple[int, int] | None:
    """First and one past the last byte where ``buf`` differs from ``orig``,
    compared 8 bytes at a time (sections can be megabytes long)."""
    n = buf.size
    m = n - n % 8
    first = last = -1
    if m:
        words = np.flatnonzero(buf[:m].view(np.uint64) != orig[:m].view(np.uint64))
        if words.size:
            w0, w1 = int(words[0]) * 8, int(words[-1]) * 8
            first = w0 + int(np.flatnonzero(buf[w0 : w0 + 8] != orig[w0 : w0 + 8])[0])
            last = w1 + int(np.flatnonzero(buf[w1 : w1 + 8] != orig[w1 : w1 + 8])[-1])
    tail = np.flatnonzero(buf[m:] != orig[m:])
    if tail.size:
        first = first if first >= 0 else m + int(tail[0])
        last = m + int(tail[-1])
    return None if first < 0 else (first, last + 1)


def _span_mask(n: int, start: int, end: int) -> np.ndarray:
    """A mask True at the span's first and last byte only: enough where no
    write was hinted (only the span's ends matter, not which bytes inside it
    changed)."""
    mask = np.zeros(n, dtype=bool)
    mask[start] = mask[end - 1] = True
    return mask


def _covers(ranges: _Ranges, changed: np.ndarray) -> bool:
    """Is every changed byte inside a hinted range?"""
    return not bool(np.any(changed & ~ranges.mask(len(changed))))


def _segmenter(
    buf: np.ndarray, changed_mask: Callable[[], np.ndarray], ranges: _Ranges, start: int
) -> Callable[[], list[tuple[int, int, str | None]]]:
    def segments() -> list[tuple[int, int, str | None]]:
        """Runs (offsets relative to the change) of one hint each; plain runs
        never include hinted bytes, so a plain store cannot ride along a
        ``patch_instruction``.  Plain runs less than 8 bytes apart merge."""
        changed = changed_mask()
        if not ranges.size:
            return [(0, int(np.flatnonzero(changed)[-1]) + 1 - start, None)]
        names = ranges.names
        hid = ranges.last_writer(len(buf))
        hinted = hid > 0
        out: list[tuple[int, int, str | None]] = []
        q = np.flatnonzero(hinted & changed)
        if q.size:
            cuts = np.flatnonzero((np.diff(q) != 1) | (np.diff(hid[q]) != 0)) + 1
            for run in np.split(q, cuts):
                out.append((int(run[0]) - start, int(run[-1]) + 1 - start, names[int(hid[run[0]]) - 1]))
        p = np.flatnonzero(changed & ~hinted)
        if p.size:
            seen_hinted = np.concatenate(([0], np.cumsum(hinted)))
            between = seen_hinted[p[1:]] - seen_hinted[p[:-1] + 1]
            cuts = np.flatnonzero((np.diff(p) > 8) | (between > 0)) + 1
            for run in np.split(p, cuts):
                out.append((int(run[0]) - start, int(run[-1]) + 1 - start, None))
        return sorted(out)

    return segments


@dataclass
class ApplyContext:
    """State of one phase: what every section application sees."""

    module: LoadingModule
    arch: ArchSpec
    kernel: KernelTarget
    staged: StagedMemory
    symvals: np.ndarray  # uint64 value of every symtab entry for this phase
    state: dict[str, Any]  # arch per-module state (a private copy for this phase)
    phase: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: decides how a write reaches memory (the arch's memory-protection hook)
    write_policy: WritePolicy | None = None
    #: the kernel's symbols (for arch code that needs e.g. the kernel's TOC)
    kernel_symbols: KernelSymbols | None = None

    @property
    def image(self) -> ModuleImage:
        return self.staged.image

    @property
    def module_name(self) -> str:
        return self.module.name

    def read_uint(self, address: int, width: int, insn: bool = False) -> int:
        order = self.arch.insn_order if insn else self.module.elf.byteorder
        return int.from_bytes(self.staged.read(address, width), order)  # type: ignore[arg-type]

    def write_uint(self, address: int, width: int, value: int, insn: bool = False, hint: str | None = None) -> None:
        order = self.arch.insn_order if insn else self.module.elf.byteorder
        data = (value & ((1 << (8 * width)) - 1)).to_bytes(width, order)  # type: ignore[arg-type]
        self.staged.write(address, data, hint)

    def section_address(self, index: int) -> int | None:
        return self.module.layout.address_of(index)

    def function_at(self, address: int) -> tuple[int, int, str] | None:
        """``(start, size, name)`` of the module function containing
        ``address`` (the one starting last, as ``%pS`` picks), or ``None``.

        The sorted index of the module's placed ``STT_FUNC`` symbols is built
        once per layout, so describing many addresses (thousands of failing
        relocations) costs a binary search each, not a scan of the symtab."""
        mod = self.module
        index = _FUNCTION_INDEX.get(id(mod.layout))
        if index is None or index[0] is not mod.layout:
            index = (mod.layout, *_function_index(mod))
            _FUNCTION_INDEX.clear()
            _FUNCTION_INDEX[id(mod.layout)] = index
        _, starts, sizes, names, longest = index
        k = bisect.bisect_right(starts, address) - 1
        while k >= 0 and starts[k] + longest > address:
            if address < starts[k] + max(sizes[k], 1):
                return starts[k], sizes[k], names[k]
            k -= 1
        return None


#: id(layout) -> (layout, starts, sizes, names, longest): the last module's function index
_FUNCTION_INDEX: dict[int, tuple[Any, list[int], list[int], list[str], int]] = {}


def _function_index(mod: LoadingModule) -> tuple[list[int], list[int], list[str], int]:
    elf = mod.elf
    syms = elf.symbols
    shndx = syms["st_shndx"].astype(np.int64)
    funcs = np.flatnonzero(((syms["st_info"] & 0xF) == 2) & (shndx > 0) & (shndx < 0xFF00))  # STT_FUNC
    rows = []
    for i in funcs.tolist():
        base = mod.layout.address_of(int(shndx[i]))
        if base is None:
            continue
        start = base + int(syms["st_value"][i])
        rows.append((start, -i, int(syms["st_size"][i]), elf.symbol_names[i]))
    rows.sort()  # by address; at one address the first in the symtab is met first going backwards
    longest = max((max(r[2], 1) for r in rows), default=1)
    return [r[0] for r in rows], [r[2] for r in rows], [r[3] for r in rows], longest


@dataclass
class SectionContext(ApplyContext):
    """One relocation section being applied (or cleared)."""

    relsec: Section = field(default=None)  # type: ignore[assignment]
    target: Section = field(default=None)  # type: ignore[assignment]
    target_address: int = 0
    relas: np.ndarray = field(default=None)  # type: ignore[assignment,arg-type]
    objname: str | None = None  # klp object of a livepatch section
    #: while a type's compute/check/encode/split runs: the indices (into
    #: ``relas``) of the entries in the arrays it receives
    group: np.ndarray | None = None

    def group_symbols(self) -> np.ndarray:
        """Symbol indexes of the entries of the current group."""
        assert self.group is not None
        return (self.relas["r_info"][self.group] >> U64(32)).astype(np.int64)

    @classmethod
    def for_section(
        cls, ctx: ApplyContext, relsec: Section, relas: np.ndarray, objname: str | None = None
    ) -> SectionContext:
        target = ctx.module.sections[relsec.info]
        addr = ctx.module.layout.address_of(target.index)
        if addr is None:  # percpu or otherwise separately placed
            addr = ctx.module.extra_addresses.get(target.index, 0)
        return cls(
            module=ctx.module,
            arch=ctx.arch,
            kernel=ctx.kernel,
            staged=ctx.staged,
            symvals=ctx.symvals,
            state=ctx.state,
            phase=ctx.phase,
            diagnostics=ctx.diagnostics,
            counts=ctx.counts,
            write_policy=ctx.write_policy,
            kernel_symbols=ctx.kernel_symbols,
            relsec=relsec,
            target=target,
            target_address=addr,
            relas=relas,
            objname=objname,
        )

    # ------------------------------------------------------------ reporting
    def diag(
        self,
        message: str,
        index: int | None,
        rtype: int | None = None,
        sym: int | None = None,
        kernel_message: str | None = None,
        severity: str = "error",
        **extra: Any,
    ) -> Diagnostic:
        d = Diagnostic(
            message,
            severity=severity,
            module=self.module.name,
            section=self.relsec.name,
            index=index,
            rtype=self.arch.type_name(rtype) if rtype is not None else None,
            symbol=self._symbol_label(sym, index) if sym is not None else None,
            kernel_message=kernel_message,
            extra=extra,
        )
        self.diagnostics.append(d)
        return d

    def _symbol_label(self, sym: int, index: int | None) -> str:
        """The symbol's name; for a section symbol the section and the addend
        as readelf shows them (``.rodata.str1.1 + 0``)."""
        label = self.module.elf.symbol_label(sym)
        if label == self.module.elf.symbol_names[sym] or self.relas is None or index is None:
            return label
        if not 0 <= index < len(self.relas):
            return label
        addend = int(self.relas["r_addend"][index])
        return f"{label} {'-' if addend < 0 else '+'} {abs(addend):x}"

    def entry(self, i: int) -> Entry:
        r = self.relas[i]
        info = int(r["r_info"])
        sym = info >> 32
        syms = self.module.elf.symbols
        return Entry(
            index=i,
            offset=int(r["r_offset"]),
            type=info & 0xFFFFFFFF,
            sym=sym,
            addend=int(r["r_addend"]),
            S=int(self.symvals[sym]),
            P=(self.target_address + int(r["r_offset"])) & 0xFFFFFFFFFFFFFFFF,
            symbol_name=self.module.elf.symbol_names[sym],
            st_shndx=int(syms["st_shndx"][sym]),
            st_other=int(syms["st_other"][sym]),
        )

    def fmt(self, template: str | None, rt: RelocType | None, value: int, index: int, **kw: Any) -> str | None:
        if template is None:
            return None
        e = self.entry(index)
        return template.format(
            module=self.module.name,
            number=rt.number if rt else e.type,
            name=rt.name if rt else "",
            value=value & 0xFFFFFFFFFFFFFFFF,
            svalue=value if value < (1 << 63) else value - (1 << 64),
            loc=e.P,
            symbol=e.symbol_name,
            sec=self.relsec.index if self.relsec is not None else 0,
            idx=index,
            **kw,
        )


# ---------------------------------------------------------------------------
# Array helpers
# ---------------------------------------------------------------------------
def _shifts(width: int, order: str) -> np.ndarray:
    s = np.arange(width, dtype=np.uint64) * U64(8)
    return s if order == "little" else s[::-1].copy()


_FIELD = {1: "u1", 2: "u2", 4: "u4", 8: "u8"}


def _field_dtype(width: int, order: str) -> np.dtype[Any] | None:
    code = _FIELD.get(width)
    return np.dtype(("<" if order == "little" else ">") + code) if code else None


def _fields(buf: np.ndarray, offsets: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A (len(buf) - width + 1, width) view of ``buf`` whose row ``i`` is the ``width`` bytes at ``i``
    (writable: rows share bytes), and ``offsets`` as row numbers, each checked to be a whole field
    inside ``buf``."""
    rows = offsets.astype(np.intp)
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) > buf.size - width):
        raise IndexError(f"a {width}-byte field at offset {int(rows.max()):#x} is outside {buf.size} bytes")
    window = np.lib.stride_tricks.as_strided(buf, shape=(max(buf.size - width + 1, 0), width), strides=(1, 1))
    return window, rows


def gather(buf: np.ndarray, offsets: np.ndarray, width: int, order: str) -> np.ndarray:
    """Read ``width``-byte unsigned fields at ``offsets`` of ``buf``."""
    window, rows = _fields(buf, offsets, width)
    dt = _field_dtype(width, order)
    if dt is not None:
        return window[rows].view(dt).reshape(-1).astype(np.uint64)
    b = window[rows].astype(np.uint64)
    return (b << _shifts(width, order)).sum(axis=1, dtype=np.uint64)


def scatter(buf: np.ndarray, offsets: np.ndarray, width: int, order: str, values: np.ndarray) -> None:
    """Write ``width``-byte fields at ``offsets`` of ``buf`` (in order: a later field wins where two overlap)."""
    window, rows = _fields(buf, offsets, width)
    dt = _field_dtype(width, order)
    if dt is not None:
        window[rows] = values.astype(dt).view(np.uint8).reshape(-1, width)
        return
    window[rows] = ((values[:, None] >> _shifts(width, order)) & U64(0xFF)).astype(np.uint8)


# ---------------------------------------------------------------------------
# The generic engine
# ---------------------------------------------------------------------------
def _limited(ctx: SectionContext, idx: np.ndarray, kind: str, make: Any) -> None:
    """Report entries ``idx`` with ``make(i)``, at most MAX_DIAGS_PER_KIND, then a summary."""
    for i in idx[:MAX_DIAGS_PER_KIND].tolist():
        make(int(i))
    if idx.size > MAX_DIAGS_PER_KIND:
        first = int(idx[MAX_DIAGS_PER_KIND])
        ctx.diag(
            f"... and {idx.size - MAX_DIAGS_PER_KIND} more entries with the same problem ({kind}), "
            f"the first of them relocation #{first} at offset {int(ctx.relas['r_offset'][first]):#x}",
            None,
        )


def apply_section(ctx: SectionContext) -> None:
    """Apply ``ctx.relas`` to ``ctx.target`` with the arch's type table."""
    rel = ctx.relas
    n = len(rel)
    if n == 0:
        return
    arch = ctx.arch
    types = (rel["r_info"] & U64(0xFFFFFFFF)).astype(np.int64)
    syms = (rel["r_info"] >> U64(32)).astype(np.int64)
    offs = rel["r_offset"].astype(np.uint64)
    A = rel["r_addend"].astype(np.int64)
    S = ctx.symvals[syms]
    P = U64(ctx.target_address) + offs
    buf = ctx.staged.buffer(ctx.target.index) if ctx.target_address and ctx.target.size else None

    uniq = _distinct(types)
    known = [t for t in uniq if t in arch.types]
    for t in uniq:
        if t in arch.types:
            continue
        bad = np.flatnonzero(types == t)
        first = int(bad[0])
        ctx.diag(
            f"unsupported relocation type {t} ({arch.type_name(t)}) in {bad.size} "
            f"entr{'y' if bad.size == 1 else 'ies'}",
            first,
            rtype=t,
            sym=int(syms[first]),
            kernel_message=arch.unknown_type_error.format(module=ctx.module.name, number=t),
            count=int(bad.size),
        )

    widths = _per_type(types, {t: arch.types[t].width for t in known}, np.uint64)
    out = (offs + widths > U64(ctx.target.size)) | (offs + widths < offs)
    if out.any():
        bad = np.flatnonzero(out)
        _limited(
            ctx,
            bad,
            "write outside the section",
            lambda i: ctx.diag(
                f"writes {int(widths[i])} bytes at offset {int(offs[i]):#x}, outside {ctx.target.name} "
                f"(size {ctx.target.size:#x})",
                i,
                rtype=int(types[i]),
                sym=int(syms[i]),
            ),
        )
        return
    if buf is None and any(arch.types[t].width or arch.types[t].handler for t in known):
        ctx.diag(f"target section {ctx.target.name} is not placed in module memory", None)
        return

    if not _plain_stores_allowed(ctx, types, syms, known):
        return

    handled = {t: True for t in known if arch.types[t].handler is not None}
    active = widths > 0
    if handled:
        active |= _per_type(types, handled, np.bool_)
    if _overlaps(offs[active], np.maximum(widths[active], U64(1))):
        assert buf is not None
        _apply_sequential(ctx, types, buf)
        return

    sequential: list[np.ndarray] = []
    for t in known:
        rt = arch.types[t]
        idx = np.flatnonzero(types == t)
        if rt.handler is not None:
            if rt.split is None:
                sequential.append(idx)
                continue
            ctx.group = idx
            needs = np.asarray(rt.split(ctx), dtype=bool)
            sequential.append(idx[needs])
            idx = idx[~needs]
        if rt.width == 0 or not idx.size:
            continue
        _apply_group(ctx, rt, idx, S[idx], A[idx], P[idx], offs[idx], buf)  # type: ignore[arg-type]
    ctx.group = None
    if sequential:
        order = np.sort(np.concatenate(sequential))
        for t in known:  # batch handlers: all their entries at once, in section order
            rt = arch.types[t]
            if rt.batch is not None:
                mine = order[types[order] == t]
                if mine.size:
                    rt.batch(ctx, mine)
                    ctx.counts[rt.name] += int(mine.size)
        batched = {t: True for t in known if arch.types[t].batch is not None}
        if batched:
            order = order[~_per_type(types[order], batched, np.bool_)]
        for i in order.tolist():
            _run_handler(ctx, i)
    ctx.counts["applied"] += int(n)


def unique_sorted(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for a 1-D array (sorted distinct values) without what numpy 2's
    ``np.unique`` imports for it on first use (``numpy.ma``, tens of milliseconds a process)."""
    flat = np.sort(np.asarray(values).reshape(-1))
    if flat.size < 2:
        return flat
    keep = np.empty(flat.size, dtype=bool)
    keep[0] = True
    np.not_equal(flat[1:], flat[:-1], out=keep[1:])
    out: np.ndarray = flat[keep]
    return out


def _distinct(types: np.ndarray) -> list[int]:
    """The distinct values of ``types``, ascending (``np.unique``, without a sort
    when the type numbers are small, as they are)."""
    if types.size and int(types.min()) >= 0 and int(types.max()) < 4096:
        return [int(t) for t in np.flatnonzero(np.bincount(types))]
    return [int(t) for t in unique_sorted(types)]


def _per_type(types: np.ndarray, values: dict[int, Any], dtype: Any) -> np.ndarray:
    """``values[type]`` for every entry (0/False for types not in ``values``)."""
    if values and types.size and int(types.min()) >= 0 and int(types.max()) < 4096:
        lut = np.zeros(int(types.max()) + 1, dtype=dtype)
        for t, v in values.items():
            if t < lut.size:
                lut[t] = v
        out: np.ndarray = lut[types]
        return out
    out = np.zeros(types.size, dtype=dtype)
    for t, v in values.items():
        out[types == t] = v
    return out


def _plain_stores_allowed(ctx: SectionContext, types: np.ndarray, syms: np.ndarray, known: list[int]) -> bool:
    """Late phases: may plain stores (the array-shaped types) reach the target?

    Each refused relocation is reported with its context, as the fault the
    kernel would take on it."""
    from .constants import ModuleState

    if ctx.write_policy is None or ctx.image.state == ModuleState.UNFORMED:
        return True
    plain = [
        t
        for t in known
        if ctx.arch.types[t].handler is None and ctx.arch.types[t].width and ctx.arch.types[t].write_hint is None
    ]
    if not plain:
        return True
    try:
        region = ctx.image.region_at(ctx.target_address, max(ctx.target.size, 1))
    except Exception:
        return True  # reported when committing
    if ctx.write_policy(ctx.image, region, ctx.target_address, ctx.target.size, None) is not None:
        return True
    bad = np.flatnonzero(np.isin(types, plain))
    _limited(
        ctx,
        bad,
        "write to read-only memory",
        lambda i: ctx.diag(
            f"late write into {region.name} ({region.perms}) while the module is {ctx.image.state.name}: "
            "the kernel writes this type with a plain store, which faults on read-only memory",
            i,
            rtype=int(types[i]),
            sym=int(syms[i]),
            kernel_message="Unable to handle kernel write to read-only memory",
        ),
    )
    return False


def _overlaps(offs: np.ndarray, widths: np.ndarray) -> bool:
    if offs.size < 2:
        return False
    if bool(np.all(offs[1:] >= offs[:-1])):  # already in offset order (compilers emit it so): no sort
        return bool(np.any(offs[1:] < offs[:-1] + widths[:-1]))
    order = np.argsort(offs, kind="stable")
    o = offs[order]
    w = widths[order]
    return bool(np.any(o[1:] < o[:-1] + w[:-1]))


def _apply_group(
    ctx: SectionContext,
    rt: RelocType,
    idx: np.ndarray,
    S: np.ndarray,
    A: np.ndarray,
    P: np.ndarray,
    offs: np.ndarray,
    buf: np.ndarray,
) -> bool:
    """Compute, check and write one type's entries; False if any was refused."""
    order = ctx.arch.insn_order if rt.insn else ctx.module.elf.byteorder
    assert rt.compute is not None, f"{rt.name} has neither compute nor handler"
    ctx.group = idx
    values = rt.compute(S, A, P, ctx)
    ok = True
    if rt.check is not None:
        bad = np.flatnonzero(rt.check(values, ctx))
        if bad.size:
            ok = False
            _limited(
                ctx,
                idx[bad],
                rt.name + " range",
                lambda i: ctx.diag(
                    _format_error(rt.error, int(values[np.searchsorted(idx, i)])),
                    i,
                    rtype=rt.number,
                    sym=int(ctx.relas["r_info"][i] >> U64(32)),
                    kernel_message=ctx.fmt(rt.kernel_error, rt, int(values[np.searchsorted(idx, i)]), i),
                    value=hex(int(values[np.searchsorted(idx, i)])),
                ),
            )
    old = gather(buf, offs, rt.width, order)
    if rt.require_zero:
        nz = np.flatnonzero(old != 0)
        if nz.size:
            ok = False
            _limited(
                ctx,
                idx[nz],
                rt.name + " nonzero target",
                lambda i: ctx.diag(
                    f"target already written: existing value {int(old[np.searchsorted(idx, i)]):#x} is nonzero",
                    i,
                    rtype=rt.number,
                    sym=int(ctx.relas["r_info"][i] >> U64(32)),
                    kernel_message=ctx.fmt(rt.zero_error, rt, int(values[np.searchsorted(idx, i)]), i),
                ),
            )
    if rt.truncates is not None:
        tr = np.flatnonzero(rt.truncates(values, ctx))
        if tr.size:
            _limited(
                ctx,
                idx[tr],
                rt.name + " truncation",
                lambda i: ctx.diag(
                    f"value {int(values[np.searchsorted(idx, i)]):#x} does not fit the {8 * rt.width}-bit field; "
                    "the kernel writes the truncated low bits without an error",
                    i,
                    rtype=rt.number,
                    sym=int(ctx.relas["r_info"][i] >> U64(32)),
                    severity="warning",
                ),
            )
    if not ok:
        return False
    new = _encode(rt, values, old, ctx)
    scatter(buf, offs, rt.width, order, new)
    if rt.write_hint is not None:
        ctx.staged.hint_many(ctx.target.index, offs, rt.width, rt.write_hint)
    ctx.counts[rt.name] += int(idx.size)
    return True


def _encode(rt: RelocType, values: np.ndarray, old: np.ndarray, ctx: SectionContext) -> np.ndarray:
    """The new field contents: the type's encoder, or the value's low bits."""
    return (rt.encode or low_bits(rt.width))(values, old, ctx)


def _format_error(template: str, value: int) -> str:
    value &= 0xFFFFFFFFFFFFFFFF
    return template.format(value=value, svalue=value - (1 << 64) if value >> 63 else value)


def _run_handler(ctx: SectionContext, i: int) -> None:
    e = ctx.entry(i)
    rt = ctx.arch.types[e.type]
    try:
        assert rt.handler is not None
        rt.handler(ctx, e)
    except RelocFailure as f:
        ctx.diag(f.message, i, rtype=e.type, sym=e.sym, kernel_message=f.kernel_message)
    else:
        ctx.counts[rt.name] += 1


def _apply_sequential(ctx: SectionContext, types: np.ndarray, buf: np.ndarray) -> None:
    """Entry-by-entry application, for sections whose writes overlap."""
    rel = ctx.relas
    syms = (rel["r_info"] >> U64(32)).astype(np.int64)
    for i in range(len(rel)):
        t = int(types[i])
        rt = ctx.arch.types.get(t)
        if rt is None:
            continue
        one = np.array([i])
        if rt.handler is not None:
            ctx.group = one
            if rt.split is None or bool(np.asarray(rt.split(ctx))[0]):
                ctx.group = None
                if rt.batch is not None:
                    rt.batch(ctx, one)
                else:
                    _run_handler(ctx, i)
                continue
        if rt.width == 0:
            continue
        S = ctx.symvals[syms[one]]
        A = rel["r_addend"][one].astype(np.int64)
        off = rel["r_offset"][one].astype(np.uint64)
        if not _apply_group(ctx, rt, one, S, A, U64(ctx.target_address) + off, off, buf):
            return  # the kernel stops at the first refused entry
    ctx.counts["applied"] += len(rel)


def clear_section(ctx: SectionContext) -> None:
    """Clear the places of ``ctx.relas`` as x86's ``clear_relocate_add`` does:
    each field must still hold the value applying would write (else a
    warning, and clearing stops there, as in the kernel); it becomes zero."""
    rel = ctx.relas
    buf = ctx.staged.buffer(ctx.target.index)
    for i in range(len(rel)):
        e = ctx.entry(i)
        rt = ctx.arch.types.get(e.type)
        if rt is None or rt.width == 0 or rt.compute is None:
            continue
        order = ctx.arch.insn_order if rt.insn else ctx.module.elf.byteorder
        value = rt.compute(
            np.array([e.S], dtype=np.uint64),
            np.array([e.addend], dtype=np.int64),
            np.array([e.P], dtype=np.uint64),
            ctx,
        )
        off = np.array([e.offset], dtype=np.uint64)
        old = gather(buf, off, rt.width, order)
        expect = _encode(rt, value, old, ctx)
        if int(old[0]) != int(expect[0]):
            ctx.diag(
                f"existing value {int(old[0]):#x} does not match the expected {int(expect[0]):#x}; clearing stops here",
                i,
                rtype=e.type,
                sym=e.sym,
                severity="warning",
                kernel_message=ctx.fmt(ctx.state.get("clear_mismatch_message"), rt, int(value[0]), i),
            )
            return
        scatter(buf, off, rt.width, order, np.zeros(1, dtype=np.uint64))
        ctx.counts["cleared"] += 1
