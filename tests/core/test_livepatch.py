"""Livepatch discovery and the kernel's name rules."""

from __future__ import annotations

import pytest
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import ElfModule, LivepatchFormatError, discover
from klpcore import constants as C
from klpcore.livepatch import parse_klp_symbol_name, parse_rela_objname
from klpcore.testing.klpify import KlpSym, klpify

TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR


def test_symbol_name_rules() -> None:
    p = parse_klp_symbol_name(".klp.sym.vmlinux.foo.isra.3,2")
    assert (p.objname, p.name, p.sympos) == ("vmlinux", "foo.isra.3", 2)
    assert parse_klp_symbol_name(".klp.sym.ext4.bar,0").sympos == 0
    # objname: 1..55 characters, no dot
    assert parse_klp_symbol_name(".klp.sym." + "m" * 55 + ".f,0") is not None
    assert parse_klp_symbol_name(".klp.sym." + "m" * 56 + ".f,0") is None
    assert parse_klp_symbol_name(".klp.sym..f,0") is None
    # name: at most KSYM_NAME_LEN - 1 characters (511 since 6.1, 127 before)
    assert parse_klp_symbol_name(".klp.sym.vmlinux." + "a" * 511 + ",0") is not None
    assert parse_klp_symbol_name(".klp.sym.vmlinux." + "a" * 512 + ",0") is None
    assert parse_klp_symbol_name(".klp.sym.vmlinux." + "a" * 128 + ",0", ksym_name_len=128) is None
    assert parse_klp_symbol_name(".klp.sym.vmlinux." + "a" * 127 + ",0", ksym_name_len=128) is not None
    # position: decimal, required; sscanf ignores what follows
    assert parse_klp_symbol_name(".klp.sym.vmlinux.foo") is None
    assert parse_klp_symbol_name(".klp.sym.vmlinux.foo,") is None
    assert parse_klp_symbol_name(".klp.sym.vmlinux.foo,x") is None
    t = parse_klp_symbol_name(".klp.sym.vmlinux.foo,12abc")
    assert t.sympos == 12 and t.trailing == "abc"
    assert parse_klp_symbol_name("foo") is None


def test_rela_objname_rules() -> None:
    assert parse_rela_objname(".klp.rela.vmlinux..text.foo") == "vmlinux"
    assert parse_rela_objname(".klp.rela.ext4..text") == "ext4"
    assert parse_rela_objname(".klp.rela..text") is None
    assert parse_rela_objname(".rela.text") is None


def ordinary(machine: int = 0xBEEF) -> bytes:
    return Obj(
        machine=machine,
        sections=[
            Sec(".text.fn", flags=TEXT, data=bytes(32), align=16),
            Sec(".data", flags=C.SHF_ALLOC | C.SHF_WRITE, data=bytes(16), align=8),
        ],
        symbols=[Sym("printk"), Sym("secret"), Sym("modsym")],
        relas=[
            Rela(".text.fn", 0, 2, "printk", -4),
            Rela(".text.fn", 8, 2, "secret", -4),
            Rela(".text.fn", 16, 2, "modsym", -4),
            Rela(".data", 0, 1, "secret", 0),
        ],
        modinfo={"name": "patch"},
    ).build()


def test_discover_final_format() -> None:
    data = klpify(ordinary(), {"secret": KlpSym("vmlinux"), "modsym": KlpSym("ext4", 2)})
    m = ElfModule(data)
    info = discover(m)
    assert info.fmt == "final" and info.is_livepatch
    assert sorted(info.objects) == ["ext4", "vmlinux"]
    vm = info.objects["vmlinux"]
    names = [(r.name, r.objname, r.target_name) for r in vm.reloc_secs]
    assert names == [
        (".klp.rela.vmlinux..text.fn", "vmlinux", ".text.fn"),
        (".klp.rela.vmlinux..data", "vmlinux", ".data"),
    ]
    for r in vm.reloc_secs:
        assert m.sections[r.index].name == r.name and m.sections[r.target].name == r.target_name
    syms = {k.raw: k.parsed for k in info.symbols}
    assert syms[".klp.sym.ext4.modsym,2"].sympos == 2


def test_discover_rfc_format() -> None:
    data = klpify(ordinary(), {"secret": KlpSym("vmlinux"), "printk": KlpSym("vmlinux", external=True)}, fmt="rfc")
    info = discover(ElfModule(data))
    assert info.fmt == "rfc"
    rs = info.objects["vmlinux"].reloc_secs
    assert [r.name for r in rs] == ["__klp_rela_vmlinux.text.fn", "__klp_rela_vmlinux.data"]
    ext = {k.raw: k.external for k in info.symbols}
    assert ext == {"printk": True, "secret": False}


def test_bad_section_name_is_error() -> None:
    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(8))],
        symbols=[Sym(".klp.sym.vmlinux.x,0", C.SHN_LIVEPATCH)],
        relas=[Rela(".text", 0, 1, ".klp.sym.vmlinux.x,0")],
        rela_names={".text": ".klp.rela..text"},
        rela_flags={".klp.rela..text": C.SHF_RELA_LIVEPATCH | C.SHF_ALLOC},
    )
    with pytest.raises(LivepatchFormatError) as ei:
        discover(ElfModule(obj.build(), name="p"))
    d = ei.value.diagnostics[0]
    assert d.section == ".klp.rela..text"
    assert d.kernel_message == "section .klp.rela..text has an incorrectly formatted name"


def test_long_objname_is_never_applied() -> None:
    name = ".klp.rela." + "m" * 56 + "..text"
    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(8))],
        symbols=[Sym("x")],
        relas=[Rela(".text", 0, 1, "x")],
        rela_names={".text": name},
        rela_flags={name: C.SHF_RELA_LIVEPATCH | C.SHF_ALLOC},
    )
    info = discover(ElfModule(obj.build()))
    assert not info.objects  # the kernel reads 'm' * 55, which names no object: silently never applied (D9)
    assert any("reads it as 'm" + "m" * 54 + "' and silently never applies" in w.message for w in info.warnings)


def test_objtool_style_tombstones_accepted() -> None:
    data = klpify(ordinary(), {"secret": KlpSym("vmlinux")}, style="objtool")
    m = ElfModule(data)
    info = discover(m)
    assert [r.name for r in info.objects["vmlinux"].reloc_secs][0] == ".klp.rela.vmlinux..text.fn"
    assert any(n.startswith(".klp.tombstone.") for n in m.symbol_names)


@pytest.mark.parametrize("pos", ["-1", "+1", "- 1", "x1", ""])
def test_signed_or_missing_sympos_is_malformed_like_vsscanf(pos: str) -> None:
    """``%lu`` takes no sign: the kernel refuses these names as incorrectly formatted (D7)."""
    assert parse_klp_symbol_name(f".klp.sym.vmlinux.foo,{pos}") is None


def test_sympos_whitespace_and_wrap() -> None:
    assert parse_klp_symbol_name(".klp.sym.vmlinux.foo, 2").sympos == 2
    assert parse_klp_symbol_name(".klp.sym.vmlinux.foo,18446744073709551617").sympos == 1
