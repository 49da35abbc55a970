"""``klpcore convert``: decisions, sympos, errors, and the round trip on all
four architectures (``apply`` of the converted module writes what ``apply`` of
the original writes when the same symbols resolve ordinarily).

Fixtures: tests/convert/fixtures (build.py regenerates them with the cross
compilers; the tests need none)."""

from __future__ import annotations

from pathlib import Path

import pytest

from klpcore import constants as C
from klpcore.convert.plan import ConvertError, Result, convert, from_kernel_symbols
from klpcore.elf import ElfModule
from klpcore.kernel import KernelTarget
from klpcore.livepatch import discover
from klpcore.loader import LoadedModule, Loader
from klpcore.plugins import get_plugin_manager, identify
from klpcore.symbols import KernelSymbols, load_many, parse_symbol_text

FIX = Path(__file__).resolve().parent / "fixtures"
ARCHES = ["x86_64", "arm64", "ppc64le", "s390x"]


def kallsyms(arch: str) -> KernelSymbols:
    return load_many([str(FIX / f"{arch}.kallsyms")])


def patch(arch: str, name: str = "lp_patch") -> ElfModule:
    pytest.importorskip(f"klpcore_{arch}")
    return ElfModule.from_file(FIX / f"{name}.{arch}.o")


def run(arch: str, name: str = "lp_patch", kernel: KernelTarget | None = None, **kw: object) -> Result:
    kw.setdefault("positions", {"dup_static": 2})
    kw.setdefault("objname", "tgtmod")
    kw.setdefault("mark", True)
    return convert(patch(arch, name), from_kernel_symbols(kallsyms(arch)), kernel or KernelTarget(), **kw)  # type: ignore[arg-type]


def messages(exc: pytest.ExceptionInfo[ConvertError]) -> list[str]:
    return [d.message for d in exc.value.diagnostics]


# ---------------------------------------------------------------------------
# decisions
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_decisions(arch: str) -> None:
    r = run(arch)
    got = {c.name: (c.objname, c.sympos, c.how) for c in r.converted}
    assert got == {
        "hidden_fn": ("vmlinux", 0, "unexported"),
        "hidden_counter": ("vmlinux", 0, "unexported"),
        "dup_static": ("vmlinux", 2, "unexported"),
        "mod_hidden": ("tgtmod", 0, "unexported"),
        "mod_exp_data": ("tgtmod", 0, "module export"),
    }
    assert r.kept["exp_fn"] == "exported by vmlinux"
    assert r.modinfo_added == ["livepatch=Y"]
    out = ElfModule(r.data)
    assert out.is_livepatch
    info = discover(out)
    assert info.fmt == "final"
    assert sorted(info.objects) == ["tgtmod", "vmlinux"]
    names = set(out.symbol_names)
    assert ".klp.sym.vmlinux.dup_static,2" in names
    assert ".klp.sym.tgtmod.mod_exp_data,0" in names
    assert "exp_fn" in names  # the exported one stays an ordinary undefined symbol
    for sec in out.sections:
        if sec.name.startswith(".klp.rela."):
            assert sec.type == C.SHT_RELA
            assert sec.flags == C.SHF_ALLOC | C.SHF_INFO_LINK | C.SHF_RELA_LIVEPATCH
            assert (sec.entsize, sec.addralign, sec.link) == (C.RELA_SIZE, 8, out.symtab_index)
            assert sec.name == f".klp.rela.{sec.name.split('.')[3]}.{out.sections[sec.info].name}"


@pytest.mark.parametrize(
    ("arch", "style"), [("x86_64", "objtool"), ("arm64", "objtool"), ("s390x", "objtool"), ("ppc64le", "kpatch")]
)
def test_original_becomes_none_except_on_ppc64(arch: str, style: str) -> None:
    r = run(arch)
    assert r.style == style
    out, orig = ElfModule(r.data), patch(arch)
    moved = sum(c.relocations for c in r.converted)

    def ordinary(elf: ElfModule) -> list[int]:
        return [
            int(t)
            for s in elf.rela_sections()
            if not s.flags & C.SHF_RELA_LIVEPATCH
            for t in (elf.relas(s.index)["r_info"] & 0xFFFFFFFF).tolist()
        ]

    if style == "objtool":  # the kernel takes type 0: the original entry stays, as R_*_NONE
        assert ordinary(out).count(0) == moved
        assert len(ordinary(out)) == len(ordinary(orig))
    else:  # ppc64 refuses type 0: the entry is removed
        assert 0 not in ordinary(out)
        assert len(ordinary(out)) == len(ordinary(orig)) - moved


def test_ppc64_keeps_toc_and_refuses_type_kept_symbols() -> None:
    r = run("ppc64le")
    assert ".TOC." in r.kept
    out = ElfModule(r.data)
    assert ".TOC." in out.symbol_names


# ---------------------------------------------------------------------------
# round trip: apply(convert(M)) == apply(M) with ordinary resolution
# ---------------------------------------------------------------------------
def exported_view(arch: str, klp: bool = False) -> KernelSymbols:
    """The same kernel with every symbol the patch uses exported once, at the
    address the livepatch resolution picks (dup_static: position 2, the higher
    address); ``klp``: under the converted module's .klp.sym names."""
    text = (FIX / f"{arch}.kallsyms").read_text().splitlines()
    rows = [ln.split() for ln in text]
    dups = [r for r in rows if r[2] == "dup_static"]
    keep = [r for r in rows if r[2] != "dup_static"] + [dups[1]]
    lines = []
    for r in keep:
        mod = f" {r[3]}" if len(r) > 3 else ""
        name = r[2]
        if klp and not name.startswith("__ksymtab_") and name != "exp_fn":
            obj = r[3][1:-1] if len(r) > 3 else "vmlinux"
            name = f".klp.sym.{obj}.{name},{2 if name == 'dup_static' else 0}"
        for n in [name, name[1:]] if name.startswith(".") else [name]:  # ppc64 dedotifies undefined names
            lines.append(f"{r[0]} {r[1].upper()} {n}{mod}")
            if not n.startswith("__ksymtab_"):
                lines.append(f"{r[0]} R __ksymtab_{n}{mod}")
    return parse_symbol_text("\n".join(lines) + "\n", f"{arch}.exported")


