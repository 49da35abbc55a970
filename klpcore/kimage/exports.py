"""vmlinux's export table read from an image, as the kernel reads it (kernel/module/main.c).

``struct kernel_symbol`` (include/linux/export.h, export-internal.h):

* with ``CONFIG_HAVE_ARCH_PREL32_RELOCATIONS`` (x86_64, arm64, ppc64, ...):
  ``{int value_offset; int name_offset; int namespace_offset;}``, each offset
  relative to the field's own address (12 bytes);
* otherwise ``{unsigned long value; const char *name; const char *namespace;}``
  (24 bytes on 64-bit; 16 bytes before namespaces, 5.4).

The name is the string ``name_offset`` points at (in ``__ksymtab_strings``),
not anything inferred from ``__ksymtab_<name>`` symbols; the namespace is the
string ``namespace_offset`` points at (0, or an empty string: none).  GPL-only:
up to 6.x the entry sits in ``__ksymtab_gpl`` instead of ``__ksymtab``; in 7.x
there is one ``__ksymtab`` and ``__kflagstab`` holds one flag byte per entry
(``KSYM_FLAG_GPL_ONLY = 1 << 0``).  With ``CONFIG_MODVERSIONS`` ``__kcrctab``
(and ``__kcrctab_gpl``) hold one u32 CRC per entry, in the same order.

The tables are found by the linker's ``__start___ksymtab``/``__stop___ksymtab``
(…``_gpl``, ``__start___kflagstab``, ``__start___kcrctab``…) symbols, which
kallsyms lists with ``CONFIG_KALLSYMS_ALL``, or by the ELF's section headers.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np

from .container import KernelImage

KSYM_FLAG_GPL_ONLY = 1 << 0
_NAME = re.compile(rb"[A-Za-z_.$][A-Za-z0-9_.$]*")


@dataclass(frozen=True)
class ImageExport:
    name: str
    address: int
    gpl_only: bool
    namespace: str
    crc: int | None


@dataclass
class ImageExports:
    exports: list[ImageExport]
    layout: str  # "prel32", "absolute"
    flags_from: str  # "__kflagstab" or "__ksymtab_gpl"
    #: how the tables were found: "symbols" (linker symbols or section headers) or
    #: "contents" (:mod:`.ksymtab_scan`: an image without ``CONFIG_KALLSYMS_ALL``)
    found_by: str = "symbols"


def _ranges(img: KernelImage, syms: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Link-time [start, stop) of each export table, by name."""
    out: dict[str, tuple[int, int]] = {}
    for sec in ("__ksymtab", "__ksymtab_gpl", "__kflagstab", "__kcrctab", "__kcrctab_gpl"):
        start, stop = syms.get(f"__start___{sec[2:]}"), syms.get(f"__stop___{sec[2:]}")
        if start is not None and stop is not None and stop >= start:
            out[sec] = (start, stop)
        elif sec in img.sections:
            va, _off, size = img.sections[sec]
            out[sec] = (va, va + size)
        elif start is not None and sec in ("__kflagstab", "__kcrctab"):
            out[sec] = (start, -1)  # as many entries as __ksymtab
    return out


def _cstr(img: KernelImage, va: int) -> bytes | None:
    off = img.va_to_off(va)
    if off is None:
        return None
    end = img.data.find(b"\0", off, off + 1024)
    return None if end < 0 else img.data[off:end]


def _read_table(img: KernelImage, start: int, stop: int) -> tuple[list[tuple[str, int, str]], str] | None:
    off = img.va_to_off(start)
    if off is None:
        return ([], "prel32") if stop == start else None
    e = img.endian
    size = stop - start
    for layout, width in (("prel32", 12), ("absolute", 24), ("absolute", 16)):
        if size % width:
            continue
        n = size // width
        out = []
        ok = True
        if layout == "prel32":
            raw = np.frombuffer(img.data, dtype=f"{e}i4", count=3 * n, offset=off).astype(np.int64).reshape(n, 3)
            rel = width * np.arange(n, dtype=np.int64)[:, None] + np.array([0, 4, 8]) + raw
            # modulo 2^64, as the kernel's pointer arithmetic
            vals = (rel.astype(np.uint64) + np.uint64(start)).tolist()
            for i, (value, name_at, ns_at) in enumerate(vals):
                name = _cstr(img, name_at)
                if name is None or not _NAME.fullmatch(name):
                    ok = False
                    break
                ns = b"" if raw[i, 2] == 0 else (_cstr(img, ns_at) or b"")
                out.append((name.decode(), value, ns.decode("utf-8", "replace")))
        else:
            fmt = e + ("QQQ" if width == 24 else "QQ")
            for i in range(n):
                fields = struct.unpack_from(fmt, img.data, off + width * i)
                name = _cstr(img, fields[1])
                if name is None or not _NAME.fullmatch(name):
                    ok = False
                    break
                nsb = _cstr(img, fields[2]) if width == 24 and fields[2] else b""
                out.append((name.decode(), fields[0], (nsb or b"").decode("utf-8", "replace")))
        if ok:
            return out, layout
    return None


