"""ELF reading: every check names what is wrong; hostile input never crashes."""

from __future__ import annotations

import struct

import pytest
from elfbuild import Obj, Rela, Sec, Sym
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klpcore import ElfFormatError, ElfModule, KlpError
from klpcore import constants as C


def basic(endian: str = "<") -> bytes:
    return Obj(
        endian=endian,
        sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(16), align=16)],
        symbols=[Sym("ext")],
        relas=[Rela(".text", 0, 1, "ext", 5)],
        modinfo={"name": "basic"},
    ).build()


@pytest.mark.parametrize("endian", ["<", ">"])
def test_reads_both_byte_orders(endian: str) -> None:
    m = ElfModule(basic(endian))
    assert m.name == "basic"
    assert m.byteorder == ("little" if endian == "<" else "big")
    assert m.machine == 0xBEEF
    text = m.section_by_name(".text")
    assert text is not None and text.size == 16 and text.addralign == 16
    rel = m.section_by_name(".rela.text")
    assert rel is not None
    r = m.relas(rel.index)
    assert len(r) == 1
    assert int(r["r_offset"][0]) == 0 and int(r["r_addend"][0]) == 5
    assert m.symbol_names[int(r["r_info"][0]) >> 32] == "ext"


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:40], "too short for an ELF header"),
        (lambda d: b"\x7fELG" + d[4:], "not an ELF file"),
        (lambda d: d[:4] + b"\x01" + d[5:], "ELFCLASS32 is not ELFCLASS64".replace("ELFCLASS32", "1")),
        (lambda d: d[:5] + b"\x07" + d[6:], "unknown ELF data encoding 7"),
        (lambda d: patched(d, 16, "<H", C.ET_EXEC), "is not ET_REL"),
        (lambda d: patched(d, 58, "<H", 40), "e_shentsize is 40, expected 64"),
        (lambda d: patched(d, 40, "<Q", len(d) - 10), "runs past the end of the file"),
    ],
)
def test_header_errors(mutate, message: str) -> None:
    with pytest.raises(ElfFormatError, match=message):
        ElfModule(mutate(basic()))


def _shdr_off(data: bytes, index: int) -> int:
    return struct.unpack_from("<Q", data, 40)[0] + 64 * index


def test_section_contents_past_end() -> None:
    d = basic()
    m = ElfModule(d)
    i = m.section_by_name(".text").index
    bad = patched(d, _shdr_off(d, i) + 32, "<Q", 1 << 40)
    with pytest.raises(ElfFormatError, match=r"section \.text: contents .* run past the end"):
        ElfModule(bad)


def test_section_name_outside_table() -> None:
    d = basic()
    bad = patched(d, _shdr_off(d, 1), "<I", 0xFFFFFF)
    with pytest.raises(ElfFormatError, match=r"section \[1\] name offset 0xffffff is outside the name table"):
        ElfModule(bad)


def test_relocation_symbol_index_out_of_range() -> None:
    obj = Obj(
        sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(16))],
        symbols=[Sym("ext")],
        relas=[Rela(".text", 0, 1, 77)],
    )
    m = ElfModule(obj.build(), name="m")
    rel = m.section_by_name(".rela.text")
    with pytest.raises(ElfFormatError) as ei:
        m.relas(rel.index)
    d = ei.value.diagnostics[0]
    assert d.module == "m" and d.section == ".rela.text" and d.index == 0
    assert "symbol index 77 is outside the symbol table (2 entries)" in d.message


def test_no_symbol_table() -> None:
    d = basic()
    m = ElfModule(d)
    i = m.symtab_index
    bad = patched(d, _shdr_off(d, i) + 4, "<I", C.SHT_PROGBITS)
    with pytest.raises(ElfFormatError, match="no symbol table"):
        ElfModule(bad)


def test_symbol_name_outside_strtab() -> None:
    d = basic()
    m = ElfModule(d)
    sym_off = m.sections[m.symtab_index].offset + 24  # symbol 1
    bad = patched(d, sym_off, "<I", 0xFFFF)
    with pytest.raises(ElfFormatError, match=r"symbol #1 name offset 0xffff is outside the string table"):
        ElfModule(bad)


def test_rela_size_not_multiple() -> None:
    d = basic()
    m = ElfModule(d)
    i = m.section_by_name(".rela.text").index
    bad = patched(d, _shdr_off(d, i) + 32, "<Q", 23)
    with pytest.raises(ElfFormatError, match="size 23 is not a multiple of 24"):
        ElfModule(bad).relas(i)


