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


#: how far the ``far`` variant of a kallsyms fixture moves vmlinux (not the
#: modules): arm64's vmlinux then lies more than 128 MiB from the module, so
#: its calls go through module PLT entries
FAR = 0x10000000


def kallsyms_lines(arch: str, far: bool = False) -> list[str]:
    lines = (FIX / f"{arch}.kallsyms").read_text().splitlines()
    if not far:
        return lines
    return [ln if "[" in ln else f"{int(ln.split()[0], 16) + FAR:016x} {ln.split(None, 1)[1]}" for ln in lines]


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
def exported_view(arch: str, klp: bool = False, far: bool = False) -> KernelSymbols:
    """The same kernel with every symbol the patch uses exported once, at the
    address the livepatch resolution picks (dup_static: position 2, the higher
    address); ``klp``: under the converted module's .klp.sym names."""
    rows = [ln.split() for ln in kallsyms_lines(arch, far)]
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


# ---------------------------------------------------------------------------
# round trip against the ORIGINAL module applied with ordinary resolution
#
# The arch veneers (arm64 .plt/.init.plt entries, ppc64 .stubs, the s390 GOT and
# PLT the loader reserves at the start of the module text) are handed out in the
# order the relocations are applied.  The kernel applies .klp.rela sections
# after (or, for vmlinux, in section order among) the ordinary ones, and the
# converted module's .klp.rela sections come after the compiled ones: the same
# entries may sit in another order, so a branch's immediate may differ while
# it reaches the same function.  What must hold, and what these tests assert:
# every byte outside the veneer areas is identical once the immediate field of
# each site that goes through a veneer is masked, and each such site reaches
# the same final target through its veneer (decoded here from the written
# instructions, independently of the plugins' encoders).  x86_64 has no veneer:
# its bytes are asserted identical.
# ---------------------------------------------------------------------------
#: sections that hold veneers (excluded from the byte comparison, decoded instead)
VENEER_SECTIONS = {"x86_64": set(), "arm64": {".plt", ".init.plt"}, "ppc64le": {".stubs"}, "s390x": set()}
R_AARCH64_JUMP26, R_AARCH64_CALL26 = 282, 283
R_PPC64_REL24 = 10
R_390_PLT32DBL, R_390_GOTENT = 20, 26
#: per arch: relocation types whose site may branch/load through a veneer, with the
#: bits of the 4-byte field at r_offset that hold the veneer-dependent immediate
VENEER_SITES = {
    "x86_64": {},
    "arm64": {R_AARCH64_JUMP26: 0x03FFFFFF, R_AARCH64_CALL26: 0x03FFFFFF},
    "ppc64le": {R_PPC64_REL24: 0x03FFFFFC},
    "s390x": {R_390_PLT32DBL: 0xFFFFFFFF, R_390_GOTENT: 0xFFFFFFFF},
}


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def _areas(arch: str, lm: LoadedModule) -> dict[str, tuple[int, int]]:
    """Name -> (address, size) of every veneer area of ``lm``."""
    out = {}
    for sec in lm.module.sections:
        addr = lm.section_address(sec.index)
        if sec.name in VENEER_SECTIONS[arch] and addr is not None:
            out[sec.name] = (addr, sec.size)
    if arch == "s390x":
        from klpcore_s390x.gotplt import GOT_NAME, PLT_NAME

        for name in (GOT_NAME, PLT_NAME):
            addr, data = lm.reserved_bytes(name)
            out[name] = (addr, len(data))
    return out


def _area_of(areas: dict[str, tuple[int, int]], address: int) -> str | None:
    return next((n for n, (a, size) in areas.items() if a <= address < a + size), None)


def _read(lm: LoadedModule, address: int, size: int) -> bytes:
    return lm.image.backend.read(address, size)


