"""x86_64 rules that depend on version and configuration (audit D14)."""

from __future__ import annotations

import struct

import pytest
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import KernelTarget, Loader, RelocationError, ResolutionError, get_plugin_manager, parse_symbol_text
from klpcore import constants as C
from klpcore.config import KernelConfig

pytest.importorskip("klpcore_x86_64")

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
