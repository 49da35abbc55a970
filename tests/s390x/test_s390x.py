"""s390x: klpcore against GNU ld, hand-derived GOT/PLT bytes and field
encodings, capstone, and code executed under unicorn (recorded).

The fixtures in ``fixtures/`` were built with s390x kernel-module flags and
linked by GNU ld 2.40 at klpcore's addresses (``fixtures/build.py``
regenerates everything).  The tests need no cross tools, emulator or network.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from pathlib import Path

import capstone
import capstone.systemz
import numpy as np
import pytest
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import (
    ABS,
    KernelTarget,
    KlpError,
    Loader,
    NoPluginError,
    RelocationError,
    get_plugin_manager,
    load_symbols,
)
from klpcore import constants as C
from klpcore.config import KernelConfig
from klpcore.constants import ModuleState
from klpcore.convert.elfedit import KlpSym
from klpcore.convert.named import convert_named
from klpcore.elf import ElfModule
from klpcore.memory import ModuleImage
from klpcore.output import write_elf
from klpcore.symbols import parse_symbol_text
from klpcore.testing.conformance import ACCEPTED, REFUSED, conformance_tests
from klpcore.testing.ldrecord import assert_equals_ld

s390 = pytest.importorskip("klpcore_s390x")

FIX = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIX / "manifest.json").read_text())
BASE = int(MANIFEST["base"], 16)
SYMS = str(FIX / MANIFEST["symbols"])
KSYMS = {line.split()[2]: int(line.split()[0], 16) for line in (FIX / "kernel.map").read_text().splitlines()}
GOT, PLT = s390.gotplt.GOT_NAME, s390.gotplt.PLT_NAME
M64 = (1 << 64) - 1


def loader(version: str | None = "6.1", config: str | None = None, **options) -> Loader:
    cfg = KernelConfig.from_text(config) if config is not None else None
    return Loader(get_plugin_manager(), kernel=KernelTarget.from_string(version, options=options, config=cfg))


def load(obj: str | bytes, version: str | None = "6.1", symbols=None, config: str | None = None, **options):
    module = obj if isinstance(obj, bytes) else str(FIX / obj)
    return loader(version, config, **options).load(module, symbols or load_symbols(SYMS), BASE)


def section(lm, name: str):
    sec = lm.module.section_by_name(name)
    assert sec is not None, name
    return sec, lm.section_address(sec.index), lm.section_bytes(sec.index)


def sym(lm, name: str) -> int:
    return int(lm.symvals[lm.module.elf.symbol_names.index(name)])


def relocs(lm, target: str) -> list[tuple[int, int, str, int]]:
    """(offset, type, symbol, addend) of the relocations for section ``target``, file order."""
    elf = lm.module.elf
    out = []
    for rs in elf.rela_sections():
        if lm.module.sections[rs.info].name != target:
            continue
        for r in elf.relas(rs.index):
            info = int(r["r_info"])
            out.append((int(r["r_offset"]), info & 0xFFFFFFFF, elf.symbol_names[info >> 32], int(r["r_addend"])))
    return out


def plt_entry_by_hand(entry: int, target: int, thunk: int | None = None) -> bytes:
    """A 22-byte PLT entry written out from the s390 instruction formats."""
    head = bytes([0x0D, 0x10]) + bytes([0xE3, 0x10, 0x10, 0x0C, 0x00, 0x04])  # basr 1,0; lg 1,12(1)
    if thunk is None:
        tail = bytes([0x07, 0xF1, 0, 0, 0, 0])  # br 1 + 2 unset bytes (zero)
    else:
        tail = bytes([0xC0, 0xF4]) + ((thunk - (entry + 8)) // 2).to_bytes(4, "big", signed=True)  # brcl 15
    return head + tail + target.to_bytes(8, "big")


# --------------------------------------------------------------------- ld
def expected_files() -> list[str]:
    return sorted(p.stem for p in (FIX / "expected").glob("*.json") if p.stem != "unicorn")


@pytest.mark.parametrize("name", expected_files())
def test_bytes_equal_gnu_ld(name: str) -> None:
    exp = json.loads((FIX / "expected" / f"{name}.json").read_text())
    lm = load(MANIFEST["fixtures"][name]["object"])
    # relocations through the kernel's GOT/PLT are excluded here and checked below
    assert assert_equals_ld(lm, exp["sections"], excluded=exp["excluded"], label=f"{name}: ") >= 1


def byte_tested() -> set[str]:
    """Types whose bytes the tests compare with GNU ld (GOT/PLT slots by hand, below)."""
    return {t for name in expected_files() for t in MANIFEST["fixtures"][name]["relocation_types"]}


def range_cases() -> list[tuple[str, str]]:
    outcome = {"ok": ACCEPTED, "refused": REFUSED}
    return [
        (t, outcome[fx["kernel"]])
        for name, fx in MANIFEST["fixtures"].items()
        if name.startswith("range_") and fx["kernel"] in outcome
        for t in fx["relocation_types"]
    ]


CONFORMANCE = {
    "plugin": "s390x",
    "module": FIX / "all_types.o",
    "symbols": Path(SYMS),
    "unsupported": [37, 60, 61],
    "base": BASE,
    "kernel": "6.1",
}
TestConformance = conformance_tests(
    byte_tested=lambda: byte_tested() | {"R_390_PLT32"}, range_cases=lambda: probed_range_cases(), **CONFORMANCE
)


RANGE_FIXTURE_TYPES = {
    t for n, fx in MANIFEST["fixtures"].items() if n.startswith("range_") for t in fx["relocation_types"]
}
#: checked types whose limits ld cannot exercise (values through the kernel's GOT and PLT): probed below
PROBED_TYPES = sorted(
    {t.name for t in s390.types.reloc_types(KernelTarget()) if t.check is not None} - RANGE_FIXTURE_TYPES
) + ["R_390_PLT32"]


def _first_rela(data: bytes, number: int) -> tuple[str, int, str, int, int]:
    """(rela section, entry index, target section, r_offset, addend) of the first relocation of type ``number``."""
    elf = ElfModule(data)
    for relsec in elf.rela_sections():
        relas = elf.relas(relsec.index)
        for i, (info, off, add) in enumerate(
            zip(relas["r_info"].tolist(), relas["r_offset"].tolist(), relas["r_addend"].tolist(), strict=True)
        ):
            if info & 0xFFFFFFFF == number:
                return relsec.name, i, elf.sections[relsec.info].name, off, add
    raise AssertionError(f"no relocation of type {number}")


def _with_addend(data: bytes, relsec: str, index: int, addend: int) -> bytes:
    sec = ElfModule(data).section_by_name(relsec)
    assert sec is not None
    out = bytearray(data)
    struct.pack_into(">q", out, sec.offset + 24 * index + 16, addend)
    return bytes(out)


def _refused_value(data: bytes, name: str) -> int:
    with pytest.raises(RelocationError) as ei:
        load(data)
    (d,) = [d for d in ei.value.diagnostics if d.rtype == name]
    m = re.search(r"\(r_type \d+, value 0x([0-9a-f]+)\)$", d.kernel_message or "")
    assert m, d.kernel_message
    v = int(m.group(1), 16)
    return v - (1 << 64) if v >> 63 else v


@pytest.mark.parametrize("name", PROBED_TYPES)
def test_got_plt_limits_both_sides(name: str) -> None:
    """Both sides of the upper limit of each GOT/PLT-dependent type: the fixture's relocation gets the addend
    that puts the kernel's value exactly at the limit (accepted, field by hand) and one step over (refused,
    with the kernel's message and value).  The value at the fixture's own addend comes from the kernel's
    formula (``_value``: GOT slots and PLT entries in order of first use), not from klpcore."""
    number = next(t.number for t in s390.types.reloc_types(KernelTarget()) if t.name == name)
    plt32 = name == "R_390_PLT32"
    data = (FIX / ("range_plt32_backward.o" if plt32 else "all_types.o")).read_bytes()
    relsec, index, target, off, addend = _first_rela(data, number)
    mod = loader().open(data)  # the layout only: the value at this addend may be refused (PLT32's is)
    loader().prepare(mod, BASE)
    elf = mod.elf
    relas = elf.relas(elf.section_by_name(relsec).index)
    si = int(relas["r_info"][index]) >> 32
    symbol = elf.symbol_names[si]
    P = mod.layout.placements[elf.section_by_name(target).index].address + off
    shndx = int(elf.symbols["st_shndx"][si])
    if shndx >= C.SHN_LORESERVE:  # SHN_ABS
        S = int(elf.symbols["st_value"][si])
    elif shndx:  # the module's own symbol: its section's address + st_value
        S = mod.layout.placements[shndx].address + int(elf.symbols["st_value"][si])
    else:
        (S,) = load_symbols(SYMS).objects["vmlinux"].matches(symbol)
    v0 = _value(S, number, symbol, addend, P, *(([], ["tgt"]) if plt32 else ()))
    sign, bits, shift = s390.types.FIELDS[number]
    hi = ((1 << (bits - 1)) - 1 if sign else (1 << bits) - 1) << shift
    at_limit = addend + hi - v0
    lm = load(_with_addend(data, relsec, index, at_limit))
    _, _, sbytes = section(lm, target)
    assert _field(sbytes, off, number) == (hi >> shift) & ((1 << bits) - 1)
    assert _refused_value(_with_addend(data, relsec, index, at_limit + (1 << shift)), name) == hi + (1 << shift)


def probed_range_cases() -> list[tuple[str, str]]:
    return range_cases() + [(n, side) for n in PROBED_TYPES for side in (ACCEPTED, REFUSED)]


def test_conformance_suite_catches_gaps(monkeypatch) -> None:
    """Refuse-only types keep the suite strict: a byte gap, a missing range side and a type that claims to
    refuse but writes are each caught."""
    gaps = conformance_tests(
        byte_tested=lambda: byte_tested() - {"R_390_PC16"},
        range_cases=lambda: [c for c in probed_range_cases() if c != ("R_390_GOT12", REFUSED)],
        **CONFORMANCE,
    )()
    with pytest.raises(AssertionError, match="R_390_PC16"):
        gaps.test_every_type_has_a_byte_test()
    with pytest.raises(AssertionError, match="R_390_GOT12"):
        gaps.test_every_range_has_both_sides()
    real = s390.types.reloc_types

    def lying(kernel):
        out = []
        for t in real(kernel):
            if t.name == "R_390_RELATIVE":  # claims to refuse, writes S + A like R_390_64
                t = dataclasses.replace(t, width=8, compute=ABS, handler=None)
            out.append(t)
        return out

    monkeypatch.setattr(s390.types, "reloc_types", lying)
    with pytest.raises(AssertionError, match="R_390_RELATIVE"):
        gaps.test_refusing_types_are_refused()


def test_fixtures_cover_every_kernel_type() -> None:
    seen = set()
    for name in expected_files():
        seen |= set(MANIFEST["fixtures"][name]["relocation_types"])
    # R_390_PLT32 is checked unsigned and the PLT precedes all text: always refused (range_plt32_backward)
    seen |= set(MANIFEST["fixtures"]["range_plt32_backward"]["relocation_types"])
    handled = {t.name for t in s390.types.reloc_types(KernelTarget()) if t.handler is None}
    assert handled <= seen, handled - seen
    # the ones ld is an oracle for were compared with ld's bytes (not excluded)
    assert {"R_390_8", "R_390_12", "R_390_16", "R_390_20", "R_390_32", "R_390_64", "R_390_PC16"} <= seen


REFUSED_FIXTURES = [n for n, fx in MANIFEST["fixtures"].items() if fx["kernel"] == "refused"]


@pytest.mark.parametrize("name", REFUSED_FIXTURES)
def test_range_refused_with_kernel_message(name: str) -> None:
    with pytest.raises(RelocationError) as ei:
        load(MANIFEST["fixtures"][name]["object"])
    msgs = [d.kernel_message for d in ei.value.diagnostics]
    assert msgs == [MANIFEST["fixtures"][name]["kernel_message"]]
    assert ei.value.diagnostics[0].rtype.startswith("R_390_")


def test_range_pairs_complete() -> None:
    """Every refused limit has its accepted neighbour compared with ld."""
    ok = set(expected_files())
    refused = set(REFUSED_FIXTURES)
    for kind in ("8", "12", "16", "20", "32", "pc16", "pc32", "pc16dbl", "pc32dbl", "got12", "got20"):
        assert f"range_{kind}_ok_max" in ok and f"range_{kind}_over_max" in refused
    for kind in ("20", "pc16", "pc32", "pc16dbl", "pc32dbl", "got20"):
        assert f"range_{kind}_ok_min" in ok and f"range_{kind}_over_min" in refused
    assert {"range_pc16dbl_odd", "range_pc32dbl_odd", "range_8_negative", "range_plt32_backward"} <= refused


# ------------------------------------------------------- GOT and PLT by hand
ALL_GOT = ["ext_got", "ext_got20", "ext_gp", "ext_gp20", "ext_ent", "ext_gpe"]
ALL_GOT += ["ext_g16", "ext_g32", "ext_g64", "ext_gp16", "ext_gp32", "ext_gp64"]
ALL_PLT = ["ext_fn", "local_fn", "ext_fn16", "ext_plt64", "ext_po16", "ext_po32", "ext_po64"]


def test_got_and_plt_at_the_start_of_the_text() -> None:
    """One slot per symbol, in order of first use over all relocation sections
    (.rela.text, then .rela.data.x); GOT at the text base, PLT right after it,
    then the first text section; slots hold S, PLT entries jump to S."""
    lm = load("all_types.o")
    got_addr, got = lm.reserved_bytes(GOT)
    plt_addr, plt = lm.reserved_bytes(PLT)
    assert got_addr == BASE and plt_addr == BASE + 8 * len(ALL_GOT)
    assert got == b"".join(sym(lm, n).to_bytes(8, "big") for n in ALL_GOT)
    expect = b"".join(plt_entry_by_hand(plt_addr + 22 * k, sym(lm, n)) for k, n in enumerate(ALL_PLT))
    assert plt == expect  # local_fn's entry is written although the call branches directly
    sec, text, _ = section(lm, ".text")
    align = sec.addralign
    assert text == (plt_addr + len(plt) + align - 1) & ~(align - 1)
    assert s390.gotplt.state_summary(lm.module.arch_state) == {
        "got_size": 96,
        "plt_size": 154,
        "got_slots": 12,
        "plt_entries": 7,
    }


def _value(
    S: int, rtype: int, symbol: str, addend: int, P: int, got: list[str] = ALL_GOT, plt_: list[str] = ALL_PLT
) -> int:
    """The kernel's formulas, written out for the sites ld cannot check (GOT slots and PLT entries in order
    of first use: ``got`` and ``plt_``, all_types' by default)."""
    G = 8 * got.index(symbol) if symbol in got else None
    plt = BASE + 8 * len(got)
    PLTe = plt + 22 * plt_.index(symbol) if symbol in plt_ else None
    if rtype in (6, 15, 58, 7, 24, 29, 30, 59, 31, 32):  # GOT*, GOTPLT*
        return G + addend
    if rtype in (26, 33):  # GOTENT, GOTPLTENT
        return BASE + G + addend - P
    if rtype in (18, 20):  # PLT16DBL/PLT32DBL: direct when S - P is in range
        reach = 0xFFFF if rtype == 18 else 0xFFFFFFFF
        target = S if -reach <= S - P <= reach - 1 else PLTe
        return target + addend - P
    if rtype in (8, 25):  # PLT32, PLT64
        return PLTe + addend - P
    if rtype in (34, 35, 36):  # PLTOFF*
        return PLTe - BASE + addend
    if rtype in (27, 13, 28):  # GOTOFF*
        return S + addend - BASE
    if rtype in (14, 21):  # GOTPC, GOTPCDBL
        return BASE + addend - P
    raise AssertionError(rtype)


