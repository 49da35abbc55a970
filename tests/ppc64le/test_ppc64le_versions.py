"""ppc64le layout and stub rules by kernel version and configuration (audit
D1, D4, D5), each boundary on both sides."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import (
    KernelTarget,
    Loader,
    MemoryAccessError,
    MemType,
    RelocationError,
    get_plugin_manager,
    parse_symbol_text,
)
from klpcore import constants as C
from klpcore.config import KernelConfig
from klpcore.convert.elfedit import KlpSym
from klpcore.convert.named import convert_named
from klpcore.convert.plan import ConvertError
from klpcore.memory import ModuleImage, Region
from klpcore.testing.conformance import behaviour_tests
from klpcore.versions import BEHAVIOURS

ppc = pytest.importorskip("klpcore_ppc64le")
import test_ppc64le  # noqa: E402  (a module: its tests are collected there, not here)

FIX = Path(__file__).parent / "fixtures"
BASE = 0xC008000000000000
KERNEL = """\
c000000000123450 T ext_add
c000000000a00000 T ftrace_caller
c000000000a00100 T ftrace_regs_caller
c000000001f00000 D .TOC.
"""
TGT = "c008000010000000 t tgt_fn\t[tgt_mod]\nc008000010100000 d tgt_data\t[tgt_mod]\n"
AX = C.SHF_ALLOC | C.SHF_EXECINSTR
WA = C.SHF_ALLOC | C.SHF_WRITE


def loader(version: str, config: str | None = None, **options) -> Loader:
    cfg = KernelConfig.from_text(config) if config else None
    return Loader(get_plugin_manager(), kernel=KernelTarget.from_string(version, options=options, config=cfg))


# ------------------------------------------------------------------ D1 layout
def addresses(lm) -> dict[str, int]:
    return {s.name: lm.section_address(s.index) for s in lm.module.sections if lm.section_address(s.index)}


def test_64k_pages_by_default_4k_from_config() -> None:
    """Debian's ppc64el (and every major distro) kernel has 64 KiB pages: rodata,
    ro_after_init and data start on 64 KiB boundaries in core (6.1 legacy layout)."""
    syms = parse_symbol_text((FIX / "kernel.map").read_text())
    lm = loader("6.1").load(str(FIX / "mod_calls.o"), syms, BASE)
    a = addresses(lm)
    assert lm.module.settings["PAGE_SIZE"].value == 0x10000
    assert lm.module.settings["PAGE_SIZE"].source == "arch default"
    assert a[".rodata.str1.8"] == BASE + 0x10000
    assert a[".data"] == BASE + 0x20000
    small = loader("6.1", "CONFIG_PPC_4K_PAGES=y\n# CONFIG_PPC_64K_PAGES is not set\nCONFIG_STRICT_MODULE_RWX=y\n")
    lm = small.load(str(FIX / "mod_calls.o"), syms, BASE)
    assert lm.module.settings["PAGE_SIZE"].source == "config"
    assert addresses(lm)[".rodata.str1.8"] == BASE + 0x1000
    assert addresses(lm)[".data"] == BASE + 0x2000


@pytest.mark.parametrize(("version", "packed"), [("5.13", True), ("5.14", False)])
def test_no_page_alignment_before_5_14(version, packed) -> None:
    """Book3S-64 selects ARCH_HAS_STRICT_MODULE_RWX from 5.14; before, debug_align
    is the identity and the rows are packed (and text stays writable)."""
    syms = parse_symbol_text((FIX / "kernel.map").read_text())
    lm = loader(version).load(str(FIX / "mod_calls.o"), syms, BASE)
    a = addresses(lm)
    text = lm.module.section_by_name(".text")
    stubs = lm.module.section_by_name(".stubs")
    end_of_text = max(a[".text"] + text.size, a[".stubs"] + stubs.size)
    if packed:
        assert a[".rodata.str1.8"] == (end_of_text + 7) & ~7
        assert lm.module.settings["STRICT_MODULE_RWX"].value == "n"
    else:
        assert a[".rodata.str1.8"] == BASE + 0x10000


# --------------------------------------------------------- D5 late writes
def _klp(names: list[str], version: str | None = None) -> bytes:
    """klp_late.o converted for Linux ``version`` (default: the newest)."""
    kernel = KernelTarget(tuple(int(x) for x in version.split("."))) if version else None  # type: ignore[arg-type]
    return convert_named((FIX / "klp_late.o").read_bytes(), {n: KlpSym("tgt_mod") for n in names}, kernel).data


@pytest.mark.parametrize(
    ("version", "outcome"),
    [("5.10", "store"), ("5.13", "store"), ("5.14", "fault"), ("5.15", "fault"), ("5.16", "patch_instruction")],
)
def test_late_writes_into_text_by_version(version, outcome) -> None:
    """5.8-5.13: module text is writable (no STRICT_MODULE_RWX on ppc64), plain
    stores succeed; 5.14/5.15 fault; 5.16 writes REL24/stubs with patch_instruction
    (and still faults on the TOC16 store)."""
    syms = parse_symbol_text("c000000000200000 D tgt_data\n")
    lm = loader(version).load(_klp(["tgt_fn"]), syms, BASE)
    if outcome == "fault":
        with pytest.raises((RelocationError, MemoryAccessError)):
            lm.coming("tgt_mod", parse_symbol_text(TGT))
        return
    lm.coming("tgt_mod", parse_symbol_text(TGT))
    methods = {w.method for w in lm.write_log if w.phase == "coming:tgt_mod"}
    assert methods == {outcome}


def test_late_toc16_store_succeeds_on_5_13_only() -> None:
    syms = parse_symbol_text("c000000000200000 D unrelated\n")
    lm = loader("5.13").load(_klp(["tgt_fn", "tgt_data"], "5.13"), syms, BASE)
    lm.coming("tgt_mod", parse_symbol_text(TGT))
    assert lm.pending_objects == []
    # for 5.16 convert refuses the late TOC16 into read-only text, as the loader does with the 5.13 module
    with pytest.raises(ConvertError, match="ppc64_patch_instruction"):
        _klp(["tgt_fn", "tgt_data"], "5.16")
    syms = parse_symbol_text("c000000000200000 D unrelated\n")  # coming() merged tgt_mod into the first
    lm = loader("5.16").load(_klp(["tgt_fn", "tgt_data"], "5.13"), syms, BASE)
    with pytest.raises(RelocationError):
        lm.coming("tgt_mod", parse_symbol_text(TGT))


# ------------------------------------------------------ D4 stubs and OOL
BL, NOP = 0x48000001, 0x60000000


def ool_module(entries: int = 5) -> bytes:
    """Calls ext_add (kernel) and tgt_fn (livepatch, module tgt_mod); a
    __patchable_function_entries table of ``entries`` pointers."""
    text = struct.pack("<4I", BL, NOP, BL, NOP)
    obj = Obj(
        machine=21,
        e_flags=2,
        sections=[
            Sec(".text", flags=AX, data=text, align=4),
            Sec(".stubs", type=C.SHT_NOBITS, flags=AX, size=0, align=8),
            Sec(".toc", flags=WA, data=bytes(8), align=8),
            Sec("__patchable_function_entries", flags=WA, data=bytes(8 * entries), align=8),
        ],
        symbols=[Sym("ext_add", type=C.STT_FUNC), Sym("tgt_fn", type=C.STT_FUNC)],
        relas=[Rela(".text", 0, 10, "ext_add"), Rela(".text", 8, 10, "tgt_fn")],
        modinfo={"name": "oolmod", "livepatch": "Y"},
    ).build()
    return convert_named(obj, {"tgt_fn": KlpSym("tgt_mod")}).data


def stub_slots(lm) -> list[int]:
    sec = lm.module.section_by_name(".stubs")
    data = lm.section_bytes(sec.index)
    return [int.from_bytes(data[k * 40 + 32 : k * 40 + 40], "little") for k in range(sec.size // 40)]


@pytest.mark.parametrize(
    ("version", "slots", "tgt_slot", "overwrites"),
    [
        ("6.12", 1 + 2 + 2, 3, False),  # no out-of-line ftrace stubs yet
        ("6.13", 1 + 2 + 2 + 3, 4, True),  # OOL block at 3..5, only slot 3 marked: tgt_fn lands inside it
        ("6.16", 1 + 2 + 2 + 3, 4, True),
        ("6.17", 2 + 2 + 3, 6, False),  # no spare slot; stub_count skips the block
    ],
)
def test_stub_sizing_and_allocation_with_ool_ftrace(version, slots, tgt_slot, overwrites) -> None:
    lm = loader(version, ftrace_out_of_line=True).load(ool_module(5), parse_symbol_text(KERNEL), BASE)
    sec = lm.module.section_by_name(".stubs")
    assert sec.size == slots * 40
    funcdata = stub_slots(lm)
    assert funcdata[:3] == [0xC000000000123450, 0xC000000000A00000, 0xC000000000A00100]
    lm.coming("tgt_mod", parse_symbol_text(TGT))
    funcdata = stub_slots(lm)
    assert funcdata[tgt_slot] == 0xC008000010000000
    warned = [d for d in lm.warnings if "out-of-line ftrace stub block" in d.message]
    assert bool(warned) == overwrites
    if version in ("6.13", "6.16"):
        assert funcdata[3] & 0xFFFFFFFF == NOP  # setup_ftrace_ool_stubs' reservation mark


def test_ool_needs_the_config() -> None:
    """Without CONFIG_PPC_FTRACE_OUT_OF_LINE (the default: GCC 12 builds use -mprofile-kernel)."""
    lm = loader("6.19").load(ool_module(5), parse_symbol_text(KERNEL), BASE)
    assert lm.module.section_by_name(".stubs").size == (2 + 2) * 40
    cfg = "CONFIG_PPC_FTRACE_OUT_OF_LINE=y\nCONFIG_DYNAMIC_FTRACE=y\nCONFIG_DYNAMIC_FTRACE_WITH_REGS=y\n"
    lm = loader("6.19", cfg).load(ool_module(5), parse_symbol_text(KERNEL), BASE)
    assert lm.module.section_by_name(".stubs").size == (2 + 2 + 3) * 40


@pytest.mark.parametrize(("version", "size"), [("6.16", (1 + 6 + 2) * 40), ("6.17", (6 + 2) * 40)])
def test_mod_calls_stub_area(version, size) -> None:
    """The audit's measurement: mod_calls.o, 360 bytes up to 6.16, 320 from 6.17."""
    syms = parse_symbol_text((FIX / "kernel.map").read_text())
    lm = loader(version).load(str(FIX / "mod_calls.o"), syms, BASE)
    assert lm.module.section_by_name(".stubs").size == size


