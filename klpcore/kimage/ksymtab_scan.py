"""Find vmlinux's export tables in an image that does not say where they are.

A raw image (arm64 ``Image``, s390x ``vmlinux.bin``) of a kernel built without
``CONFIG_KALLSYMS_ALL`` has neither section headers nor the linker's
``__start___ksymtab``/``__stop___ksymtab`` symbols in kallsyms.  The tables are
still there, and recognisable by what the kernel itself relies on:

* ``__ksymtab`` and ``__ksymtab_gpl`` are arrays of ``struct kernel_symbol``
  (12-byte PREL32 entries, or 24-byte absolute ones; see :mod:`.exports`) whose
  ``name`` field points at the start of a NUL-terminated identifier in
  ``__ksymtab_strings`` (mergeable strings: a name may be the tail of a longer
  one);
* the linker script collects each table with ``SORT(___ksymtab+*)`` (and
  ``SORT(___ksymtab_gpl+*)``), so each table's names ascend, in byte order;
  ``__ksymtab_gpl`` follows ``__ksymtab``.

In the absolute layout a value may live only in the image's relocations
(Debian 6.1's s390x image holds 0 for its data exports' values): the caller
takes those from the architecture's :attr:`~.rules.ImageRules.boot_words`, or
gives no exports.

So: every aligned word whose target starts an identifier is a candidate
``name`` field; the longest runs of candidates one entry apart are the tables,
split where the names stop ascending.  What this finds is checked against
``Module.symvers`` and System.map by ``tools/kimage_truth.py``.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from .container import KernelImage

#: a table shorter than this is not trusted to be one (a 6.1 kernel exports thousands)
MIN_ENTRIES = 64
_IDENT_START = np.zeros(256, dtype=bool)
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_":
    _IDENT_START[_c] = True
_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_.$]*")


def _runs(valid: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """[start, stop) index ranges of True runs at least ``min_len`` long."""
    edges = np.diff(np.concatenate(([0], valid.view(np.int8), [0])).astype(np.int8))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = stops - starts >= min_len
    return list(zip(starts[keep].tolist(), stops[keep].tolist(), strict=True))


def _name_at(data: bytes, off: int) -> bytes | None:
    end = data.find(b"\0", off, off + 512)
    if end < 0:
        return None
    s = data[off:end]
    return s if _NAME.fullmatch(s) else None


def _ascending_segments(names: list[bytes]) -> list[tuple[int, int]]:
    cuts = [0] + [i for i in range(1, len(names)) if names[i] <= names[i - 1]] + [len(names)]
    return list(itertools.pairwise(cuts))


def locate_ksymtabs(img: KernelImage, text: int | None) -> dict[str, tuple[int, int]] | None:
    """Link-time [start, stop) of ``__ksymtab`` (and ``__ksymtab_gpl``) found by
    their contents, or None when no such tables are found; ``text``: the address of
    ``_text`` (byte 0 of a raw image whose link address is not known otherwise); with
    neither, the ranges are file offsets (see :func:`.exports.read_exports`)."""
    if img.is_elf:
        return None
    data = img.data
    n = len(data)
    u8 = np.frombuffer(data, dtype=np.uint8)
    is_start = _IDENT_START[u8]  # not "after a NUL": merged strings share tails
    # without a known link address, offsets (base 0): the caller places them
    base = img.off_to_va(0) if img.segments else (text or 0)
    if base is None:
        return None
    e = img.endian
    for width, word in ((12, 4), (24, 8)):
        count = n // word
        if word == 4:
            words = np.frombuffer(data, dtype=f"{e}i4", count=count).astype(np.int64)
            target = np.arange(count, dtype=np.int64) * 4 + words
        else:
            raw = np.frombuffer(data, dtype=f"{e}u8", count=count)
            target = (raw - np.uint64(base)).astype(np.int64)  # wraps below the base: negative
        inside = (target > 0) & (target < n)
        ok = inside.copy()
        ok[ok] = is_start[target[ok]]
        # the namespace field: a string too (empty: a NUL), or 0 where none is stored
        ns_ok = inside.copy()
        ns_ok[ns_ok] = is_start[target[ns_ok]] | (u8[target[ns_ok]] == 0)
        ns_ok |= (words if word == 4 else raw) == 0
        per = width // word
        tables: list[tuple[int, int, list[bytes]]] = []  # entry offset start, stop, names
        for r in range(per):
            # entry at word index k has its name field at word k + 1
            col = ok[r + 1 :: per][: len(ns_ok[r + 2 :: per])] & ns_ok[r + 2 :: per]
            for a, b in _runs(col, MIN_ENTRIES):
                first = (r + a * per) * word
                names = [_name_at(data, int(target[(r + 1 + i * per)])) for i in range(a, b)]
                # trim entries whose string is not an identifier, then split where names stop ascending
                lo = 0
                for hi in [*(i for i, s in enumerate(names) if s is None), len(names)]:
                    sub = [s for s in names[lo:hi] if s is not None]
                    for s0, s1 in _ascending_segments(sub):
                        if s1 - s0 >= MIN_ENTRIES:
                            start = first + (lo + s0) * width
                            tables.append((start, start + (s1 - s0) * width, sub[s0:s1]))
                    lo = hi + 1
        if not tables:
            continue
        # the largest table, and the one right after it or right before it (the two are
        # adjacent, apart from alignment): __ksymtab, then __ksymtab_gpl
        tables.sort(key=lambda t: t[1] - t[0], reverse=True)
        big = tables[0]
        near = [t for t in tables[1:] if 0 <= t[0] - big[1] < 64 or 0 <= big[0] - t[1] < 64]
        pair = sorted([big, *near[:1]])
        out = {"__ksymtab": (base + pair[0][0], base + pair[0][1])}
        if len(pair) == 2:
            out["__ksymtab_gpl"] = (base + pair[1][0], base + pair[1][1])
        return out
    return None
