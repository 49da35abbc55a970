"""Build small kernel images carrying kallsyms tables, for klpcore.kimage's tests.

The tables follow the format ``scripts/kallsyms`` emits (see
klpcore/kimage/kallsyms.py for the facts); the encoder here is independent of
the decoder under test: a greedy longest-token encoder over a token table made
of every used character plus a few frequent substrings.  Containers: an ELF
with one PT_LOAD, a bzImage around a compressed ELF, an arm64 Image, an EFI
zboot image, and an s390x-like blob holding one compressed raw kernel.
"""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from dataclasses import dataclass


@dataclass
class Sym:
    addr: int
    type: str
    name: str


def sample_symbols(base: int, n: int = 700, *, percpu: int = 0, data: bool = True) -> list[Sym]:
    """``n`` symbols from ``base`` up (text, then data), names with digits, one over 127 characters;
    ``percpu`` symbols at small addresses first (x86_64 per-CPU variables)."""
    out = [Sym(0x1000 * i, "D", f"percpu_var{i}") for i in range(percpu)]
    out.append(Sym(base, "T", "_text"))
    out.append(Sym(base, "T", "_stext"))
    for i in range(n - 3):
        kind = i % 7
        if kind == 6 and data:
            out.append(Sym(base + 0x100000 + 0x40 * i, "d" if i % 2 else "D", f"some_table_{i}_data"))
        else:
            out.append(Sym(base + 0x1000 + 0x30 * i, "t" if i % 3 else "T", f"__pfx_do_thing_{i}_x{i % 10}"))
    out.append(Sym(base + 0x2000, "T", "a_very_long_rust_symbol_" + "x" * 130))
    out.sort(key=lambda s: s.addr)
    return out


def _tokens(words: list[bytes]) -> list[bytes]:
    used = sorted({c for w in words for c in w})
    table: list[bytes | None] = [None] * 256
    for c in used:
        table[c] = bytes([c])
    free = [c for c in range(256) if table[c] is None]
    grams: Counter[bytes] = Counter()
    for w in words:
        for k in (2, 3, 5):
            for i in range(len(w) - k + 1):
                grams[w[i : i + k]] += 1
    for c, (g, _) in zip(free, grams.most_common(len(free) - 3), strict=False):
        table[c] = g
    return [t if t is not None else b"" for t in table]  # codes left over expand to nothing


def _encode(word: bytes, table: list[bytes]) -> bytes:
    by_len = sorted(((t, c) for c, t in enumerate(table) if t), key=lambda tc: -len(tc[0]))
    out = bytearray()
    i = 0
    while i < len(word):
        for t, c in by_len:
            if word.startswith(t, i):
                out.append(c)
                i += len(t)
                break
    return bytes(out)


def _align(b: bytearray, n: int) -> None:
    b.extend(b"\0" * (-len(b) % n))


def kallsyms_blob(
    syms: list[Sym], layout: str, *, e: str = "<", blob_va: int = 0, relative_base: int | None = None
) -> bytes:
    """The tables as one blob placed at link address ``blob_va``.

    layouts: ``"4.19"`` (relative offsets before the count, u64 markers),
    ``"6.1"`` (the same, u32 markers, 3-byte seqs before the token table),
    ``"6.1-percpu"`` (absolute per-CPU offsets), ``"abs"`` (absolute addresses),
    ``"6.4"`` (offsets and base after the token index), ``"7.0"`` (place-relative offsets)."""
    words = [s.type.encode() + s.name.encode() for s in syms]
    table = _tokens(words)
    enc = [_encode(w, table) for w in words]
    n = len(syms)
    base = relative_base if relative_base is not None else min(s.addr for s in syms if s.addr >= 0x10000)

    names = bytearray()
    markers = []
    for i, c in enumerate(enc):
        if i % 256 == 0:
            markers.append(len(names))
        if len(c) > 0x7F:
            names += bytes([(len(c) & 0x7F) | 0x80, len(c) >> 7])
        else:
            names.append(len(c))
        names += c
    tt = bytearray()
    index = []
    for t in table:
        index.append(len(tt))
        tt += t + b"\0"
    seqs = b"".join(struct.pack(">I", k)[1:] for k in sorted(range(n), key=lambda k: words[k][1:]))

    def offsets(at: int) -> bytes:
        if layout == "7.0":
            return b"".join(struct.pack(e + "i", s.addr - (at + 4 * i)) for i, s in enumerate(syms))
        if layout == "6.1-percpu":
            vals = [s.addr if s.addr < 0x10000 else base - 1 - s.addr for s in syms]
            return b"".join(struct.pack(e + "i", v) for v in vals)
        return b"".join(struct.pack(e + "I", s.addr - base) for s in syms)

    b = bytearray()
    if layout in ("4.19", "6.1", "6.1-percpu", "abs"):
        if layout == "abs":
            b += b"".join(struct.pack(e + "Q", s.addr) for s in syms)
        else:
            b += offsets(blob_va)
            _align(b, 8)
            b += struct.pack(e + "Q", base)
        b += struct.pack(e + "I", n)
        _align(b, 8)
        b += names
        _align(b, 8)
        mk = "Q" if layout == "4.19" else "I"
        b += b"".join(struct.pack(e + mk, m) for m in markers)
        if layout in ("6.1", "6.1-percpu"):
            b += seqs
        _align(b, 8)
        b += tt
        _align(b, 8)
        b += struct.pack(e + "256H", *index)
        return bytes(b)
    b += struct.pack(e + "I", n)
    if layout == "6.4":
        _align(b, 8)
    b += names
    _align(b, 4)
    b += b"".join(struct.pack(e + "I", m) for m in markers)
    b += tt
    _align(b, 4)
    b += struct.pack(e + "256H", *index)
    _align(b, 4)
    b += offsets(blob_va + len(b))
    if layout == "6.4":
        _align(b, 8)
        b += struct.pack(e + "Q", base)
    b += seqs
    return bytes(b)


