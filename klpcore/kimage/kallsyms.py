"""Find and decode the kernel's own symbol table (kallsyms) in an image, with no symbols to go by.

What ``scripts/kallsyms`` emits (every release keeps these; their order moved):

* ``kallsyms_num_syms`` (u32), immediately followed by ``kallsyms_names``
  (aligned to 4 or 8 bytes, or not at all): per symbol a length (one byte;
  since 6.1 two bytes, ULEB128, when the length exceeds 127) then that many
  token codes; the first expanded character is the symbol's type letter;
* ``kallsyms_markers``: the offset in ``kallsyms_names`` of every 256th
  symbol (u32; ``unsigned long`` in old kernels);
* ``kallsyms_token_table``: 256 NUL-terminated strings, one per code (a code
  that appears literally in the names stands for itself);
* ``kallsyms_token_index``: 256 u16 offsets into the token table;
* the addresses, one of:
  - ``kallsyms_addresses``: absolute ``unsigned long`` per symbol;
  - ``kallsyms_offsets`` (u32) + ``kallsyms_relative_base`` (``unsigned long``):
    address = base + offset;
  - the same with ``CONFIG_KALLSYMS_ABSOLUTE_PERCPU`` (x86_64 SMP until the
    per-CPU rework): an offset >= 0 is the address itself, a negative one means
    base - 1 - offset;
  - place-relative ``kallsyms_offsets`` (s32; no relative base): address =
    the entry's own address + offset;
* ``kallsyms_seqs_of_names`` (6.2+, in 6.1 stable too): the name-sorted order
  (u32, later 3 bytes big-endian per symbol) — not needed here.

Layouts seen: offsets, base, num_syms, names, markers, token table, index (4.x
to 6.1 mainline); the same with seqs between markers and the token table
(6.1.176, 6.2-6.3); num_syms, names, markers, token table, index, offsets,
base, seqs (6.4+); the same without base, offsets place-relative (7.x).
The locator does not rely on one order: it finds the token table by the
digits' entries, the markers as an increasing u32 run starting at 0, the count
just before the names, and the addresses either before the count or after the
token index — whichever reading gives an address-sorted table.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import SymbolFileError
from .container import KernelImage
from .rules import image_rules

_DIGITS = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00"
#: how far before the token table the markers are looked for (seqs of 400k symbols fit)
_MARKER_WINDOW = 8 << 20
#: a raw image's link address is at least this aligned (2 MiB + a 0x80000 text offset, or 1 MiB, on the
#: architectures that ship raw images)
_BASE_ALIGN = 1 << 16


@dataclass
class KallsymsTables:
    """Where each table is (file offsets in the kernel proper) and how addresses are stored."""

    num_syms: int
    num_syms_off: int
    names_off: int
    names_end: int
    markers_off: int
    marker_size: int
    token_table_off: int
    token_index_off: int
    addresses_off: int
    address_mode: str  # "absolute", "relative", "absolute-percpu", "place-relative"
    relative_base: int | None


@dataclass
class Kallsyms:
    names: list[str]
    types: list[str]
    addresses: np.ndarray  # uint64, link-time
    tables: KallsymsTables


def _token_table(data: bytes, e: str) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(token table offset, token index offset, index values, token lengths)."""
    for m in re.finditer(re.escape(_DIGITS), data):
        p = m.start()
        s = p
        for _ in range(0x30):
            if s <= 1:
                break
            s = data.rfind(b"\0", 0, s - 1) + 1
        offs = []
        q = s
        for _ in range(256):
            z = data.find(b"\0", q)
            if z < 0 or z - q > 512:
                break
            offs.append(q - s)
            q = z + 1
        if len(offs) != 256 or offs[0x30] != p - s or offs[-1] > 0xFFFF:
            continue
        # the walk back cannot tell where the first token starts (the bytes before
        # it need not end in NUL): each start within it is tried against the index
        for j in range(min(offs[1], 64)):
            shifted = [0] + [o - j for o in offs[1:]]
            packed = struct.pack(e + "256H", *shifted)
            k = data.find(packed, q, q + 16 + 512)
            if k < 0:
                continue
            idx = np.array(shifted, dtype=np.int64)
            lens = np.diff(np.append(idx, q - s - j)) - 1
            return s + j, k, idx, lens
    raise SymbolFileError("no kallsyms token table (a kernel built without CONFIG_KALLSYMS?)")


