"""One writer of ELF64 files: the file header, section contents at aligned offsets, and the section
header table, in the records :mod:`klpcore.elfheader` reads.

:func:`~klpcore.output.write_elf` (a relocated module), ``klpcore convert``'s
:mod:`klpcore.convert.elfedit` (a livepatch module) and the tests' object builders use it; what
goes into the sections is theirs.  Offsets are aligned with ``offset + (-offset) % align``, which for
the powers of two of valid files is the usual rounding, and for other values (hostile test inputs)
still gives an offset that is a multiple of ``align``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from . import constants as C
from .elfheader import EHDR64_FORMAT, SHDR64_FORMAT, SectionHeader

#: e_ident[EI_VERSION] and e_version: EV_CURRENT
EV_CURRENT = 1

#: byte offset and struct format of each ``Elf64_Ehdr`` field after ``e_ident``
_EHDR_FIELDS = {
    name: (16 + struct.calcsize("=" + EHDR64_FORMAT[:i]), EHDR64_FORMAT[i])
    for i, name in enumerate(
        (
            "type",
            "machine",
            "version",
            "entry",
            "phoff",
            "shoff",
            "flags",
            "ehsize",
            "phentsize",
            "phnum",
            "shentsize",
            "shnum",
            "shstrndx",
        )
    )
}


def pack_file_header(
    endian: str,
    *,
    type: int,
    machine: int,
    flags: int = 0,
    shoff: int = 0,
    shnum: int = 0,
    shstrndx: int = 0,
    elfclass: int = C.ELFCLASS64,
    version: int = EV_CURRENT,
    entry: int = 0,
    phoff: int = 0,
    ehsize: int = C.EHDR_SIZE,
    phentsize: int = 0,
    phnum: int = 0,
    shentsize: int = C.SHDR_SIZE,
) -> bytes:
    """An ``Elf64_Ehdr`` in ``endian`` (``<`` or ``>``) byte order (``e_ident``'s OS ABI 0)."""
    encoding = C.ELFDATA2LSB if endian == "<" else C.ELFDATA2MSB
    ident = C.ELFMAG + bytes([elfclass, encoding, EV_CURRENT]) + bytes(9)
    return ident + struct.pack(
        endian + EHDR64_FORMAT,
        type,
        machine,
        version,
        entry,
        phoff,
        shoff,
        flags,
        ehsize,
        phentsize,
        phnum,
        shentsize,
        shnum,
        shstrndx,
    )


def pack_section_header(endian: str, sh: SectionHeader) -> bytes:
    """An ``Elf64_Shdr`` in ``endian`` byte order."""
    return struct.pack(endian + SHDR64_FORMAT, *sh)


class ElfWriter:
    """An ELF file being written: a 64-byte file header, then contents appended one after another.

    :param endian: ``<`` or ``>``.
    :param header: the file header to start from (default: zeros; see :meth:`set_header`).
    """

    def __init__(self, endian: str, header: bytes | None = None) -> None:
        if header is not None and len(header) != C.EHDR_SIZE:
            raise ValueError(f"an ELF64 file header is {C.EHDR_SIZE} bytes, not {len(header)}")
        self.endian = endian
        self.data = bytearray(header if header is not None else bytes(C.EHDR_SIZE))

    @property
    def end(self) -> int:
        """The current end of the file (where a ``SHT_NOBITS`` section is said to be)."""
        return len(self.data)

    def add(self, contents: bytes, align: int = 1) -> int:
        """Append ``contents`` at the next offset that is a multiple of ``align`` (zero padding);
        returns that offset."""
        offset = len(self.data) + (-len(self.data)) % max(align, 1)
        self.data += bytes(offset - len(self.data))
        self.data += contents
        return offset

    def add_section_headers(self, rows: Iterable[SectionHeader]) -> int:
        """Append the section header table (8-aligned) and point ``e_shoff`` at it; returns its offset."""
        shoff = self.add(b"".join(pack_section_header(self.endian, r) for r in rows), 8)
        self.set_header(shoff=shoff)
        return shoff

    def set_header(self, **fields: int) -> None:
        """Set file header fields by name (``shoff``, ``shnum``, ``shstrndx``, ``type`` ...)."""
        for name, value in fields.items():
            offset, fmt = _EHDR_FIELDS[name]
            struct.pack_into(self.endian + fmt, self.data, offset, value)

    def header_field(self, name: str) -> int:
        """The current value of a file header field."""
        offset, fmt = _EHDR_FIELDS[name]
        return int(struct.unpack_from(self.endian + fmt, self.data, offset)[0])

    def getvalue(self) -> bytes:
        return bytes(self.data)