def _place(img: KernelImage, known: dict[str, int], r: dict[str, tuple[int, int]]) -> KernelImage | None:
    """A raw image whose link address nothing else gave: the tables were found at
    file offsets; the link address is the one on which the exports' values (as
    offsets) and kallsyms' addresses of the same names agree."""
    from collections import Counter

    flat = KernelImage(img.data, img.container, img.arch, img.byteorder, [(0, 0, len(img.data))])
    got = _read_table(flat, *r["__ksymtab"])
    if got is None:
        return None
    votes = Counter(known[name] - value for name, value, _ in got[0] if name in known)
    if not votes:
        return None
    base, n = votes.most_common(1)[0]
    if n * 2 < sum(votes.values()):
        return None
    for sec, (a, b) in list(r.items()):
        r[sec] = (a + base, b + base)
    return KernelImage(img.data, img.container, img.arch, img.byteorder, [(base, 0, len(img.data))])


def _boot_values(
    img: KernelImage, r: dict[str, tuple[int, int]], main: list[tuple[str, int, str]], gpl: list[tuple[str, int, str]]
) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]] | None:
    """Absolute entries whose value the image holds as 0 (a relocatable image that
    fills them at boot): the value the boot code writes, from the architecture's
    rules; None when any stays unknown."""
    from .rules import image_rules

    tables = [(r["__ksymtab"][0], main), *([(r["__ksymtab_gpl"][0], gpl)] if "__ksymtab_gpl" in r else [])]
    vas = np.array([start + 24 * i for start, ents in tables for i, e in enumerate(ents) if e[1] == 0], np.uint64)
    if not len(vas):
        return main, gpl
    rules = next((x for x in image_rules() if x.arch == img.arch), None)
    if rules is None or rules.boot_words is None:
        return None
    vals = dict(zip(vas.tolist(), rules.boot_words(img, vas).tolist(), strict=True))
    if not all(vals.values()):
        return None
    out = [
        [(n, vals[start + 24 * i] if v == 0 else v, ns) for i, (n, v, ns) in enumerate(ents)] for start, ents in tables
    ]
    return out[0], (out[1] if len(out) > 1 else [])


def read_exports(img: KernelImage, syms: dict[str, int], known: dict[str, int] | None = None) -> ImageExports | None:
    """The export table, or None when the image does not say where it is
    (no section headers, no ``__start___ksymtab`` in kallsyms, and no table
    found by its contents); ``known``: kallsyms' name -> address (places tables
    found in a raw image whose link address is not known otherwise)."""
    r = _ranges(img, syms)
    found_by = "symbols"
    if "__ksymtab" not in r:
        from .ksymtab_scan import locate_ksymtabs

        found = locate_ksymtabs(img, syms.get("_text"))
        if found is None:
            return None
        r.update(found)
        found_by = "contents"
        if not img.segments and "_text" not in syms:
            placed = _place(img, known or {}, r)
            if placed is None:
                return None
            img = placed
    main = _read_table(img, *r["__ksymtab"])
    if main is None:
        return None
    entries, layout = main
    if found_by == "contents" and layout == "absolute":
        got_gpl = _read_table(img, *r["__ksymtab_gpl"]) if "__ksymtab_gpl" in r else ([], layout)
        filled = None if got_gpl is None else _boot_values(img, r, entries, got_gpl[0])
        if filled is None:
            return None
        entries, gpl_filled = filled
        r.pop("__ksymtab_gpl", None)
        gpl_pre: list[tuple[str, int, str]] | None = gpl_filled
    else:
        gpl_pre = None
    gpl_entries: list[tuple[str, int, str]] = gpl_pre or []
    if "__ksymtab_gpl" in r:
        got = _read_table(img, *r["__ksymtab_gpl"])
        if got is None:
            return None
        gpl_entries = got[0]
    e = img.endian
    flags = np.zeros(len(entries), dtype=np.uint8)
    flags_from = "__ksymtab_gpl"
    if "__kflagstab" in r and not gpl_entries:
        off = img.va_to_off(r["__kflagstab"][0])
        if off is not None:
            flags = np.frombuffer(img.data, dtype=np.uint8, count=len(entries), offset=off)
            flags_from = "__kflagstab"

    def crcs(sec: str, n: int) -> list[int | None]:
        if sec not in r or not n:
            return [None] * n
        start, stop = r[sec]
        if stop != -1 and (stop - start) // 4 != n:  # empty without CONFIG_MODVERSIONS
            return [None] * n
        off = img.va_to_off(r[sec][0])
        if off is None:
            return [None] * n
        return [int(x) for x in np.frombuffer(img.data, dtype=f"{e}u4", count=n, offset=off)]

    out = [
        ImageExport(name, value, bool(int(f) & KSYM_FLAG_GPL_ONLY), ns, crc)
        for (name, value, ns), f, crc in zip(entries, flags, crcs("__kcrctab", len(entries)), strict=True)
    ]
    out += [
        ImageExport(name, value, True, ns, crc)
        for (name, value, ns), crc in zip(gpl_entries, crcs("__kcrctab_gpl", len(gpl_entries)), strict=True)
    ]
    return ImageExports(out, layout, flags_from, found_by)