def _marker_runs(data: bytes, tt: int, e: str, width: int) -> list[tuple[int, int]]:
    """(offset, count) of increasing runs starting at 0 before ``tt``, longest first."""
    end = tt - tt % width
    lo = max(0, end - _MARKER_WINDOW)
    lo += (end - lo) % width
    v = np.frombuffer(data, dtype=f"{e}u{width}", count=(end - lo) // width, offset=lo).astype(np.int64)
    if len(v) < 3:
        return []
    d = np.diff(v)
    good = (d >= 512) & (d <= 1 << 18)
    bad = np.flatnonzero(~good)
    zeros = np.flatnonzero((v[:-1] == 0) & good)
    if not len(zeros):
        return []
    nxt = np.searchsorted(bad, zeros)
    stop = np.where(nxt < len(bad), bad[np.minimum(nxt, len(bad) - 1)], len(good))
    runs = sorted(zip((stop - zeros + 1).tolist(), zeros.tolist(), strict=True), key=lambda r: (-r[0], -r[1]))
    return [(lo + k * width, n) for n, k in runs[:8] if n >= 2]


def _walk(names: np.ndarray, starts: np.ndarray, counts: np.ndarray, uleb: bool) -> tuple[np.ndarray, ...] | None:
    """Per-symbol (start, header size, length) walking every 256-symbol group at once; None if out of bounds."""
    m = len(starts)
    pos = starts.astype(np.int64).copy()
    out_pos = np.zeros((256, m), dtype=np.int64)
    out_hdr = np.zeros((256, m), dtype=np.int64)
    out_len = np.zeros((256, m), dtype=np.int64)
    n = len(names)
    for step in range(256):
        active = step < counts
        if not active.any():
            break
        p = np.where(active, pos, 0)
        if (p + 1 >= n).any():
            return None
        b0 = names[p].astype(np.int64)
        if uleb:
            big = b0 >= 0x80
            ln = np.where(big, (b0 & 0x7F) | (names[p + 1].astype(np.int64) << 7), b0)
            hdr = np.where(big, 2, 1)
        else:
            ln, hdr = b0, np.ones_like(b0)
        out_pos[step], out_hdr[step], out_len[step] = p, hdr, ln
        pos = np.where(active, pos + hdr + ln, pos)
    sel = np.arange(256)[:, None] < counts[None, :]
    # symbol order: group 0's 256, group 1's 256, ...
    return out_pos.T[sel.T], out_hdr.T[sel.T], out_len.T[sel.T], pos


def _locate_names(
    data: bytes, e: str, markers_off: int, markers: np.ndarray
) -> tuple[int, int, int, tuple[np.ndarray, ...]] | None:
    """(num_syms offset, names offset, count, walk) for markers at ``markers_off``."""
    m = len(markers)
    last = int(markers[-1])
    hi = markers_off - last
    lo = max(0, hi - (1 << 21))
    lo -= lo % 4
    names_all = np.frombuffer(data, dtype=np.uint8)
    cnt = (hi - lo) // 4  # the count is a 4-aligned u32
    if cnt <= 0:
        return None
    v = np.frombuffer(data, dtype=f"{e}u4", count=cnt, offset=lo).astype(np.int64)
    cands = np.flatnonzero((v > (m - 1) * 256) & (v <= m * 256))
    for k in cands[::-1].tolist():  # nearest the names first
        p = lo + 4 * k
        n = int(v[k])
        for names_off in (p + 4, p + 8):  # the names follow it, aligned to 4 or 8
            if names_off + last >= markers_off:
                continue
            starts = names_off + markers
            counts = np.full(m, 256, dtype=np.int64)
            counts[-1] = n - 256 * (m - 1)
            for uleb in (True, False):  # two-byte lengths since 6.1; one byte before
                w = _walk(names_all, starts, counts, uleb)
                if w is None:
                    continue
                ends = w[3]
                if (ends[:-1] == starts[1:]).all() and 0 <= markers_off - ends[-1] < 8:
                    return p, names_off, n, w
    return None


def _expand(
    data: bytes, tt: int, idx: np.ndarray, lens: np.ndarray, walk: tuple[np.ndarray, ...]
) -> tuple[list[str], list[str]]:
    pos, hdr, ln = walk[0], walk[1], walk[2]
    start, end = int(pos[0]), int(walk[3][-1])
    # the names are length headers and codes, back to back: drop the headers
    keep = np.ones(end - start, dtype=bool)
    keep[pos - start] = False
    keep[(pos - start)[hdr == 2] + 1] = False
    codes = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)[keep]
    del keep
    cum = np.cumsum(ln) - ln
    tok_len = lens.astype(np.int32)[codes]
    out_total = int(tok_len.sum())
    out_cum = np.cumsum(tok_len, dtype=np.int64) - tok_len
    table = np.frombuffer(data, dtype=np.uint8, count=int(idx[-1] + lens[-1] + 1), offset=tt)
    step = np.repeat((idx[codes] - out_cum).astype(np.int32), tok_len)
    step += np.arange(out_total, dtype=np.int32)
    chars = table[step]
    del step
    # where each symbol's expansion starts
    sym_out = out_cum[cum]
    types = chars[sym_out].tobytes().decode("latin-1")
    chars[sym_out] = 0x0A
    text = chars.tobytes()[1:].decode("utf-8", "surrogateescape")
    return text.split("\n"), list(types)


