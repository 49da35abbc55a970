"""Arch-owned memory reserved by arch setup at the start of a memory type
(``LoadingModule.reserve``), on the toy arch: layout, writes, and the output ELF."""

from __future__ import annotations

import struct

import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import ElfModule, KernelTarget, Loader, MemType, get_plugin_manager, hookimpl, parse_symbol_text
from klpcore import constants as C
from klpcore.layout import RESERVED_INDEX, Reservation, layout_sections
from klpcore.output import write_elf

BASE = 0xFFFFFFFFC0000000
TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR


class Reserver:
    """A non-arch plugin: reserves a 'got' and a 'plt' in MOD_TEXT as s390 does,
    and fills them in module_finalize."""

    def __init__(self, got: int = 12, plt: int = 10) -> None:
        self.got, self.plt = got, plt

    @hookimpl
    def klp_arch_frob_sections(self, module, kernel) -> None:  # type: ignore[no-untyped-def]
        module.reserve(MemType.TEXT, ".toy.got", self.got, align=4)
        module.reserve(MemType.TEXT, ".toy.plt", self.plt)
        module.reserve(MemType.RO_AFTER_INIT, ".toy.empty", 0)

    @hookimpl
    def klp_arch_finalize(self, ctx) -> None:  # type: ignore[no-untyped-def]
        got = ctx.module.layout.reserved[".toy.got"].address
        ctx.write_uint(got, 8, 0x1122334455667788)
        plt = ctx.module.layout.reserved[".toy.plt"].address
        ctx.write_uint(plt + 2, 4, 0xCAFEF00D, insn=True)


def module() -> bytes:
    return Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(32), align=16), Sec(".rodata", flags=C.SHF_ALLOC, data=b"x")],
        symbols=[Sym("printk"), Sym("fn", ".text", 0)],
        relas=[Rela(".text", 8, T.ABS64, "printk")],
        modinfo={"name": "toymod"},
    ).build()


def load(version: str = "6.17", reserver: Reserver | None = None):
    pm = get_plugin_manager(autoload=False, plugins=[T, reserver or Reserver()])
    syms = parse_symbol_text("ffffffff81000000 T printk\nffffffff82000000 r __ksymtab_printk\n")
    return Loader(pm, kernel=KernelTarget.from_string(version)).load(module(), syms, BASE)


@pytest.mark.parametrize("version", ["6.1", "6.17"])  # legacy core_layout and module_memory
def test_reservations_come_first_in_their_memory_type(version) -> None:
    lm = load(version)
    got = lm.module.layout.reserved[".toy.got"]
    plt = lm.module.layout.reserved[".toy.plt"]
    text = lm.module.section_by_name(".text")
    assert text is not None
    assert (got.address, got.size, got.index) == (BASE, 12, RESERVED_INDEX)
    assert (plt.address, plt.size, plt.index) == (BASE + 12, 10, RESERVED_INDEX - 1)
    assert lm.section_address(text.index) == BASE + 32  # ALIGN(22, 16)
    assert lm.module.layout.regions[MemType.TEXT].size == (64 if version == "6.17" else 4096)
    # an empty reservation allocates nothing (the legacy core gives it an address, as the kernel would)
    if version == "6.17":
        assert ".toy.empty" not in lm.module.layout.reserved
        assert MemType.RO_AFTER_INIT not in lm.module.layout.regions
    else:
        assert lm.module.layout.reserved[".toy.empty"].size == 0
    # writes staged at reserved addresses reach the image
    assert lm.reserved_bytes(".toy.got") == (BASE, struct.pack("<Q", 0x1122334455667788) + bytes(4))
    assert lm.reserved_bytes(".toy.plt")[1] == bytes(2) + struct.pack("<I", 0xCAFEF00D) + bytes(4)
    assert [w.phase for w in lm.write_log if w.address < BASE + 22] == ["load", "load"]


def test_alignment_of_later_reservations_and_of_the_first_section() -> None:
    secs = [ElfModule(module()).sections[i] for i in (1,)]
    lay = layout_sections(
        secs,
        BASE,
        reserved=[Reservation("a", MemType.TEXT, 3), Reservation("b", MemType.TEXT, 5, align=8)],
    )
    assert lay.reserved["a"].address == BASE
    assert lay.reserved["b"].address == BASE + 8
    assert lay.placements[1].address == BASE + 16


def test_duplicate_reservation_refused() -> None:
    pm = get_plugin_manager(autoload=False, plugins=[T])
    mod = Loader(pm).open(module())
    mod.reserve(MemType.TEXT, "x", 8)
    with pytest.raises(ValueError, match="exists already"):
        mod.reserve(MemType.TEXT, "x", 8)


def test_output_elf_carries_reservations_as_sections() -> None:
    lm = load()
    out = write_elf(lm)
    elf = ElfModule(out)
    orig = ElfModule(module())
    assert [s.name for s in elf.sections[: len(orig.sections)]] == [s.name for s in orig.sections]
    extra = {s.name: s for s in elf.sections[len(orig.sections) :]}
    assert set(extra) == {".toy.got", ".toy.plt"}
    got, plt = extra[".toy.got"], extra[".toy.plt"]
    assert (got.addr, got.size, got.type, got.flags) == (BASE, 12, C.SHT_PROGBITS, TEXT)
    assert got.addralign == 4
    assert elf.section_data(got.index) == lm.reserved_bytes(".toy.got")[1]
    assert (plt.addr, elf.section_data(plt.index)) == (BASE + 12, lm.reserved_bytes(".toy.plt")[1])
    text = elf.section_by_name(".text")
    assert text is not None and text.addr == BASE + 32


def test_without_reservations_output_is_unchanged_in_shape() -> None:
    pm = get_plugin_manager(autoload=False, plugins=[T])
    syms = parse_symbol_text("ffffffff81000000 T printk\nffffffff82000000 r __ksymtab_printk\n")
    lm = Loader(pm).load(module(), syms, BASE)
    assert lm.module.layout.reserved == {}
    elf = ElfModule(write_elf(lm))
    assert [s.name for s in elf.sections] == [s.name for s in ElfModule(module()).sections]
