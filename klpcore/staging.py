"""Staged writes: copy-on-write buffers of a module's placed sections for one phase.

The relocation engine computes every write of a phase (module load, patch
enable, a target module coming) into these buffers; only when the whole phase
succeeds are the changed bytes committed to the module image, so any error
leaves the image exactly as it was.  Split out of :mod:`klpcore.engine`, which
re-exports :class:`StagedMemory`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .errors import Diagnostic, RelocationError
from .memory import Change, ModuleImage


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
