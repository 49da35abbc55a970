"""Reading kernel-module ELF files.

Headers and section headers are read by :mod:`klpcore.elfheader`; the
symbol table and relocation tables are read as numpy structured arrays, one
array per table, never one Python object per entry.  Every offset and index
that later code trusts is validated here, and each failure raises
:class:`~klpcore.errors.ElfFormatError` naming what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from . import constants as C
from .elfheader import ElfHeaderError, read_header, section_count, section_headers, string_table_index
from .errors import Diagnostic, ElfFormatError


def sym_dtype(endian: str) -> np.dtype[Any]:
    """numpy dtype of an ``Elf64_Sym`` in the given byte order (``<``/``>``)."""
    return np.dtype(
        [
            ("st_name", endian + "u4"),
            ("st_info", "u1"),
            ("st_other", "u1"),
            ("st_shndx", endian + "u2"),
            ("st_value", endian + "u8"),
            ("st_size", endian + "u8"),
        ]
    )


def rela_dtype(endian: str) -> np.dtype[Any]:
    """numpy dtype of an ``Elf64_Rela`` in the given byte order."""
    return np.dtype(
        [
            ("r_offset", endian + "u8"),
            ("r_info", endian + "u8"),
            ("r_addend", endian + "i8"),
        ]
    )


@dataclass
class Section:
    """A section header, as a mutable record (arch setup may resize sections)."""

    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & C.SHF_ALLOC)

    @property
    def is_exec(self) -> bool:
        return bool(self.flags & C.SHF_EXECINSTR)

    @property
    def is_write(self) -> bool:
        return bool(self.flags & C.SHF_WRITE)

    @property
    def is_nobits(self) -> bool:
        return self.type == C.SHT_NOBITS

    def copy(self) -> Section:
        # the same as dataclasses.replace(self) (a plain record: no __post_init__), a fifth of the cost;
        # every module opened copies all its section headers
        new = object.__new__(Section)
        new.__dict__.update(self.__dict__)
        return new


def _cstr(table: bytes, offset: int) -> str | None:
    if offset >= len(table):
        return None
    end = table.find(b"\0", offset)
    if end < 0:
        return None
    return table[offset:end].decode("utf-8", "surrogateescape")


def _names_at(table: bytes, offsets: np.ndarray) -> list[str] | None:
    """The NUL-terminated strings of ``table`` at ``offsets`` (what :func:`_cstr` gives each), from
    one decode and split of the table; None when the table is not plain ASCII with a final NUL or an
    offset is outside it (the caller then goes string by string and names the bad one)."""
    if not table or table[-1] != 0 or not table.isascii():
        return None
    offs = offsets.astype(np.int64)
    if offs.size and int(offs.max()) >= len(table):
        return None
    pieces = table.decode("ascii").split("\0")
    ends = np.flatnonzero(np.frombuffer(table, dtype=np.uint8) == 0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    k = np.searchsorted(starts, offs, side="right") - 1
    names = [pieces[i] for i in k.tolist()]
    for j in np.flatnonzero(starts[k] != offs).tolist():  # a tail of another string (shared suffix)
        names[j] = names[j][int(offs[j] - starts[k[j]]) :]
    return names


class ElfModule:
    """A relocatable 64-bit ELF object: a kernel module or a livepatch module.

    The object is immutable apart from :attr:`sections` (copies of the headers
    that arch setup may change) and the relocation arrays returned by
    :meth:`relas`, which arch setup may reorder as the kernel does.
    """

    def __init__(self, data: bytes, name: str | None = None, path: str | None = None) -> None:
        self.data = bytes(data)
        self.path = path
        self._relas: dict[int, np.ndarray] = {}
        try:
            self._parse_headers()
        except ElfFormatError:
            raise
        except Exception as exc:  # a parsing bug must still name the file
            raise ElfFormatError(self._diag(f"malformed ELF: {type(exc).__name__}: {exc}")) from exc
        self._parse_symtab()
        self.name = name or self._module_name()

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_file(cls, path: str | os.PathLike[str], name: str | None = None) -> ElfModule:
        """Read a module file, plain or compressed (``.ko.xz``, ``.ko.zst``,
        ``.ko.gz``: detected by content), within :data:`~klpcore.compress.MODULE_LIMIT`."""
        from .compress import MODULE_LIMIT, read_input

        data = read_input(path, limit=MODULE_LIMIT, what="module", error=ElfFormatError)
        return cls(data, name=name, path=os.fspath(path))

    def _diag(self, message: str, section: str | None = None) -> Diagnostic:
        label = os.path.basename(self.path) if self.path else None
        return Diagnostic(message, module=getattr(self, "name", None) or label, section=section)

    def _fail(self, message: str, section: str | None = None) -> ElfFormatError:
        return ElfFormatError(self._diag(message, section))

    def _parse_headers(self) -> None:
        data = self.data
        if len(data) < C.EHDR_SIZE:
            raise self._fail(f"file too short for an ELF header ({len(data)} bytes)")
        if data[:4] != C.ELFMAG:
            raise self._fail("not an ELF file (bad magic)")
        if data[4] != C.ELFCLASS64:
            raise self._fail(f"ELF class {data[4]} is not ELFCLASS64; only 64-bit modules are supported")
        if data[5] not in (C.ELFDATA2LSB, C.ELFDATA2MSB):
            raise self._fail(f"unknown ELF data encoding {data[5]}")
        hdr = read_header(data)
        self.endian = hdr.endian
        self.byteorder: str = hdr.byteorder
        self.elfclass = C.ELFCLASS64
        self.etype_value = hdr.ident.type
        if self.etype_value != C.ET_REL:
            etype = _ET_NAMES.get(self.etype_value, self.etype_value)
            raise self._fail(f"ELF type {etype} is not ET_REL; a kernel module is a relocatable object")
        self.machine = hdr.ident.machine
        self.e_flags = hdr.flags
        if hdr.shentsize != C.SHDR_SIZE:
            raise self._fail(f"e_shentsize is {hdr.shentsize}, expected {C.SHDR_SIZE}")
        shoff = hdr.shoff
        try:
            shnum = section_count(data, hdr)
        except ElfHeaderError as exc:
            raise self._fail(str(exc)) from None
        if shoff == 0 or shnum == 0:
            raise self._fail("no section header table")
        if shoff + shnum * C.SHDR_SIZE > len(data):
            raise self._fail(
                f"section header table (offset {shoff:#x}, {shnum} entries) runs past the end of the file "
                f"({len(data)} bytes)"
            )
        shstrndx = string_table_index(data, hdr)
        if not 0 < shstrndx < shnum:
            raise self._fail(f"section name string table index {shstrndx} out of range (0..{shnum - 1})")
        raw = section_headers(data, hdr, shnum)
        strsh = raw[shstrndx]
        if strsh.type != C.SHT_STRTAB:
            raise self._fail(f"section name table (index {shstrndx}) is not SHT_STRTAB")
        self._check_bounds(strsh.offset, strsh.size, f"[{shstrndx}]", nobits=False)
        shstr = data[strsh.offset : strsh.offset + strsh.size]
        sections: list[Section] = []
        for i, sh in enumerate(raw):
            name = _cstr(shstr, sh.name)
            if name is None:
                raise self._fail(f"section [{i}] name offset {sh.name:#x} is outside the name table")
            stype = sh.type
            sec = Section(
                index=i,
                name=name,
                type=stype,
                flags=sh.flags,
                addr=sh.addr,
                offset=sh.offset,
                size=sh.size,
                link=sh.link,
                info=sh.info,
                addralign=sh.addralign,
                entsize=sh.entsize,
            )
            if i and stype not in (C.SHT_NOBITS, C.SHT_NULL):
                self._check_bounds(sec.offset, sec.size, name, nobits=False)
            if sec.addralign & (sec.addralign - 1):
                raise self._fail(f"alignment {sec.addralign} is not a power of two", name)
            sections.append(sec)
        self.sections = sections
        self.shstrndx = shstrndx

    def _check_bounds(self, offset: int, size: int, name: str, nobits: bool) -> None:
        if nobits:
            return
        if offset > len(self.data) or size > len(self.data) - offset:
            raise self._fail(
                f"contents (offset {offset:#x}, size {size:#x}) run past the end of the file ({len(self.data)} bytes)",
                name,
            )

    def _parse_symtab(self) -> None:
        symtabs = [s for s in self.sections if s.type == C.SHT_SYMTAB]
        if not symtabs:
            raise self._fail("module has no symbol table (stripped?)")
        if len(symtabs) > 1:
            raise self._fail(f"module has {len(symtabs)} symbol tables, expected one")
        st = symtabs[0]
        self.symtab_index = st.index
        if st.size % C.SYM_SIZE:
            raise self._fail(f"size {st.size} is not a multiple of {C.SYM_SIZE}", st.name)
        if not 0 < st.link < len(self.sections) or self.sections[st.link].type != C.SHT_STRTAB:
            raise self._fail(f"sh_link {st.link} does not name a string table", st.name)
        strsec = self.sections[st.link]
        self.strtab = self.data[strsec.offset : strsec.offset + strsec.size]
        count = st.size // C.SYM_SIZE
        # a writable copy: arch setup may change symbols as the kernel does in its image
        self.symbols: np.ndarray = np.frombuffer(
            self.data, dtype=sym_dtype(self.endian), count=count, offset=st.offset
        ).copy()
        self.nsyms = count
        names = _names_at(self.strtab, self.symbols["st_name"])
        if names is None:
            names = []
            for i, off in enumerate(self.symbols["st_name"].tolist()):
                name = _cstr(self.strtab, off)
                if name is None:
                    raise self._fail(
                        f"symbol #{i} name offset {off:#x} is outside the string table",
                        st.name,
                    )
                names.append(name)
        self.symbol_names: list[str] = names
        shndx = self.symbols["st_shndx"]
        bad = np.nonzero((shndx >= len(self.sections)) & (shndx < C.SHN_LORESERVE))[0]
        if bad.size:
            i = int(bad[0])
            raise self._fail(
                f"symbol #{i} ({names[i]}) has section index {int(shndx[i])} out of range",
                st.name,
            )

    # ------------------------------------------------------------------- access
    def section_data(self, index: int) -> bytes:
        sec = self.sections[index]
        if sec.is_nobits:
            return bytes(sec.size)
        orig = self._orig_size(index)
        data = self.data[sec.offset : sec.offset + min(orig, sec.size)]
        if sec.size > len(data):  # grown by arch setup: zero-filled tail
            data += bytes(sec.size - len(data))
        return data

    @cached_property
    def _orig_sizes(self) -> list[int]:
        return [s.size for s in self.sections]

    def _orig_size(self, index: int) -> int:
        return self._orig_sizes[index]

    def section_by_name(self, name: str) -> Section | None:
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def relas(self, index: int) -> np.ndarray:
        """The entries of SHT_RELA section ``index`` as a structured array.

        The array is a private, writable copy cached per section so that arch
        setup can reorder it in place, as the kernel sorts relocation sections
        in the module image.  Symbol indexes are checked against the symtab.
        """
        arr = self._relas.get(index)
        if arr is not None:
            return arr
        sec = self.sections[index]
        if sec.type != C.SHT_RELA:
            raise self._fail("not a SHT_RELA section", sec.name)
        if sec.size % C.RELA_SIZE:
            raise self._fail(f"size {sec.size} is not a multiple of {C.RELA_SIZE}", sec.name)
        # like the kernel, ignore sh_entsize (entries are sizeof(Elf64_Rela)) and sh_link (the one
        # symbol table is used whatever the section names)
        count = sec.size // C.RELA_SIZE
        arr = np.frombuffer(self.data, dtype=rela_dtype(self.endian), count=count, offset=sec.offset).copy()
        syms = arr["r_info"] >> np.uint64(32)
        bad = np.nonzero(syms >= np.uint64(self.nsyms))[0]
        if bad.size:
            i = int(bad[0])
            raise ElfFormatError(
                Diagnostic(
                    f"symbol index {int(syms[i])} is outside the symbol table ({self.nsyms} entries)"
                    + (f"; {bad.size} entries affected" if bad.size > 1 else ""),
                    module=self.name,
                    section=sec.name,
                    index=i,
                )
            )
        self._relas[index] = arr
        return arr

    def rela_sections(self) -> list[Section]:
        return [s for s in self.sections if s.type == C.SHT_RELA]

    def symbol_name(self, index: int) -> str:
        return self.symbol_names[index]

    def symbol_label(self, index: int) -> str:
        """The symbol's name, or for an unnamed section symbol the name of its
        section (as readelf shows relocations against it)."""
        name = self.symbol_names[index]
        if name:
            return name
        shndx = int(self.symbols["st_shndx"][index])
        if int(self.symbols["st_info"][index]) & 0xF == C.STT_SECTION and 0 < shndx < len(self.sections):
            return self.sections[shndx].name
        return name

    @cached_property
    def modinfo(self) -> dict[str, list[str]]:
        """``.modinfo`` key/value strings (a key may repeat)."""
        out: dict[str, list[str]] = {}
        sec = self.section_by_name(".modinfo")
        if sec is None or sec.is_nobits:
            return out
        for item in self.data[sec.offset : sec.offset + sec.size].split(b"\0"):
            if b"=" in item:
                key, _, value = item.decode("utf-8", "replace").partition("=")
                out.setdefault(key, []).append(value)
        return out

    @property
    def is_livepatch(self) -> bool:
        return self.modinfo.get("livepatch", [""])[-1] == "Y"

    def _module_name(self) -> str:
        names = self.modinfo.get("name")
        if names and names[-1]:
            return names[-1]
        if self.path:
            base = os.path.basename(self.path)
            for ext in (".xz", ".zst", ".gz", ".ko", ".o"):
                base = base.removesuffix(ext)
            return base.replace("-", "_")
        return "module"


#: e_type names for messages
_ET_NAMES = {
    0: "ET_NONE",
    1: "ET_REL",
    2: "ET_EXEC",
    3: "ET_DYN",
    4: "ET_CORE",
    0xFF00: "ET_LOPROC",
    0xFFFF: "ET_HIPROC",
}
