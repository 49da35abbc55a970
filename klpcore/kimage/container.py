"""Unwrap a kernel image as distributions ship it into the kernel proper.

Formats (recognised by content, never by file name):

* an ELF ``vmlinux`` (some architectures ship one, even named ``vmlinuz``):
  its ``PT_LOAD`` segments map link-time addresses to file offsets;
* an EFI zboot image (``MZ`` then ``zimg`` at byte 4; payload offset and size
  as little-endian u32 at 8 and 12, compression name NUL-terminated at 24 —
  drivers/firmware/efi/libstub/zboot-header.S) wrapping one of these;
* a whole-file gzip/xz/zstd/... stream (``Image.gz``) wrapping one of these;
* what an architecture's plugin recognises (:class:`~.rules.ImageRules`): a
  structured container it unwraps (a boot-protocol header pointing at a
  compressed ELF), a raw image that is the kernel itself (byte 0 at
  ``_text``), or a self-decompressing image carrying the kernel as the
  largest compressed stream inside it.

Compressions: gzip, xz, lzma, bzip2 (Python's standard library), zstd (the
``zstandard`` dependency), lz4 (legacy frames, as ``lz4 -l`` writes them:
needs the optional ``lz4`` package) and lzo (lzop files: needs the optional
``python-lzo`` package).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import SymbolFileError
from .rules import ImageRules, image_rules

#: largest decompressed kernel read (a 7.2 amd64 vmlinux is ~60 MiB; debug builds are larger)
DECOMPRESSED_LIMIT = 1 << 30

MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("bzip2", b"BZh91AY&SY"),  # the kernel's build compresses with -9
    ("lz4", b"\x02\x21\x4c\x18"),
    ("lzo", b"\x89LZO\x00\r\n\x1a\n"),
    ("lzma", b"\x5d\x00\x00"),
)

#: compression names a zboot header carries (COMP_TYPE), each read by :func:`decompress` under the same name
ZBOOT_COMPRESSIONS = frozenset({"gzip", "lzma", "xz", "zstd", "lz4", "lzo", "bzip2"})

#: streams of one compression tried per file when its format says nothing at its start
_SCAN_TRIES = 32


@dataclass
class KernelImage:
    """The kernel proper: its bytes and how file offsets map to link-time addresses."""

    data: bytes
    container: str  # how it was shipped: "bzImage (zstd)", "arm64 Image", "ELF", ...
    arch: str  # "x86_64", "arm64", "ppc64le", "s390x" or "" when not known
    byteorder: str  # "little" or "big"
    #: (vaddr, offset, filesz) of each loaded part; empty for a raw image whose base is not known
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    #: ELF section headers by name: (vaddr, offset, size), when the image has them
    sections: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    is_elf: bool = False

    def off_to_va(self, off: int) -> int | None:
        for va, o, n in self.segments:
            if o <= off < o + n:
                return va + off - o
        return None

    def va_to_off(self, va: int) -> int | None:
        for v, o, n in self.segments:
            if v <= va < v + n:
                return o + va - v
        return None

    @property
    def endian(self) -> str:
        return "<" if self.byteorder == "little" else ">"


def decompress(fmt: str, blob: bytes | memoryview, what: str, limit: int = DECOMPRESSED_LIMIT) -> bytes:
    """Decompress one stream of ``fmt``; trailing bytes (the size the kernel's
    build appends, padding) are ignored.  Bounded by ``limit``."""
    try:
        if fmt == "gzip":
            import zlib

            gz = zlib.decompressobj(31)
            out = gz.decompress(bytes(blob), limit + 1)
        elif fmt in ("xz", "lzma"):
            import lzma

            lz = lzma.LZMADecompressor(lzma.FORMAT_XZ if fmt == "xz" else lzma.FORMAT_ALONE)
            out = lz.decompress(bytes(blob), limit + 1)
        elif fmt == "bzip2":
            import bz2

            out = bz2.BZ2Decompressor().decompress(bytes(blob), limit + 1)
        elif fmt == "zstd":
            import zstandard

            rest, parts, total = bytes(blob), [], 0
            # one or more frames; the build appends the size (4 bytes) after them
            while rest[:4] == b"\x28\xb5\x2f\xfd" and total <= limit:
                dobj = zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj()
                part = dobj.decompress(rest)
                parts.append(part)
                total += len(part)
                rest = dobj.unused_data
            out = b"".join(parts)
        elif fmt == "lz4":
            out = _lz4_legacy(blob, what, limit)
        elif fmt == "lzo":
            out = _lzop(blob, what)
        else:  # pragma: no cover - callers pass known names
            raise SymbolFileError(f"{what}: unknown compression {fmt!r}")
    except SymbolFileError:
        raise
    except Exception as exc:  # each library raises its own types on corrupt data
        raise SymbolFileError(f"{what}: corrupt {fmt} data: {type(exc).__name__}: {exc}") from None
    if len(out) > limit:
        raise SymbolFileError(f"{what}: {fmt} data decompresses to more than {limit >> 20} MiB")
    return out


def _lz4_legacy(blob: bytes | memoryview, what: str, limit: int) -> bytes:
    try:
        import lz4.block  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise SymbolFileError(
            f"{what}: the kernel image is lz4-compressed; reading it needs the optional 'lz4' package (pip install lz4)"
        ) from None
    mv = memoryview(blob)
    pos, parts, total = 4, [], 0
    while pos + 4 <= len(mv):
        (size,) = struct.unpack_from("<I", mv, pos)
        if size == 0x184C2102:  # a second legacy frame
            pos += 4
            continue
        if size == 0 or pos + 4 + size > len(mv):
            break
        part = lz4.block.decompress(bytes(mv[pos + 4 : pos + 4 + size]), uncompressed_size=8 << 20)
        parts.append(part)
        total += len(part)
        if total > limit:
            break
        pos += 4 + size
        if len(part) < 8 << 20:
            break
    return b"".join(parts)


def _lzop(blob: bytes | memoryview, what: str) -> bytes:  # pragma: no cover - needs python-lzo
    try:
        import lzo  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise SymbolFileError(
            f"{what}: the kernel image is lzo-compressed; reading it needs the optional 'python-lzo' package "
            "(pip install python-lzo)"
        ) from None
    # lzop file: header, then blocks of (u32 BE decompressed size, u32 BE compressed size, [checksums], data)
    mv = bytes(blob)
    pos = 9
    version, _lib, _need = struct.unpack_from(">HHH", mv, pos)
    pos += 6
    pos += 1  # method
    if version >= 0x0940:
        pos += 1  # level
    (flags,) = struct.unpack_from(">I", mv, pos)
    pos += 4
    if flags & 0x00000800:  # filter
        pos += 4
    pos += 4 + 4  # mode, mtime_low
    if version >= 0x0940:
        pos += 4
    name_len = mv[pos]
    pos += 1 + name_len + 4  # name, header checksum
    if flags & 0x00000040:  # extra field
        (n,) = struct.unpack_from(">I", mv, pos)
        pos += 4 + n + 4
    out = []
    while True:
        (dlen,) = struct.unpack_from(">I", mv, pos)
        pos += 4
        if dlen == 0:
            break
        (clen,) = struct.unpack_from(">I", mv, pos)
        pos += 4
        pos += 4 * (bool(flags & 0x1) + bool(flags & 0x100))  # adler32 / crc32 of decompressed
        if clen < dlen:
            pos += 4 * (bool(flags & 0x2) + bool(flags & 0x200))
            out.append(lzo.decompress(mv[pos : pos + clen], False, dlen))
        else:
            out.append(mv[pos : pos + clen])
        pos += clen
    return b"".join(out)


def _elf(data: bytes, container: str) -> KernelImage:
    from .. import constants as C
    from ..elfheader import (
        ElfHeaderError,
        program_headers,
        read_header,
        section_count,
        section_headers,
        string_table_index,
    )

    try:
        hdr = read_header(data)
    except ElfHeaderError:
        raise SymbolFileError(f"{container}: only 64-bit kernels are read") from None
    segs = [
        (ph.vaddr, ph.offset, min(ph.filesz, max(0, len(data) - ph.offset)))
        for ph in program_headers(data, hdr)
        if ph.type == C.PT_LOAD and ph.filesz
    ]
    sections: dict[str, tuple[int, int, int]] = {}
    try:
        n = section_count(data, hdr) if hdr.shoff else 0
        shdrs = section_headers(data, hdr, n) if n else []
        strndx = string_table_index(data, hdr) if n else 0
    except ElfHeaderError:  # a table that does not fit: no sections, as if stripped
        shdrs, strndx = [], 0
    if shdrs and strndx < len(shdrs):
        stro = shdrs[strndx].offset
        for sh in shdrs:
            if sh.type == C.SHT_NULL or not sh.addr:
                continue
            end = data.find(b"\0", stro + sh.name)
            name = data[stro + sh.name : end].decode("latin-1")
            sections.setdefault(name, (sh.addr, sh.offset if sh.type != C.SHT_NOBITS else -1, sh.size))
    arch = next((r.arch for r in image_rules() if r.machine == hdr.ident.machine), "")
    return KernelImage(data, container, arch, hdr.byteorder, segs, sections, is_elf=True)


def _inner(data: bytes, container: str, what: str, depth: int) -> KernelImage | None:
    """The kernel inside ``data`` when ``data`` is one of the known containers."""
    if data[:4] == b"\x7fELF":
        return _elf(data, container or "ELF")
    for rules in image_rules():
        if rules.unwrap is not None and _marked(data, rules):
            got = rules.unwrap(data, what)
            if got is not None:
                inner = _inner(got[0], got[1], what, depth + 1)
                if inner is None:
                    raise SymbolFileError(f"{what}: {got[1]} does not hold a kernel klpcore reads")
                return inner
        if rules.raw and _marked(data, rules):
            return KernelImage(data, container or f"{rules.arch} raw image", rules.arch, rules.byteorder)
    if data[:2] == b"MZ" and data[4:8] == b"zimg":
        poff, plen = struct.unpack_from("<II", data, 8)
        comp = data[24 : data.find(b"\0", 24, 56)].decode("latin-1")
        if comp not in ZBOOT_COMPRESSIONS:
            raise SymbolFileError(f"{what}: EFI zboot image compressed with {comp!r}, which klpcore does not read")
        inner = _inner(decompress(comp, memoryview(data)[poff : poff + plen], what), f"zboot ({comp})", what, depth + 1)
        if inner is None:
            raise SymbolFileError(f"{what}: EFI zboot payload is not a kernel image")
        return inner
    if depth == 0:
        fmt = _format(data)
        if fmt is not None and fmt != "lzma":
            inner = _inner(decompress(fmt, data, what), f"{fmt}-compressed", what, depth + 1)
            if inner is not None:
                return inner
    return None


def _marked(data: bytes, rules: ImageRules) -> bool:
    return any(data[off : off + len(magic)] == magic for off, magic in rules.magics)


def detect_compression(blob: bytes | memoryview) -> str | None:
    """The compression whose magic starts ``blob``, or None."""
    return _format(blob)


def _format(blob: bytes | memoryview) -> str | None:
    head = bytes(blob[:10])
    for name, magic in MAGICS:
        if head.startswith(magic):
            return name
    return None


def looks_like_image(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes, decompressed; 128 KiB is enough)
    starts a kernel image container: a zboot image or one an architecture's
    plugin marks as its own."""
    if head[:2] == b"MZ" and head[4:8] == b"zimg":
        return True
    return any(_marked(head, r) for r in image_rules())


