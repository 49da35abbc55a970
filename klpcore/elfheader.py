"""One reader of ELF file and section headers, for every part of klpcore that looks at an ELF file.

It reads the fixed-size records only (the identification bytes, the 64-bit file header, the 64-bit
section and program headers) from anything that supports the buffer protocol (``bytes``, ``bytearray``, an
``mmap``), without reading or copying section contents; it needs neither numpy nor pyelftools.
What a field means for a kernel module (``ET_REL``, ``e_shentsize`` ...) is checked by its callers,
each with its own message: :class:`~klpcore.elf.ElfModule`, ``klpcore check``'s load steps, the
vmlinux reader of :mod:`klpcore.check.patches`.

Extended numbering follows the ELF specification: ``e_shnum == 0`` with a section header table
means the count is section 0's ``sh_size``; ``e_shstrndx == SHN_XINDEX`` means the index is
section 0's ``sh_link``.
"""

from __future__ import annotations

import mmap
import struct
from typing import Literal, NamedTuple

from . import constants as C

#: what the reader accepts
Buffer = bytes | bytearray | memoryview | mmap.mmap

#: bytes of e_ident plus e_type and e_machine: the same offsets in 32- and 64-bit files
IDENT_SIZE = 20
SHN_XINDEX = 0xFFFF

#: struct formats (without the byte order) of the records, shared with :mod:`klpcore.elfwriter`
EHDR64_FORMAT = "HHIQQQIHHHHHH"  # e_type .. e_shstrndx, after the 16 bytes of e_ident
SHDR64_FORMAT = "IIQQQQIIQQ"
PHDR64_FORMAT = "IIQQQQQQ"
PHDR64_SIZE = 56


class ElfHeaderError(ValueError):
    """The bytes are not (enough of) an ELF header; the message says what is wrong."""


class Ident(NamedTuple):
    """The class-independent start of an ELF file: ``e_ident``, ``e_type`` and ``e_machine``."""

    elfclass: int  # e_ident[EI_CLASS]: 1 (32-bit) or 2 (64-bit) in a valid file
    encoding: int  # e_ident[EI_DATA]: 1 (little-endian) or 2 (big-endian) in a valid file
    type: int
    machine: int

    @property
    def byteorder(self) -> Literal["little", "big"]:
        """``little`` for ELFDATA2LSB, else ``big`` (callers that care check :attr:`encoding`)."""
        return "little" if self.encoding == C.ELFDATA2LSB else "big"

    @property
    def endian(self) -> Literal["<", ">"]:
        return "<" if self.encoding == C.ELFDATA2LSB else ">"


class FileHeader(NamedTuple):
    """An ``Elf64_Ehdr`` (``e_shnum`` and ``e_shstrndx`` as stored: see :func:`section_count`)."""

    ident: Ident
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int

    @property
    def endian(self) -> Literal["<", ">"]:
        return self.ident.endian

    @property
    def byteorder(self) -> Literal["little", "big"]:
        return self.ident.byteorder


class SectionHeader(NamedTuple):
    """An ``Elf64_Shdr``, field for field (``name`` is the offset in the name table)."""

    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


class ProgramHeader(NamedTuple):
    """An ``Elf64_Phdr``, field for field."""

    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


def read_ident(data: Buffer) -> Ident:
    """The first :data:`IDENT_SIZE` bytes of an ELF file, 32- or 64-bit."""
    if len(data) < IDENT_SIZE:
        raise ElfHeaderError(f"file too short for an ELF header ({len(data)} bytes)")
    if bytes(data[:4]) != C.ELFMAG:
        raise ElfHeaderError("not an ELF file (bad magic)")
    elfclass, encoding = data[4], data[5]
    endian = "<" if encoding == C.ELFDATA2LSB else ">"
    etype, machine = struct.unpack_from(endian + "HH", data, 16)
    return Ident(elfclass, encoding, etype, machine)


def read_header(data: Buffer) -> FileHeader:
    """The ``Elf64_Ehdr`` at the start of ``data``: a 64-bit file of known byte order."""
    if len(data) < C.EHDR_SIZE:
        raise ElfHeaderError(f"file too short for an ELF header ({len(data)} bytes)")
    ident = read_ident(data)
    if ident.elfclass != C.ELFCLASS64:
        raise ElfHeaderError(f"ELF class {ident.elfclass} is not ELFCLASS64; only 64-bit files are supported")
    if ident.encoding not in (C.ELFDATA2LSB, C.ELFDATA2MSB):
        raise ElfHeaderError(f"unknown ELF data encoding {ident.encoding}")
    _type, _machine, *rest = struct.unpack_from(ident.endian + EHDR64_FORMAT, data, 16)
    return FileHeader(ident, *rest)


def section_header(data: Buffer, hdr: FileHeader, index: int) -> SectionHeader:
    """Section header ``index`` (at ``e_shoff + index * e_shentsize``), which must lie in ``data``."""
    offset = hdr.shoff + index * hdr.shentsize
    if hdr.shentsize < C.SHDR_SIZE or offset + C.SHDR_SIZE > len(data):
        raise ElfHeaderError(
            f"section header {index} (offset {offset:#x}, e_shentsize {hdr.shentsize}) is not inside the file "
            f"({len(data)} bytes)"
        )
    return SectionHeader(*struct.unpack_from(hdr.endian + SHDR64_FORMAT, data, offset))


def section_count(data: Buffer, hdr: FileHeader) -> int:
    """The number of section headers: 0 without a table, else ``e_shnum`` or (extended numbering)
    section 0's ``sh_size``."""
    if hdr.shoff == 0:
        return 0
    if hdr.shnum == 0:
        return section_header(data, hdr, 0).size
    return hdr.shnum


def string_table_index(data: Buffer, hdr: FileHeader) -> int:
    """The section name string table's index: ``e_shstrndx``, or section 0's ``sh_link`` when it
    is ``SHN_XINDEX``."""
    if hdr.shstrndx != SHN_XINDEX:
        return hdr.shstrndx
    return section_header(data, hdr, 0).link


def section_headers(data: Buffer, hdr: FileHeader, count: int | None = None) -> list[SectionHeader]:
    """The first ``count`` section headers (default: :func:`section_count`), each inside ``data``."""
    n = section_count(data, hdr) if count is None else count
    if n and hdr.shentsize == C.SHDR_SIZE and hdr.shoff + n * C.SHDR_SIZE <= len(data):
        fmt = struct.Struct(hdr.endian + SHDR64_FORMAT)
        return [SectionHeader(*fmt.unpack_from(data, hdr.shoff + i * C.SHDR_SIZE)) for i in range(n)]
    return [section_header(data, hdr, i) for i in range(n)]


def program_headers(data: Buffer, hdr: FileHeader) -> list[ProgramHeader]:
    """The ``e_phnum`` program headers from ``e_phoff``, up to the first that is not inside ``data``."""
    fmt = struct.Struct(hdr.endian + PHDR64_FORMAT)
    out = []
    for i in range(hdr.phnum):
        at = hdr.phoff + i * hdr.phentsize
        if at + PHDR64_SIZE > len(data):
            break
        out.append(ProgramHeader(*fmt.unpack_from(data, at)))
    return out
