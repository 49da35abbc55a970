"""``apply --sections`` / ``--region-base``: the kernel's own section addresses (klpcore.placement)."""

from __future__ import annotations

from pathlib import Path

import pytest

from klpcore import constants as C
from klpcore.constants import MemType
from klpcore.elf import Section
from klpcore.errors import InputError
from klpcore.layout import Layout, layout_sections
from klpcore.placement import fit_sections, parse_region_base, read_sections

TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR
DATA = C.SHF_ALLOC | C.SHF_WRITE
BASE = 0xFFFFFFFFC0000000


def sec(i: int, name: str, flags: int, size: int, align: int) -> Section:
    return Section(i, name, C.SHT_PROGBITS, flags, 0, 0, size, 0, 0, align, 0)


SECS = [
    sec(0, "", 0, 0, 0),
    sec(1, ".text", TEXT, 0x30, 16),
    sec(2, ".rodata", C.SHF_ALLOC, 0x11, 8),
    sec(3, ".data", DATA, 0x10, 8),
    sec(4, ".init.text", TEXT, 0x20, 16),
    sec(5, ".text.b", TEXT, 0x8, 32),
    sec(6, ".data..ro_after_init", DATA | C.SHF_RO_AFTER_INIT, 8, 8),
    sec(7, ".note", C.SHF_ALLOC, 4, 4),
]

#: what a 6.4+ kernel showed in sysfs for these sections: each memory type its own allocation
KERNEL = {
    ".text": 0xFFFFFFFFC0400000,
    ".text.b": 0xFFFFFFFFC0400040,
    ".init.text": 0xFFFFFFFFC0401000,
    ".data": 0xFFFFFFFFC0110000,
    ".rodata": 0xFFFFFFFFC0112000,
    ".note": 0xFFFFFFFFC0112014,
    ".data..ro_after_init": 0xFFFFFFFFC0114000,
    ".symtab": 0xFFFFFFFFC0116008,
    ".strtab": 0xFFFFFFFFC0116800,
}


def memory_layout() -> Layout:
    return layout_sections(SECS, BASE, style="memory")


def test_fit_gives_each_memory_type_its_kernel_base() -> None:
    fit = fit_sections(memory_layout(), KERNEL, 4096)
    assert fit.bases == {
        MemType.TEXT: 0xFFFFFFFFC0400000,
        MemType.INIT_TEXT: 0xFFFFFFFFC0401000,
        MemType.DATA: 0xFFFFFFFFC0110000,
        MemType.RODATA: 0xFFFFFFFFC0112000,
        MemType.RO_AFTER_INIT: 0xFFFFFFFFC0114000,
    }
    assert sorted(fit.ignored) == [".strtab", ".symtab"]  # layout_symtab's kallsyms copy
    relaid = layout_sections(SECS, BASE, style="memory", region_bases=fit.bases)
    assert {p.name: p.address for p in relaid.placements.values()} == {
        k: v for k, v in KERNEL.items() if k not in (".symtab", ".strtab")
    }


def test_fit_legacy_core_and_init() -> None:
    lay = layout_sections(SECS, BASE, style="legacy")
    core, init = 0xFFFFFFFFC0200000, 0xFFFFFFFFC0300000
    kernel = {p.name: (init if p.memtype.is_init else core) + p.offset for p in lay.placements.values()}
    fit = fit_sections(lay, kernel, 4096)
    assert fit.bases == {MemType.TEXT: core, MemType.INIT_TEXT: init}


def test_refuses_a_section_off_its_offset() -> None:
    bad = dict(KERNEL, **{".note": KERNEL[".note"] + 4})
    with pytest.raises(InputError) as ei:
        fit_sections(memory_layout(), bad, 4096, module="m", source="x.txt")
    msg = str(ei.value)
    assert ".note at 0xffffffffc0112018 is not where the kernel lays it out" in msg
    assert "MOD_RODATA at 0xffffffffc0112000" in msg and "belongs at 0xffffffffc0112014" in msg
    assert "--sections x.txt" in msg


def test_refuses_an_unaligned_type_start() -> None:
    bad = {k: v + 0x10 if k in (".data",) else v for k, v in KERNEL.items()}
    with pytest.raises(InputError, match=r"would start MOD_DATA at 0xffffffffc0110010 .* not 0x1000-aligned"):
        fit_sections(memory_layout(), bad, 4096)


def test_refuses_overlapping_types() -> None:
    bad = dict(KERNEL)
    bad[".rodata"], bad[".note"] = KERNEL[".data"], KERNEL[".data"] + 0x14
    with pytest.raises(InputError, match="MOD_RODATA at 0xffffffffc0110000 overlaps MOD_DATA"):
        fit_sections(memory_layout(), bad, 4096)


