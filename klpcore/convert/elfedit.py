"""Rewriting a relocatable object into a livepatch module: the ELF side.

:func:`rewrite` takes a module read by the project's reader
(:class:`~klpcore.elf.ElfModule`) and a mapping from symbol-table indexes to
:class:`KlpSym` (which object each symbol belongs to, its position) and
returns a new ELF image in which

* every relocation entry against one of those symbols, in an ``SHT_RELA``
  section whose target section is ``SHF_ALLOC``, is moved into a livepatch
  relocation section, one per (object, target section) pair, keeping input
  order;
* those symbols are renamed/marked as livepatch symbols in place (symbol
  indexes never change, so all other relocations stay valid);
* ``.modinfo`` carries ``livepatch=Y`` (optional) and any ``import_ns=`` tags
  asked for.

Two on-disk formats are produced:

``fmt="final"`` (Linux 4.7+, ``Documentation/livepatch/module-elf-format.rst``)
    Sections ``.klp.rela.<objname>.<target>`` (``SHT_RELA``, ``SHF_ALLOC |
    SHF_INFO_LINK | SHF_RELA_LIVEPATCH``, entsize 24, align 8, ``sh_link`` the
    symbol table, ``sh_info`` the target); symbols renamed to
    ``.klp.sym.<objname>.<name>,<sympos>`` with ``st_shndx = SHN_LIVEPATCH``
    and ``st_value = 0``.  ``KlpSym.external`` is ignored.

``fmt="rfc"`` (the 2015 RFC prototype)
    Sections ``__klp_rela_<objname><target>`` with ``SHF_INFO_LINK |
    SHF_RELA_LIVEPATCH_RFC`` (not ``SHF_ALLOC``); symbols keep their names,
    get ``st_shndx = SHN_LIVEPATCH_RFC`` and ``st_value = 0``, and symbols
    marked ``external`` get binding ``STB_LIVEPATCH_EXT``.  The format has
    no sympos, so a non-zero sympos is an error.

Two ways of treating the original relocation:

``style="kpatch"``
    The moved entries are removed from the normal ``.rela.<sec>`` section
    (kpatch ``create-klp-module``; the only choice on an architecture whose
    kernel refuses type 0, ppc64).

``style="objtool"``
    The moved entries stay in the normal section with type 0 (``R_*_NONE``),
    pointing at a new weak undefined ``NOTYPE`` symbol
    ``.klp.tombstone.<name>`` appended at the end of the symbol table
    (upstream ``objtool klp post-link``).

Existing section indexes never change; new sections are appended at the end
of the section header table and new names are appended to the existing
string tables.  The output is a freshly laid out ELF file (written with
:class:`klpcore.elfwriter.ElfWriter`): header, optional program headers,
section contents in index order (each aligned to its ``sh_addralign``),
section header table last.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from .. import constants as C
from ..elf import ElfModule, rela_dtype, sym_dtype
from ..elfheader import SectionHeader, read_header, section_header
from ..elfwriter import ElfWriter
from ..errors import InputError

__all__ = ["ElfEditError", "Format", "KlpSym", "Style", "rewrite"]

Format = Literal["final", "rfc"]
Style = Literal["kpatch", "objtool"]

#: ``SHT_SYMTAB_SHNDX`` (gABI); not in klpcore.constants.
_SHT_SYMTAB_SHNDX = 18
#: ``EM_MIPS``: its ELF64 ``r_info`` layout differs from every other machine.
_EM_MIPS = 8
_MODINFO = ".modinfo"
_LIVEPATCH_MODINFO = b"livepatch=Y"
_U64_MAX = (1 << 64) - 1


class ElfEditError(InputError, ValueError):
    """The input object or the requested rewrite is invalid."""


@dataclasses.dataclass(frozen=True)
class KlpSym:
    """Where a livepatch symbol lives.

    ``objname`` is ``"vmlinux"`` or a module name (no dots, at most 55
    characters).  ``sympos`` is the symbol's position among same-named symbols
    of that object (0 = unique; final format only).  ``external`` marks a
    symbol defined outside the patched object (RFC format only).
    ``section_object`` names the object of the relocation section the
    references move to when it differs from ``objname`` (klp-convert's
    ``.klp.sym.rela.<lp_obj>.<sym_obj>.<sym>,<pos>`` annotation); ``name``
    replaces the symbol's own name in the ``.klp.sym`` name when given.
    """

    objname: str
    sympos: int = 0
    external: bool = False
    section_object: str | None = None
    name: str | None = None

    @property
    def rela_object(self) -> str:
        return self.section_object or self.objname


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
        return self.sh_type not in (C.SHT_NOBITS, C.SHT_NULL)


@dataclasses.dataclass
class _Symbol:
    st_name: int
    st_info: int
    st_other: int
    st_shndx: int
    st_value: int
    st_size: int

    @property
    def type(self) -> int:
        return self.st_info & 0xF


class _Elf:
    """An :class:`ElfModule` as editable sections that can be written back out."""

    _SYM = "IBBHQQ"
    _REL = "QQ"

    def __init__(self, module: ElfModule) -> None:
        data = module.data
        self.endian = module.endian
        self.ident = bytes(data[:16])
        self._header = hdr = read_header(data)
        self.e_type, self.e_machine = hdr.ident.type, hdr.ident.machine
        self.e_version, self.e_entry, self.e_flags = hdr.version, hdr.entry, hdr.flags
        e_phoff, e_phentsize, e_phnum = hdr.phoff, hdr.phentsize, hdr.phnum
        if self.e_machine == _EM_MIPS:
            raise ElfEditError("MIPS64 objects (special r_info layout) are not supported")
        self.e_phentsize = e_phentsize
        self.e_phnum = e_phnum
        self.phdrs = b""
        if e_phnum:
            end = e_phoff + e_phnum * e_phentsize
            if end > len(data):
                raise ElfEditError("program header table lies outside the file")
            self.phdrs = bytes(data[e_phoff:end])
        self.sections: list[_Section] = []
        for s in module.sections:
            has_data = s.index and s.type not in (C.SHT_NOBITS, C.SHT_NULL)
            self.sections.append(
                _Section(
                    s.name,
                    self._sh_name(data, module, s.index),
                    s.type,
                    s.flags,
                    s.addr,
                    s.offset,
                    s.size,
                    s.link,
                    s.info,
                    s.addralign,
                    s.entsize,
                    bytearray(data[s.offset : s.offset + s.size]) if has_data else bytearray(),
                )
            )
        self.shstrndx = module.shstrndx
        self._string_cache: dict[tuple[int, str], int] = {}

    def _sh_name(self, data: bytes, module: ElfModule, index: int) -> int:
        return section_header(data, self._header, index).name

    # -- records --------------------------------------------------------------

    def read_symbols(self, symtab: _Section) -> list[_Symbol]:
        fmt = self.endian + self._SYM
        return [_Symbol(*f) for f in struct.iter_unpack(fmt, bytes(symtab.data))]

    def write_symbols(self, symtab: _Section, symbols: list[_Symbol]) -> None:
        fmt = self.endian + self._SYM
        symtab.data = bytearray(
            b"".join(
                struct.pack(fmt, s.st_name, s.st_info, s.st_other, s.st_shndx, s.st_value, s.st_size) for s in symbols
            )
        )

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
            raise ElfEditError(f"string {text!r} contains a NUL byte")
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

    # -- output ---------------------------------------------------------------

    def serialize(self) -> bytes:
        out = ElfWriter(self.endian, self.ident + bytes(C.EHDR_SIZE - len(self.ident)))
        e_phoff = out.add(self.phdrs) if self.phdrs else 0
        for sec in self.sections[1:]:
            sec.sh_offset = out.add(bytes(sec.data) if sec.has_file_data else b"", sec.sh_addralign)
            if sec.has_file_data:
                sec.sh_size = len(sec.data)

        shnum = len(self.sections)
        null = self.sections[0]
        null.sh_size = shnum if shnum >= C.SHN_LORESERVE else 0
        null.sh_link = self.shstrndx if self.shstrndx >= C.SHN_LORESERVE else 0
        out.add_section_headers(
            SectionHeader(
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
            for sec in self.sections
        )
        out.set_header(
            type=self.e_type,
            machine=self.e_machine,
            version=self.e_version,
            entry=self.e_entry,
            phoff=e_phoff,
            flags=self.e_flags,
            ehsize=C.EHDR_SIZE,
            phentsize=self.e_phentsize if self.phdrs else 0,
            phnum=self.e_phnum if self.phdrs else 0,
            shentsize=C.SHDR_SIZE,
            shnum=shnum if shnum < C.SHN_LORESERVE else 0,
            shstrndx=self.shstrndx if self.shstrndx < C.SHN_LORESERVE else C.SHN_XINDEX,
        )
        return out.getvalue()


# --------------------------------------------------------------------------
# the rewrite
# --------------------------------------------------------------------------


def check_objname(objname: str, what: str) -> None:
    """The kernel's limits on an object name (``%55[^.]``, a module name)."""
    if not objname:
        raise ElfEditError(f"{what}: empty object name")
    if "." in objname:
        raise ElfEditError(f"{what}: object name {objname!r} contains '.'")
    if "\0" in objname:
        raise ElfEditError(f"{what}: object name {objname!r} contains a NUL byte")
    if len(objname) > C.KLP_OBJNAME_MAX:
        raise ElfEditError(
            f"{what}: object name {objname!r} is longer than {C.KLP_OBJNAME_MAX} characters ({len(objname)})"
        )


