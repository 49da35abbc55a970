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
