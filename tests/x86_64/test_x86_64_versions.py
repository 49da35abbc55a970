"""x86_64 rules that depend on version and configuration (audit D14), and
each x86_64 row of the version table on both sides of its start."""

from __future__ import annotations

import struct

import pytest
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import (
    KernelTarget,
    Loader,
    MemType,
    RelocationError,
    ResolutionError,
    get_plugin_manager,
    parse_symbol_text,
)
from klpcore import constants as C
from klpcore.config import KernelConfig
from klpcore.memory import ModuleImage, Region
from klpcore.testing.conformance import behaviour_tests
from klpcore.versions import BEHAVIOURS

x86 = pytest.importorskip("klpcore_x86_64")

BASE = 0xFFFFFFFFC0000000
MAP = (
    "ffffffff82a00000 D __stack_chk_guard\nffffffff82b00000 r __ksymtab___stack_chk_guard\n"
    "ffffffff81000000 T printk\nffffffff82b00010 r __ksymtab_printk\n"
)
CLANG16 = "CONFIG_CC_IS_CLANG=y\nCONFIG_CLANG_VERSION=160006\nCONFIG_STACKPROTECTOR=y\nCONFIG_STRICT_MODULE_RWX=y\n"
GCC = "CONFIG_CC_IS_GCC=y\nCONFIG_GCC_VERSION=120200\nCONFIG_STACKPROTECTOR=y\nCONFIG_STRICT_MODULE_RWX=y\n"
PTR = 0xFFFFFFFF82C00000  # the kernel's static pointer to __stack_chk_guard


def module(sym: str) -> bytes:
    return Obj(
        machine=62,
        sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(16))],
        symbols=[Sym(sym)],
        relas=[Rela(".text", 3, 42, sym, -4)],
        modinfo={"name": "sc", "license": "GPL"},
    ).build()


def load(version, config, sym="__stack_chk_guard", **options):
    k = KernelTarget(version, config=KernelConfig.from_text(config), options={"stack_chk_guard_ptr": PTR, **options})
    return Loader(get_plugin_manager(), kernel=k).load(module(sym), parse_symbol_text(MAP), BASE)


def test_clang16_stack_cookie_from_6_15() -> None:
    lm = load((6, 15), CLANG16)
    text = lm.section_bytes(lm.module.section_by_name(".text").index)
    P = BASE + 3
    assert struct.unpack_from("<i", text, 3)[0] == PTR - 4 - P


@pytest.mark.parametrize(("version", "config"), [((6, 14), CLANG16), ((6, 15), GCC)])
def test_rex_gotpcrelx_refused_otherwise(version, config) -> None:
    with pytest.raises(RelocationError) as ei:
        load(version, config)
    assert ei.value.diagnostics[0].kernel_message == "sc: Unknown rela relocation: 42"


def test_only_against_the_stack_guard() -> None:
    with pytest.raises(RelocationError) as ei:
        load((6, 15), CLANG16, sym="printk")
    assert ei.value.diagnostics[0].kernel_message == "sc: Unsupported GOTPCREL relocation"


def test_ignore_undef_symbol_from_5_12() -> None:
    """_GLOBAL_OFFSET_TABLE_ left undefined: ignored on x86 from 5.12, 'Unknown symbol' before."""
    data = Obj(
        machine=62,
        sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(8))],
        symbols=[Sym("_GLOBAL_OFFSET_TABLE_")],
        relas=[],
        modinfo={"name": "got"},
    ).build()
    syms = parse_symbol_text("ffffffff81000000 T printk\nffffffff82b00010 r __ksymtab_printk\n")
    Loader(get_plugin_manager(), kernel=KernelTarget((5, 12))).load(data, syms, BASE)
    with pytest.raises(ResolutionError) as ei:
        Loader(get_plugin_manager(), kernel=KernelTarget((5, 11))).load(data, syms, BASE)
    assert ei.value.diagnostics[0].kernel_message == "got: Unknown symbol _GLOBAL_OFFSET_TABLE_ (err -2)"


def text_region() -> tuple[ModuleImage, Region]:
    img = ModuleImage([Region(MemType.TEXT, 0x1000, 0x1000)])
    img.form()
    return img, img.regions[0]


def test_late_writes_through_text_poke_from_5_8() -> None:
    img, text = text_region()
    ((old, new),) = x86.versions.TEXT_POKE.sides()
    assert old.version == (5, 7) and new.version == (5, 8)
    assert x86.klp_arch_write_method(img, text, 0x1000, 4, old) == "module_disable_ro"
    assert x86.klp_arch_write_method(img, text, 0x1000, 4, new) == "text_poke"


def test_write_relocate_add_messages_from_6_3() -> None:
    ((old, new),) = x86.versions.WRITE_RELOCATE_ADD.sides()
    assert old.version == (6, 2) and new.version == (6, 3)
    assert x86.messages(old)["nonzero"].startswith("x86/modules: Skipping invalid")
    assert x86.messages(new)["nonzero"].startswith("x86/modules: Invalid relocation target")


# core rows the x86_64 plugin's code decides
def test_module_rwx_helpers_from_4_5() -> None:
    img, text = text_region()
    ((old, new),) = BEHAVIOURS["module_rwx_helpers"].sides()
    assert x86.klp_arch_write_method(img, text, 0x1000, 4, old) == "set_memory_rw"
    assert x86.klp_arch_write_method(img, text, 0x1000, 4, new) == "module_disable_ro"


def test_messages_name_section_and_index_from_6_19() -> None:
    ((old, new),) = BEHAVIOURS["reloc_messages_sec_idx"].sides()
    assert "sec {sec}" not in x86.messages(old)["overflow"]
    assert x86.messages(new)["overflow"].startswith(
        "overflow in relocation type {number} val {value:x} sec {sec} idx {idx}"
    )


TestBehaviours = behaviour_tests(
    rows=x86.versions.BEHAVIOURS,
    boundary_tests={
        "x86_text_poke": test_late_writes_through_text_poke_from_5_8,
        "x86_write_relocate_add": test_write_relocate_add_messages_from_6_3,
        # 6.14 and 6.15 refused (the other side: test_clang16_stack_cookie_from_6_15)
        "x86_clang_stack_cookie_gotpcrel": test_rex_gotpcrelx_refused_otherwise,
    },
    # the mainline release of the change each row names (not read from the rows)
    releases={
        "x86_text_poke": ((5, 7), (5, 8)),  # x86/module: Use text_poke() for late relocations
        "x86_write_relocate_add": ((6, 2), (6, 3)),  # livepatch,x86: Clear relocation targets on a module removal
        "x86_clang_stack_cookie_gotpcrel": ((6, 14), (6, 15)),  # x86/module: Deal with GOT based stack cookie ...
    },
)