def _monotonic(a: np.ndarray) -> bool:
    return bool(len(a)) and bool((a[1:] >= a[:-1]).all())


def _addresses(img: KernelImage, num_syms_off: int, ti_end: int, n: int) -> tuple[np.ndarray, int, str, int | None]:
    data, e = img.data, img.endian
    tries: list[tuple[int, str]] = []
    # after the token index (6.4+), aligned to 4 or 8
    for off in sorted({ti_end + (-ti_end) % 4, ti_end + (-ti_end) % 8}):
        tries.append((off, "after"))
    # before the count (up to 6.3): [offsets][pad][relative_base] num_syms, or [addresses] num_syms
    tries.append((num_syms_off, "before"))
    for off, where in tries:
        if where == "after":
            if off + 4 * n > len(data):
                continue
            raw = np.frombuffer(data, dtype=f"{e}i4", count=n, offset=off).astype(np.int64)
            rel = raw & 0xFFFFFFFF
            # place-relative (7.x): needs the table's own link address
            va = img.off_to_va(off)
            if va is not None:
                a = (va + 4 * np.arange(n, dtype=np.int64) + raw).astype(np.uint64) if va < 1 << 63 else None
                if a is None:
                    a = np.uint64(va) + (4 * np.arange(n, dtype=np.int64) + raw).astype(np.uint64)
                if _monotonic(a) and not _monotonic(rel):
                    return a, off, "place-relative", None
            # u32 offsets followed by the relative base
            bo = off + 4 * n
            for b in (bo + (-bo) % 8, bo + (-bo) % 4):
                if b + 8 <= len(data):
                    base = struct.unpack_from(e + "Q", data, b)[0]
                    got = _from_base(raw, base, img)
                    if got is not None:
                        return got[0], off, got[1], int(got[0][0]) if base < 1 << 12 else base
            if va is None and not _monotonic(rel):
                pr = off + 4 * np.arange(n, dtype=np.int64) + raw  # address - (address of byte 0)
                if _monotonic(pr):
                    b0 = _raw_base(img, pr)
                    if b0 is None:
                        raise SymbolFileError(
                            "kallsyms addresses are place-relative and the image does not say where it is "
                            "linked (no pointer in it names a symbol)"
                        )
                    img.segments = [(b0, 0, len(data))]
                    return (
                        pr.astype(np.uint64) + np.uint64(b0),
                        off,
                        "place-relative",
                        None,
                    )
        else:
            b = off - 8
            if b < 0:
                continue
            base = struct.unpack_from(e + "Q", data, b)[0]
            for o in (b - 4 * n, b - 4 * n - 4):
                if o < 0:
                    continue
                raw = np.frombuffer(data, dtype=f"{e}i4", count=n, offset=o).astype(np.int64)
                got = _from_base(raw, base, img)
                if got is not None:
                    return got[0], o, got[1], int(got[0][0]) if base < 1 << 12 else base
            for o in (off - 8 * n, off - 8 * n - 4):
                if o < 0:
                    continue
                a = np.frombuffer(data, dtype=f"{e}u8", count=n, offset=o)
                if _monotonic(a) and a[-1] > 0:
                    return a.astype(np.uint64), o, "absolute", None
    raise SymbolFileError("kallsyms addresses not found next to the symbol names (an unknown table layout)")