def test_refuses_a_section_klpcore_does_not_place() -> None:
    with pytest.raises(InputError, match=r"lists section \.foo at 0x1000, but klpcore does not lay it out"):
        fit_sections(memory_layout(), dict(KERNEL, **{".foo": 0x1000}), 4096)


def test_refuses_a_memory_type_no_section_locates() -> None:
    partial = {k: v for k, v in KERNEL.items() if k != ".init.text"}
    with pytest.raises(InputError, match="no listed section locates MOD_INIT_TEXT; give its start with --region-base"):
        fit_sections(memory_layout(), partial, 4096)


def test_read_sections_directory_listing_and_grep(tmp_path: Path) -> None:
    d = tmp_path / "sections"
    d.mkdir()
    (d / ".text").write_text("0xffffffffc0400000\n")
    (d / "__jump_table").write_text("0xffffffffc0114000\n")
    want = {".text": 0xFFFFFFFFC0400000, "__jump_table": 0xFFFFFFFFC0114000}
    assert read_sections(d) == want
    listing = tmp_path / "l.txt"
    listing.write_text("# comment\n.text 0xffffffffc0400000\n__jump_table ffffffffc0114000\n")
    assert read_sections(listing) == want
    grep = tmp_path / "g.txt"
    grep.write_text(f"{d}/.text:0xffffffffc0400000\n{d}/__jump_table:0xffffffffc0114000\n")
    assert read_sections(grep) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (".text 0xzz\n", "is not a hexadecimal address"),
        (".text 0x1000\n.text 0x2000\n", "section .text listed twice"),
        (".text 0x1000 extra\n", "expected 'name address'"),
        ("\n", "no 'name address' lines"),
    ],
)
def test_read_sections_refuses_bad_listings(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(InputError, match=message):
        read_sections(p)


def test_read_sections_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--sections .*nope"):
        read_sections(tmp_path / "nope")


def test_parse_region_base() -> None:
    assert parse_region_base("MOD_TEXT=0xffffffffc0400000") == (MemType.TEXT, 0xFFFFFFFFC0400000)
    assert parse_region_base("ro_after_init=ffffffffc0114000") == (MemType.RO_AFTER_INIT, 0xFFFFFFFFC0114000)
    with pytest.raises(InputError, match="unknown memory type 'MOD_BSS'"):
        parse_region_base("MOD_BSS=0x1000")
    with pytest.raises(InputError, match="expected TYPE=ADDRESS"):
        parse_region_base("MOD_TEXT")


def test_kallsyms_copy_grows_data_and_init_data() -> None:
    """layout_symtab (6.4+): core symbols' Elf64_Sym + names + type bytes at the end of MOD_DATA; the
    whole .symtab and .strtab, struct mod_kallsyms and one type byte per symbol at the end of MOD_INIT_DATA."""
    from klpcore.kallsyms_copy import kallsyms_tails

    secs = [
        sec(0, "", 0, 0, 0),
        sec(1, ".text", TEXT, 0x30, 16),
        sec(2, ".data", DATA, 0x10, 8),
        sec(3, ".init.text", TEXT, 0x20, 16),
    ]
    lay = layout_sections(secs, BASE, style="memory")
    common = dict(
        nsyms=4,
        names=["", "f", "d", "i"],
        shndx=[0, 1, 2, 3],  # f in .text, d in .data, i in .init.text (never a core symbol)
        section_flags=[s.flags for s in secs],
        symtab_size=4 * 24,
        symtab_align=8,
        strtab_size=10,
        strtab_align=1,
        percpu_index=None,
        livepatch=False,
    )
    # symbols 0 and f: 2 x 24 + names (1 + 2) + 2 type bytes after ALIGN(0x10, 8)
    assert kallsyms_tails(lay, kallsyms_all=False, **common)[MemType.DATA] == 48 + 3 + 2  # type: ignore[arg-type]
    # KALLSYMS_ALL: data symbols too
    assert kallsyms_tails(lay, kallsyms_all=True, **common)[MemType.DATA] == 72 + 5 + 3  # type: ignore[arg-type]
    # livepatch modules keep every symbol
    lp = dict(common, livepatch=True)
    assert kallsyms_tails(lay, kallsyms_all=False, **lp)[MemType.DATA] == 96 + 7 + 4  # type: ignore[arg-type]
    # .symtab (96) + .strtab (10), ALIGN 8, struct mod_kallsyms (32), 4 type bytes
    assert kallsyms_tails(lay, kallsyms_all=False, **common)[MemType.INIT_DATA] == 112 + 32 + 4  # type: ignore[arg-type]