def _check_request(name: str, ksym: KlpSym, fmt: Format) -> None:
    what = f"symbol {name!r}"
    check_objname(ksym.objname, what)
    if ksym.section_object is not None:
        check_objname(ksym.section_object, what)
    if ksym.sympos < 0:
        raise ElfEditError(f"{what}: negative sympos {ksym.sympos}")
    if ksym.sympos > _U64_MAX:
        raise ElfEditError(f"{what}: sympos {ksym.sympos} does not fit unsigned long")
    if fmt == "final" and "," in (ksym.name or name):
        raise ElfEditError(f"{what}: name contains ',' and cannot be a .klp.sym name")
    if fmt == "rfc" and ksym.sympos != 0:
        raise ElfEditError(f"{what}: the rfc format has no sympos (got {ksym.sympos})")


def _klp_section_name(fmt: Format, objname: str, target: str) -> str:
    if fmt == "final":
        return f"{C.KLP_RELA_PREFIX}{objname}.{target}"
    return f"{C.KLP_RFC_RELA_PREFIX}{objname}{target}"


def _add_modinfo(elf: _Elf, entries: Sequence[bytes]) -> None:
    for sec in elf.sections:
        if sec.name != _MODINFO:
            continue
        if not sec.has_file_data:
            raise ElfEditError(f"section {_MODINFO!r} has no file data (sh_type={sec.sh_type})")
        present = bytes(sec.data).split(b"\0")
        for entry in entries:
            if entry in present:
                continue
            if sec.data and sec.data[-1] != 0:
                sec.data.append(0)
            sec.data += entry + b"\0"
        return
    if not entries:
        return
    payload = b"".join(e + b"\0" for e in entries)
    elf.add_section(
        _Section(_MODINFO, 0, C.SHT_PROGBITS, C.SHF_ALLOC, 0, 0, len(payload), 0, 0, 1, 0, bytearray(payload))
    )