@dataclass
class Export:
    name: str  # the string name_offset points at
    target: str  # the symbol whose address is the value
    gpl: bool = False
    namespace: str = ""


EXPORTS_AT = 0x8000
MCOUNT_AT = 0xC000


def export_tables(
    syms: list[Sym], exports: list[Export], va: int, *, e: str = "<", prel32: bool = True, flagstab: bool = False
) -> tuple[bytes, list[Sym]]:
    """``__ksymtab`` (+ ``__ksymtab_gpl``, or ``__kflagstab``) and their strings at link address ``va``,
    and the ``__start_``/``__stop_`` symbols kallsyms lists for them."""
    addr = {s.name: s.addr for s in syms}
    width = 12 if prel32 else 24
    plain = exports if flagstab else [x for x in exports if not x.gpl]
    gpl = [] if flagstab else [x for x in exports if x.gpl]
    n_all = len(plain) + len(gpl)
    strings_va = va + width * n_all + len(exports) + 16
    strings = bytearray()
    where: dict[str, int] = {}
    for x in exports:
        for text in (x.name, x.namespace):
            if text not in where:
                where[text] = strings_va + len(strings)
                strings += text.encode() + b"\0"
    out = bytearray()

    def entry(x: Export) -> None:
        at = va + len(out)
        if prel32:
            out.extend(
                struct.pack(e + "iii", addr[x.target] - at, where[x.name] - (at + 4), where[x.namespace] - (at + 8))
            )
        else:
            out.extend(struct.pack(e + "QQQ", addr[x.target], where[x.name], where[x.namespace]))

    for x in plain:
        entry(x)
    extra = [Sym(va, "R", "__start___ksymtab"), Sym(va + len(out), "R", "__stop___ksymtab")]
    if gpl:
        extra.append(Sym(va + len(out), "R", "__start___ksymtab_gpl"))
        for x in gpl:
            entry(x)
        extra.append(Sym(va + len(out), "R", "__stop___ksymtab_gpl"))
    if flagstab:
        extra.append(Sym(va + len(out), "R", "__start___kflagstab"))
        out += bytes(1 if x.gpl else 0 for x in plain)
    out += b"\0" * (strings_va - va - len(out))
    out += strings
    return bytes(out), extra


