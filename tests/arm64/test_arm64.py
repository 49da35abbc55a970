"""arm64: klpcore against GNU ld, hand-derived encodings, capstone and unicorn.

The fixtures in ``fixtures/`` were compiled with arm64 kernel-module flags and
linked by GNU ld 2.40 at the addresses klpcore gives them; module PLTs and
the erratum 843419 handling (which ld does not do as the kernel does) were run
under unicorn (``fixtures/build.py`` regenerates everything).  The tests need
no cross compiler, linker or emulator.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import capstone
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klpcore import KernelTarget, Loader, RelocationError, get_plugin_manager, load_symbols
from klpcore.convert.elfedit import KlpSym
from klpcore.convert.named import convert_named
from klpcore.errors import ElfFormatError
from klpcore.symbols import KernelSymbols, parse_symbol_text
from klpcore.testing.conformance import ACCEPTED, REFUSED, conformance_tests, with_relocation_type
from klpcore.testing.ldrecord import assert_equals_ld

a64 = pytest.importorskip("klpcore_arm64")
from klpcore_arm64 import plt, types  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIX / "manifest.json").read_text())
BASE = int(MANIFEST["base"], 16)
SYMS = str(FIX / MANIFEST["symbols"])
KSYMS = {line.split()[2]: int(line.split()[0], 16) for line in (FIX / "kernel.map").read_text().splitlines()}
# filled only by the kernel (module PLTs, the ftrace trampolines; the init one from 6.17)
KERNEL_SECTIONS = {".plt", ".init.plt", ".text.ftrace_trampoline", ".init.text.ftrace_trampoline"}
NO_ERRATUM = {"erratum_843419": False}
MASK64 = (1 << 64) - 1


def loader(version: str | None = "6.1", **options) -> Loader:
    return Loader(get_plugin_manager(), kernel=KernelTarget.from_string(version, options=options))


def load(obj: str | bytes, version: str | None = "6.1", symbols=None, **options):
    module = obj if isinstance(obj, bytes) else str(FIX / obj if not Path(obj).is_absolute() else obj)
    return loader(version, **options).load(module, symbols or load_symbols(SYMS), BASE)


def words(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 4}I", data))


def section(lm, name: str):
    sec = lm.module.section_by_name(name)
    assert sec is not None, name
    return sec, lm.section_address(sec.index), lm.section_bytes(sec.index)


def sym_address(lm, name: str) -> int:
    elf = lm.module.elf
    i = elf.symbol_names.index(name)
    return lm.section_address(int(elf.symbols["st_shndx"][i])) + int(elf.symbols["st_value"][i])


def disasm(data: bytes, address: int):
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    md.detail = True
    return list(md.disasm(data, address))


def plt_targets(data: bytes, address: int) -> list[int | None]:
    """The address each 12-byte PLT entry jumps to (adrp + add + br x16), None for empty or other slots."""
    out: list[int | None] = []
    for k in range(0, len(data) - 11, 12):
        w = words(data[k : k + 12])
        if w[2] != plt.BR_X16:
            out.append(None)
            continue
        insns = disasm(data[k : k + 12], address + k)
        assert [i.mnemonic for i in insns] == ["adrp", "add", "br"]
        page = a64.insn_target(insns[0])
        out.append(page + ((w[1] >> 10) & 0xFFF))
    return out


def compare_with_ld(lm, recorded: dict) -> int:
    """ld's bytes everywhere but the sections only the kernel fills."""
    return assert_equals_ld(lm, recorded, skip=KERNEL_SECTIONS)


# --------------------------------------------------------------------- ld
@pytest.mark.parametrize("name", ["mod_calls", "all_types"])
def test_bytes_equal_gnu_ld(name: str) -> None:
    exp = json.loads((FIX / "expected" / f"{name}.json").read_text())
    lm = load(MANIFEST["fixtures"][name]["object"], **NO_ERRATUM)
    assert compare_with_ld(lm, exp["sections"]) >= 2


def _range_cases():
    for t, entry in MANIFEST["ranges"].items():
        for side, case in entry["cases"].items():
            yield t, side, case


def _range_symbols(case: dict) -> KernelSymbols:
    return parse_symbol_text(f"{int(case['symbol_address'], 16):016x} T tgt\nffff800008000000 T _text\n")