def rewrite(
    module: ElfModule,
    symbols: Mapping[int, KlpSym],
    *,
    fmt: Format = "final",
    style: Style = "kpatch",
    livepatch_modinfo: bool = True,
    modinfo: Sequence[str] = (),
) -> bytes:
    """Rewrite ``module`` with the symbols at the given symbol-table indexes
    made livepatch symbols (see the module docstring).  ``modinfo`` adds
    ``key=value`` strings to ``.modinfo`` that are not there yet."""
    if fmt not in ("final", "rfc"):
        raise ElfEditError(f"unknown format {fmt!r} (want 'final' or 'rfc')")
    if style not in ("kpatch", "objtool"):
        raise ElfEditError(f"unknown style {style!r} (want 'kpatch' or 'objtool')")
    elf = _Elf(module)
    symtab_index = module.symtab_index
    symtab = elf.sections[symtab_index]
    if symtab.sh_entsize not in (0, C.SYM_SIZE):
        raise ElfEditError(f"section {symtab.name!r}: malformed symbol table")
    strtab_index = symtab.sh_link
    sdt = sym_dtype(elf.endian)
    symarr = np.frombuffer(bytes(symtab.data), dtype=sdt).copy()
    nsyms_before = len(symarr)
    tomb_rows: list[tuple[int, int, int, int, int, int]] = []
    moved: dict[int, tuple[str, KlpSym]] = {}
    for index, ksym in sorted(symbols.items()):
        if not 0 < index < nsyms_before:
            raise ElfEditError(f"symbol index {index} is outside the symbol table (1..{nsyms_before - 1})")
        name = module.symbol_names[index]
        _check_request(name, ksym, fmt)
        moved[index] = (name, ksym)

    def applies_to(sec: _Section) -> bool:
        """Relocations of ``sec`` are candidates for moving."""
        if sec.sh_flags & (C.SHF_RELA_LIVEPATCH | C.SHF_RELA_LIVEPATCH_RFC):
            return False
        if sec.sh_info == 0:
            return False
        if sec.sh_info >= len(elf.sections):
            raise ElfEditError(f"section {sec.name!r}: bad target section index {sec.sh_info}")
        if not elf.sections[sec.sh_info].sh_flags & C.SHF_ALLOC:
            return False
        if sec.sh_link != symtab_index:
            raise ElfEditError(f"section {sec.name!r}: sh_link {sec.sh_link} is not the symbol table")
        return True

    # SHT_REL cannot express an addend-carrying livepatch relocation here.
    for sec in elf.sections:
        if sec.sh_type != C.SHT_REL or not moved or not applies_to(sec):
            continue
        if len(sec.data) % C.REL_SIZE:
            raise ElfEditError(f"section {sec.name!r}: size is not a multiple of {C.REL_SIZE}")
        for r_sym in elf.read_rel_symbols(sec):
            if r_sym in moved:
                raise ElfEditError(
                    f"section {sec.name!r} is SHT_REL and relocates livepatch symbol "
                    f"{moved[r_sym][0]!r}; only SHT_RELA is supported"
                )

    # Move the entries: arrays per section; Python runs only per moved symbol.
    dtype = rela_dtype(elf.endian)
    moved_idx = np.array(sorted(moved), dtype=np.uint64)
    klp_entries: dict[tuple[str, int], list[np.ndarray]] = {}
    tombstones: dict[int, int] = {}
    for sec in list(elf.sections):
        if sec.sh_type != C.SHT_RELA or not applies_to(sec):
            continue
        if len(sec.data) % C.RELA_SIZE:
            raise ElfEditError(f"section {sec.name!r}: size is not a multiple of {C.RELA_SIZE}")
        arr = np.frombuffer(bytes(sec.data), dtype=dtype).copy()
        rsym = arr["r_info"] >> np.uint64(32)
        bad = np.nonzero(rsym >= np.uint64(nsyms_before))[0]
        if bad.size:
            k = int(bad[0])
            raise ElfEditError(
                f"section {sec.name!r}: relocation at {int(arr['r_offset'][k]):#x} has bad symbol index {int(rsym[k])}"
            )
        hits = np.nonzero(np.isin(rsym, moved_idx))[0]
        if not hits.size:
            continue
        uniq, first = np.unique(rsym[hits], return_index=True)
        in_order = [int(u) for _, u in sorted(zip(first.tolist(), uniq.tolist(), strict=True))]
        objects = list(dict.fromkeys(moved[i][1].rela_object for i in in_order))
        for objname in objects:
            mine = np.array([i for i in in_order if moved[i][1].rela_object == objname], dtype=np.uint64)
            klp_entries.setdefault((objname, sec.sh_info), []).append(arr[hits[np.isin(rsym[hits], mine)]])
        if style == "objtool":
            for i in in_order:
                if i not in tombstones:
                    name, ksym = moved[i]
                    tombstones[i] = nsyms_before + len(tomb_rows)
                    st_name = elf.add_string(strtab_index, C.KLP_TOMBSTONE_PREFIX + (ksym.name or name))
                    tomb_rows.append((st_name, (C.STB_WEAK << 4) | C.STT_NOTYPE, 0, C.SHN_UNDEF, 0, 0))
            lookup = np.zeros(nsyms_before, dtype=np.uint64)
            for i in in_order:
                lookup[i] = tombstones[i]
            arr["r_info"][hits] = lookup[rsym[hits].astype(np.int64)] << np.uint64(32)
            sec.data = bytearray(arr.tobytes())
        else:
            keep = np.ones(len(arr), dtype=bool)
            keep[hits] = False
            sec.data = bytearray(arr[keep].tobytes())

    # Mark the symbols.
    xindex_cleared: list[int] = []
    for index, (name, ksym) in moved.items():
        if int(symarr["st_shndx"][index]) == C.SHN_XINDEX:
            xindex_cleared.append(index)
        symarr["st_value"][index] = 0
        if fmt == "final":
            symarr["st_name"][index] = elf.add_string(
                strtab_index, f"{C.KLP_SYM_PREFIX}{ksym.objname}.{ksym.name or name},{ksym.sympos}"
            )
            symarr["st_shndx"][index] = C.SHN_LIVEPATCH
        else:
            if ksym.name:
                symarr["st_name"][index] = elf.add_string(strtab_index, ksym.name)
            symarr["st_shndx"][index] = C.SHN_LIVEPATCH_RFC
            if ksym.external:
                symarr["st_info"][index] = (C.STB_LIVEPATCH_EXT << 4) | (int(symarr["st_info"][index]) & 0xF)
    if tomb_rows:  # (concatenate gives native byte order: back to the file's)
        symarr = np.concatenate([symarr, np.array(tomb_rows, dtype=sdt)]).astype(sdt)
    symtab.data = bytearray(symarr.tobytes())
    for sec in elf.sections:
        if sec.sh_type == _SHT_SYMTAB_SHNDX and sec.sh_link == symtab_index:
            for index in xindex_cleared:
                sec.data[index * 4 : index * 4 + 4] = bytes(4)
            sec.data += bytes(4 * len(tomb_rows))

    # Append the livepatch relocation sections.
    names = {sec.name for sec in elf.sections}
    flags = (
        C.SHF_ALLOC | C.SHF_INFO_LINK | C.SHF_RELA_LIVEPATCH
        if fmt == "final"
        else C.SHF_INFO_LINK | C.SHF_RELA_LIVEPATCH_RFC
    )
    for (objname, target), entries in klp_entries.items():
        sec_name = _klp_section_name(fmt, objname, elf.sections[target].name)
        if sec_name in names:
            raise ElfEditError(f"section {sec_name!r} already exists")
        names.add(sec_name)
        payload = bytearray(np.concatenate(entries).astype(dtype).tobytes())  # concatenate makes it native
        elf.add_section(
            _Section(
                sec_name,
                0,
                C.SHT_RELA,
                flags,
                0,
                0,
                len(payload),
                symtab_index,
                target,
                8,
                C.RELA_SIZE,
                payload,
            )
        )

    extra = [_LIVEPATCH_MODINFO] if livepatch_modinfo else []
    extra += [m.encode("utf-8", "surrogateescape") for m in modinfo]
    _add_modinfo(elf, extra)
    return elf.serialize()