def _raw_base(img: KernelImage, rel: np.ndarray) -> int | None:
    """The link address of byte 0 of a raw image, from the pointers it holds.

    ``rel`` are the symbols' addresses less that base.  The most frequent
    pointer-sized values of the image are mostly pointers to symbols: each
    votes for every page-aligned base that makes it one; the base with most
    votes wins, if enough values agree."""
    data = img.data
    v = np.frombuffer(data, dtype=f"{img.endian}u8", count=len(data) // 8)
    rules = next((r for r in image_rules() if r.arch == img.arch), None) if img.arch else None
    v = rules.pointer_mask(v) if rules is not None and rules.pointer_mask is not None else v[v > len(data)]
    if not len(v):
        return None
    vals, counts = np.unique(v, return_counts=True)
    top = vals[np.argsort(counts)[::-1][:256]].astype(np.uint64)
    syms = np.unique(rel[rel >= 0]).astype(np.uint64)
    votes: dict[int, int] = {}
    # a symbol t makes p a pointer for an aligned base only when t = p modulo the alignment
    rem = syms & np.uint64(_BASE_ALIGN - 1)
    order = np.argsort(rem, kind="stable")
    rem_sorted, syms_by_rem = rem[order], syms[order]
    for p in top.tolist():
        r = np.uint64(p & (_BASE_ALIGN - 1))
        lo, hi = np.searchsorted(rem_sorted, r), np.searchsorted(rem_sorted, r, side="right")
        t = syms_by_rem[lo:hi]
        cands = np.uint64(p) - t[t <= np.uint64(p)]
        for b in cands.tolist():  # distinct: the symbols are
            votes[b] = votes.get(b, 0) + 1
    if not votes:
        return None
    # the finalists are scored on every distinct value: how many name a symbol exactly
    finalists = sorted(votes, key=lambda b: votes[b], reverse=True)[:16]
    sample = vals[:: max(1, len(vals) // 65536)]

    def hits(b: int) -> int:
        x = sample - np.uint64(b)
        i = np.minimum(np.searchsorted(syms, x), len(syms) - 1)
        return int((syms[i] == x).sum())

    scores = {b: hits(b) for b in finalists}
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    best, score = ranked[0]
    if score < 64 or (len(ranked) > 1 and ranked[1][1] * 2 > score):
        return None
    return int(best)


def _from_base(raw: np.ndarray, base: int, img: KernelImage | None = None) -> tuple[np.ndarray, str] | None:
    if base < 1 << 12:
        # an unrelocated slot (RELA-only raw images: the relocation holds the value)
        rel0 = raw & 0xFFFFFFFF
        if img is None or img.is_elf or not _monotonic(rel0):
            return None
        found = _raw_base(img, rel0)
        if found is None:
            return None
        base = found
    rel = (raw & 0xFFFFFFFF).astype(np.uint64) + np.uint64(base)
    if _monotonic(rel):
        return rel, "relative"
    pc = np.where(raw >= 0, raw, 0).astype(np.uint64)
    neg = raw < 0
    pc[neg] = np.uint64(base - 1) - raw[neg].astype(np.uint64)  # base - 1 - (negative) = base - 1 + |v|
    if _monotonic(pc):
        return pc, "absolute-percpu"
    return None


def read_kallsyms(img: KernelImage) -> Kallsyms:
    data, e = img.data, img.endian
    tt, ti, idx, lens = _token_table(data, e)
    found = None
    for width in (4, 8):
        for moff, mcount in _marker_runs(data, tt, e, width):
            markers = np.frombuffer(data, dtype=f"{e}u{width}", count=mcount, offset=moff).astype(np.int64)
            # the run may extend past the real markers by coincidence: try shorter ones too
            for m in range(mcount, max(1, mcount - 3), -1):
                got = _locate_names(data, e, moff, markers[:m])
                if got is not None:
                    found = (moff, width, got)
                    break
            if found:
                break
        if found:
            break
    if found is None:
        raise SymbolFileError("kallsyms names not found before their markers (an unknown table layout)")
    moff, width, (ns_off, names_off, n, walk) = found
    names, types = _expand(data, tt, idx, lens, walk)
    addrs, aoff, mode, base = _addresses(img, ns_off, ti + 512, n)
    if not img.is_elf and not img.segments and "_text" in names:
        # a raw image starts at _text
        img.segments = [(int(addrs[names.index("_text")]), 0, len(data))]
    tables = KallsymsTables(n, ns_off, names_off, int(walk[3][-1]), moff, width, tt, ti, aoff, mode, base)
    return Kallsyms(names, types, addrs, tables)