def entries(elf: ElfModule) -> list[tuple[str, int, int, int, str]]:
    """Every relocation of ``elf`` that does something, as (target section, offset,
    type, addend, symbol name without the livepatch decoration), sorted."""
    out = []
    for rs in elf.rela_sections():
        arr = elf.relas(rs.index)
        for off, info, add in zip(
            arr["r_offset"].tolist(), arr["r_info"].tolist(), arr["r_addend"].tolist(), strict=True
        ):
            if info & 0xFFFFFFFF == 0:
                continue
            name = elf.symbol_label(info >> 32)
            if name.startswith(".klp.sym."):
                name = name.split(".", 4)[4].rsplit(",", 1)[0]
            out.append((elf.sections[rs.info].name, off, info & 0xFFFFFFFF, add, name))
    return sorted(out)


@pytest.mark.parametrize("arch", ARCHES)
def test_round_trip_keeps_every_relocation(arch: str) -> None:
    """The converted module holds exactly the original's relocations (type, place,
    addend, symbol), split between ordinary and livepatch sections."""
    r = run(arch)
    assert entries(ElfModule(r.data)) == entries(patch(arch))


def twin(converted: bytes) -> bytes:
    """The converted module with its livepatch relocation sections made ordinary
    and its livepatch symbols ordinary undefined symbols (same sections, same
    order, same layout): what the module would be if the kernel exported them."""
    from klpcore.convert.elfedit import _Elf

    mod = ElfModule(converted)
    elf = _Elf(mod)
    for s in elf.sections:
        s.sh_flags &= ~C.SHF_RELA_LIVEPATCH
    symtab = elf.sections[mod.symtab_index]
    syms = elf.read_symbols(symtab)
    for sym in syms:
        if sym.st_shndx == C.SHN_LIVEPATCH:
            sym.st_shndx = C.SHN_UNDEF
    elf.write_symbols(symtab, syms)
    return elf.serialize()


def compare(conv: LoadedModule, orig: LoadedModule) -> int:
    compared = 0
    for sec in orig.module.sections:
        if sec.name == ".modinfo" or sec.name.endswith(".placeholder") or orig.section_address(sec.index) is None:
            continue
        other = conv.module.elf.section_by_name(sec.name)
        assert other is not None, sec.name
        assert conv.section_address(other.index) == orig.section_address(sec.index), sec.name
        assert conv.section_bytes(other.index) == orig.section_bytes(sec.index), sec.name
        compared += 1
    return compared


@pytest.mark.parametrize("arch", ARCHES)
def test_round_trip(arch: str) -> None:
    """apply(convert(M)) with livepatch resolution writes what apply of the same
    relocations with ordinary resolution writes."""
    r = run(arch)
    conv = Loader(kernel=KernelTarget()).load(r.data, kallsyms(arch), _base(arch))
    assert [p.name for p in conv.phases] == ["load", "enable"]
    assert conv.pending_objects == []
    ordinary = Loader(kernel=KernelTarget()).load(twin(r.data), exported_view(arch, klp=True), _base(arch))
    assert [p.name for p in ordinary.phases] == ["load"]
    assert compare(conv, ordinary) >= 3
    dups = [int(ln.split()[0], 16) for ln in (FIX / f"{arch}.kallsyms").read_text().splitlines() if "dup_static" in ln]
    assert {res.value for res in conv.resolutions if res.name == ".klp.sym.vmlinux.dup_static,2"} == {max(dups)}


def test_round_trip_x86_64_against_the_original() -> None:
    """x86_64 has no arch veneers (PLT, stubs, GOT) whose order depends on the
    relocation sections: the converted module applied writes the original's bytes."""
    r = run("x86_64")
    conv = Loader(kernel=KernelTarget()).load(r.data, kallsyms("x86_64"), _base("x86_64"))
    orig = Loader(kernel=KernelTarget()).load(
        same_layout(patch("x86_64"), ElfModule(r.data)), exported_view("x86_64"), _base("x86_64")
    )
    assert compare(conv, orig) >= 2


def same_layout(orig: ElfModule, converted: ElfModule) -> bytes:
    """``orig`` with placeholders for the converted module's livepatch relocation
    sections (SHF_ALLOC: the kernel places them in module memory), so both lay
    out alike; the original relocations stay as compiled."""
    from klpcore.convert.elfedit import _Elf, _Section

    elf = _Elf(orig)
    for s in converted.sections[len(orig.sections) :]:
        if s.is_alloc:
            elf.add_section(
                _Section(
                    s.name + ".placeholder",
                    0,
                    C.SHT_PROGBITS,
                    s.flags & ~C.SHF_RELA_LIVEPATCH & ~C.SHF_INFO_LINK,
                    0,
                    0,
                    s.size,
                    0,
                    0,
                    s.addralign,
                    0,
                    bytearray(s.size),
                )
            )
    return elf.serialize()


def _base(arch: str) -> int:
    pm = get_plugin_manager()
    elf = patch(arch)
    return identify(pm, elf.machine, elf.elfclass, elf.byteorder, elf.e_flags, KernelTarget()).spec.default_base