@pytest.mark.parametrize(("t", "side", "case"), list(_range_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_range_limit(t: str, side: str, case: dict) -> None:
    obj = MANIFEST["ranges"][t]["object"]
    syms = _range_symbols(case)
    if case["kernel"] == "ok":
        lm = load(obj, symbols=syms, **NO_ERRATUM)
        assert lm.section_address(lm.module.section_by_name(".text" if ".text" in case["ld"] else ".data").index)
        assert compare_with_ld(lm, case["ld"]) >= 1
    elif case["kernel"] == "refused":
        with pytest.raises(RelocationError) as ei:
            load(obj, symbols=syms, **NO_ERRATUM)
        (d,) = ei.value.diagnostics
        assert d.kernel_message == case["kernel_message"]
        assert d.rtype == MANIFEST["ranges"][t]["type"] and d.section is not None and d.symbol == "tgt"
    else:  # beyond direct branch range: a module PLT entry to S
        lm = load(obj, symbols=syms, **NO_ERRATUM)
        _, pbase, pbytes = section(lm, ".plt")
        S = int(case["symbol_address"], 16)
        assert plt_targets(pbytes, pbase)[0] == S
        _, tbase, tbytes = section(lm, ".text")
        (insn,) = disasm(tbytes[:4], tbase)
        assert a64.insn_target(insn) == pbase
        # 6.1 without CONFIG_ARM64_MODULE_PLTS: the overflow error, val = S + A
        with pytest.raises(RelocationError) as ei:
            load(obj, symbols=syms, module_plts=False, **NO_ERRATUM)
        number = MANIFEST["ranges"][t]["number"]
        assert ei.value.diagnostics[0].kernel_message == (
            f"module {Path(obj).stem}: overflow in relocation type {number} val {S:x}"
        )
        # the option is gone since the 6.5 module VA rework: PLTs always exist
        load(obj, "6.5", symbols=syms, module_plts=False, **NO_ERRATUM)


def test_fixtures_cover_every_kernel_type() -> None:
    assert byte_tested() == {t.name for t in a64.reloc_types(KernelTarget()) if not t.is_noop}


def byte_tested() -> set[str]:
    seen: set[str] = set()
    for name in ("mod_calls", "all_types"):
        seen |= set(MANIFEST["fixtures"][name]["relocation_types"])
    for entry in MANIFEST["ranges"].values():
        if any(c["kernel"] == "ok" for c in entry["cases"].values()):
            seen.add(entry["type"])
    return seen - {"R_AARCH64_NONE"}


def range_cases() -> list[tuple[str, str]]:
    out = []
    for t, _side, case in _range_cases():
        name = MANIFEST["ranges"][t]["type"]
        out.append((name, ACCEPTED if case["kernel"] == "ok" else REFUSED))  # "plt": refused without PLTs
    return out


TestConformance = conformance_tests(
    plugin="arm64",
    module=FIX / "all_types.o",
    symbols=FIX / "kernel.map",
    byte_tested=byte_tested,
    range_cases=range_cases,
    unsupported=[311, 1027, 281],
    kernel="6.1",
)


def test_r_arm_none_is_a_noop() -> None:
    data, secname, _ = with_relocation_type((FIX / "all_types.o").read_bytes(), 0)
    lm = load(data, **NO_ERRATUM)
    orig = load("all_types.o", **NO_ERRATUM)
    _, _, text = section(lm, ".text")
    _, _, text0 = section(orig, ".text")
    assert words(text[:4]) != words(text0[:4]) and words(text[4:]) == words(text0[4:])
    assert words(text[:4]) == [0xD2800000]  # the movz left as assembled


# ------------------------------------------------------ hand-derived values
def test_worked_examples() -> None:
    """Encodings derived by hand from the kernel's formulas (spec, section E)."""
    bl = types.insn_imm("PREL", 0xFFFF800080A01230, 0xFFFF800081234560, 2, 26, "IMM_26", 0x94000000)
    assert bl == (0x9420CCCC, False)
    adrp = types.insn_imm("PAGE", 0xFFFF800080A02000, 0xFFFF800082345678, 12, 21, "IMM_ADR", 0x90000000)
    assert adrp == (0xF000CA00, False)
    assert types.insn_imm("ABS", 0, 0xFFFF800082345678, 0, 12, "IMM_12", 0x91000000)[0] == 0x9119E000
    assert types.insn_imm("ABS", 0, 0xFFFF800082345678, 3, 9, "IMM_12", 0xF9400000)[0] == 0xF9433C00
    assert plt.plt_entry(0xFFFF8000C0123ABC, 0xFFFF800080A10040) == (0xF01FB890, 0x912AF210, 0xD61F0200)
    # MOVW_SABS_G1 with -0x123456 on movz x0,#0,lsl 16 -> movn x0,#0x12,lsl 16
    row = types.BY_NAME["R_AARCH64_MOVW_SABS_G1"]
    enc = types.movw_encode(row)
    ctx = type("C", (), {"group": None})()
    assert int(enc(np.array([(-0x123456) & MASK64], dtype=np.uint64), np.array([0xD2A00000], np.uint64), ctx)[0]) == (
        0x92A00240
    )


def test_break_fault_is_left_alone() -> None:
    assert types.encode_imm("IMM_26", types.BREAK_FAULT, 0x123) == types.BREAK_FAULT
    enc = types.imm_encoder("IMM_19")
    out = enc(np.array([5, 5], np.uint64), np.array([types.BREAK_FAULT, 0x54000000], np.uint64))
    assert out.tolist() == [types.BREAK_FAULT, 0x540000A0]


def test_branch_and_veneer_generators() -> None:
    assert plt.gen_branch(0x1000, 0x2000) == 0x14000400
    assert plt.gen_branch(0x1000, 0x1000 + (1 << 27)) == types.BREAK_FAULT  # [-128M, 128M)
    assert plt.gen_branch(0x1000, 0x1000 - (1 << 27)) == 0x16000000
    assert plt.gen_branch(0x1002, 0x2000) == types.BREAK_FAULT  # misaligned
    assert plt.gen_adrp(0x1000, 0x1000 + (1 << 32), 16) == types.BREAK_FAULT
    assert plt.adrp_offset(0xF01FB890) == 0xC0123000 - 0x80A10000


# ---------------------------------------------------------------- frob
@settings(max_examples=300, deadline=None)
@given(st.lists(st.booleans(), max_size=40))
def test_partition_equals_kernel_loop(need: list[bool]) -> None:
    order, count = plt.partition(np.array(need, dtype=bool))
    ref_order, ref_count = plt.partition_reference(need)
    assert order.tolist() == ref_order and count == ref_count


def test_count_plts_erratum_and_slack() -> None:
    dt = np.dtype([("r_offset", "<u8"), ("r_info", "<u8"), ("r_addend", "<i8")])
    adrp = 275
    rel = np.array([(0xFF8, adrp, 0), (0xFFC, adrp, 0), (0x7F8, adrp, 0), (0x10, adrp, 0)], dtype=dt)
    shndx = np.zeros(1, dtype=np.int64)
    on = KernelTarget((6, 1))
    assert plt.count_plts(rel, shndx, 1, on) == (2 + 1, 4096)  # two veneer slots + ceil(2/341)
    off = KernelTarget((6, 1), options=NO_ERRATUM)
    assert plt.count_plts(rel, shndx, 1, off) == (0, 0)
    no_cfg = KernelTarget((6, 1), options={"config_erratum_843419": False})
    assert plt.count_plts(rel, shndx, 1, no_cfg) == (0, 0)


def test_plt_sizes_and_sorted_relocations() -> None:
    for version, erratum, core, init in (("6.1", True, 6 + 1, 1 + 1), ("6.1", False, 6, 1), (None, True, 7, 2)):
        lm = load("plt_calls.o", version, erratum_843419=erratum)
        assert lm.module.section_by_name(".plt").size == (core + 1) * 12
        assert lm.module.section_by_name(".init.plt").size == (init + 1) * 12
        assert lm.module.section_by_name(".plt").addralign == 64
    lm = load("plt_calls.o")
    elf = lm.module.elf
    text = lm.module.section_by_name(".rela.text")
    rel = elf.relas(text.index)
    keys = [
        (int(i) & 0xFFFFFFFF, elf.symbol_names[int(i) >> 32], int(a)) for i, a in zip(rel["r_info"], rel["r_addend"])
    ]
    # every entry needs a PLT, so the kernel's partition leaves the last (the JUMP26) out of the sort
    assert keys == [
        (283, "far_a", 0),
        (283, "far_a", 0),
        (283, "far_b", 0),
        (283, "far_b", 8),
        (283, "ext_add", 0),
        (283, "local_fn", 0),
        (282, "far_c", 0),
    ]


def test_plt_entries_in_the_kernels_order() -> None:
    lm = load("plt_calls.o")
    _, pbase, pbytes = section(lm, ".plt")
    far = [KSYMS["far_a"], KSYMS["far_b"], KSYMS["far_b"] + 8, KSYMS["far_c"]]
    assert plt_targets(pbytes, pbase)[:5] == [*far, None]
    _, ibase, ibytes = section(lm, ".init.plt")
    assert plt_targets(ibytes, ibase)[0] == KSYMS["far_a"]
    _, tbase, tbytes = section(lm, ".text")
    reach = {i.address - tbase: a64.insn_target(i) for i in disasm(tbytes, tbase) if i.mnemonic in ("bl", "b")}
    slot = [pbase + 12 * k for k in range(4)]
    assert reach[0x10] == slot[0] and reach[0x20] == slot[0]  # far_a twice: one entry
    assert reach[0x18] == slot[1] and reach[0x28] == slot[2] and reach[0x50] == slot[3]
    assert reach[0x30] == KSYMS["ext_add"]  # in range: direct
    assert reach[0x38] == sym_address(lm, "local_fn")


def test_plt_slots_exhausted_without_randomize_base() -> None:
    """6.1 counts branch PLTs only with CONFIG_RANDOMIZE_BASE; newer kernels always."""
    with pytest.raises(RelocationError) as ei:
        load("plt_calls.o", randomize_base=False, **NO_ERRATUM)
    assert "no free PLT slot" in ei.value.diagnostics[0].message
    load("plt_calls.o", "6.5", randomize_base=False, **NO_ERRATUM)


def test_plt_entry_skips_a_forbidden_slot() -> None:
    """module_emit_plt_entry: a slot whose adrp sits at page offset >= 0xff8 is skipped."""
    buf = np.zeros(400 * 12, dtype=np.uint8)

    class Ctx:
        kernel = KernelTarget((6, 1))
        state = {"plt": {"core": {"shndx": 1, "num": 340, "max": 400}}}
        write_policy = None
        staged = type("S", (), {"buffer": staticmethod(lambda index: buf)})()
        module = type("M", (), {"layout": type("L", (), {"regions": {}})()})()

        def section_address(self, index):
            return 0x10000

    ctx = Ctx()
    at = plt.emit_plt_entry(ctx, 0x20000, 0x12345678)  # slot 340 is at 0x10ff0: its adrp at offset 0xff0 is fine
    assert at == 0x10000 + 340 * 12 and ctx.state["plt"]["core"]["num"] == 341
    at = plt.emit_plt_entry(ctx, 0x20000, 0x22345678)  # slot 341 at 0x10ffc: forbidden, slot 342 used
    assert at == 0x10000 + 342 * 12 and ctx.state["plt"]["core"]["num"] == 343
    assert not buf[341 * 12 : 342 * 12].any()
    again = plt.emit_plt_entry(ctx, 0x20000, 0x22345678)  # the same target right after: de-duplicated
    assert again == at and ctx.state["plt"]["core"]["num"] == 343
    # the scratch copy of the duplicate stays in the next slot, as in the kernel
    assert words(buf[343 * 12 : 344 * 12].tobytes()) == list(plt.plt_entry(0x22345678, 0x10000 + 343 * 12))


# ------------------------------------------------------------- erratum
def test_erratum_843419_adr_and_veneer() -> None:
    lm = load("erratum.o")
    _, tbase, tbytes = section(lm, ".text")
    near = sym_address(lm, "near_data")
    adr, b = words(tbytes[0xFF8:0x1000])
    assert (tbase + 0xFF8) & 0xFFF == 0xFF8
    (i_adr,) = disasm(tbytes[0xFF8:0xFFC], tbase + 0xFF8)
    assert i_adr.mnemonic == "adr" and a64.insn_target(i_adr) == near & ~0xFFF and adr & 0x1F == 0
    _, pbase, pbytes = section(lm, ".plt")
    assert lm.module.section_by_name(".plt").size == (2 + 1 + 1) * 12  # two veneer slots + slack + 1
    (i_b,) = disasm(tbytes[0xFFC:0x1000], tbase + 0xFFC)
    assert i_b.mnemonic == "b" and a64.insn_target(i_b) == pbase
    ven = disasm(pbytes[:12], pbase)
    assert [i.mnemonic for i in ven] == ["adrp", "add", "b"]
    assert a64.insn_target(ven[0]) == KSYMS["far_data"] & ~0xFFF and ven[0].op_str.startswith("x2,")
    assert words(pbytes[4:8])[0] == 0x91000042  # add x2, x2, #0
    assert a64.insn_target(ven[2]) == tbase + 0x1000
    assert lm.module.section_by_name(".text").addralign == 4096
    # the workaround off (CPU not affected, or kernel built without it): plain ADRPs
    for opts in (NO_ERRATUM, {"config_erratum_843419": False}):
        off = load("erratum.o", **opts)
        _, tb, tbytes2 = section(off, ".text")
        assert [i.mnemonic for i in disasm(tbytes2[0xFF8:0x1000], tb + 0xFF8)] == ["adrp", "adrp"]
        assert off.module.section_by_name(".plt").size == 12


# -------------------------------------------------------------- ftrace
def test_ftrace_trampoline_by_version() -> None:
    lm = load("plt_calls.o", "6.1")
    _, base, data = section(lm, ".text.ftrace_trampoline")
    assert plt_targets(data, base) == [KSYMS["ftrace_caller"], KSYMS["ftrace_regs_caller"]]
    lm = load("plt_calls.o", "6.16")
    _, base, data = section(lm, ".text.ftrace_trampoline")
    assert plt_targets(data, base) == [KSYMS["ftrace_caller"]]
    assert lm.module.section_by_name(".init.text.ftrace_trampoline").size == 1  # a plain 1-byte section
    lm = load("plt_calls.o", None)  # 6.17+: the init trampoline too
    for name in (".text.ftrace_trampoline", ".init.text.ftrace_trampoline"):
        _, base, data = section(lm, name)
        assert plt_targets(data, base) == [KSYMS["ftrace_caller"]]
    lm = load("plt_calls.o", "6.1", dynamic_ftrace_with_regs=False)
    _, base, data = section(lm, ".text.ftrace_trampoline")
    assert plt_targets(data, base) == [KSYMS["ftrace_caller"], None]


# ------------------------------------------------------------- versions
def _klp(**kw) -> bytes:
    return convert_named(
        (FIX / "klp_calls.o").read_bytes(), {"tgt_fn": KlpSym("tgt_mod"), "tgt_data": KlpSym("tgt_mod"), **kw}
    ).data


@pytest.mark.parametrize("version", ["6.1", "6.16"])
def test_livepatch_refused_before_6_17(version: str) -> None:
    with pytest.raises(ElfFormatError) as ei:
        load(_klp(), version)
    (d,) = ei.value.diagnostics
    assert d.kernel_message == "klp_calls: module is marked as livepatch module, but livepatch support is disabled"
    assert "6.17" in d.message


def test_livepatch_refused_when_the_config_lacks_it() -> None:
    for text, ok in (("CONFIG_ARM64=y\n# CONFIG_LIVEPATCH is not set\n", False), ("CONFIG_LIVEPATCH=y\n", True)):
        target = KernelTarget((6, 17), config=_config(text))
        lo = Loader(get_plugin_manager(), kernel=target)
        if ok:
            lo.load(_klp(), load_symbols(SYMS), BASE)
            continue
        with pytest.raises(ElfFormatError) as ei:
            lo.load(_klp(), load_symbols(SYMS), BASE)
        assert "CONFIG_LIVEPATCH off" in ei.value.diagnostics[0].message


TGT_NEAR = "ffff800000f00000 t tgt_fn\t[tgt_mod]\nffff800000f10000 d tgt_data\t[tgt_mod]\n"
TGT_FAR = "ffff80000e000000 t tgt_fn\t[tgt_mod]\nffff800000f10000 d tgt_data\t[tgt_mod]\n"


def test_late_klp_relocations_through_aarch64_insn_copy() -> None:
    lm = load(_klp(), "6.17")
    assert lm.pending_objects == ["tgt_mod"]
    lm.coming("tgt_mod", parse_symbol_text(TGT_NEAR))
    late = [w for w in lm.write_log if w.phase == "coming:tgt_mod"]
    assert late and {w.method for w in late} == {"aarch64_insn_copy"}
    _, tbase, tbytes = section(lm, ".text")
    calls = [a64.insn_target(i) for i in disasm(tbytes, tbase) if i.mnemonic == "bl"]
    assert 0xFFFF800000F00000 in calls and KSYMS["ext_add"] in calls


def test_late_klp_call_needing_a_plt_faults() -> None:
    """PLT entries are plain stores (plt[i] = ...): late, .plt is read-only."""
    lm = load(_klp(), "6.17")
    with pytest.raises(RelocationError) as ei:
        lm.coming("tgt_mod", parse_symbol_text(TGT_FAR))
    (d,) = ei.value.diagnostics
    assert d.section == ".klp.rela.tgt_mod..text" and d.rtype == "R_AARCH64_CALL26"
    assert d.symbol == ".klp.sym.tgt_mod.tgt_fn,0" and "plain store" in d.message
    assert d.kernel_message == "Unable to handle kernel write to read-only memory"
    assert lm.pending_objects == ["tgt_mod"]


def test_vmlinux_klp_call_beyond_range_uses_plt_at_load() -> None:
    data = convert_named((FIX / "plt_calls.o").read_bytes(), {"far_a": KlpSym("vmlinux")}).data
    lm = load(data, "6.17")
    rs = [s for s in lm.module.sections if s.name.startswith(".klp.rela.vmlinux.")]
    assert rs, "convert made vmlinux livepatch sections"
    _, pbase, pbytes = section(lm, ".plt")
    assert KSYMS["far_a"] in plt_targets(pbytes, pbase)
    _, tbase, tbytes = section(lm, ".text")
    (i,) = disasm(tbytes[0x10:0x14], tbase + 0x10)
    assert plt_targets(pbytes, pbase)[(a64.insn_target(i) - pbase) // 12] == KSYMS["far_a"]


def test_write_method_policy() -> None:
    from klpcore.constants import MemType, ModuleState
    from klpcore.memory import ModuleImage, Perm, Region

    img = ModuleImage([Region(MemType.TEXT, 0x1000, 0x1000)])
    text = img.regions[0]
    new, old = KernelTarget((6, 17)), KernelTarget((6, 16))
    assert a64.klp_arch_write_method(img, text, 0x1000, 4, new, None) == "memcpy"
    img.form()
    assert text.perms == Perm.R | Perm.X
    assert a64.klp_arch_write_method(img, text, 0x1000, 4, new, "aarch64_insn_copy") == "aarch64_insn_copy"
    assert a64.klp_arch_write_method(img, text, 0x1000, 4, old, "aarch64_insn_copy") is None
    assert a64.klp_arch_write_method(img, text, 0x1000, 4, new, None) is None  # a PLT store
    img.state = ModuleState.LIVE
    assert a64.klp_arch_write_method(img, Region(MemType.DATA, 0x3000, 0x1000), 0x3000, 8, old, None) == "store"
    hints = {t.name: t.write_hint for t in a64.reloc_types(new) if not t.is_noop}
    assert set(hints.values()) == {"aarch64_insn_copy"}
    assert {t.write_hint for t in a64.reloc_types(old)} == {None}


# -------------------------------------------------------------- unicorn
UNICORN = json.loads((FIX / "expected" / "unicorn.json").read_text())


#: each case's result, worked out by hand from src/plt_calls.S and src/erratum.S: plt_main shifts in
#: far_a (1), far_b (2), far_a (1), far_b + 8 (3), ext_add (4), local_fn (5); plt_tail and plt_init return what
#: far_c (6) and far_a (1) return; err_main adds near_data (0x11) and far_data (0x22)
UNICORN_RESULTS = {"plt_main": 0x121345, "plt_tail": 6, "plt_init": 1, "err_main": 0x33}


def _unicorn_load(case: dict):
    syms = KernelSymbols()
    for n, a in UNICORN["symbols"].items():
        syms.add("vmlinux", n, int(a, 16), "T")
    return loader(UNICORN["kernel"]).load(str(FIX / case["object"]), syms, int(UNICORN["base"], 16))


def _insn_at(lm, address: int):
    """klpcore's instruction at ``address`` (capstone), None outside the module."""
    for index, p in lm.module.layout.placements.items():
        size = lm.module.sections[index].size
        if p.address <= address < p.address + size:
            off = address - p.address
            (i,) = disasm(lm.section_bytes(index)[off : off + 4], address)
            return i
    return None


def _imm(op) -> int:
    return op.imm << op.shift.value if op.shift.type else op.imm


@pytest.mark.parametrize("case", UNICORN["cases"], ids=lambda c: c["function"])
def test_unicorn_result_is_the_hand_derived_one(case: dict) -> None:
    assert case["x0"] == UNICORN_RESULTS[case["function"]]
    assert case["visited"], "the call went through a PLT entry or veneer"


@pytest.mark.parametrize("case", UNICORN["cases"], ids=lambda c: c["function"])
def test_klpcore_goes_where_unicorn_went(case: dict) -> None:
    """Every control transfer unicorn made from the module (a branch, a call, a PLT entry's or veneer's jump)
    is what klpcore's bytes now encode, decoded by capstone; a PLT entry's ``br x16`` jumps to the address its
    ``adrp``/``add`` form."""
    lm = _unicorn_load(case)
    checked = 0
    for frm, to in ((int(a, 16), int(b, 16)) for a, b in case["transfers"]):
        i = _insn_at(lm, frm)
        if i is None or i.mnemonic == "ret":  # a kernel function's return, or the module's
            continue
        if i.mnemonic == "br":
            adrp, add = _insn_at(lm, frm - 8), _insn_at(lm, frm - 4)
            assert (adrp.mnemonic, add.mnemonic) == ("adrp", "add"), hex(frm)
            target = _imm(adrp.operands[1]) + _imm(add.operands[2])
        else:
            assert i.mnemonic in ("b", "bl") or i.mnemonic.startswith("b."), (hex(frm), i.mnemonic)
            target = i.operands[-1].imm
        assert target == to, f"{case['function']}: {frm:#x} {i.mnemonic}: klpcore {target:#x}, unicorn {to:#x}"
        checked += 1
    assert checked >= len(case["visited"]) + 1


@pytest.mark.parametrize("case", UNICORN["cases"], ids=lambda c: c["function"])
def test_klpcore_computes_what_unicorn_computed(case: dict) -> None:
    """Every ADR/ADRP/ADD unicorn ran in the module: klpcore's bytes there, decoded by capstone, give the value
    the emulator's register held after it (ADD: from the base register's value before)."""
    lm = _unicorn_load(case)
    for pc, before, after in case["values"]:
        i = _insn_at(lm, int(pc, 16))
        if i.mnemonic in ("adrp", "adr"):
            assert before is None and i.operands[1].imm == int(after, 16), (pc, i.mnemonic, i.op_str)
        else:
            assert i.mnemonic in ("add", "mov"), (pc, i.mnemonic)
            imm = _imm(i.operands[2]) if i.mnemonic == "add" else 0
            assert int(before, 16) + imm == int(after, 16), (pc, i.mnemonic, i.op_str)
    assert any(i.mnemonic == "add" for i in (_insn_at(lm, int(v[0], 16)) for v in case["values"]))


# ---------------------------------------------------------------- misc
def test_big_endian_modules_are_claimed_with_le_instructions() -> None:
    spec = a64.klp_arch_identify(183, 2, "big", 0)
    assert spec is not None and spec.byteorder == "big" and spec.insn_order == "little"
    assert a64.klp_arch_identify(62, 2, "little", 0) is None


def test_missing_plt_sections_refused(tmp_path: Path) -> None:
    data = bytearray((FIX / "all_types.o").read_bytes())
    idx = data.find(b".init.plt\0")
    assert idx > 0
    data[idx : idx + 9] = b".init.plx"
    (tmp_path / "all_types.o").write_bytes(data)
    with pytest.raises(ElfFormatError) as ei:
        load(str(tmp_path / "all_types.o"))
    assert ei.value.diagnostics[0].kernel_message == "all_types: module PLT section(s) missing"


def test_conformance_suite_catches_gaps() -> None:
    """The suite fails a plugin whose tests leave a type or a limit side out."""
    gaps = conformance_tests(
        plugin="arm64",
        module=FIX / "all_types.o",
        symbols=FIX / "kernel.map",
        byte_tested=lambda: byte_tested() - {"R_AARCH64_PREL16"},
        range_cases=lambda: [c for c in range_cases() if c != ("R_AARCH64_ABS16", REFUSED)],
        unsupported=[283],
        kernel="6.1",
    )()
    with pytest.raises(AssertionError, match="R_AARCH64_PREL16"):
        gaps.test_every_type_has_a_byte_test()
    with pytest.raises(AssertionError, match="R_AARCH64_ABS16"):
        gaps.test_every_range_has_both_sides()
    with pytest.raises(AssertionError, match="283 is in the plugin's table"):
        gaps.test_unsupported_types_are_errors_naming_the_type()


def _config(text: str):
    from klpcore.config import KernelConfig

    return KernelConfig.from_text(text)


@pytest.mark.parametrize(
    ("line", "page"), [("", 4096), ("CONFIG_ARM64_16K_PAGES=y", 16384), ("CONFIG_ARM64_64K_PAGES=y", 65536)]
)
def test_page_size_from_config(line: str, page: int) -> None:
    cfg = _config(f"CONFIG_ARM64=y\nCONFIG_STRICT_MODULE_RWX=y\nCONFIG_ARCH_HAS_STRICT_MODULE_RWX=y\n{line}\n")
    assert a64.klp_arch_page_size(KernelTarget(config=cfg)) == page
    lm = Loader(get_plugin_manager(), kernel=KernelTarget((6, 1), config=cfg, options=NO_ERRATUM)).load(
        str(FIX / "mod_calls.o"), load_symbols(SYMS), BASE
    )
    starts = sorted(r.address for r in lm.module.layout.regions.values() if r.size)
    assert len(starts) >= 3 and starts[0] == BASE
    assert all(a % page == 0 for a in starts)
    assert starts[1] - starts[0] == page  # text fits one page of any size
    assert a64.klp_arch_page_size(KernelTarget()) == 4096


def test_erratum_from_config() -> None:
    """CONFIG_ARM64_ERRATUM_843419 off in the config: no workaround whatever the CPU."""
    cfg = _config("CONFIG_ARM64=y\n# CONFIG_ARM64_ERRATUM_843419 is not set\nCONFIG_RANDOMIZE_BASE=y\n")
    lm = Loader(get_plugin_manager(), kernel=KernelTarget((6, 1), config=cfg)).load(
        str(FIX / "erratum.o"), load_symbols(SYMS), BASE
    )
    _, tb, tbytes = section(lm, ".text")
    assert [i.mnemonic for i in disasm(tbytes[0xFF8:0x1000], tb + 0xFF8)] == ["adrp", "adrp"]
    assert a64.klp_arch_config_default("LIVEPATCH", KernelTarget((6, 16))) == "n"
    assert a64.klp_arch_config_default("LIVEPATCH", KernelTarget((6, 17))) == "y"
    assert a64.klp_arch_config_default("ARM64_ERRATUM_843419", KernelTarget()) == "y"


@pytest.mark.parametrize("obj", ["plt_calls.o", "erratum.o"])
def test_batch_equals_entry_by_entry(obj: str, monkeypatch) -> None:
    """The array-shaped batch writes exactly what the per-entry handler writes."""

    def image(lm) -> dict[str, bytes]:
        return {s.name: lm.section_bytes(s.index) for s in lm.module.sections if lm.section_address(s.index)}

    batch = image(load(obj))
    monkeypatch.setattr(plt, "sequential_batch", None)
    single = load(obj)
    assert all(t.batch is None for t in single.module.arch.types.values())
    assert image(single) == batch


def test_shipped_example(tmp_path: Path) -> None:
    from klpcore.cli import main

    (ex,) = a64.klp_arch_examples()
    out = tmp_path / "demo.ko"
    assert main(["apply", "--example", "arm64", "-o", str(out), "-q"]) == 0
    # every fact the plugin reads can be given on the command line
    for key, value in (
        ("erratum_843419", "false"),
        ("randomize_base", "true"),
        ("ftrace_caller", "0xffff800008000000"),
    ):
        assert main(["apply", "--example", "arm64", "-q", "-O", f"{key}={value}"]) == 0, key
    lm = Loader(get_plugin_manager()).load(str(ex.module), load_symbols(str(ex.symbols[0])), ex.base)
    assert lm.module.klp.is_livepatch and [o for o in lm.module.klp.objects] == ["vmlinux"]
    _, pbase, pbytes = section(lm, ".plt")
    assert {KSYMS["far_a"], KSYMS["far_b"]} <= set(plt_targets(pbytes, pbase))
    # .klp.rela sections are sized like the others: .rela.text (ext_add, local_fn, far_c: 3 + 1 spare)
    # and .klp.rela.vmlinux..text (far_a twice, far_b, far_b+8: 3 + 1 spare), plus one slot
    assert lm.module.section_by_name(".plt").size == (4 + 4 + 1) * 12
    klp = lm.module.section_by_name(".klp.rela.vmlinux..text")
    rel = lm.module.elf.relas(klp.index)
    keys = [(int(i) >> 32, int(a)) for i, a in zip(rel["r_info"].tolist(), rel["r_addend"].tolist(), strict=True)]
    assert keys == sorted(keys[:-1]) + keys[-1:]  # every entry needs a PLT: the last is left out of the sort


# ------------------------------------------- arrays against the kernel's C, value by value
def _kernel_reference(row, S: int, A: int, P: int, insn: int) -> tuple[int, bool]:
    """apply_relocate_add for one entry, transcribed from module.c: (new field, -ERANGE)."""
    val = (S + A) & MASK64
    if row.op == "ABS":
        v = val
    elif row.op == "PREL":
        v = (val - P) & MASK64
    else:
        v = ((val & ~0xFFF) - (P & ~0xFFF)) & MASK64
    sval = v - (1 << 64) if v >> 63 else v
    if row.helper == "data":
        bits = row.length
        field = v & ((1 << bits) - 1)
        if bits == 64:
            return field, False
        if row.op == "ABS":
            return field, not 0 <= sval <= (1 << bits) - 1
        return field, not -(1 << (bits - 1)) <= sval <= (1 << (bits - 1)) - 1
    if row.helper == "movw":
        imm = (sval >> row.lsb) & MASK64
        if row.movnz:
            insn &= ~(3 << 29)
            if sval >= 0:
                insn |= 2 << 29
            else:
                imm = ~imm & MASK64
        new = insn if insn == types.BREAK_FAULT else (insn & ~(0xFFFF << 5)) | ((imm & 0xFFFF) << 5)
        return new, imm > 0xFFFF
    sh = sval >> row.lsb
    imm = sh & (((1 << (row.lsb + row.length)) - 1) >> row.lsb)
    if insn == types.BREAK_FAULT:
        new = insn
    elif row.imm == "IMM_ADR":
        new = (insn & ~((3 << 29) | (0x7FFFF << 5))) | ((imm & 3) << 29) | (((imm >> 2) & 0x7FFFF) << 5)
    else:
        m, s = {"IMM_26": (0x3FFFFFF, 0), "IMM_19": (0x7FFFF, 5), "IMM_14": (0x3FFF, 5), "IMM_12": (0xFFF, 10)}[row.imm]
        new = (insn & ~(m << s)) | ((imm & m) << s)
    upper = (sh & ~(((1 << (row.lsb + row.length)) - 1) >> row.lsb >> 1)) >> (row.length - 1)
    return new & 0xFFFFFFFF, (upper + 1) & MASK64 >= 2


ROWS = [r for r in types.TABLE if r.helper != "none"]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(ROWS),
    st.integers(0, MASK64),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.integers(0, MASK64 >> 2).map(lambda p: p << 2),
    st.one_of(st.integers(0, 0xFFFFFFFF), st.just(types.BREAK_FAULT)),
    st.one_of(st.none(), st.sampled_from([-1, 1, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 1 << 20, 1 << 27, 1 << 32, 1 << 48])),
)
def test_array_encoders_equal_the_kernels_c(row, S, A, P, insn, near) -> None:
    """Every type's array compute/check/encode against a value-by-value transcription of the kernel's C."""
    if near is not None:  # values right around the limits: S + A - P (or S + A) = +-near
        S = ((P if row.op != "ABS" else 0) + near - A) & MASK64
    rt = {t.number: t for t in a64.reloc_types(KernelTarget((6, 1)))}[row.number]

    class Ctx:
        group = np.array([0])
        target_address = P
        relas = np.zeros(1, dtype=[("r_offset", "<u8"), ("r_info", "<u8"), ("r_addend", "<i8")])

    ctx = Ctx()
    val = rt.compute(np.array([S], np.uint64), np.array([A], np.int64), np.array([P], np.uint64), ctx)
    old = np.array([insn & ((1 << (8 * rt.width)) - 1) if row.helper == "data" else insn], np.uint64)
    new = int(rt.encode(val, old, ctx)[0])
    bad = bool(rt.check(val, ctx)[0]) if rt.check is not None else False
    ref_new, ref_range = _kernel_reference(row, S, A, P, int(old[0]))
    assert new == ref_new
    assert bad == (ref_range and row.overflow_check)


def test_module_base_from_the_target_symbols() -> None:
    """Without KASLR, 6.5+ puts modules right below the image end (module_direct_base = _end - 128 MiB:
    Debian 7.2 arm64 booted with nokaslr loaded its first module at 0xffff80007af00000 with _end at
    0xffff800082f00000); before 6.5, module_alloc_base = _etext - 128 MiB."""
    import klpcore_arm64 as a64

    from klpcore.plugins import arch_spec

    spec = arch_spec(get_plugin_manager(), 183, 2, "little", 0)
    assert spec is not None
    syms = {"_end": 0xFFFF800082F00000, "_etext": 0xFFFF8000812C0000}
    new = a64.klp_arch_module_base(spec, KernelTarget((6, 5)), syms.get)
    old = a64.klp_arch_module_base(spec, KernelTarget((6, 4)), syms.get)
    assert new == 0xFFFF80007AF00000
    assert old == 0xFFFF8000792C0000
    assert a64.klp_arch_module_base(spec, KernelTarget((7, 2)), {}.get) is None