def _through_veneer(arch: str, lm: LoadedModule, place: int, rtype: int, addend: int) -> tuple[int, str | None]:
    """(final target, veneer area used or None) of the site at ``place``, from
    the bytes ``apply`` wrote there and in the veneer it reaches."""
    areas = _areas(arch, lm)
    le = int.from_bytes(_read(lm, place, 4), "little")
    if arch == "arm64":  # b/bl imm26; PLT entry: adrp x16 / add x16,x16,#lo12 / br x16
        dest = place + _sext((le & 0x03FFFFFF) << 2, 28)
        area = _area_of(areas, dest)
        if area is None:
            return dest, None
        adrp, add, br = (int.from_bytes(_read(lm, dest + 4 * i, 4), "little") for i in range(3))
        assert (adrp & 0x9F00001F, add & 0xFF8003FF, br) == (0x90000010, 0x91000210, 0xD61F0200), hex(dest)
        page = _sext(((((adrp >> 5) & 0x7FFFF) << 2) | ((adrp >> 29) & 3)), 21) << 12
        imm = ((add >> 10) & 0xFFF) << (12 if add >> 22 & 1 else 0)
        return ((dest & ~0xFFF) + page + imm) & (1 << 64) - 1, area
    if arch == "ppc64le":  # bl; stub: addis r11,r2,ha / addi r11,r11,lo / std r2,24(r1) / ld r12,32(r11) / mtctr / bctr
        dest = place + _sext(le & 0x03FFFFFC, 26)
        area = _area_of(areas, dest)
        if area is None:
            return dest, None
        words = [int.from_bytes(_read(lm, dest + 4 * i, 4), "little") for i in range(6)]
        assert [w & 0xFFFF0000 for w in words[:2]] + words[2:] == [
            0x3D620000,
            0x396B0000,
            0xF8410018,
            0xE98B0020,
            0x7D8903A6,
            0x4E800420,
        ], hex(dest)
        toc = lm.module.elf.section_by_name(".toc")
        assert toc is not None
        toc_addr = lm.section_address(toc.index)
        assert toc_addr is not None
        r2 = (toc_addr & ~0xFF) + 0x8000
        r11 = r2 + (_sext(words[0] & 0xFFFF, 16) << 16) + _sext(words[1] & 0xFFFF, 16)
        assert r11 == dest, (hex(r11), hex(dest))  # the stub addresses itself
        return int.from_bytes(_read(lm, r11 + 32, 8), "little"), area
    if arch == "s390x":  # PC-relative halfword fields: PLT entry (target at +14) or GOT slot (the value)
        dest = place - addend + 2 * _sext(int.from_bytes(_read(lm, place, 4), "big"), 32)
        area = _area_of(areas, dest)
        if rtype == R_390_GOTENT:
            assert area is not None and area.endswith(".got"), hex(dest)
            return int.from_bytes(_read(lm, dest, 8), "big"), area
        if area is None:
            return dest, None
        assert area.endswith(".plt") and _read(lm, dest, 8) == bytes.fromhex("0d10e310100c0004"), hex(dest)
        return int.from_bytes(_read(lm, dest + 14, 8), "big"), area
    raise AssertionError(arch)


def veneer_sites(arch: str, lm: LoadedModule, orig: ElfModule) -> dict[tuple[str, int], tuple[int, str | None]]:
    """(section, offset) -> (final target, veneer area) for every relocation of
    the original module whose type may go through a veneer."""
    out = {}
    for sec_name, offset, rtype, addend, _sym in entries(orig):
        if rtype not in VENEER_SITES[arch]:
            continue
        sec = lm.module.elf.section_by_name(sec_name)
        assert sec is not None
        base = lm.section_address(sec.index)
        assert base is not None
        out[sec_name, offset] = _through_veneer(arch, lm, base + offset, rtype, addend)
    return out


def masked(arch: str, lm: LoadedModule, index: int, orig: ElfModule) -> bytes:
    """The bytes of section ``index`` with the veneer-dependent immediate of each
    veneer site cleared (the rest of each instruction stays compared)."""
    data = bytearray(lm.section_bytes(index))
    name = lm.module.sections[index].name
    order = "big" if arch == "s390x" else "little"
    for sec_name, offset, rtype, _addend, _sym in entries(orig):
        mask = VENEER_SITES[arch].get(rtype)
        if sec_name == name and mask is not None:
            word = int.from_bytes(data[offset : offset + 4], order) & ~mask & 0xFFFFFFFF
            data[offset : offset + 4] = word.to_bytes(4, order)
    return bytes(data)


