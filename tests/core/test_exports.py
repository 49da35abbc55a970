"""resolve_symbol's checks on exports, from Module.symvers (audit D8), and
ignore_undef_symbol's version boundary."""

from __future__ import annotations

import struct

import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import KernelTarget, Loader, ResolutionError
from klpcore import constants as C
from klpcore.config import KernelConfig
from klpcore.symbols import load_many

TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR
BASE = 0xFFFFFFFFC0000000
MAP = (
    "ffffffff81000000 T dma_buf_get\nffffffff82000000 r __ksymtab_dma_buf_get\n"
    "ffffffff81000100 T gpl_fn\nffffffff82000010 r __ksymtab_gpl_fn\n"
    "ffffffff81000200 T plain_fn\nffffffff82000020 r __ksymtab_plain_fn\n"
)
SYMVERS = (
    "0x11111111\tdma_buf_get\tvmlinux\tEXPORT_SYMBOL_GPL\tDMA_BUF\n"
    "0x22222222\tgpl_fn\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
    "0x33333333\tplain_fn\tvmlinux\tEXPORT_SYMBOL\t\n"
)


def versions(entries: dict[str, int]) -> bytes:
    return b"".join(struct.pack("<Q", crc) + name.encode().ljust(56, b"\0") for name, crc in entries.items())


def module(sym: str, *, license="GPL", import_ns=None, crcs=None, bind=C.STB_GLOBAL) -> bytes:
    modinfo = {"name": "user", "license": license}
    if import_ns:
        modinfo["import_ns"] = import_ns
    crcs = crcs if crcs is not None else {"dma_buf_get": 0x11111111, "gpl_fn": 0x22222222, "plain_fn": 0x33333333}
    return Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(8)), Sec("__versions", flags=C.SHF_ALLOC, data=versions(crcs))],
        symbols=[Sym(sym, bind=bind)],
        relas=[Rela(".text", 0, T.ABS64, sym)],
        modinfo=modinfo,
    ).build()


@pytest.fixture
def symbols(tmp_path):
    (tmp_path / "System.map").write_text(MAP)
    (tmp_path / "Module.symvers").write_text(SYMVERS)
    return lambda: load_many([str(tmp_path / "System.map"), str(tmp_path / "Module.symvers")])


def refusal(toy_pm, data, syms):
    with pytest.raises(ResolutionError) as ei:
        Loader(toy_pm).load(data, syms, BASE)
    return ei.value.diagnostics[0].kernel_message


def test_symvers_parsed(symbols) -> None:
    meta = symbols().export_meta
    assert meta["dma_buf_get"].namespace == "DMA_BUF" and meta["dma_buf_get"].gpl_only
    assert meta["plain_fn"].crc == 0x33333333 and not meta["plain_fn"].gpl_only


def test_namespace_must_be_imported(toy_pm, symbols) -> None:
    assert refusal(toy_pm, module("dma_buf_get"), symbols()) == (
        "user: module uses symbol (dma_buf_get) from namespace DMA_BUF, but does not import it.\n"
        "user: Unknown symbol dma_buf_get (err -22)"
    )
    Loader(toy_pm).load(module("dma_buf_get", import_ns="DMA_BUF"), symbols(), BASE)


def test_gpl_only_hidden_from_proprietary_modules(toy_pm, symbols) -> None:
    assert refusal(toy_pm, module("gpl_fn", license="Proprietary"), symbols()) == "user: Unknown symbol gpl_fn (err -2)"
    Loader(toy_pm).load(module("gpl_fn", license="Dual MIT/GPL"), symbols(), BASE)
    # a weak reference to a hidden GPL export is simply 0 (NULL, not an error pointer)
    lm = Loader(toy_pm).load(module("gpl_fn", license="Proprietary", bind=C.STB_WEAK), symbols(), BASE)
    assert lm.section_bytes(lm.module.section_by_name(".text").index) == bytes(8)


def test_modversions_crc_mismatch(toy_pm, symbols) -> None:
    bad = module("plain_fn", crcs={"plain_fn": 0xDEADBEEF})
    assert refusal(toy_pm, bad, symbols()) == (
        "user: disagrees about version of symbol plain_fn\nuser: Unknown symbol plain_fn (err -22)"
    )
    # even a weak symbol fails on an error pointer
    weak = module("plain_fn", crcs={"plain_fn": 0xDEADBEEF}, bind=C.STB_WEAK)
    assert "disagrees about version" in refusal(toy_pm, weak, symbols())
    # a kernel built without MODVERSIONS does not compare
    k = KernelTarget(config=KernelConfig.from_text("# CONFIG_MODVERSIONS is not set\n"))
    Loader(toy_pm, kernel=k).load(bad, symbols(), BASE)
    # no entry for the symbol: the kernel warns once and accepts
    Loader(toy_pm).load(module("plain_fn", crcs={"other": 1}), symbols(), BASE)


def test_module_layout_crc_refuses_the_module(toy_pm, tmp_path) -> None:
    (tmp_path / "System.map").write_text(MAP)
    (tmp_path / "Module.symvers").write_text(SYMVERS + "0x44444444\tmodule_layout\tvmlinux\tEXPORT_SYMBOL\t\n")
    syms = load_many([str(tmp_path / "System.map"), str(tmp_path / "Module.symvers")])
    good = {"plain_fn": 0x33333333, "module_layout": 0x44444444}
    Loader(toy_pm).load(module("plain_fn", crcs=good), syms, BASE)
    bad = {"plain_fn": 0x33333333, "module_layout": 0x44444445}
    assert refusal(toy_pm, module("plain_fn", crcs=bad), syms) == (
        "user: disagrees about version of symbol module_layout"
    )


@pytest.mark.parametrize(("version", "refused"), [((6, 13), False), ((6, 14), True)])
def test_extended_modversions_from_6_14(toy_pm, symbols, version, refused) -> None:
    """From 6.14 the extended tables replace __versions when present: here they
    carry a wrong CRC while __versions is right."""
    base = Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(8)),
            Sec("__versions", flags=C.SHF_ALLOC, data=versions({"plain_fn": 0x33333333})),
            Sec("__version_ext_crcs", flags=C.SHF_ALLOC, data=struct.pack("<I", 0x12345678)),
            Sec("__version_ext_names", flags=C.SHF_ALLOC, data=b"plain_fn\0"),
        ],
        symbols=[Sym("plain_fn")],
        relas=[Rela(".text", 0, T.ABS64, "plain_fn")],
        modinfo={"name": "user", "license": "GPL"},
    ).build()
    loader = Loader(toy_pm, kernel=KernelTarget(version))
    if refused:
        with pytest.raises(ResolutionError, match="disagrees about version of symbol plain_fn"):
            loader.load(base, symbols(), BASE)
    else:
        loader.load(base, symbols(), BASE)
