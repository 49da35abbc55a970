"""The 2015 livepatch RFC as the 4.3/4.4-era kernel and the kpatch prototype
did it (audit D10), and its boundary: 4.7's final format."""

from __future__ import annotations

import struct

import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import ElfModule, KernelTarget, LivepatchFormatError, Loader, discover, parse_symbol_text
from klpcore import constants as C
from klpcore.livepatch import rfc_objname
from klpcore.testing.klpify import KlpSym, klpify

TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR
BASE = 0xFFFFFFFFC0000000
SYMS = (
    "ffffffff81000000 T printk\nffffffff82000000 r __ksymtab_printk\nffffffff81000100 t secret\n"
    "ffffffff81000300 T helper\nffffffff82000010 r __ksymtab_helper\n"
)
#: the RFC era; the toy arch has no text-poking primitive, so without module RO protection
RFC = KernelTarget((4, 4), strict_module_rwx=False)


def patch(extra_syms=(), **klp) -> bytes:
    base = Obj(
        sections=[
            Sec(".text.a", flags=TEXT, data=bytes(16), align=16),
            Sec(".text.b", flags=TEXT, data=bytes(16), align=16),
            Sec(".text.own", flags=TEXT, data=bytes(16), align=16),
        ],
        symbols=[Sym("secret"), Sym("helper"), Sym("own_fn", ".text.own", 4, type=C.STT_FUNC), *extra_syms],
        relas=[
            Rela(".text.a", 0, T.ABS64, "secret", 0),
            Rela(".text.b", 0, T.ABS64, "helper", 0),
            Rela(".text.b", 8, T.ABS64, "secret", 0),
        ],
        modinfo={"name": "rfcpatch"},
    ).build()
    return klpify(base, klp or {"secret": KlpSym("vmlinux")}, fmt="rfc")


def test_prototype_object_name_rule() -> None:
    assert rfc_objname("__klp_rela_vmlinux.text.fn") == "vmlinux"
    assert rfc_objname("__klp_rela_ext4.text.x") == "ext4"
    assert rfc_objname("__klp_rela_snd_hda_intel.text") == "intel"
    assert rfc_objname(".klp.rela.vmlinux..text") is None


def test_multi_word_object_name_warns() -> None:
    data = patch(secret=KlpSym("vmlinux"), helper=KlpSym("snd_hda_intel"))
    info = discover(ElfModule(data))
    assert "intel" in info.objects and "snd_hda_intel" not in info.objects
    assert any("'intel'" in w.message and "snd_hda_intel" in w.message for w in info.warnings)


def test_unflagged_rfc_named_section_is_ordinary() -> None:
    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(8))],
        symbols=[Sym("printk")],
        relas=[Rela(".text", 0, T.ABS64, "printk")],
        rela_names={".text": "__klp_rela_vmlinux.text"},
        modinfo={"name": "p"},
    ).build()
    info = discover(ElfModule(obj))
    assert info.fmt is None and not info.objects
    assert any("applies it at load as an ordinary" in w.message for w in info.warnings)


@pytest.mark.parametrize(("version", "refused"), [((4, 6), False), ((4, 7), True)])
def test_rfc_format_only_before_the_final_format(toy_pm, version, refused) -> None:
    loader = Loader(toy_pm, kernel=KernelTarget(version, strict_module_rwx=False))
    if refused:
        with pytest.raises(LivepatchFormatError, match="only the RFC prototype kernels"):
            loader.load(patch(), parse_symbol_text(SYMS), BASE)
    else:
        lm = loader.load(patch(), parse_symbol_text(SYMS), BASE)
        assert [p.name for p in lm.phases] == ["load", "enable"]


def test_sections_applied_in_descending_index_order(toy_pm) -> None:
    lm = Loader(toy_pm, kernel=RFC).load(patch(), parse_symbol_text(SYMS), BASE)
    enable = next(p for p in lm.phases if p.name == "enable")
    assert enable.sections == ["__klp_rela_vmlinux.text.b", "__klp_rela_vmlinux.text.a"]


def test_external_symbol_falls_back_to_the_patch_module(toy_pm) -> None:
    """klp_find_external_symbol: an export first, else the patch module's own symbols."""
    data = patch(secret=KlpSym("vmlinux"), helper=KlpSym("vmlinux", external=True))
    lm = Loader(toy_pm, kernel=RFC).load(data, parse_symbol_text(SYMS), BASE)
    text = lm.section_bytes(lm.module.section_by_name(".text.b").index)
    assert struct.unpack_from("<Q", text)[0] == 0xFFFFFFFF81000300  # the export
    # not exported and not in the patch module: the era's message
    no_export = SYMS.replace("ffffffff82000010 r __ksymtab_helper\n", "")
    with pytest.raises(Exception) as ei:
        Loader(toy_pm, kernel=RFC).load(data, parse_symbol_text(no_export), BASE)
    assert any(d.kernel_message == "symbol 'helper' not found in symbol table" for d in ei.value.diagnostics)
    # defined in another object file of the patch module (a local of the same name): resolves to it
    own = Obj(
        sections=[Sec(".text.a", flags=TEXT, data=bytes(16), align=16), Sec(".text.own", flags=TEXT, data=bytes(8))],
        symbols=[Sym("own_ext"), Sym("own_exx", ".text.own", 4, bind=C.STB_LOCAL, type=C.STT_FUNC)],
        relas=[Rela(".text.a", 0, T.ABS64, "own_ext")],
        modinfo={"name": "rfcown"},
    ).build()
    data = klpify(own, {"own_ext": KlpSym("vmlinux", external=True)}, fmt="rfc").replace(b"own_exx\0", b"own_ext\0")
    lm = Loader(toy_pm, kernel=RFC).load(data, parse_symbol_text(SYMS), BASE)
    text = lm.section_bytes(lm.module.section_by_name(".text.a").index)
    own_addr = lm.section_address(lm.module.section_by_name(".text.own").index) + 4
    assert struct.unpack_from("<Q", text)[0] == own_addr


def test_era_lookup_counts_every_match(toy_pm) -> None:
    two = SYMS + "ffffffff81000200 t secret\n"
    with pytest.raises(Exception) as ei:
        Loader(toy_pm, kernel=RFC).load(patch(), parse_symbol_text(two), BASE)
    assert any(
        d.kernel_message == "unresolvable ambiguity (2 matches) on symbol 'secret' in object '(null)'"
        for d in ei.value.diagnostics
    )
    # a unique symbol at address 0 resolves (today's kernel calls it not found)
    zero = "ffffffff81000000 T printk\nffffffff81000300 T helper\n0000000000000000 t secret\n"
    lm = Loader(toy_pm, kernel=RFC).load(patch(), parse_symbol_text(zero), BASE)
    assert struct.unpack_from("<Q", lm.section_bytes(lm.module.section_by_name(".text.a").index))[0] == 0


def test_coming_failure_only_warns(toy_pm) -> None:
    data = patch(secret=KlpSym("vmlinux"), helper=KlpSym("ext4"))
    lm = Loader(toy_pm, kernel=RFC).load(data, parse_symbol_text(SYMS), BASE)
    assert lm.pending_objects == ["ext4"]
    assert lm.coming("ext4", parse_symbol_text("ffffffffc1000000 t other\t[ext4]\n")) is None
    assert lm.pending_objects == ["ext4"]
    assert any(w.kernel_message == "failed to apply patch 'rfcpatch' to module 'ext4' (-22)" for w in lm.warnings)