def raw_kernel(
    syms: list[Sym],
    layout: str,
    base: int,
    *,
    e: str = "<",
    size: int = 1 << 18,
    exports: list[Export] | None = None,
    prel32: bool = True,
    flagstab: bool = False,
    mcount: list[int] | None = None,
    insns: dict[int, int] | None = None,
) -> bytes:
    """A raw kernel linked at ``base``: filler, a pointer table (as a kernel's
    ops structures hold), export tables at 32 KiB, the kallsyms tables at 64 KiB."""
    blob_off = 0x10000
    body = bytearray(bytes((i * 37 + 11) & 0xFF for i in range(blob_off)))
    ptrs = b"".join(struct.pack(e + "Q", s.addr) for s in syms if s.addr >= base)
    body[0x100 : 0x100 + len(ptrs)] = ptrs[: EXPORTS_AT - 0x200]
    if exports:
        tables, extra = export_tables(syms, exports, base + EXPORTS_AT, e=e, prel32=prel32, flagstab=flagstab)
        body[EXPORTS_AT : EXPORTS_AT + len(tables)] = tables
        syms = sorted([*syms, *extra], key=lambda s: s.addr)
    if mcount is not None:
        table = b"".join(struct.pack(e + "Q", a) for a in mcount)
        body[MCOUNT_AT : MCOUNT_AT + len(table)] = table
        extra = [
            Sym(base + MCOUNT_AT, "D", "__start_mcount_loc"),
            Sym(base + MCOUNT_AT + len(table), "D", "__stop_mcount_loc"),
        ]
        syms = sorted([*syms, *extra], key=lambda s: s.addr)
    for va, insn in (insns or {}).items():
        struct.pack_into(e + "I", body, va - base, insn)
    body += kallsyms_blob(syms, layout, e=e, blob_va=base + blob_off)
    body += b"\0" * max(0, size - len(body))
    return bytes(body)


def elf_kernel(syms: list[Sym], layout: str, base: int, *, machine: int = 62, e: str = "<", **kw: object) -> bytes:
    """An ET_EXEC vmlinux with one PT_LOAD (file offset 0x1000 at ``base``) and no section headers."""
    raw = raw_kernel(syms, layout, base, e=e, **kw)  # type: ignore[arg-type]
    hdr = bytearray(0x1000)
    ident = b"\x7fELF" + bytes([2, 1 if e == "<" else 2, 1]) + b"\0" * 9
    hdr[0:16] = ident
    struct.pack_into(e + "HHIQQQIHHHHHH", hdr, 16, 2, machine, 1, base, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    struct.pack_into(e + "IIQQQQQQ", hdr, 64, 1, 5, 0x1000, base, base, len(raw), len(raw), 0x1000)
    return bytes(hdr) + raw


def bzimage(payload: bytes) -> bytes:
    """A bzImage whose setup header points at ``payload`` (already compressed)."""
    setup_sects = 3
    img = bytearray((setup_sects + 1) * 512)
    img[0:2] = b"MZ"
    img[0x1F1] = setup_sects
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x20F)
    struct.pack_into("<II", img, 0x248, 0x100, len(payload))
    img += b"\0" * 0x100 + payload + struct.pack("<I", 0)
    return bytes(img)


def arm64_image(raw: bytes) -> bytes:
    out = bytearray(raw)
    out[0:56] = b"\0" * 56
    out[56:60] = b"ARM\x64"
    return bytes(out)


def zboot(payload: bytes, comp: str = "gzip") -> bytes:
    head = bytearray(0x200)
    head[0:2] = b"MZ"
    head[4:8] = b"zimg"
    struct.pack_into("<II", head, 8, len(head), len(payload))
    head[24 : 24 + len(comp)] = comp.encode()
    return bytes(head) + payload


def s390_image(raw: bytes) -> bytes:
    """A decompressor stand-in (``S390EP`` at 0x10008) followed by the gzip-compressed raw kernel."""
    head = bytearray(b"\x07" * 0x10100)
    head[0:8] = b"\x00\x08\x00\x00\x80\x00\x02\x00"
    head[0x10008:0x1000E] = b"S390EP"
    return bytes(head) + gzip.compress(raw, 1)


# --- helpers for the tests -------------------------------------------------------------------
def rows(syms: list[Sym]) -> list[tuple[int, str, str]]:
    return [(s.addr, s.type, s.name) for s in syms]


def decoded(data: bytes) -> list[tuple[int, str, str]]:
    """(address, type, name) as klpcore reads them from an image."""
    from klpcore.kimage.container import open_image
    from klpcore.kimage.kallsyms import read_kallsyms

    k = read_kallsyms(open_image(data, "<test>"))
    return list(zip((int(a) for a in k.addresses), k.types, k.names, strict=True))


def sample_exports() -> list[Export]:
    return [
        Export("__pfx_do_thing_1_x1", "__pfx_do_thing_1_x1"),
        Export("__pfx_do_thing_2_x2", "__pfx_do_thing_2_x2", gpl=True),
        Export("some_table_6_data", "some_table_6_data", namespace="MY_NS"),
        # the name string decides what is exported, not the target's symbol name
        Export("alias_name", "__pfx_do_thing_4_x4", gpl=True, namespace="OTHER"),
    ]


def first_funcs(syms: list[Sym], n: int = 40) -> list[int]:
    return [s.addr for s in syms if s.type in "tT" and s.name.startswith("__pfx_do_thing_")][:n]
