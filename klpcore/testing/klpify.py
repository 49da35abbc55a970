"""Turn an ordinary relocatable ELF64 object into a livepatch module.

``klpify`` takes the bytes of an ``ET_REL`` ELFCLASS64 object (either byte
order) and a mapping from symbol names in its ``.symtab`` to the object each
symbol belongs to, and returns a new ELF image in which

* every relocation entry against one of those symbols, in an ``SHT_RELA``
  section whose target section is ``SHF_ALLOC``, is moved into a livepatch
  relocation section, one per (object, target section) pair, keeping input
  order;
* those symbols are renamed/marked as livepatch symbols in place (symbol
  indexes never change, so all other relocations stay valid);
* ``.modinfo`` carries ``livepatch=Y`` (optional).

Two on-disk formats are produced:

``fmt="final"`` (Linux 4.7+, ``Documentation/livepatch/module-elf-format.rst``)
    Sections ``.klp.rela.<objname>.<target>`` with ``SHF_ALLOC |
    SHF_INFO_LINK | SHF_RELA_LIVEPATCH``; symbols renamed to
    ``.klp.sym.<objname>.<name>,<sympos>`` with ``st_shndx = SHN_LIVEPATCH``
    and ``st_value = 0``.  ``KlpSym.external`` is ignored.

``fmt="rfc"`` (the 2015 RFC prototype)
    Sections ``__klp_rela_<objname><target>`` with ``SHF_INFO_LINK |
    SHF_RELA_LIVEPATCH_RFC`` (not ``SHF_ALLOC``); symbols keep their names,
    get ``st_shndx = SHN_LIVEPATCH_RFC`` and ``st_value = 0``, and symbols
    marked ``external`` get binding ``STB_LIVEPATCH_EXT``.  The format has
    no sympos, so a non-zero sympos is an error.

Two ways of treating the original relocation section:

``style="kpatch"``
    The moved entries are removed from the normal ``.rela.<sec>`` section
    (kpatch ``create-klp-module``).

``style="objtool"``
    The moved entries stay in the normal section with type 0 (``R_*_NONE``),
    pointing at a new weak undefined ``NOTYPE`` symbol
    ``.klp.tombstone.<name>`` appended at the end of the symbol table
    (upstream ``objtool klp post-link``).

Existing section indexes never change; new sections are appended at the end
of the section header table and new names are appended to the existing
string tables.  The output is a freshly laid out ELF file: header, optional
program headers, section contents in index order (each aligned to its
``sh_addralign``), section header table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Literal

from klpcore.constants import (
    EHDR_SIZE,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFDATA2MSB,
    ELFMAG,
    ET_REL,
    KLP_OBJNAME_MAX,
    KLP_RELA_PREFIX,
    KLP_RFC_RELA_PREFIX,
    KLP_SYM_PREFIX,
    KLP_TOMBSTONE_PREFIX,
    REL_SIZE,
    RELA_SIZE,
    SHDR_SIZE,
    SHF_ALLOC,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHF_RELA_LIVEPATCH_RFC,
    SHN_LIVEPATCH,
    SHN_LIVEPATCH_RFC,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHN_XINDEX,
    SHT_NOBITS,
    SHT_NULL,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_LIVEPATCH_EXT,
    STB_WEAK,
    STT_FILE,
    STT_NOTYPE,
    STT_SECTION,
    SYM_SIZE,
)

__all__ = ["Format", "KlpSym", "KlpifyError", "Style", "klpify", "main"]

Format = Literal["final", "rfc"]
Style = Literal["kpatch", "objtool"]

#: ``SHT_SYMTAB_SHNDX`` (gABI); not in klpcore.constants.
_SHT_SYMTAB_SHNDX = 18
#: ``EM_MIPS``: its ELF64 ``r_info`` layout differs from every other machine.
_EM_MIPS = 8
_EI_CLASS = 4
_EI_DATA = 5
_MODINFO = ".modinfo"
_LIVEPATCH_MODINFO = b"livepatch=Y"
_U64_MAX = (1 << 64) - 1


class KlpifyError(ValueError):
    """The input object or the requested conversion is invalid."""


@dataclasses.dataclass(frozen=True)
class KlpSym:
    """Where a livepatch symbol lives.

    ``objname`` is ``"vmlinux"`` or a module name (no dots, at most 55
    characters).  ``sympos`` is the symbol's position among same-named symbols
    of that object (0 = unique; final format only).  ``external`` marks a
    symbol defined outside the patched object (RFC format only).
    """

    objname: str
    sympos: int = 0
    external: bool = False


# --------------------------------------------------------------------------
# ELF model
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Section:
    name: str
    sh_name: int
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int
    sh_info: int
    sh_addralign: int
    sh_entsize: int
    data: bytearray

    @property
    def has_file_data(self) -> bool:
        return self.sh_type not in (SHT_NOBITS, SHT_NULL)


@dataclasses.dataclass
class _Symbol:
    st_name: int
    st_info: int
    st_other: int
    st_shndx: int
    st_value: int
    st_size: int

    @property
    def bind(self) -> int:
        return self.st_info >> 4

    @property
    def type(self) -> int:
        return self.st_info & 0xF


@dataclasses.dataclass
class _Rela:
    r_offset: int
    r_sym: int
    r_type: int
    r_addend: int


def _round_up(value: int, align: int) -> int:
    if align <= 1:
        return value
    return (value + align - 1) // align * align


def _cstr(table: bytes | bytearray, offset: int) -> str:
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset)
    if end < 0:
        end = len(table)
    return bytes(table[offset:end]).decode("utf-8", "surrogateescape")


class _Elf:
    """A parsed ELF64 relocatable object that can be written back out."""

    _EHDR_TAIL = "HHIQQQIHHHHHH"
    _SHDR = "IIQQQQIIQQ"
    _SYM = "IBBHQQ"
    _RELA = "QQq"
    _REL = "QQ"

    def __init__(self, data: bytes) -> None:
        if len(data) < EHDR_SIZE or data[:4] != ELFMAG:
            raise KlpifyError("input is not an ELF file")
        if data[_EI_CLASS] != ELFCLASS64:
            raise KlpifyError(f"input is not ELFCLASS64 (EI_CLASS={data[_EI_CLASS]})")
        if data[_EI_DATA] == ELFDATA2LSB:
            self.endian = "<"
        elif data[_EI_DATA] == ELFDATA2MSB:
            self.endian = ">"
        else:
            raise KlpifyError(f"input has unknown byte order (EI_DATA={data[_EI_DATA]})")
        self.ident = bytes(data[:16])
        (
            self.e_type,
            self.e_machine,
            self.e_version,
            self.e_entry,
            e_phoff,
            e_shoff,
            self.e_flags,
            _e_ehsize,
            e_phentsize,
            e_phnum,
            e_shentsize,
            e_shnum,
            e_shstrndx,
        ) = struct.unpack_from(self.endian + self._EHDR_TAIL, data, 16)
        if self.e_type != ET_REL:
            raise KlpifyError(f"input is not a relocatable object (e_type={self.e_type}, want ET_REL)")
        if self.e_machine == _EM_MIPS:
            raise KlpifyError("MIPS64 objects (special r_info layout) are not supported")

        self.e_phentsize = e_phentsize
        self.e_phnum = e_phnum
        self.phdrs = b""
        if e_phnum:
            end = e_phoff + e_phnum * e_phentsize
            if end > len(data):
                raise KlpifyError("program header table lies outside the file")
            self.phdrs = bytes(data[e_phoff:end])

        self.sections: list[_Section] = []
        if e_shoff == 0:
            raise KlpifyError("input has no section header table")
        if e_shentsize != SHDR_SIZE:
            raise KlpifyError(f"unexpected e_shentsize {e_shentsize}")
        first = self._read_shdr(data, e_shoff)
        shnum = e_shnum if e_shnum else first.sh_size
        shstrndx = first.sh_link if e_shstrndx == SHN_XINDEX else e_shstrndx
        if shnum == 0:
            raise KlpifyError("input has no sections")
        if e_shoff + shnum * SHDR_SIZE > len(data):
            raise KlpifyError("section header table lies outside the file")
        self.sections.append(first)
        for i in range(1, shnum):
            self.sections.append(self._read_shdr(data, e_shoff + i * SHDR_SIZE))
        for i, sec in enumerate(self.sections):
            if i and sec.has_file_data:
                if sec.sh_offset + sec.sh_size > len(data):
                    raise KlpifyError(f"section {i} data lies outside the file")
                sec.data = bytearray(data[sec.sh_offset : sec.sh_offset + sec.sh_size])
        if not 0 < shstrndx < shnum or self.sections[shstrndx].sh_type != SHT_STRTAB:
            raise KlpifyError(f"bad section name string table index {shstrndx}")
        self.shstrndx = shstrndx
        shstrtab = self.sections[shstrndx].data
        for sec in self.sections:
            sec.name = _cstr(shstrtab, sec.sh_name)
        self._string_cache: dict[tuple[int, str], int] = {}

    # -- low-level records --------------------------------------------------

    def _read_shdr(self, data: bytes, offset: int) -> _Section:
        (
            sh_name,
            sh_type,
            sh_flags,
            sh_addr,
            sh_offset,
            sh_size,
            sh_link,
            sh_info,
            sh_addralign,
            sh_entsize,
        ) = struct.unpack_from(self.endian + self._SHDR, data, offset)
        return _Section(
            name="",
            sh_name=sh_name,
            sh_type=sh_type,
            sh_flags=sh_flags,
            sh_addr=sh_addr,
            sh_offset=sh_offset,
            sh_size=sh_size,
            sh_link=sh_link,
            sh_info=sh_info,
            sh_addralign=sh_addralign,
            sh_entsize=sh_entsize,
            data=bytearray(),
        )

    def read_symbols(self, symtab: _Section) -> list[_Symbol]:
        fmt = self.endian + self._SYM
        return [_Symbol(*f) for f in struct.iter_unpack(fmt, bytes(symtab.data))]

    def write_symbols(self, symtab: _Section, symbols: list[_Symbol]) -> None:
        fmt = self.endian + self._SYM
        symtab.data = bytearray(
            b"".join(
                struct.pack(
                    fmt,
                    s.st_name,
                    s.st_info,
                    s.st_other,
                    s.st_shndx,
                    s.st_value,
                    s.st_size,
                )
                for s in symbols
            )
        )

    def read_relas(self, sec: _Section) -> list[_Rela]:
        out = []
        for r_offset, r_info, r_addend in struct.iter_unpack(self.endian + self._RELA, bytes(sec.data)):
            out.append(_Rela(r_offset, r_info >> 32, r_info & 0xFFFFFFFF, r_addend))
        return out

    def pack_relas(self, relas: Sequence[_Rela]) -> bytearray:
        fmt = self.endian + self._RELA
        return bytearray(b"".join(struct.pack(fmt, r.r_offset, (r.r_sym << 32) | r.r_type, r.r_addend) for r in relas))

    def read_rel_symbols(self, sec: _Section) -> list[int]:
        fmt = self.endian + self._REL
        return [r_info >> 32 for _, r_info in struct.iter_unpack(fmt, bytes(sec.data))]

    def add_string(self, table_index: int, text: str) -> int:
        """Append ``text`` to string table ``table_index``; return its offset."""
        key = (table_index, text)
        if key in self._string_cache:
            return self._string_cache[key]
        encoded = text.encode("utf-8", "surrogateescape")
        if b"\0" in encoded:
            raise KlpifyError(f"string {text!r} contains a NUL byte")
        table = self.sections[table_index]
        if not table.data or table.data[-1] != 0:
            table.data.append(0)
        offset = len(table.data)
        table.data += encoded + b"\0"
        self._string_cache[key] = offset
        return offset

    def add_section(self, sec: _Section) -> int:
        sec.sh_name = self.add_string(self.shstrndx, sec.name)
        self.sections.append(sec)
        return len(self.sections) - 1

    # -- output -------------------------------------------------------------

    def serialize(self) -> bytes:
        out = bytearray(EHDR_SIZE)
        e_phoff = 0
        if self.phdrs:
            e_phoff = len(out)
            out += self.phdrs
        for sec in self.sections[1:]:
            offset = _round_up(len(out), sec.sh_addralign)
            out += bytes(offset - len(out))
            sec.sh_offset = offset
            if sec.has_file_data:
                out += sec.data
                sec.sh_size = len(sec.data)
        e_shoff = _round_up(len(out), 8)
        out += bytes(e_shoff - len(out))

        shnum = len(self.sections)
        null = self.sections[0]
        null.sh_size = shnum if shnum >= SHN_LORESERVE else 0
        null.sh_link = self.shstrndx if self.shstrndx >= SHN_LORESERVE else 0
        fmt = self.endian + self._SHDR
        for sec in self.sections:
            out += struct.pack(
                fmt,
                sec.sh_name,
                sec.sh_type,
                sec.sh_flags,
                sec.sh_addr,
                sec.sh_offset,
                sec.sh_size,
                sec.sh_link,
                sec.sh_info,
                sec.sh_addralign,
                sec.sh_entsize,
            )
        struct.pack_into(
            self.endian + self._EHDR_TAIL,
            out,
            16,
            self.e_type,
            self.e_machine,
            self.e_version,
            self.e_entry,
            e_phoff,
            e_shoff,
            self.e_flags,
            EHDR_SIZE,
            self.e_phentsize if self.phdrs else 0,
            self.e_phnum if self.phdrs else 0,
            SHDR_SIZE,
            shnum if shnum < SHN_LORESERVE else 0,
            self.shstrndx if self.shstrndx < SHN_LORESERVE else SHN_XINDEX,
        )
        out[:16] = self.ident
        return bytes(out)


# --------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------


def _check_request(name: str, ksym: object, fmt: Format) -> KlpSym:
    if not isinstance(ksym, KlpSym):
        raise KlpifyError(f"symbol {name!r}: expected a KlpSym, got {type(ksym).__name__}")
    objname = ksym.objname
    if not objname:
        raise KlpifyError(f"symbol {name!r}: empty objname")
    if "." in objname:
        raise KlpifyError(f"symbol {name!r}: objname {objname!r} contains '.'")
    if "\0" in objname:
        raise KlpifyError(f"symbol {name!r}: objname {objname!r} contains a NUL byte")
    if len(objname) > KLP_OBJNAME_MAX:
        raise KlpifyError(
            f"symbol {name!r}: objname {objname!r} is longer than {KLP_OBJNAME_MAX} characters ({len(objname)})"
        )
    if ksym.sympos < 0:
        raise KlpifyError(f"symbol {name!r}: negative sympos {ksym.sympos}")
    if ksym.sympos > _U64_MAX:
        raise KlpifyError(f"symbol {name!r}: sympos {ksym.sympos} does not fit unsigned long")
    if fmt == "final" and "," in name:
        raise KlpifyError(f"symbol {name!r}: name contains ',' and cannot be a .klp.sym name")
    if fmt == "rfc" and ksym.sympos != 0:
        raise KlpifyError(f"symbol {name!r}: the rfc format has no sympos (got {ksym.sympos})")
    return ksym


def _find_symtab(elf: _Elf) -> int:
    found = [i for i, s in enumerate(elf.sections) if s.sh_type == SHT_SYMTAB]
    if not found:
        raise KlpifyError("input has no SHT_SYMTAB section")
    if len(found) > 1:
        raise KlpifyError(f"input has {len(found)} SHT_SYMTAB sections")
    index = found[0]
    symtab = elf.sections[index]
    if symtab.sh_entsize not in (0, SYM_SIZE) or len(symtab.data) % SYM_SIZE:
        raise KlpifyError(f"section {symtab.name!r}: malformed symbol table")
    strndx = symtab.sh_link
    if not 0 < strndx < len(elf.sections) or elf.sections[strndx].sh_type != SHT_STRTAB:
        raise KlpifyError(f"section {symtab.name!r}: bad string table link {strndx}")
    return index


def _resolve_symbols(
    symbols: list[_Symbol], strtab: bytearray, wanted: Mapping[str, KlpSym]
) -> dict[int, tuple[str, KlpSym]]:
    by_name: dict[str, list[int]] = {}
    for index, sym in enumerate(symbols):
        if index == 0 or sym.type in (STT_SECTION, STT_FILE):
            continue
        by_name.setdefault(_cstr(strtab, sym.st_name), []).append(index)
    resolved: dict[int, tuple[str, KlpSym]] = {}
    for name, ksym in wanted.items():
        indexes = by_name.get(name, []) if name else []
        if not indexes:
            raise KlpifyError(f"unknown symbol {name!r}: not in .symtab")
        if len(indexes) > 1:
            raise KlpifyError(f"ambiguous symbol {name!r}: .symtab entries {', '.join(map(str, indexes))}")
        resolved[indexes[0]] = (name, ksym)
    return dict(sorted(resolved.items()))


def _klp_section_name(fmt: Format, objname: str, target: str) -> str:
    if fmt == "final":
        return f"{KLP_RELA_PREFIX}{objname}.{target}"
    return f"{KLP_RFC_RELA_PREFIX}{objname}{target}"


def _add_modinfo(elf: _Elf) -> None:
    entry = _LIVEPATCH_MODINFO + b"\0"
    for sec in elf.sections:
        if sec.name != _MODINFO:
            continue
        if not sec.has_file_data:
            raise KlpifyError(f"section {_MODINFO!r} has no file data (sh_type={sec.sh_type})")
        if _LIVEPATCH_MODINFO in bytes(sec.data).split(b"\0"):
            return
        if sec.data and sec.data[-1] != 0:
            sec.data.append(0)
        sec.data += entry
        return
    elf.add_section(
        _Section(
            name=_MODINFO,
            sh_name=0,
            sh_type=SHT_PROGBITS,
            sh_flags=SHF_ALLOC,
            sh_addr=0,
            sh_offset=0,
            sh_size=len(entry),
            sh_link=0,
            sh_info=0,
            sh_addralign=1,
            sh_entsize=0,
            data=bytearray(entry),
        )
    )


def klpify(
    data: bytes,
    symbols: Mapping[str, KlpSym],
    *,
    fmt: Format = "final",
    style: Style = "kpatch",
    livepatch_modinfo: bool = True,
) -> bytes:
    """Convert an ELF64 ``ET_REL`` object into a livepatch module image.

    ``symbols`` maps the name of a symbol in the input's ``.symtab`` to the
    object it belongs to.  See the module docstring for the formats and
    styles.  Raises :class:`KlpifyError` on invalid input or requests.
    """
    if fmt not in ("final", "rfc"):
        raise KlpifyError(f"unknown format {fmt!r} (want 'final' or 'rfc')")
    if style not in ("kpatch", "objtool"):
        raise KlpifyError(f"unknown style {style!r} (want 'kpatch' or 'objtool')")
    requests = {name: _check_request(name, ksym, fmt) for name, ksym in symbols.items()}

    elf = _Elf(data)
    symtab_index = _find_symtab(elf)
    symtab = elf.sections[symtab_index]
    strtab_index = symtab.sh_link
    syms = elf.read_symbols(symtab)
    moved = _resolve_symbols(syms, elf.sections[strtab_index].data, requests)

    def applies_to(sec: _Section) -> bool:
        """Relocations of ``sec`` are candidates for moving."""
        if sec.sh_flags & (SHF_RELA_LIVEPATCH | SHF_RELA_LIVEPATCH_RFC):
            return False
        if sec.sh_info == 0:
            return False
        if sec.sh_info >= len(elf.sections):
            raise KlpifyError(f"section {sec.name!r}: bad target section index {sec.sh_info}")
        if not elf.sections[sec.sh_info].sh_flags & SHF_ALLOC:
            return False
        if sec.sh_link != symtab_index:
            raise KlpifyError(f"section {sec.name!r}: sh_link {sec.sh_link} is not the symbol table")
        return True

    # SHT_REL cannot express an addend-carrying livepatch relocation here.
    for sec in elf.sections:
        if sec.sh_type != SHT_REL or not moved or not applies_to(sec):
            continue
        if len(sec.data) % REL_SIZE:
            raise KlpifyError(f"section {sec.name!r}: size is not a multiple of {REL_SIZE}")
        for r_sym in elf.read_rel_symbols(sec):
            if r_sym in moved:
                raise KlpifyError(
                    f"section {sec.name!r} is SHT_REL and relocates livepatch symbol "
                    f"{moved[r_sym][0]!r}; only SHT_RELA is supported"
                )

    # Move the entries.
    klp_entries: dict[tuple[str, int], list[_Rela]] = {}
    tombstones: dict[int, int] = {}
    nsyms_before = len(syms)
    for sec in list(elf.sections):
        if sec.sh_type != SHT_RELA or not applies_to(sec):
            continue
        if len(sec.data) % RELA_SIZE:
            raise KlpifyError(f"section {sec.name!r}: size is not a multiple of {RELA_SIZE}")
        kept: list[_Rela] = []
        changed = False
        for rela in elf.read_relas(sec):
            if rela.r_sym >= nsyms_before:
                raise KlpifyError(
                    f"section {sec.name!r}: relocation at {rela.r_offset:#x} has bad symbol index {rela.r_sym}"
                )
            if rela.r_sym not in moved:
                kept.append(rela)
                continue
            changed = True
            name, ksym = moved[rela.r_sym]
            klp_entries.setdefault((ksym.objname, sec.sh_info), []).append(rela)
            if style == "objtool":
                if rela.r_sym not in tombstones:
                    tombstones[rela.r_sym] = len(syms)
                    syms.append(
                        _Symbol(
                            st_name=elf.add_string(strtab_index, KLP_TOMBSTONE_PREFIX + name),
                            st_info=(STB_WEAK << 4) | STT_NOTYPE,
                            st_other=0,
                            st_shndx=SHN_UNDEF,
                            st_value=0,
                            st_size=0,
                        )
                    )
                kept.append(_Rela(rela.r_offset, tombstones[rela.r_sym], 0, rela.r_addend))
        if changed:
            sec.data = elf.pack_relas(kept)

    # Mark the symbols.
    xindex_cleared: list[int] = []
    for index, (name, ksym) in moved.items():
        sym = syms[index]
        if sym.st_shndx == SHN_XINDEX:
            xindex_cleared.append(index)
        sym.st_value = 0
        if fmt == "final":
            sym.st_name = elf.add_string(strtab_index, f"{KLP_SYM_PREFIX}{ksym.objname}.{name},{ksym.sympos}")
            sym.st_shndx = SHN_LIVEPATCH
        else:
            sym.st_shndx = SHN_LIVEPATCH_RFC
            if ksym.external:
                sym.st_info = (STB_LIVEPATCH_EXT << 4) | sym.type
    elf.write_symbols(symtab, syms)
    for sec in elf.sections:
        if sec.sh_type == _SHT_SYMTAB_SHNDX and sec.sh_link == symtab_index:
            for index in xindex_cleared:
                sec.data[index * 4 : index * 4 + 4] = bytes(4)
            sec.data += bytes(4 * (len(syms) - nsyms_before))

    # Append the livepatch relocation sections.
    names = {sec.name for sec in elf.sections}
    flags = SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH if fmt == "final" else SHF_INFO_LINK | SHF_RELA_LIVEPATCH_RFC
    for (objname, target), entries in klp_entries.items():
        sec_name = _klp_section_name(fmt, objname, elf.sections[target].name)
        if sec_name in names:
            raise KlpifyError(f"section {sec_name!r} already exists")
        names.add(sec_name)
        payload = elf.pack_relas(entries)
        elf.add_section(
            _Section(
                name=sec_name,
                sh_name=0,
                sh_type=SHT_RELA,
                sh_flags=flags,
                sh_addr=0,
                sh_offset=0,
                sh_size=len(payload),
                sh_link=symtab_index,
                sh_info=target,
                sh_addralign=8,
                sh_entsize=RELA_SIZE,
                data=payload,
            )
        )

    if livepatch_modinfo:
        _add_modinfo(elf)
    return elf.serialize()


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def _parse_spec(spec: str, external: bool) -> tuple[str, KlpSym]:
    name, sep, rest = spec.rpartition("=")
    if not sep or not name or not rest:
        raise ValueError(f"bad symbol spec {spec!r} (want NAME=OBJ[,POS])")
    objname, comma, pos = rest.partition(",")
    sympos = 0
    if comma:
        try:
            sympos = int(pos, 10)
        except ValueError:
            raise ValueError(f"bad sympos {pos!r} in {spec!r}") from None
    return name, KlpSym(objname, sympos, external)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m klpcore.testing.klpify",
        allow_abbrev=False,
        description="Turn a relocatable ELF64 object into a livepatch module.",
    )
    parser.add_argument("input", metavar="IN.o")
    parser.add_argument("output", metavar="OUT.ko")
    parser.add_argument(
        "--sym",
        action="append",
        default=[],
        metavar="NAME=OBJ[,POS]",
        help="make NAME a livepatch symbol of object OBJ (sympos POS, default 0)",
    )
    parser.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=OBJ[,POS]",
        help="like --sym, and mark the symbol external (rfc format)",
    )
    parser.add_argument("--format", choices=("final", "rfc"), default="final")
    parser.add_argument("--style", choices=("kpatch", "objtool"), default="kpatch")
    parser.add_argument("--no-modinfo", action="store_true", help="do not add livepatch=Y to .modinfo")
    args = parser.parse_args(argv)

    symbols: dict[str, KlpSym] = {}
    for specs, external in ((args.sym, False), (args.external, True)):
        for spec in specs:
            try:
                name, ksym = _parse_spec(spec, external)
            except ValueError as exc:
                parser.error(str(exc))
            if name in symbols:
                parser.error(f"symbol {name!r} given more than once")
            symbols[name] = ksym

    fmt: Format = "rfc" if args.format == "rfc" else "final"
    style: Style = "objtool" if args.style == "objtool" else "kpatch"
    try:
        with open(args.input, "rb") as f:
            data = f.read()
        out = klpify(data, symbols, fmt=fmt, style=style, livepatch_modinfo=not args.no_modinfo)
        with open(args.output, "wb") as f:
            f.write(out)
    except (OSError, KlpifyError) as exc:
        print(f"klpify: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