@pytest.mark.parametrize(("arch", "far"), [(a, False) for a in ARCHES] + [("arm64", True)])
def test_round_trip_against_the_original(arch: str, far: bool) -> None:
    """apply(convert(M)) with livepatch resolution against apply(M) as compiled,
    its symbols resolved ordinarily (exported at the addresses the livepatch
    resolution picks): same layout, same bytes outside the veneer areas once
    the veneer immediates are masked, and every veneer site reaches the same
    final target -- which is the kernel symbol's address."""
    lines = kallsyms_lines(arch, far)
    ks = parse_symbol_text("\n".join(lines) + "\n", f"{arch}.kallsyms")
    r = convert(
        patch(arch), from_kernel_symbols(ks), KernelTarget(), positions={"dup_static": 2}, objname="tgtmod", mark=True
    )
    orig_elf = patch(arch)
    conv = Loader(kernel=KernelTarget()).load(r.data, ks, _base(arch))
    assert conv.pending_objects == []
    orig = Loader(kernel=KernelTarget()).load(
        same_layout(orig_elf, ElfModule(r.data)), exported_view(arch, far=far), _base(arch)
    )
    assert [p.name for p in orig.phases] == ["load"]
    # Same regions, same veneer places.  A veneer area's SIZE may differ: arm64's
    # module_frob_arch_sections counts PLT slots per relocation section (plus one
    # erratum-843419 slot per section that has any), so the converted module's extra
    # .klp.rela sections reserve more; what follows the area in its memory type then
    # moves by exactly the growth, as it would in the kernel.
    assert {m: r.address for m, r in conv.module.layout.regions.items()} == {
        m: r.address for m, r in orig.module.layout.regions.items()
    }
    areas_conv, areas_orig = _areas(arch, conv), _areas(arch, orig)
    assert {n: a for n, (a, _) in areas_conv.items()} == {n: a for n, (a, _) in areas_orig.items()}
    growth = {n: areas_conv[n][1] - areas_orig[n][1] for n in areas_orig}
    assert all(g >= 0 for g in growth.values()), growth
    if arch != "arm64":
        assert not any(growth.values()), growth

    def expected_address(lm: LoadedModule, index: int) -> int | None:
        p = lm.module.layout.placements.get(index)
        if p is None:
            return lm.section_address(index)
        moved = 0
        for name, g in growth.items():
            v = lm.module.elf.section_by_name(name)
            q = lm.module.layout.placements.get(v.index) if v is not None else None
            if q is not None and q.memtype == p.memtype and q.offset < p.offset:
                moved += g
        return p.address + moved

    compared = 0
    for sec in orig.module.sections:
        if sec.name == ".modinfo" or sec.name.endswith(".placeholder") or orig.section_address(sec.index) is None:
            continue
        other = conv.module.elf.section_by_name(sec.name)
        assert other is not None, sec.name
        assert conv.section_address(other.index) == expected_address(orig, sec.index), sec.name
        if sec.name in VENEER_SECTIONS[arch]:
            continue
        assert masked(arch, conv, other.index, orig_elf) == masked(arch, orig, sec.index, orig_elf), sec.name
        compared += 1
    assert compared >= 2

    sites_conv, sites_orig = veneer_sites(arch, conv, orig_elf), veneer_sites(arch, orig, orig_elf)
    assert {k: t for k, (t, _) in sites_conv.items()} == {k: t for k, (t, _) in sites_orig.items()}
    symbols = {ln.split()[2]: int(ln.split()[0], 16) for ln in lines}
    symbols["dup_static"] = max(int(ln.split()[0], 16) for ln in lines if "dup_static" in ln)
    by_site = {(sec, off): sym for sec, off, _t, _a, sym in entries(orig_elf)}
    for site, (target, _area) in sites_conv.items():
        assert target == symbols[by_site[site].lstrip(".")], (site, by_site[site], hex(target))
    # the same sites go through a veneer of the same kind (a direct branch stays direct)
    assert {k: a for k, (_, a) in sites_conv.items()} == {k: a for k, (_, a) in sites_orig.items()}
    # the comparison reaches the veneers where the fixture needs them (arm64 only when
    # vmlinux is out of BL range): else the masking would hide nothing worth proving
    uses = any(area is not None for _t, area in sites_conv.values())
    assert uses == (arch in ("ppc64le", "s390x") or (arch == "arm64" and far))
    if not VENEER_SITES[arch]:
        assert not sites_conv


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


# ---------------------------------------------------------------------------
# convert by name (what the arch plugins' livepatch fixtures are made with)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_convert_named_is_convert(arch: str) -> None:
    """Naming the symbols ``klpcore convert`` decides on, with their objects and
    positions, gives the very bytes ``convert`` writes from the kernel's symbols."""
    from klpcore.convert.elfedit import KlpSym
    from klpcore.convert.named import convert_named

    r = run(arch)
    named = convert_named(patch(arch), {c.name: KlpSym(c.objname, c.sympos) for c in r.converted})
    assert named.data == r.data
    assert named.style == r.style and named.modinfo_added == r.modinfo_added


def test_convert_named_refuses_what_it_cannot_name() -> None:
    from klpcore.convert.elfedit import KlpSym
    from klpcore.convert.named import convert_named
    from klpcore.errors import InputError

    with pytest.raises(InputError, match="one module object at a time"):
        convert_named(patch("x86_64"), {"mod_hidden": KlpSym("tgtmod"), "hidden_fn": KlpSym("othermod")})
    with pytest.raises(InputError, match="only an object and a position"):
        convert_named(patch("x86_64"), {"hidden_fn": KlpSym("vmlinux", external=True)})
    with pytest.raises(InputError, match="not_used .the module does not refer to it"):
        convert_named(patch("x86_64"), {"hidden_fn": KlpSym("vmlinux"), "not_used": KlpSym("vmlinux")})
    with pytest.raises(InputError, match=r"\.TOC\. \(the module loader resolves"):  # the plugin's rules apply
        convert_named(patch("ppc64le"), {".TOC.": KlpSym("vmlinux")})