def test_no_module_disable_ro_from_5_8() -> None:
    """A core row the plugin's write method decides: livepatch stops making module text writable."""
    img = ModuleImage([Region(MemType.TEXT, 0x1000, 0x1000)])
    img.form()
    ((old, new),) = BEHAVIOURS["klp_no_module_disable_ro"].sides()
    # a ppc64 kernel with STRICT_MODULE_RWX (a config fact; not a distribution default before 5.14)
    assert ppc.klp_arch_write_method(img, img.regions[0], 0x1000, 4, old, None) == "module_disable_ro"
    assert ppc.klp_arch_write_method(img, img.regions[0], 0x1000, 4, new, None) is None


TestBehaviours = behaviour_tests(
    rows=ppc.versions.BEHAVIOURS,
    boundary_tests={
        "ppc64_strict_module_rwx": test_no_page_alignment_before_5_14,
        "ppc64_patch_instruction": test_late_writes_into_text_by_version,
        "ppc64_restore_r2_accepts_ld": test_ppc64le.test_reapply_after_reload_6_1_vs_newest,
        "ppc64_ool_ftrace_stubs": test_stub_sizing_and_allocation_with_ool_ftrace,
        "ppc64_stub_count": test_mod_calls_stub_area,
    },
    # the mainline release of the change each row names (not read from the rows)
    releases={
        "ppc64_strict_module_rwx": ((5, 13), (5, 14)),  # powerpc: Set ARCH_HAS_STRICT_MODULE_RWX
        "ppc64_patch_instruction": ((5, 15), (5, 16)),  # powerpc/module_64: Fix livepatching for RO modules
        "ppc64_restore_r2_accepts_ld": ((6, 2), (6, 3)),  # powerpc/module_64: Fix "expected nop" error ...
        "ppc64_ool_ftrace_stubs": ((6, 12), (6, 13)),  # powerpc64/ftrace: Move ftrace sequence out of line
        "ppc64_stub_count": ((6, 16), (6, 17)),  # powerpc64/modules: fix ool-ftrace-stub vs. livepatch ...
    },
)