def test_module_name_from_path(tmp_path) -> None:
    d = Obj(sections=[Sec(".text", flags=C.SHF_ALLOC, data=b"x")]).build()
    p = tmp_path / "my-mod.ko"
    p.write_bytes(d)
    assert ElfModule.from_file(p).name == "my_mod"


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(ElfFormatError, match="cannot read"):
        ElfModule.from_file(tmp_path / "missing.ko")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutations_never_crash(data) -> None:
    """Random byte mutations: parsing either works or raises ElfFormatError."""
    blob = bytearray(basic(data.draw(st.sampled_from(["<", ">"]))))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        m = ElfModule(bytes(blob))
        for s in m.rela_sections():
            m.relas(s.index)
    except KlpError:
        pass


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_full_load_never_crashes(toy_loader, data) -> None:
    """Mutated modules through layout, symbols and relocation: only klpcore errors."""
    from klpcore import parse_symbol_text

    blob = bytearray(basic())
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(64, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    syms = parse_symbol_text("ffffffff81000000 T ext\nffffffff81000010 r __ksymtab_ext\n")
    try:
        toy_loader.load(bytes(blob), syms)
    except KlpError:
        pass


# ------------------------------------------------ the one ELF header reader
def test_header_reader_fields_match_the_bytes() -> None:
    from klpcore.elfheader import read_header, section_count, section_headers, string_table_index

    for endian in "<>":
        d = basic(endian)
        h = read_header(d)
        m = ElfModule(d)
        assert h.endian == endian and h.byteorder == m.byteorder
        assert (h.ident.type, h.ident.machine) == (C.ET_REL, 0xBEEF)
        assert h.shoff == struct.unpack_from(endian + "Q", d, 40)[0]
        assert section_count(d, h) == len(m.sections) == struct.unpack_from(endian + "H", d, 60)[0]
        assert string_table_index(d, h) == m.shstrndx
        rows = section_headers(d, h)
        assert [(r.type, r.offset, r.size, r.link, r.info) for r in rows] == [
            (s.type, s.offset, s.size, s.link, s.info) for s in m.sections
        ]


def test_extended_section_numbering() -> None:
    """e_shnum 0 and e_shstrndx SHN_XINDEX: the count and the index are in section 0 (ELF spec)."""
    from klpcore.elfheader import SHN_XINDEX, read_header, section_count, string_table_index

    d = basic()
    n, shstrndx = struct.unpack_from("<HH", d, 60)
    b = bytearray(d)
    struct.pack_into("<HH", b, 60, 0, SHN_XINDEX)
    struct.pack_into("<Q", b, _shdr_off(d, 0) + 32, n)  # section 0's sh_size
    struct.pack_into("<I", b, _shdr_off(d, 0) + 40, shstrndx)  # section 0's sh_link
    h = read_header(bytes(b))
    assert (section_count(b, h), string_table_index(b, h)) == (n, shstrndx)
    assert [s.name for s in ElfModule(bytes(b)).sections] == [s.name for s in ElfModule(d).sections]


def test_header_reader_refuses_what_it_cannot_read() -> None:
    from klpcore.elfheader import ElfHeaderError, read_header, read_ident, section_count

    d = basic()
    with pytest.raises(ElfHeaderError, match="too short"):
        read_ident(d[:19])
    with pytest.raises(ElfHeaderError, match="bad magic"):
        read_ident(b"\x7fELG" + d[4:])
    # the identification bytes are class-independent: a 32-bit file still says its type and machine
    ident = read_ident(d[:4] + b"\x01" + d[5:20])
    assert (ident.elfclass, ident.type, ident.machine) == (1, C.ET_REL, 0xBEEF)
    with pytest.raises(ElfHeaderError, match="ELF class 1 is not ELFCLASS64"):
        read_header(d[:4] + b"\x01" + d[5:])
    # extended numbering with section 0 outside the file
    b = bytearray(d[:64])
    struct.pack_into("<H", b, 60, 0)
    with pytest.raises(ElfHeaderError, match="section header 0 .* is not inside the file"):
        section_count(b, read_header(b))
    with pytest.raises(ElfFormatError, match="section header 0 .* is not inside the file"):
        ElfModule(bytes(b))


def test_writer_records_read_back() -> None:
    """What elfwriter packs, elfheader reads field for field, in both byte orders."""
    from klpcore.elfheader import SectionHeader, read_header, section_headers
    from klpcore.elfwriter import ElfWriter, pack_file_header

    for endian in "<>":
        w = ElfWriter(endian, pack_file_header(endian, type=C.ET_REL, machine=0x1234, flags=7, shnum=3, shstrndx=2))
        assert w.add(b"abc", 16) == 64 and w.add(b"d", 3) == 69 and w.end == 70
        rows = [
            SectionHeader(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            SectionHeader(1, C.SHT_PROGBITS, C.SHF_ALLOC, 0xFFFF800000001000, 64, 3, 0, 0, 16, 0),
            SectionHeader(5, C.SHT_STRTAB, 0, 0, 69, 1, 0, 0, 1, 0),
        ]
        shoff = w.add_section_headers(rows)
        assert shoff == 72 and w.header_field("shoff") == 72
        data = w.getvalue()
        h = read_header(data)
        assert (h.endian, h.ident.type, h.ident.machine, h.flags) == (endian, C.ET_REL, 0x1234, 7)
        assert (h.shoff, h.shnum, h.shstrndx, h.shentsize, h.ehsize, h.version) == (72, 3, 2, 64, 64, 1)
        assert section_headers(data, h) == rows
        assert data[64:67] == b"abc" and data[67:69] == bytes(2)
        w.set_header(shnum=0)
        assert read_header(w.getvalue()).shnum == 0


def test_program_headers_read_back_up_to_the_end_of_the_file() -> None:
    """elfheader.program_headers: each Elf64_Phdr field for field, in both byte orders; a header
    past the end of the data ends the list (a kernel image's PT_LOAD segments, klpcore.kimage)."""
    import struct

    from klpcore.elfheader import PHDR64_FORMAT, ProgramHeader, program_headers, read_header
    from klpcore.elfwriter import pack_file_header

    rows = [
        ProgramHeader(C.PT_LOAD, 5, 0x10000, 0xC000000000000000, 0, 0x2000, 0x3000, 0x10000),
        ProgramHeader(4, 4, 0x12000, 0xC000000000002000, 0, 0x24, 0x24, 4),
    ]
    for endian in "<>":
        head = pack_file_header(endian, type=C.ET_EXEC, machine=21, phoff=64, phentsize=56, phnum=3)
        data = head + b"".join(struct.pack(endian + PHDR64_FORMAT, *r) for r in rows)
        assert program_headers(data, read_header(data)) == rows  # the third is not in the data
        assert program_headers(data[:-1], read_header(data)) == rows[:1]
