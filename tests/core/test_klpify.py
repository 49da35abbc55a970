"""Tests for the livepatch ELF writer (klpcore.convert.elfedit) through klpcore.testing.klpify.

The input objects are assembled in Python by a tiny ELF64 ``ET_REL`` builder
below (no compiler or binutils needed), in both byte orders, written through
:mod:`klpcore.elfwriter`.  Its layout (section header table first, then data)
deliberately differs from the converter's output.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from klpcore import constants as C
from klpcore.constants import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHF_RELA_LIVEPATCH_RFC,
    SHF_WRITE,
    SHN_ABS,
    SHN_LIVEPATCH,
    SHN_LIVEPATCH_RFC,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHN_XINDEX,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_LIVEPATCH_EXT,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
)
from klpcore.elfheader import SectionHeader, read_header, section_headers
from klpcore.elfwriter import ElfWriter, pack_file_header, pack_section_header
from klpcore.testing.klpify import KlpifyError, KlpSym, klpify

SHT_SYMTAB_SHNDX = 18
EM_X86_64 = 62
EM_S390 = 22
ENDIANS = {"<": (EM_X86_64, 0), ">": (EM_S390, 0x5)}

# --------------------------------------------------------------------------
# a tiny ELF64 ET_REL builder (written by klpcore.elfwriter)
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Sec:
    name: str
    type: int
    flags: int = 0
    data: bytes = b""
    link: int | str = 0
    info: int | str = 0
    align: int = 1
    entsize: int = 0
    size: int | None = None  # for SHT_NOBITS


@dataclasses.dataclass
class Sym:
    name: str
    bind: int
    type: int
    shndx: int | str
    value: int = 0
    size: int = 0


class StrTab:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self.offsets: dict[str, int] = {"": 0}

    def add(self, text: str) -> int:
        if text not in self.offsets:
            self.offsets[text] = len(self.data)
            self.data += text.encode() + b"\0"
        return self.offsets[text]


def rela_bytes(e: str, entries: Sequence[tuple[int, int, int, int]]) -> bytes:
    """``entries``: (offset, type, symbol index, addend)."""
    return b"".join(struct.pack(e + "QQq", off, (sym << 32) | typ, add) for off, typ, sym, add in entries)


def build_elf(
    e: str,
    sections: Sequence[Sec],
    *,
    machine: int = EM_X86_64,
    flags: int = 0,
    ei_class: int = 2,
    e_type: int = 1,
) -> bytes:
    """Assemble an ELF file; ``.shstrtab`` is added last automatically."""
    shstr = StrTab()
    secs = [Sec("", 0), *sections, Sec(".shstrtab", SHT_STRTAB)]
    index = {s.name: i for i, s in enumerate(secs)}
    names = [shstr.add(s.name) for s in secs]
    secs[-1].data = bytes(shstr.data)

    def ref(v: int | str) -> int:
        return index[v] if isinstance(v, str) else v

    # The section header table comes first, right after the file header (klpcore's own writers put
    # it last), so each section's offset is known before anything is written.
    shoff = C.EHDR_SIZE
    offset = shoff + C.SHDR_SIZE * len(secs)
    rows = [SectionHeader(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for i, s in enumerate(secs[1:], start=1):
        offset += (-offset) % max(s.align, 1)
        size = len(s.data) if s.size is None else s.size
        rows.append(
            SectionHeader(names[i], s.type, s.flags, 0, offset, size, ref(s.link), ref(s.info), s.align, s.entsize)
        )
        if s.type != SHT_NOBITS:
            offset += len(s.data)
    header = pack_file_header(
        e,
        type=e_type,
        machine=machine,
        flags=flags,
        shoff=shoff,
        shnum=len(secs),
        shstrndx=len(secs) - 1,
        elfclass=ei_class,
    )
    out = ElfWriter(e, header)
    out.add(b"".join(pack_section_header(e, row) for row in rows))
    for s, row in zip(secs[1:], rows[1:], strict=True):
        at = out.add(b"" if s.type == SHT_NOBITS else s.data, s.align)
        assert at == row.offset, f"build_elf: {s.name} written at {at:#x}, its header says {row.offset:#x}"
    return out.getvalue()


def symtab_sections(e: str, syms: Sequence[Sym], sec_names: Sequence[str]) -> tuple[Sec, Sec]:
    strtab = StrTab()
    index = {n: i for i, n in enumerate(sec_names)}
    out = bytearray(bytes(24))
    first_global = len(syms) + 1
    for i, s in enumerate(syms, start=1):
        if s.bind != STB_LOCAL and first_global > len(syms):
            first_global = i
        shndx = index[s.shndx] if isinstance(s.shndx, str) else s.shndx
        name = 0 if s.type == STT_SECTION else strtab.add(s.name)
        out += struct.pack(e + "IBBHQQ", name, (s.bind << 4) | s.type, 0, shndx, s.value, s.size)
    return (
        Sec(
            ".symtab",
            SHT_SYMTAB,
            data=bytes(out),
            link=".strtab",
            info=first_global,
            align=8,
            entsize=24,
        ),
        Sec(".strtab", SHT_STRTAB, data=bytes(strtab.data)),
    )


# Symbol indexes of the standard object.
S_FILE, S_SECT_TEXT, S_SECT_DATA, S_HELPER = 1, 2, 3, 4
S_PATCHED, S_FOO, S_BAR, S_PRINTK = 5, 6, 7, 8
NSYMS = 9

# Section indexes of the standard object.
I_TEXT, I_RELA_TEXT, I_DATA, I_RELA_DATA, I_BSS = 1, 2, 3, 4, 5
I_DEBUG, I_RELA_DEBUG, I_SYMTAB, I_STRTAB = 6, 7, 8, 9

R_PC32, R_PLT32, R_64, R_32 = 2, 4, 1, 10

TEXT_RELAS = [
    (0x01, R_PLT32, S_FOO, -4),
    (0x06, R_PC32, S_SECT_TEXT, 0x10 - 4),
    (0x0B, R_PLT32, S_BAR, -4),
    (0x10, R_PLT32, S_PRINTK, -4),
    (0x15, R_PLT32, S_FOO, -4),
    (0x1A, R_PC32, S_HELPER, -4),
]
DATA_RELAS = [(0x0, R_64, S_BAR, 0), (0x8, R_64, S_PATCHED, 8)]
DEBUG_RELAS = [(0x0, R_32, S_FOO, 0)]


def standard_syms() -> list[Sym]:
    return [
        Sym("klp.c", STB_LOCAL, STT_FILE, SHN_ABS),
        Sym("", STB_LOCAL, STT_SECTION, ".text.foo"),
        Sym("", STB_LOCAL, STT_SECTION, ".data"),
        Sym("helper", STB_LOCAL, STT_FUNC, ".text.foo", 0x10, 8),
        Sym("patched_fn", STB_GLOBAL, STT_FUNC, ".text.foo", 0, 16),
        Sym("foo", STB_GLOBAL, STT_NOTYPE, SHN_UNDEF),
        Sym("bar", STB_GLOBAL, STT_NOTYPE, SHN_UNDEF),
        Sym("printk", STB_GLOBAL, STT_NOTYPE, SHN_UNDEF),
    ]


def make_object(
    e: str,
    *,
    modinfo: bytes | None = None,
    extra: Sequence[Sec] = (),
    syms: Sequence[Sym] | None = None,
    text_relas: Sequence[tuple[int, int, int, int]] = TEXT_RELAS,
    ei_class: int = 2,
    e_type: int = 1,
) -> bytes:
    machine, flags = ENDIANS[e]
    base = [
        Sec(
            ".text.foo",
            SHT_PROGBITS,
            SHF_ALLOC | SHF_EXECINSTR,
            bytes(range(0x90, 0xB0)),
            align=16,
        ),
        Sec(
            ".rela.text.foo",
            SHT_RELA,
            SHF_INFO_LINK,
            rela_bytes(e, text_relas),
            link=".symtab",
            info=".text.foo",
            align=8,
            entsize=24,
        ),
        Sec(".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(range(16)), align=8),
        Sec(
            ".rela.data",
            SHT_RELA,
            SHF_INFO_LINK,
            rela_bytes(e, DATA_RELAS),
            link=".symtab",
            info=".data",
            align=8,
            entsize=24,
        ),
        Sec(".bss", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, align=32, size=64),
        Sec(".debug_info", SHT_PROGBITS, 0, b"\x11" * 8),
        Sec(
            ".rela.debug_info",
            SHT_RELA,
            SHF_INFO_LINK,
            rela_bytes(e, DEBUG_RELAS),
            link=".symtab",
            info=".debug_info",
            align=8,
            entsize=24,
        ),
    ]
    names = ["", *(s.name for s in base), ".symtab", ".strtab"]
    names += [s.name for s in extra]
    symtab, strtab = symtab_sections(e, standard_syms() if syms is None else syms, names)
    tail = list(extra)
    if modinfo is not None:
        tail.append(Sec(".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo))
    return build_elf(
        e,
        [*base, symtab, strtab, *tail],
        machine=machine,
        flags=flags,
        ei_class=ei_class,
        e_type=e_type,
    )


# --------------------------------------------------------------------------
# reading the output back
# --------------------------------------------------------------------------


def elf_of(data: bytes) -> ELFFile:
    return ELFFile(io.BytesIO(data))


def relas(elf: ELFFile, name: str) -> list[tuple[int, int, int, int]]:
    sec = elf.get_section_by_name(name)
    assert isinstance(sec, RelocationSection), name
    return [(r["r_offset"], r["r_info_type"], r["r_info_sym"], r["r_addend"]) for r in sec.iter_relocations()]


def symbols(elf: ELFFile) -> list[Any]:
    symtab = elf.get_section_by_name(".symtab")
    assert isinstance(symtab, SymbolTableSection)
    return list(symtab.iter_symbols())


def shndx(sym: Any) -> int:
    value = sym["st_shndx"]
    if isinstance(value, int):
        return value
    return {"SHN_UNDEF": SHN_UNDEF, "SHN_ABS": SHN_ABS}[value]


def bind(sym: Any) -> int:
    value = sym["st_info"]["bind"]
    if isinstance(value, int):
        return value
    return {"STB_LOCAL": STB_LOCAL, "STB_GLOBAL": STB_GLOBAL, "STB_WEAK": STB_WEAK}[value]


def raw_sections(data: bytes) -> tuple[str, list[SectionHeader]]:
    """(endian, section headers) read by klpcore.elfheader, with extended numbering."""
    hdr = read_header(data)
    return hdr.endian, section_headers(data, hdr)


def check_layout(data: bytes) -> None:
    """Header, aligned non-overlapping section data, then the header table."""
    e, shdrs = raw_sections(data)
    shoff = read_header(data).shoff
    assert shoff % 8 == 0
    assert len(data) == shoff + 64 * len(shdrs)
    end = 64
    for sh in shdrs[1:]:
        offset, size, align = sh[4], sh[5], sh[8]
        assert offset >= end
        if align > 1:
            assert offset % align == 0
        if sh[1] != SHT_NOBITS:
            end = offset + size
    assert end <= shoff


def section(elf: ELFFile, name: str) -> Any:
    sec = elf.get_section_by_name(name)
    assert sec is not None, name
    return sec


def section_data(elf: ELFFile, name: str) -> bytes:
    data: bytes = section(elf, name).data()
    return data


SYMS = {"foo": KlpSym("vmlinux"), "bar": KlpSym("ext4", 2)}


# --------------------------------------------------------------------------
# final format
# --------------------------------------------------------------------------


@pytest.fixture(params=["<", ">"], ids=["lsb", "msb"])
def endian(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def test_input_fixture_is_sane(endian: str) -> None:
    data = make_object(endian)
    elf = elf_of(data)
    assert elf.little_endian == (endian == "<")
    assert relas(elf, ".rela.text.foo") == TEXT_RELAS
    assert [s.name for s in symbols(elf)][S_FOO] == "foo"


@pytest.mark.parametrize("style", ["kpatch", "objtool"])
def test_final_new_sections(endian: str, style: str) -> None:
    src = make_object(endian)
    out = klpify(src, SYMS, style=style)  # type: ignore[arg-type]
    check_layout(out)
    elf = elf_of(out)
    n_in = elf_of(src).num_sections()
    assert elf.num_sections() == n_in + 4
    flags = SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH
    expected = [
        (".klp.rela.vmlinux..text.foo", I_TEXT, [TEXT_RELAS[0], TEXT_RELAS[4]]),
        (".klp.rela.ext4..text.foo", I_TEXT, [TEXT_RELAS[2]]),
        (".klp.rela.ext4..data", I_DATA, [DATA_RELAS[0]]),
    ]
    for k, (name, target, entries) in enumerate(expected):
        sec = elf.get_section(n_in + k)
        assert sec.name == name
        assert sec["sh_type"] == "SHT_RELA"
        assert sec["sh_flags"] == flags
        assert sec["sh_link"] == I_SYMTAB
        assert sec["sh_info"] == target
        assert sec["sh_entsize"] == 24
        assert sec["sh_addralign"] == 8
        assert relas(elf, name) == entries
    modinfo = elf.get_section(n_in + 3)
    assert modinfo.name == ".modinfo"
    assert modinfo["sh_flags"] & SHF_ALLOC
    assert modinfo.data() == b"livepatch=Y\0"


def test_final_kpatch_removes_entries(endian: str) -> None:
    out = klpify(make_object(endian), SYMS, style="kpatch")
    elf = elf_of(out)
    assert relas(elf, ".rela.text.foo") == [
        TEXT_RELAS[1],
        TEXT_RELAS[3],
        TEXT_RELAS[5],
    ]
    assert relas(elf, ".rela.data") == [DATA_RELAS[1]]
    # non-SHF_ALLOC target: left alone
    assert relas(elf, ".rela.debug_info") == DEBUG_RELAS
    assert len(symbols(elf)) == NSYMS
    assert not [s for s in symbols(elf) if s.name.startswith(".klp.tombstone.")]


def test_final_objtool_tombstones(endian: str) -> None:
    out = klpify(make_object(endian), SYMS, style="objtool")
    check_layout(out)
    elf = elf_of(out)
    syms = symbols(elf)
    assert len(syms) == NSYMS + 2
    t_foo, t_bar = NSYMS, NSYMS + 1
    for idx, name in ((t_foo, "foo"), (t_bar, "bar")):
        s = syms[idx]
        assert s.name == ".klp.tombstone." + name
        assert bind(s) == STB_WEAK
        assert s["st_info"]["type"] == "STT_NOTYPE"
        assert shndx(s) == SHN_UNDEF
        assert s["st_value"] == 0 and s["st_size"] == 0
    assert relas(elf, ".rela.text.foo") == [
        (0x01, 0, t_foo, -4),
        TEXT_RELAS[1],
        (0x0B, 0, t_bar, -4),
        TEXT_RELAS[3],
        (0x15, 0, t_foo, -4),
        TEXT_RELAS[5],
    ]
    assert relas(elf, ".rela.data") == [(0x0, 0, t_bar, 0), DATA_RELAS[1]]
    assert relas(elf, ".rela.debug_info") == DEBUG_RELAS
    # sh_info of .symtab: still the first non-local symbol
    assert elf.get_section(I_SYMTAB)["sh_info"] == S_PATCHED


def test_final_symbols(endian: str) -> None:
    src = make_object(endian)
    before = symbols(elf_of(src))
    out = klpify(src, SYMS)
    after = symbols(elf_of(out))
    assert after[S_FOO].name == ".klp.sym.vmlinux.foo,0"
    assert after[S_BAR].name == ".klp.sym.ext4.bar,2"
    for idx in (S_FOO, S_BAR):
        assert shndx(after[idx]) == SHN_LIVEPATCH
        assert after[idx]["st_value"] == 0
        assert bind(after[idx]) == STB_GLOBAL
        assert after[idx]["st_info"]["type"] == "STT_NOTYPE"
    for idx in range(NSYMS):
        if idx in (S_FOO, S_BAR):
            continue
        assert after[idx].name == before[idx].name
        assert after[idx].entry == before[idx].entry


def test_defined_local_symbol(endian: str) -> None:
    """A defined local symbol can be made a livepatch symbol too."""
    out = klpify(make_object(endian), {"helper": KlpSym("vmlinux", 1)})
    elf = elf_of(out)
    s = symbols(elf)[S_HELPER]
    assert s.name == ".klp.sym.vmlinux.helper,1"
    assert shndx(s) == SHN_LIVEPATCH
    assert s["st_value"] == 0
    assert bind(s) == STB_LOCAL
    assert s["st_info"]["type"] == "STT_FUNC"
    assert relas(elf, ".klp.rela.vmlinux..text.foo") == [TEXT_RELAS[5]]


def test_untouched_parts_unchanged(endian: str) -> None:
    src = make_object(endian)
    out = klpify(src, SYMS)
    a, b = elf_of(src), elf_of(out)
    assert b.header["e_machine"] == a.header["e_machine"]
    assert b.header["e_flags"] == a.header["e_flags"] == ENDIANS[endian][1]
    assert b.header["e_type"] == "ET_REL"
    assert b.little_endian == a.little_endian
    for i in range(a.num_sections()):
        sa, sb = a.get_section(i), b.get_section(i)
        assert sb.name == sa.name
        for key in ("sh_type", "sh_link", "sh_info", "sh_addralign", "sh_entsize"):
            assert sb[key] == sa[key], (sa.name, key)
        assert sb["sh_flags"] == sa["sh_flags"]
    for name in (".text.foo", ".data", ".debug_info", ".rela.debug_info"):
        assert section_data(b, name) == section_data(a, name)
    assert section(b, ".bss")["sh_size"] == 64
    assert relas(b, ".rela.text.foo")[0] == TEXT_RELAS[1]


def test_empty_mapping_roundtrip(endian: str) -> None:
    src = make_object(endian)
    out = klpify(src, {}, livepatch_modinfo=False)
    check_layout(out)
    a, b = elf_of(src), elf_of(out)
    assert b.num_sections() == a.num_sections()
    for i in range(1, a.num_sections()):
        sa, sb = a.get_section(i), b.get_section(i)
        if sa["sh_type"] != "SHT_NOBITS":
            assert sb.data() == sa.data(), sa.name
    # idempotent on its own output
    assert klpify(out, {}, livepatch_modinfo=False) == out


# --------------------------------------------------------------------------
# RFC format
# --------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["kpatch", "objtool"])
def test_rfc_sections(endian: str, style: str) -> None:
    syms = {"foo": KlpSym("vmlinux"), "bar": KlpSym("ext4", external=True)}
    src = make_object(endian)
    out = klpify(src, syms, fmt="rfc", style=style)  # type: ignore[arg-type]
    check_layout(out)
    elf = elf_of(out)
    n_in = elf_of(src).num_sections()
    expected = [
        ("__klp_rela_vmlinux.text.foo", I_TEXT, [TEXT_RELAS[0], TEXT_RELAS[4]]),
        ("__klp_rela_ext4.text.foo", I_TEXT, [TEXT_RELAS[2]]),
        ("__klp_rela_ext4.data", I_DATA, [DATA_RELAS[0]]),
    ]
    for k, (name, target, entries) in enumerate(expected):
        sec = elf.get_section(n_in + k)
        assert sec.name == name
        assert sec["sh_type"] == "SHT_RELA"
        assert sec["sh_flags"] == SHF_INFO_LINK | SHF_RELA_LIVEPATCH_RFC
        assert not sec["sh_flags"] & SHF_ALLOC
        assert sec["sh_link"] == I_SYMTAB
        assert sec["sh_info"] == target
        assert sec["sh_entsize"] == 24
        assert relas(elf, name) == entries
    assert elf.get_section(n_in + 3).name == ".modinfo"
    if style == "kpatch":
        assert relas(elf, ".rela.data") == [DATA_RELAS[1]]
    else:
        assert relas(elf, ".rela.data") == [(0, 0, NSYMS + 1, 0), DATA_RELAS[1]]


def test_rfc_symbols(endian: str) -> None:
    syms = {"foo": KlpSym("vmlinux"), "bar": KlpSym("ext4", external=True)}
    src = make_object(endian)
    before = symbols(elf_of(src))
    after = symbols(elf_of(klpify(src, syms, fmt="rfc")))
    assert after[S_FOO].name == "foo"
    assert after[S_BAR].name == "bar"
    assert shndx(after[S_FOO]) == SHN_LIVEPATCH_RFC
    assert shndx(after[S_BAR]) == SHN_LIVEPATCH_RFC
    assert bind(after[S_FOO]) == STB_GLOBAL
    assert bind(after[S_BAR]) == STB_LIVEPATCH_EXT
    assert after[S_BAR]["st_info"]["type"] == "STT_NOTYPE"
    for idx in range(NSYMS):
        if idx not in (S_FOO, S_BAR):
            assert after[idx].entry == before[idx].entry


def test_rfc_local_keeps_binding(endian: str) -> None:
    out = klpify(make_object(endian), {"helper": KlpSym("ext4")}, fmt="rfc")
    s = symbols(elf_of(out))[S_HELPER]
    assert s.name == "helper"
    assert bind(s) == STB_LOCAL
    assert shndx(s) == SHN_LIVEPATCH_RFC


# --------------------------------------------------------------------------
# modinfo
# --------------------------------------------------------------------------


def test_modinfo_appended(endian: str) -> None:
    src = make_object(endian, modinfo=b"license=GPL\0name=p\0")
    a = elf_of(src)
    out = klpify(src, SYMS)
    b = elf_of(out)
    idx = [s.name for s in a.iter_sections()].index(".modinfo")
    assert b.get_section(idx).name == ".modinfo"
    assert b.get_section(idx).data() == b"license=GPL\0name=p\0livepatch=Y\0"
    assert [s.name for s in b.iter_sections()].count(".modinfo") == 1
    # not duplicated when converting again
    again = elf_of(klpify(out, {}))
    assert again.get_section(idx).data() == b"license=GPL\0name=p\0livepatch=Y\0"


def test_modinfo_disabled(endian: str) -> None:
    out = klpify(make_object(endian), SYMS, livepatch_modinfo=False)
    assert elf_of(out).get_section_by_name(".modinfo") is None
    src = make_object(endian, modinfo=b"license=GPL\0")
    out = klpify(src, SYMS, livepatch_modinfo=False)
    assert section_data(elf_of(out), ".modinfo") == b"license=GPL\0"


# --------------------------------------------------------------------------
# less common inputs
# --------------------------------------------------------------------------


def test_symtab_shndx_extended(endian: str) -> None:
    extra = [
        Sec(
            ".symtab_shndx",
            SHT_SYMTAB_SHNDX,
            data=bytes(4 * NSYMS),
            link=".symtab",
            align=4,
            entsize=4,
        )
    ]
    out = klpify(make_object(endian, extra=extra), SYMS, style="objtool")
    data = section_data(elf_of(out), ".symtab_shndx")
    assert data == bytes(4 * (NSYMS + 2))


def test_symtab_shndx_cleared_for_marked_symbol(endian: str) -> None:
    """A marked symbol that used SHN_XINDEX loses its extended index."""
    syms = standard_syms()
    syms[S_HELPER - 1] = dataclasses.replace(syms[S_HELPER - 1], shndx=SHN_XINDEX)
    shndx_data = bytearray(4 * NSYMS)
    struct.pack_into(endian + "I", shndx_data, 4 * S_HELPER, I_TEXT)
    extra = [
        Sec(
            ".symtab_shndx",
            SHT_SYMTAB_SHNDX,
            data=bytes(shndx_data),
            link=".symtab",
            align=4,
            entsize=4,
        )
    ]
    out = klpify(make_object(endian, extra=extra, syms=syms), {"helper": KlpSym("vmlinux")})
    elf = elf_of(out)
    assert section_data(elf, ".symtab_shndx") == bytes(4 * NSYMS)
    assert shndx(symbols(elf)[S_HELPER]) == SHN_LIVEPATCH


def test_extended_section_numbering(endian: str) -> None:
    """New sections push the count past SHN_LORESERVE: e_shnum moves to sh0."""
    count = SHN_LORESERVE - 2 - 11  # standard object has 11 sections
    filler = [Sec(f"f{i}", SHT_PROGBITS) for i in range(count)]
    src = make_object(endian, extra=filler)
    e, shdrs = raw_sections(src)
    assert len(shdrs) == SHN_LORESERVE - 2
    out = klpify(src, SYMS)
    e, shdrs = raw_sections(out)
    total = SHN_LORESERVE - 2 + 4
    assert read_header(out).shnum == 0
    assert shdrs[0][5] == total  # sh_size of section 0
    assert len(shdrs) == total
    elf = elf_of(out)
    assert elf.num_sections() == total
    assert elf.get_section(total - 4).name == ".klp.rela.vmlinux..text.foo"
    assert elf.get_section(total - 1).name == ".modinfo"
    assert relas(elf, ".klp.rela.ext4..data") == [DATA_RELAS[0]]
    # and klpify reads extended numbering back
    assert klpify(out, {}, livepatch_modinfo=False) == out


def test_entries_keep_input_order() -> None:
    text = [
        (0x20, R_PLT32, S_FOO, 1),
        (0x04, R_PLT32, S_FOO, 2),
        (0x10, R_PC32, S_PRINTK, 3),
        (0x08, R_PLT32, S_FOO, 3),
    ]
    out = klpify(make_object("<", text_relas=text), {"foo": KlpSym("vmlinux")})
    elf = elf_of(out)
    assert relas(elf, ".klp.rela.vmlinux..text.foo") == [text[0], text[1], text[3]]
    assert relas(elf, ".rela.text.foo") == [text[2]]


def test_objname_limits() -> None:
    name55 = "m" * 55
    out = klpify(make_object("<"), {"foo": KlpSym(name55, 7)})
    elf = elf_of(out)
    assert symbols(elf)[S_FOO].name == f".klp.sym.{name55}.foo,7"
    assert elf.get_section_by_name(f".klp.rela.{name55}..text.foo") is not None


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def raises(match: str) -> Any:
    return pytest.raises(KlpifyError, match=match)


def test_error_is_value_error() -> None:
    assert issubclass(KlpifyError, ValueError)


def test_error_unknown_symbol(endian: str) -> None:
    with raises("unknown symbol 'nosuch'"):
        klpify(make_object(endian), {"nosuch": KlpSym("vmlinux")})
    with raises("unknown symbol ''"):
        klpify(make_object(endian), {"": KlpSym("vmlinux")})


def test_error_objname_with_dot() -> None:
    with raises(r"symbol 'foo': object name 'ext4\.ko' contains '\.'"):
        klpify(make_object("<"), {"foo": KlpSym("ext4.ko")})


def test_error_objname_too_long() -> None:
    with raises("symbol 'bar': object name 'm{56}' is longer than 55"):
        klpify(make_object("<"), {"bar": KlpSym("m" * 56)})


def test_error_objname_empty() -> None:
    with raises("symbol 'foo': empty object name"):
        klpify(make_object("<"), {"foo": KlpSym("")})


def test_error_negative_sympos() -> None:
    with raises("symbol 'foo': negative sympos -1"):
        klpify(make_object("<"), {"foo": KlpSym("vmlinux", -1)})


def test_error_rfc_sympos() -> None:
    with raises("symbol 'bar': the rfc format has no sympos"):
        klpify(make_object("<"), {"bar": KlpSym("ext4", 1)}, fmt="rfc")


def test_error_comma_in_name() -> None:
    syms = [*standard_syms(), Sym("a,b", STB_GLOBAL, STT_NOTYPE, SHN_UNDEF)]
    src = make_object("<", syms=syms)
    with raises("symbol 'a,b': name contains ','"):
        klpify(src, {"a,b": KlpSym("vmlinux")})
    # the rfc format keeps plain names, so ',' is fine there
    klpify(src, {"a,b": KlpSym("vmlinux")}, fmt="rfc")


def test_error_ambiguous_symbol() -> None:
    syms = [
        *standard_syms()[:4],
        Sym("foo", STB_LOCAL, STT_OBJECT, ".data", 0, 8),
        *standard_syms()[4:],
    ]
    src = make_object("<", syms=syms, text_relas=[])
    with raises("ambiguous symbol 'foo'"):
        klpify(src, {"foo": KlpSym("vmlinux")})


def test_error_not_elf() -> None:
    with raises("not an ELF file"):
        klpify(b"hello world" * 10, {})
    with raises("file too short for an ELF header"):
        klpify(b"", {})


def test_error_elf32() -> None:
    with raises("not ELFCLASS64"):
        klpify(make_object("<", ei_class=1), {})


def test_error_not_et_rel(endian: str) -> None:
    with raises("ELF type ET_EXEC is not ET_REL; a kernel module is a relocatable object"):
        klpify(make_object(endian, e_type=2), {})


def test_error_rel_section_for_moved_symbol(endian: str) -> None:
    rel = struct.pack(endian + "QQ", 0x4, (S_BAR << 32) | R_32)
    extra = [
        Sec(".data2", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, bytes(8), align=8),
        Sec(
            ".rel.data2",
            SHT_REL,
            SHF_INFO_LINK,
            rel,
            link=".symtab",
            info=".data2",
            align=8,
            entsize=16,
        ),
    ]
    src = make_object(endian, extra=extra)
    with raises(r"section '\.rel\.data2' is SHT_REL .* symbol 'bar'"):
        klpify(src, SYMS)
    # a SHT_REL section that does not use a moved symbol is fine
    out = klpify(src, {"foo": KlpSym("vmlinux")})
    assert section_data(elf_of(out), ".rel.data2") == rel


def test_error_bad_style_and_format() -> None:
    with raises("unknown style 'ksplice'"):
        klpify(make_object("<"), SYMS, style="ksplice")  # type: ignore[arg-type]
    with raises("unknown format 'old'"):
        klpify(make_object("<"), SYMS, fmt="old")  # type: ignore[arg-type]


def test_error_existing_section_name() -> None:
    extra = [Sec(".klp.rela.vmlinux..text.foo", SHT_PROGBITS)]
    with raises(r"section '\.klp\.rela\.vmlinux\.\.text\.foo' already exists"):
        klpify(make_object("<", extra=extra), SYMS)