def open_image(data: bytes, what: str) -> KernelImage:
    """The kernel proper inside ``data`` (a file's bytes, already decompressed
    when the whole file was one gzip/xz/zstd stream)."""
    img = _inner(data, "", what, 0)
    if img is not None:
        return img
    # last resort (s390x and other self-decompressing images): the largest
    # stream a known compression decodes from inside the file
    import re

    best: KernelImage | None = None
    for name, magic in MAGICS:
        if name == "lzma":  # too short a magic to scan for
            continue
        for k, m in enumerate(re.finditer(re.escape(magic), data)):
            if k >= _SCAN_TRIES:
                break
            try:
                out = decompress(name, memoryview(data)[m.start() :], what)
            except SymbolFileError:
                continue
            if len(out) < 1 << 20:
                continue
            inner = _inner(out, f"{name} payload at {m.start():#x}", what, 1)
            if inner is None:
                owner = next((r for r in image_rules() if not r.raw and _marked(data, r)), None)
                inner = KernelImage(
                    out,
                    f"{name} payload at {m.start():#x}",
                    owner.arch if owner else "",
                    owner.byteorder if owner else "little",
                )
            if best is None or len(inner.data) > len(best.data):
                best = inner
        if best is not None:
            break
    if best is None:
        raise SymbolFileError(
            f"{what}: not a kernel image klpcore can read (ELF, zboot, or an image an installed architecture "
            "plugin recognises)"
        )
    return best