def _field(data: bytes, off: int, rtype: int) -> int:
    """The field's ``bits`` bits as stored (12: low 12 of the halfword; 20: DL | DH << 12)."""
    sign, bits, shift = s390.types.FIELDS[rtype]
    raw = int.from_bytes(data[off : off + {12: 2, 20: 4}.get(bits, bits // 8)], "big")
    if bits == 12:
        return raw & 0xFFF
    if bits == 20:
        return ((raw >> 16) & 0xFFF) | (((raw >> 8) & 0xFF) << 12)
    return raw


@pytest.mark.parametrize("target", [".text", ".data.x"])
def test_got_plt_dependent_fields_by_hand(target: str) -> None:
    lm = load("all_types.o")
    sec, addr, data = section(lm, target)
    orig = lm.module.elf.section_data(sec.index)
    checked = 0
    for off, rtype, symbol, addend in relocs(lm, target):
        kernel_only = set(s390.gotplt.GOT_SLOT_TYPES) | set(s390.gotplt.PLT_SLOT_TYPES) | {13, 14, 21, 27, 28}
        if rtype not in kernel_only:
            continue
        sign, bits, shift = s390.types.FIELDS[rtype]
        want = _value(sym(lm, symbol) if symbol != "_GLOBAL_OFFSET_TABLE_" else 0, rtype, symbol, addend, addr + off)
        got = _field(data, off, rtype)
        mask = (1 << bits) - 1
        assert got == (want >> shift) & mask, (target, off, rtype, symbol)
        if bits == 12:  # the base register nibble stays
            assert data[off] >> 4 == orig[off] >> 4
        if bits == 20:  # B2 and the second opcode byte stay
            assert data[off] >> 4 == orig[off] >> 4 and data[off + 3] == orig[off + 3]
        checked += 1
    assert checked >= (9 if target == ".text" else 14)


def test_field_encoders_worked_examples() -> None:
    T = s390.types
    v = np.array([0x123], dtype=np.uint64)
    assert int(T.field12(v, np.array([0xC000 | 0xABC], dtype=np.uint64), None)[0]) == 0xC123
    # lay %r1,-0x789ac = 0x...f87654: DL 0x654 (bits 27..16), DH 0x87 (bits 15..8), B2 0, opcode byte 0x71
    v = np.array([-0x789AC & M64], dtype=np.uint64)
    assert int(T.field20(v, np.array([0xA0000071], dtype=np.uint64), None)[0]) == 0xA6548771
    assert int(T.low(16, 1)(np.array([0xFFFE], dtype=np.uint64), None, None)[0]) == 0x7FFF
    assert s390.gotplt.plt_entry(0x1000, 0x123456789ABCDEF0, None) == plt_entry_by_hand(0x1000, 0x123456789ABCDEF0)


def _gotent_targets(lm, target: str) -> list[tuple[str, int]]:
    """(symbol, address the lgrl/larl reaches) for every GOTENT/GOTPLTENT site."""
    _, addr, data = section(lm, target)
    out = []
    for off, rtype, symbol, _ in relocs(lm, target):
        if rtype in (26, 33):
            disp = int.from_bytes(data[off : off + 4], "big", signed=True)
            out.append((symbol, addr + off - 2 + 2 * disp))
    return out


@pytest.mark.parametrize("obj", ["all_types.o", "mod_calls.o"])
def test_gotent_reaches_a_slot_holding_S(obj: str) -> None:
    lm = load(obj)
    got_addr, got = lm.reserved_bytes(GOT)
    sites = _gotent_targets(lm, ".text")
    assert sites
    for symbol, slot in sites:
        assert got_addr <= slot < got_addr + len(got)
        assert int.from_bytes(got[slot - got_addr : slot - got_addr + 8], "big") == sym(lm, symbol)
    # GNU ld, linking the same object at the same addresses with its own .got: every
    # GOTENT instruction reaches a slot holding the same value
    ld = json.loads((FIX / "expected" / f"{obj[:-2]}.json").read_text())["gotent_ld"]
    assert [(e["symbol"], int(e["value"], 16)) for e in ld] == [(n, sym(lm, n)) for n, _ in sites]


def _brasl_module(S_minus_P: int, addend: int = 2, rtype: int = 20) -> tuple[bytes, str]:
    obj = Obj(
        machine=22,
        endian=">",
        sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes.fromhex("c0e50000000007fe"), align=8)],
        symbols=[Sym("far")],
        relas=[Rela(".text", 2, rtype, "far", addend)],
        modinfo={"name": "edge"},
    ).build()
    # the layout: GOT (0) and PLT (22) at BASE, .text at BASE + 24, P = BASE + 26
    P = BASE + 24 + 2
    return obj, f"{(P + S_minus_P) & M64:016x} T far\n"


@pytest.mark.parametrize(
    "d, direct",
    [(-0xFFFFFFFF, True), (-0x100000000, False), (0xFFFFFFFE, True), (0xFFFFFFFF, False), (0x10, True)],
)
def test_plt32dbl_direct_or_through_the_plt(d: int, direct: bool) -> None:
    """The range test uses S (not S + A): -0xffffffff <= S - P <= 0xfffffffe branches directly."""
    obj, text = _brasl_module(d)
    P = BASE + 26
    if direct and d in (-0xFFFFFFFF, 0xFFFFFFFE):
        # direct but S + A - P is out of the field: the kernel refuses after choosing
        with pytest.raises(RelocationError) as ei:
            load(obj, symbols=parse_symbol_text(text))
        value = (d + 2) & M64
        assert ei.value.diagnostics[0].kernel_message == (
            f"module edge: relocation error for symbol far (r_type 20, value {value:#x})"
        )
        return
    lm = load(obj, symbols=parse_symbol_text(text))
    plt_addr, plt = lm.reserved_bytes(PLT)
    assert plt == plt_entry_by_hand(plt_addr, (P + d) & M64)  # written either way
    _, _, data = section(lm, ".text")
    disp = int.from_bytes(data[2:6], "big", signed=True)
    reached = (P - 2 + 2 * disp) & M64
    assert reached == ((P + d) & M64 if direct else plt_addr)


def test_plt16dbl_boundary() -> None:
    for d, direct in ((0xFFFE - 2, True), (-0xFFFF + 1, True), (0x20000, False)):
        obj, text = _brasl_module(d, addend=2, rtype=18)
        obj = obj.replace(bytes.fromhex("c0e50000000007fe"), bytes.fromhex("a7e5000007fe0000"))
        lm = load(obj, symbols=parse_symbol_text(text))
        plt_addr, _ = lm.reserved_bytes(PLT)
        _, _, data = section(lm, ".text")
        reached = (BASE + 24 + 2 * int.from_bytes(data[2:4], "big", signed=True)) & M64
        assert reached == ((BASE + 26 + d) & M64 if direct else plt_addr)


# -------------------------------------------------------------- expolines
@pytest.mark.parametrize(
    "how",
    [{"expoline": "y"}, {"config": "CONFIG_EXPOLINE=y\n"}],
)
def test_expoline_plt_and_thunk(how) -> None:
    lm = load("mod_calls.o", **how)
    plt_addr, plt = lm.reserved_bytes(PLT)
    n = len(plt) // 22 - 1  # the last slot is the __jump_r1 thunk
    thunk = plt_addr + 22 * n
    assert plt[22 * n :] == bytes.fromhex("c60000000005a7f4000007f1") + bytes(10)
    md = capstone.Cs(capstone.CS_ARCH_SYSZ, capstone.CS_MODE_BIG_ENDIAN)
    md.detail = True
    for k in range(n):
        entry = plt_addr + 22 * k
        target = int.from_bytes(plt[22 * k + 14 : 22 * k + 22], "big")
        assert plt[22 * k : 22 * k + 22] == plt_entry_by_hand(entry, target, thunk)
        insns = list(md.disasm(plt[22 * k : 22 * k + 14], entry))
        assert [i.mnemonic for i in insns] == ["basr", "lg", "jg"]
        assert s390.identify.insn_target(insns[2]) == thunk
    thunk_insns = list(md.disasm(plt[22 * n : 22 * n + 12], thunk))
    assert [i.mnemonic for i in thunk_insns] == ["exrl", "j", "br"]


def test_expoline_off_by_config_and_nospec() -> None:
    for kw in ({"config": "# CONFIG_EXPOLINE is not set\n"}, {"expoline": "y", "nospec_disable": "y"}, {}):
        lm = load("mod_calls.o", **kw)
        _, plt = lm.reserved_bytes(PLT)
        assert len(plt) % 22 == 0 and plt[8:12] == bytes.fromhex("07f10000")
        assert s390.gotplt.state_summary(lm.module.arch_state)["plt_entries"] * 22 == len(plt)


# ------------------------------------------------------------- versions
def test_gotent_formula_before_and_after_6_5() -> None:
    """Both formulas give the same bytes when the GOT starts at the text base
    (as module_frob_arch_sections places it); they differ otherwise."""
    for version in ("6.4", "6.5"):
        lm = load("all_types.o", version)
        assert _gotent_targets(lm, ".text")
    geo = s390.gotplt.Geometry(base=0x1000, got_offset=0x40, plt_offset=0x80, got_key=-1, plt_key=-2)

    class Ctx:
        module = type("M", (), {"arch_state": {"geometry": geo}})()

        def __init__(self, version: str) -> None:
            self.kernel = KernelTarget.from_string(version)

    assert s390.gotplt.gotent_base(Ctx("6.4")) == 0x1000
    assert s390.gotplt.gotent_base(Ctx("6.5")) == 0x1040


@pytest.mark.parametrize(
    "version, options, method",
    [("5.7", {}, "module_disable_ro"), ("5.8", {}, "s390_kernel_write"), ("6.1", {"s390_kernel_write": False}, None)],
)
def test_write_method_by_version(version: str, options: dict, method: str | None) -> None:
    kernel = KernelTarget.from_string(version, options=options)
    image = ModuleImage([])
    assert s390.protection.write_method(image, kernel) == "memcpy"
    image.state = ModuleState.COMING
    assert s390.protection.write_method(image, kernel) == method


def test_late_write_with_no_permitted_path_is_an_error() -> None:
    """A 5.8+ kernel without s390_kernel_write could not write read-only text late."""
    syms = parse_symbol_text("0000000000123450 T unrelated\n")
    lm = load(_klp(["tgt_fn", "tgt_data"]), symbols=syms, s390_kernel_write=False)
    with pytest.raises(KlpError) as ei:
        lm.coming("tgt_mod", parse_symbol_text(_tgt(0x3FF80000000, 0x3FF80100000)))
    assert any("read-only" in d.message or "would fault" in d.message for d in ei.value.diagnostics)
    assert lm.pending_objects == ["tgt_mod"]
    assert lm.reserved_bytes(GOT)[1] == bytes(8)  # nothing half-applied


# ----------------------------------------------------------- refusals
def _set_type(data: bytes, section_name: str, index: int, rtype: int) -> bytes:
    elf = ElfModule(data)
    sec = elf.section_by_name(section_name)
    assert sec is not None
    buf = bytearray(data)
    at = sec.offset + 24 * index + 8
    info = int.from_bytes(buf[at : at + 8], "big")
    buf[at : at + 8] = ((info & ~0xFFFFFFFF) | rtype).to_bytes(8, "big")
    return bytes(buf)


@pytest.mark.parametrize("rtype, name", [(37, "R_390_TLS_LOAD"), (60, "R_390_TLS_GOTIE20"), (61, "R_390_IRELATIVE")])
def test_unknown_types(rtype: int, name: str, tmp_path: Path) -> None:
    path = tmp_path / "all_types.o"
    path.write_bytes(_set_type((FIX / "all_types.o").read_bytes(), ".rela.data.x", 0, rtype))
    with pytest.raises(RelocationError) as ei:
        load(str(path))
    d = ei.value.diagnostics[0]
    assert d.rtype == name and name in d.message
    assert d.kernel_message == f"module all_types: unknown relocation: {rtype}"


@pytest.mark.parametrize("rtype, name", [(9, "R_390_COPY"), (10, "R_390_GLOB_DAT"), (11, "R_390_JMP_SLOT")])
def test_shared_object_types_refused_without_message(rtype: int, name: str) -> None:
    data = _set_type((FIX / "all_types.o").read_bytes(), ".rela.data.x", 0, rtype)
    with pytest.raises(RelocationError) as ei:
        load(data)
    d = ei.value.diagnostics[0]
    assert d.rtype == name and name in d.message and d.kernel_message is None


def test_identify() -> None:
    assert s390.identify.identify(22, 2, "big") is not None
    assert s390.identify.identify(0xA390, 2, "big") is not None  # EM_S390_OLD
    assert s390.identify.identify(22, 2, "little") is None
    assert s390.identify.identify(22, 1, "big") is None
    obj = Obj(machine=22, endian="<", sections=[Sec(".text", flags=C.SHF_ALLOC, data=b"\0" * 4)]).build()
    with pytest.raises(NoPluginError):
        Loader(get_plugin_manager()).open(obj)


def test_global_offset_table_is_absolute_zero() -> None:
    lm = load("all_types.o")
    elf = lm.module.elf
    i = elf.symbol_names.index("_GLOBAL_OFFSET_TABLE_")
    assert int(elf.symbols["st_shndx"][i]) == C.SHN_ABS and int(lm.symvals[i]) == 0


def test_output_elf_shows_got_and_plt() -> None:
    lm = load("mod_calls.o")
    out = ElfModule(write_elf(lm))
    for name in (GOT, PLT):
        sec = out.section_by_name(name)
        assert sec is not None and sec.flags == C.SHF_ALLOC | C.SHF_EXECINSTR
        addr, data = lm.reserved_bytes(name)
        assert (sec.addr, out.section_data(sec.index)) == (addr, data)


def test_capstone_and_insn_target() -> None:
    lm = load("all_types.o")
    _, addr, data = section(lm, ".text")
    md = capstone.Cs(capstone.CS_ARCH_SYSZ, capstone.CS_MODE_BIG_ENDIAN)
    md.detail = True
    plt_addr, _ = lm.reserved_bytes(PLT)
    targets = {i.address - addr: s390.identify.insn_target(i) for i in md.disasm(data, addr)}
    calls = [(off - 2, rtype, symbol) for off, rtype, symbol, _ in relocs(lm, ".text") if rtype == 20]
    assert [targets[off] for off, _, _ in calls] == [plt_addr, sym(lm, "local_fn"), plt_addr]
    assert targets[0] is None  # la: not PC-relative


# -------------------------------------------------------------- livepatch
def _klp(names: list[str], objname: str = "tgt_mod") -> bytes:
    return convert_named((FIX / "klp_late.o").read_bytes(), {n: KlpSym(objname) for n in names}).data


def _tgt(fn: int, data: int) -> str:
    return f"{fn:016x} t tgt_fn\t[tgt_mod]\n{data:016x} d tgt_data\t[tgt_mod]\n"


def test_late_klp_relocations_go_through_s390_kernel_write() -> None:
    lm = load(_klp(["tgt_fn", "tgt_data"]), "6.1", symbols=parse_symbol_text("0000000000123450 T unrelated\n"))
    assert lm.pending_objects == ["tgt_mod"]
    _, plt_before = lm.reserved_bytes(PLT)
    assert plt_before == bytes(len(plt_before))  # nothing written before the target loads
    fn, data = 0x3FF80000000, 0x3FF80100000
    lm.coming("tgt_mod", parse_symbol_text(_tgt(fn, data)))
    late = [w for w in lm.write_log if w.phase == "coming:tgt_mod"]
    assert late and {w.method for w in late} == {"s390_kernel_write"}
    assert {w.region for w in late} == {"MOD_TEXT", "MOD_DATA"}  # the GOT/PLT and .text, .data.ptr
    got_addr, got = lm.reserved_bytes(GOT)
    plt_addr, plt = lm.reserved_bytes(PLT)
    assert got == data.to_bytes(8, "big")
    assert plt == plt_entry_by_hand(plt_addr, fn)
    _, taddr, text = section(lm, ".text")
    # tgt_fn is within brasl range of the module: the call is direct
    assert taddr + 2 * int.from_bytes(text[2:6], "big", signed=True) == fn
    assert taddr + 6 + 2 * int.from_bytes(text[8:12], "big", signed=True) == got_addr


def test_reload_reuses_got_and_plt_slots_with_a_warning() -> None:
    lm = load(_klp(["tgt_fn", "tgt_data"]), symbols=parse_symbol_text("0000000000123450 T unrelated\n"))
    lm.coming("tgt_mod", parse_symbol_text(_tgt(0x3FF80000000, 0x3FF80100000)))
    assert not [w for w in lm.warnings if "earlier phase" in w.message]
    lm.going("tgt_mod")  # s390 has no clear_relocate_add: nothing changes
    lm.symbols.objects.pop("tgt_mod")
    lm.coming("tgt_mod", parse_symbol_text(_tgt(0x3FF90000000, 0x3FF90100000)))
    reuse = [w for w in lm.warnings if "earlier phase" in w.message]
    assert {w.rtype for w in reuse} == {"R_390_PLT32DBL", "R_390_GOTENT"}
    got_msg = next(w for w in reuse if w.rtype == "R_390_GOTENT")
    assert "coming:tgt_mod" in got_msg.message and "0x3ff80100000" in got_msg.message
    assert "0x3ff90100000" in got_msg.message  # the address it should reach now
    # the kernel's behaviour: the slots keep the first load's values
    assert lm.reserved_bytes(GOT)[1] == (0x3FF80100000).to_bytes(8, "big")
    _, plt = lm.reserved_bytes(PLT)
    assert int.from_bytes(plt[14:22], "big") == 0x3FF80000000
    # the direct call and the larl are rewritten for the new load
    _, taddr, text = section(lm, ".text")
    assert taddr + 2 * int.from_bytes(text[2:6], "big", signed=True) == 0x3FF90000000


def test_vmlinux_klp_at_load_through_the_plt() -> None:
    syms = parse_symbol_text("0000000000567890 T tgt_fn\n000003ff7fe00000 D tgt_data\n")
    lm = load(_klp(["tgt_fn"], "vmlinux"), symbols=syms)
    _, plt = lm.reserved_bytes(PLT)
    assert int.from_bytes(plt[14:22], "big") == 0x567890
    assert {w.method for w in lm.write_log if w.phase == "load"} == {"memcpy"}
    _, taddr, text = section(lm, ".text")
    plt_addr, _ = lm.reserved_bytes(PLT)
    assert taddr + 2 * int.from_bytes(text[2:6], "big", signed=True) == plt_addr  # 0x567890 is > 4 GiB away


# -------------------------------------------------------------- unicorn
UNICORN = json.loads((FIX / "expected" / "unicorn.json").read_text())


def test_unicorn_run_recorded_hand_derived_result() -> None:
    """mod_calls(5): helper(5) = local_table[1] + 5 = 7; ext_add(5, 7) = 12;
    ext_mul(12, ext_counter = 7) = 84; ext_counter += 84 -> 91;
    84 + ext_data[5] (105) + ops[1](5, 1) = ext_add -> 6: 195."""
    assert UNICORN["returned"] == 195 and UNICORN["ext_counter"] == 91 and UNICORN["pc"] == "0x1000"
    assert UNICORN["ext_log_argument"] == "klpcore"
    calls = [(c["function"], c["via_plt_entry"]) for c in UNICORN["calls"]]
    # PLT entry 0 is helper's (written, unused: the local call is direct); the
    # call through the ops table is an indirect basr, not through the PLT
    assert calls == [("ext_add", 1), ("ext_mul", 2), ("ext_log", 3), ("ext_add", None)]


def _insn_at(lm, address: int):
    """klpcore's instruction at ``address`` (capstone), None outside the module's memory."""
    region = next((r for r in lm.image.regions if r.address <= address < r.address + r.size), None)
    if region is None:
        return None
    md = capstone.Cs(capstone.CS_ARCH_SYSZ, capstone.CS_MODE_BIG_ENDIAN)
    md.detail = True
    return next(md.disasm(lm.image.backend.read(address, 6), address))


def test_unicorn_ran_klpcore_entry_and_plt() -> None:
    lm = load("mod_calls.o")
    assert int(UNICORN["entry"], 16) == sym(lm, "mod_calls")
    plt_addr, plt = lm.reserved_bytes(PLT)
    for k, name in enumerate(["helper", "ext_add", "ext_mul", "ext_log"]):
        assert plt[22 * k : 22 * k + 22] == plt_entry_by_hand(plt_addr + 22 * k, sym(lm, name))


def test_klpcore_goes_where_unicorn_went() -> None:
    """Every control transfer unicorn made from the module is what klpcore's bytes now encode (capstone): a
    relative branch or call reaches unicorn's target; a PLT entry's ``br %r1`` jumps to the doubleword its
    ``lg %r1,d(%r1)`` reads (``basr %r1,0`` left the entry's address + 2 in %r1)."""
    lm = load("mod_calls.o")
    plt_addr, plt = lm.reserved_bytes(PLT)
    checked = {"relative": 0, "plt": 0, "register": 0}
    for frm, to in ((int(a, 16), int(b, 16)) for a, b in UNICORN["transfers"]):
        i = _insn_at(lm, frm)
        if i is None:  # a kernel stand-in's return
            continue
        if plt_addr <= frm < plt_addr + len(plt):
            entry = plt_addr + (frm - plt_addr) // 22 * 22
            basr, lg, br = _insn_at(lm, entry), _insn_at(lm, entry + 2), i
            assert (basr.mnemonic, lg.mnemonic, br.mnemonic, br.address) == ("basr", "lg", "br", entry + 8)
            literal = entry + 2 + lg.operands[1].mem.disp
            target = int.from_bytes(lm.image.backend.read(literal, 8), "big")
            kind = "plt"
        elif i.operands[-1].type == capstone.systemz.SYSZ_OP_IMM:
            target, kind = i.operands[-1].imm, "relative"
        else:  # br %r14 (a return) or basr through a function pointer: a register, not a relocated field
            checked["register"] += 1
            continue
        assert target == to, f"{frm:#x} {i.mnemonic} {i.op_str}: klpcore {target:#x}, unicorn {to:#x}"
        checked[kind] += 1
    assert checked == {"relative": 4, "plt": 3, "register": 2}


def test_klpcore_points_where_unicorn_pointed() -> None:
    """Every LARL unicorn ran formed the address klpcore's bytes now encode, and every PC-relative load (LGRL:
    a GOT slot through GOTENT) read where klpcore's bytes now point."""
    lm = load("mod_calls.o")
    for pc, value in UNICORN["larl"]:
        i = _insn_at(lm, int(pc, 16))
        assert i.mnemonic == "larl" and i.operands[1].imm == int(value, 16), (pc, i.op_str)
    relative = 0
    for pc, address in UNICORN["reads"]:
        i = _insn_at(lm, int(pc, 16))
        if i is not None and i.mnemonic.endswith("rl"):
            assert i.operands[1].imm == int(address, 16), (pc, i.mnemonic, i.op_str)
            relative += 1
    assert len(UNICORN["larl"]) == 2 and relative == 3


def test_page_size_and_config_defaults() -> None:
    lm = load("mod_calls.o")
    assert lm.module.page_size == 4096
    assert s390.klp_arch_config_default("EXPOLINE", KernelTarget()) == "n"
    # the page size is the layout's: each memory kind starts on its own 4 KiB page
    starts = [r.address for r in lm.image.regions]
    assert len(starts) == 3 and all(a % 4096 == 0 for a in starts) and len({a // 4096 for a in starts}) == 3
    # EXPOLINE=n is what a load with no configuration gets: four 22-byte PLT entries, no __jump_r1 thunk after them
    assert len(lm.reserved_bytes(PLT)[1]) == 4 * 22
    assert len(load("mod_calls.o", expoline="y").reserved_bytes(PLT)[1]) > 4 * 22


def test_enable_phase_for_an_already_loaded_target() -> None:
    """The target module is loaded when the patch is: its sections are applied
    when the patch is enabled (module COMING), through s390_kernel_write."""
    syms = parse_symbol_text("0000000000123450 T unrelated\n" + _tgt(0x3FF80000000, 0x3FF80100000))
    lm = load(_klp(["tgt_fn", "tgt_data"]), symbols=syms)
    assert lm.pending_objects == []
    enable = [w for w in lm.write_log if w.phase == "enable"]
    assert enable and {w.method for w in enable} == {"s390_kernel_write"}
    assert lm.reserved_bytes(GOT)[1] == (0x3FF80100000).to_bytes(8, "big")


@pytest.mark.parametrize("version", ["6.1", "6.5", "6.19"])
def test_got_plt_first_in_text_in_both_layouts(version: str) -> None:
    """core_layout (before 6.4) and mem[MOD_TEXT] (6.4+): the GOT starts the text."""
    lm = load("mod_calls.o", version)
    got_addr, got = lm.reserved_bytes(GOT)
    plt_addr, plt = lm.reserved_bytes(PLT)
    sec, text, _ = section(lm, ".text")
    assert got_addr == BASE and plt_addr == BASE + len(got)
    assert text == (plt_addr + len(plt) + sec.addralign - 1) & ~(sec.addralign - 1)
    assert _gotent_targets(lm, ".text")


# ------------------------------------------- both sides of every checked type
#: apply_rela's call to apply_rela_bits for each type, written out from arch/s390/kernel/module.c:
#: number -> (name, signed, bits, shift, value class)
KERNEL_BITS = {
    1: ("R_390_8", False, 8, 0, "abs"),
    2: ("R_390_12", False, 12, 0, "abs"),
    3: ("R_390_16", False, 16, 0, "abs"),
    57: ("R_390_20", True, 20, 0, "abs"),
    4: ("R_390_32", False, 32, 0, "abs"),
    16: ("R_390_PC16", True, 16, 0, "pc"),
    17: ("R_390_PC16DBL", True, 16, 1, "pc"),
    19: ("R_390_PC32DBL", True, 32, 1, "pc"),
    5: ("R_390_PC32", True, 32, 0, "pc"),
    6: ("R_390_GOT12", False, 12, 0, "got"),
    15: ("R_390_GOT16", False, 16, 0, "got"),
    58: ("R_390_GOT20", True, 20, 0, "got"),
    7: ("R_390_GOT32", False, 32, 0, "got"),
    29: ("R_390_GOTPLT12", False, 12, 0, "got"),
    30: ("R_390_GOTPLT16", False, 16, 0, "got"),
    59: ("R_390_GOTPLT20", True, 20, 0, "got"),
    31: ("R_390_GOTPLT32", False, 32, 0, "got"),
    26: ("R_390_GOTENT", True, 32, 1, "gotent"),
    33: ("R_390_GOTPLTENT", True, 32, 1, "gotent"),
    18: ("R_390_PLT16DBL", True, 16, 1, "pltfar"),
    20: ("R_390_PLT32DBL", True, 32, 1, "pltdbl"),
    8: ("R_390_PLT32", False, 32, 0, "plt"),
    34: ("R_390_PLTOFF16", False, 16, 0, "pltoff"),
    35: ("R_390_PLTOFF32", False, 32, 0, "pltoff"),
    27: ("R_390_GOTOFF16", False, 16, 0, "gotoff"),
    13: ("R_390_GOTOFF32", False, 32, 0, "gotoff"),
    14: ("R_390_GOTPC", True, 32, 0, "gotpc"),
    21: ("R_390_GOTPCDBL", True, 32, 1, "gotpc"),
}
EDGE_S = BASE + 0x100000  # the symbol: in the module area, 1 MiB above the module


def _edge_geometry(cls: str) -> tuple[int, int, int]:
    """(GOT, PLT, P) for a module with one relocation of class ``cls`` at .text+0:
    an 8-byte GOT slot for GOT classes, a 22-byte PLT entry for PLT classes, both at
    the text base (GOT first), .text (8-aligned) after them."""
    got = 8 if cls in ("got", "gotent") else 0
    plt = 22 if cls in ("pltdbl", "pltfar", "plt", "pltoff") else 0
    return BASE, BASE + got, (BASE + got + plt + 7) & ~7


def _edge_value(cls: str, A: int) -> int:
    GOT, PLTe, P = _edge_geometry(cls)
    S = EDGE_S
    return {
        "abs": S + A,
        "pc": S + A - P,
        "got": 0 + A,  # G = 0: the only slot
        "gotent": GOT + 0 + A - P,
        "pltdbl": S + A - P,  # S - P = 1 MiB: a direct brasl
        "pltfar": PLTe + A - P,  # 1 MiB is beyond bras's 64 KiB: through the PLT
        "plt": PLTe + A - P,
        "pltoff": PLTe - GOT + A,
        "gotoff": S + A - GOT,
        "gotpc": GOT + A - P,
    }[cls]


def _edge_module(rtype: int, addend: int) -> bytes:
    return Obj(
        machine=22,
        endian=">",
        sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(16), align=8)],
        symbols=[Sym("ext")],
        relas=[Rela(".text", 0, rtype, "ext", addend)],
        modinfo={"name": "edge"},
    ).build()


def _edge_cases() -> list[tuple[int, str, int]]:
    """(type, side, value before the shift) at and beyond each limit."""
    out = []
    for rtype, (_, sign, bits, shift, _) in KERNEL_BITS.items():
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if sign else (0, (1 << bits) - 1)
        out += [(rtype, "ok_max", hi << shift), (rtype, "over_max", (hi + 1) << shift)]
        if sign:
            out += [(rtype, "ok_min", lo << shift), (rtype, "over_min", (lo - 1) << shift)]
        else:
            out.append((rtype, "negative", -(1 << shift)))
        if shift:
            out.append((rtype, "odd", 0x101))
    return out


@pytest.mark.parametrize("rtype, side, value", _edge_cases(), ids=lambda v: str(v) if not isinstance(v, int) else None)
def test_both_sides_of_every_limit(rtype: int, side: str, value: int) -> None:
    name, sign, bits, shift, cls = KERNEL_BITS[rtype]
    assert s390.types.FIELDS[rtype] == (sign, bits, shift)
    addend = value - _edge_value(cls, 0)
    assert _edge_value(cls, addend) == value
    symbols = parse_symbol_text(f"{EDGE_S:016x} T ext\n")
    if side.startswith("ok"):
        lm = load(_edge_module(rtype, addend), symbols=symbols)
        _, text, data = section(lm, ".text")
        assert text == _edge_geometry(cls)[2]
        assert _field(data, 0, rtype) == (value >> shift) & ((1 << bits) - 1)
        if cls in ("got", "gotent"):
            assert lm.reserved_bytes(GOT)[1] == EDGE_S.to_bytes(8, "big")
        return
    with pytest.raises(RelocationError) as ei:
        load(_edge_module(rtype, addend), symbols=symbols)
    (d,) = ei.value.diagnostics
    assert d.rtype == name
    assert d.kernel_message == (
        f"module edge: relocation error for symbol ext (r_type {rtype}, value {value & M64:#x})"
    )


def test_shipped_example_and_its_options(tmp_path: Path) -> None:
    """The example module applies from the command line, with and without expolines."""
    from klpcore.cli import main

    out = tmp_path / "demo.ko"
    assert main(["apply", "--example", "s390x", "-o", str(out), "-q"]) == 0
    assert main(["apply", "--example", "s390x", "-q", "-O", "expoline=y", "-O", "nospec_disable=false"]) == 0
    from elftools.elf.elffile import ELFFile

    with open(out, "rb") as f:
        names = [s.name for s in ELFFile(f).iter_sections()]
    assert ".klpcore.s390.got" in names and ".klpcore.s390.plt" in names


def test_percpu_base_from_the_target_symbols() -> None:
    """A module's per-CPU section follows the static per-CPU data (Debian 7.2 s390x: drop_monitor,
    ext4, nf_tables ... reach it with larl; placed at the 6.1-era default they overflowed)."""
    import klpcore_s390x as s390

    from klpcore.plugins import arch_spec, get_plugin_manager

    spec = arch_spec(get_plugin_manager(), 22, 2, "big", 0)
    assert spec is not None
    got = s390.klp_arch_percpu_base(spec, KernelTarget((7, 2)), {"__per_cpu_end": 0x3FFE1BA9701}.get)
    assert got == 0x3FFE1BA9740
    assert s390.klp_arch_percpu_base(spec, KernelTarget((7, 2)), {}.get) is None
