"""x86_64: klpcore's bytes against GNU ld's, recorded beside the fixtures.

Each fixture object in ``fixtures/`` was compiled with kernel-module flags and
linked by GNU ld 2.40 at the addresses klpcore gives it (``fixtures/build.py``
regenerates everything; ``fixtures/README.md`` lists what each covers).  The
tests need no compiler or linker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from klpcore import KernelTarget, Loader, RelocationError, get_plugin_manager, load_symbols
from klpcore.convert.named import convert_named
from klpcore.testing.conformance import ACCEPTED, REFUSED, conformance_tests
from klpcore.testing.klpify import KlpSym, klpify
from klpcore.testing.ldrecord import assert_equals_ld

pytest.importorskip("klpcore_x86_64")

FIX = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIX / "manifest.json").read_text())
BASE = int(MANIFEST["base"], 16)


def cases(outcomes: set[str]) -> list[tuple[str, str, str]]:
    out = []
    for name, fx in MANIFEST["fixtures"].items():
        for variant, m in fx["maps"].items():
            if m["kernel"] in outcomes:
                out.append((name, variant, m["symbols"]))
    return out


def expected(name: str, variant: str) -> dict:
    p = FIX / "expected" / (f"{name}.json" if variant == "default" else f"{name}.{variant}.json")
    return json.loads(p.read_text())


@pytest.fixture(scope="module")
def loader() -> Loader:
    return Loader(get_plugin_manager())


def load(loader: Loader, obj: str | bytes, symfile: str, **kw):
    module = obj if isinstance(obj, bytes) else str(FIX / obj)
    return loader.load(module, load_symbols(str(FIX / symfile)), BASE, **kw)


@pytest.mark.parametrize(("name", "variant", "symfile"), cases({"ok", "ok-truncated"}))
def test_bytes_equal_gnu_ld(loader, name, variant, symfile) -> None:
    exp = expected(name, variant)
    lm = load(loader, MANIFEST["fixtures"][name]["object"], symfile)
    assert assert_equals_ld(lm, exp["sections"], label=f"{name}/{variant}: ") >= 1
    truncations = [w for w in lm.warnings if "truncated" in w.message]
    if MANIFEST["fixtures"][name]["maps"][variant]["kernel"] == "ok-truncated":
        assert truncations, "the kernel truncates silently; klpcore must warn"
        assert any("truncated to fit" in m for m in exp["ld_messages"]), "ld refuses what the kernel truncates"
    else:
        assert not truncations


def test_fixtures_cover_every_kernel_type() -> None:
    seen = set()
    for fx in MANIFEST["fixtures"].values():
        seen |= set(fx["relocation_types"])
    kernel_types = {
        "R_X86_64_NONE",
        "R_X86_64_64",
        "R_X86_64_PC32",
        "R_X86_64_PLT32",
        "R_X86_64_32",
        "R_X86_64_32S",
        "R_X86_64_PC64",
    }
    assert kernel_types <= seen


def _range_cases():
    outcomes = {"ok": ACCEPTED, "ok-truncated": ACCEPTED, "overflow": REFUSED}
    for name, fx in MANIFEST["fixtures"].items():
        for m in fx["maps"].values():
            if name.startswith("range_") and m["kernel"] in outcomes:
                yield from ((t, outcomes[m["kernel"]]) for t in fx["relocation_types"])


TestConformance = conformance_tests(
    plugin="x86_64",
    module=FIX / "mod_basic.o",
    symbols=FIX / "mod_basic.map",
    byte_tested=lambda: {
        t for n, _, _ in cases({"ok", "ok-truncated"}) for t in MANIFEST["fixtures"][n]["relocation_types"]
    },
    range_cases=_range_cases,
    unsupported=[12, 9],
)


def lm_relsec(name: str, section: str) -> int:
    from klpcore.elf import ElfModule

    elf = ElfModule.from_file(str(FIX / MANIFEST["fixtures"][name]["object"]))
    return next(s.index for s in elf.rela_sections() if section in (s.name, s.name[5:]))


@pytest.mark.parametrize(("name", "variant", "symfile"), cases({"overflow"}))
def test_overflow_refused_with_kernel_message(loader, name, variant, symfile) -> None:
    exp = expected(name, variant)
    assert any("truncated to fit" in m for m in exp["ld_messages"]), "ld agrees the value does not fit"
    with pytest.raises(RelocationError) as ei:
        load(loader, MANIFEST["fixtures"][name]["object"], symfile)
    diags = ei.value.diagnostics
    assert diags
    for d in diags:
        assert d.module == name and d.rtype in ("R_X86_64_32", "R_X86_64_32S")
        number = 10 if d.rtype == "R_X86_64_32" else 11
        first, second = d.kernel_message.split("\n")  # two pr_err lines, as the kernel prints them
        assert first.startswith(f"overflow in relocation type {number} val ")
        assert first.endswith(f" sec {lm_relsec(name, d.section)} idx {d.index}")  # 6.19+ (the newest) adds both
        assert second == f"`{name}' likely not compiled with -mcmodel=kernel"
        assert d.section and d.index is not None and d.symbol


def _sites(name: str) -> list[tuple[str, int]]:
    """(target section, offset) of every relocation of a fixture object."""
    from klpcore import ElfModule

    elf = ElfModule.from_file(str(FIX / MANIFEST["fixtures"][name]["object"]))
    return [
        (elf.sections[rs.info].name, int(off)) for rs in elf.rela_sections() for off in elf.relas(rs.index)["r_offset"]
    ]


@pytest.mark.parametrize(
    ("name", "lo_ok", "hi_ok", "lo_bad", "hi_bad"),
    [
        # R_X86_64_32: 0 <= S + A <= 0xffffffff; R_X86_64_32S: -2^31 <= S + A <= 2^31 - 1
        ("range_32", 0, 0xFFFFFFFF, -1, 0x100000000),
        ("range_32s", -(1 << 31), (1 << 31) - 1, -(1 << 31) - 1, 1 << 31),
    ],
)
def test_limits_exactly(loader, name, lo_ok, hi_ok, lo_bad, hi_bad) -> None:
    """Both sides of the 32 and 32S limits, by value: every relocation of the fixture sits exactly on the limit
    (its symbol file sets S so that S + A is the limit): at the limit each site holds the limit as a 32-bit
    field (and GNU ld's recorded byte agree); one past it every relocation is refused, its kernel message
    printing the 64-bit value S + A one past the limit."""
    sites = _sites(name)
    assert len(sites) == 4
    signed = name == "range_32s"
    for variant, want in (("ok_max", hi_ok), ("ok_min", lo_ok)):
        lm = load(loader, f"{name}.o", f"{name}.{variant}.map")
        ld = expected(name, variant)["sections"]
        for sname, off in sites:
            mine = lm.section_bytes(lm.module.section_by_name(sname).index)[off : off + 4]
            assert int.from_bytes(mine, "little", signed=signed) == want, (variant, sname, off)
            assert mine.hex() == ld[sname]["bytes"][2 * off : 2 * off + 8], (variant, sname, off)
    for variant, value in (("over_max", hi_bad), ("over_min", lo_bad)):
        with pytest.raises(RelocationError) as ei:
            load(loader, f"{name}.o", f"{name}.{variant}.map")
        vals = [re.search(r" val ([0-9a-f]+) ", d.kernel_message).group(1) for d in ei.value.diagnostics]
        assert vals == [f"{value & ((1 << 64) - 1):x}"] * len(sites), variant


def test_nonzero_target_refused(loader) -> None:
    with pytest.raises(RelocationError) as ei:
        load(loader, "reject_nonzero.o", "reject_nonzero.map")
    d = ei.value.diagnostics[0]
    assert "target already written" in d.message
    loc = int(d.extra.get("address", 0)) if "address" in d.extra else None
    # 6.19: section and index, unhashed %lx location
    assert re.fullmatch(
        r"x86/modules: Invalid relocation target, existing value is nonzero for sec \d+, idx 0, type 1, "
        r"loc ffffffffc[0-9a-f]{7}, val [0-9a-f]+",
        d.kernel_message,
    ), (d.kernel_message, loc)

    def message(version):
        with pytest.raises(RelocationError) as ei:
            Loader(get_plugin_manager(), kernel=KernelTarget(version)).load(
                str(FIX / "reject_nonzero.o"), load_symbols(str(FIX / "reject_nonzero.map")), BASE
            )
        return ei.value.diagnostics[0].kernel_message

    # 6.3-6.18: %p (printed as with no_hash_pointers: 16 digits, no 0x)
    assert re.fullmatch(
        r"x86/modules: Invalid relocation target, existing value is nonzero for type 1, "
        r"loc ffffffffc[0-9a-f]{7}, val [0-9a-f]+",
        message((6, 18)),
    )

    # the same message; only the location differs (6.4+: DATA after text's page and a guard page)
    def unlocated(text: str) -> str:
        return re.sub(r"loc [0-9a-f]+", "loc X", text)

    assert unlocated(message((6, 3))) == unlocated(message((6, 18)))
    # up to 6.2 it was "Skipping"
    assert message((6, 2)).startswith(
        "x86/modules: Skipping invalid relocation target, existing value is nonzero for type 1, loc ffffffffc"
    )


def test_unknown_type_refused(loader) -> None:
    with pytest.raises(RelocationError) as ei:
        load(loader, "reject_unknown.o", "reject_unknown.map")
    d = ei.value.diagnostics[0]
    assert d.rtype == "R_X86_64_16"
    assert d.kernel_message == "reject_unknown: Unknown rela relocation: 12"


# ---------------------------------------------------------------- livepatch
def klp_variant(fmt: str, style: str = "kpatch"):
    """mod_basic with its calls to `helper_*`-style externals turned into klp symbols."""
    from klpcore import ElfModule

    data = (FIX / "mod_basic.o").read_bytes()
    m = ElfModule(data)
    undefined = [
        n
        for i, n in enumerate(m.symbol_names)
        if i and int(m.symbols["st_shndx"][i]) == 0 and n and not n.startswith("__")
    ]
    chosen = undefined[:3]
    return data, klpify(data, {n: KlpSym("vmlinux") for n in chosen}, fmt=fmt, style=style), chosen


@pytest.mark.parametrize(("fmt", "style"), [("final", "kpatch"), ("final", "objtool"), ("rfc", "kpatch")])
def test_livepatch_module_equals_ordinary_link(loader, fmt, style) -> None:
    """A klp module made from mod_basic.o writes the bytes ld wrote for the ordinary object.

    The converted object resolves the chosen symbols as livepatch symbols (by
    name and position in vmlinux) instead of exports; the written bytes must be
    the same as GNU ld's for the original.
    """
    orig, klp, chosen = klp_variant(fmt, style)
    assert chosen
    exp = expected("mod_basic", "default")
    if fmt == "rfc":
        # only the 4.3/4.4-era RFC prototype kernel loads this format; its relocations into .init.text
        # need a kernel without module RO protection (CONFIG_DEBUG_SET_MODULE_RONX, see the next test)
        loader = Loader(get_plugin_manager(), kernel=KernelTarget((4, 4), strict_module_rwx=False))
    lm = loader.load(klp, load_symbols(str(FIX / "mod_basic.map")), BASE)
    if fmt == "rfc":  # 4.4 lays the module out as one allocation, not where ld's recording (6.4+) put it:
        # the ordinary object loaded by the same kernel is the reference (it equals ld at ld's addresses above)
        ref = loader.load(orig, load_symbols(str(FIX / "mod_basic.map")), BASE)
        exp = {
            "sections": {
                s.name: {"bytes": ref.section_bytes(s.index).hex()}
                for s in ref.module.sections
                if ref.section_address(s.index) is not None
            }
        }
    klp_phase = "load" if fmt == "final" else "enable"
    assert any(s.startswith((".klp.rela.vmlinux", "__klp_rela_vmlinux")) for p in lm.phases for s in p.sections)
    assert any(p.name == klp_phase for p in lm.phases)
    for sname, rec in exp["sections"].items():
        sec = lm.module.section_by_name(sname)
        if rec.get("not_loaded"):
            continue
        if sec.flags & 0x4 or sname in (".data", ".rodata", ".init.text"):
            assert lm.section_bytes(sec.index).hex() == rec["bytes"], sname


def test_rfc_era_protection_makes_only_core_text_writable() -> None:
    """The 2015 RFC wrapped its writes in set_memory_rw/ro of the core text only:
    with module RO protection a relocation into init text (or rodata) faults."""
    _, klp, _ = klp_variant("rfc", "kpatch")
    lm_loader = Loader(get_plugin_manager(), kernel=KernelTarget((4, 4)))
    with pytest.raises(RelocationError) as ei:
        lm_loader.load(klp, load_symbols(str(FIX / "mod_basic.map")), BASE)
    assert {d.section for d in ei.value.diagnostics} == {"__klp_rela_vmlinux.init.text"}
    assert all("MOD_INIT_TEXT (r-x)" in d.message for d in ei.value.diagnostics)


def test_livepatch_late_write_uses_text_poke(loader) -> None:
    """A module object's klp relocations are written after formation, via text_poke."""
    from klpcore import ElfModule, parse_symbol_text

    data = (FIX / "mod_basic.o").read_bytes()
    m = ElfModule(data)
    text_only = set()
    other = set()
    for s in m.rela_sections():
        syms = {m.symbol_names[int(i) >> 32] for i in m.relas(s.index)["r_info"]}
        (text_only if m.sections[s.info].name == ".text" else other).update(syms)
    chosen = sorted(n for n in text_only - other if n and int(m.symbols["st_shndx"][m.symbol_names.index(n)]) == 0)
    assert chosen
    klp = convert_named(data, {chosen[0]: KlpSym("ext4")}).data
    syms = load_symbols(str(FIX / "mod_basic.map"))
    lm = loader.load(klp, syms, BASE)
    assert lm.pending_objects == ["ext4"]
    lm.coming("ext4", parse_symbol_text(f"ffffffffc1000000 t {chosen[0]}\t[ext4]\n"))
    late = [w for w in lm.write_log if w.phase == "coming:ext4"]
    assert late and {w.method for w in late} == {"text_poke"}
    # Linux 6.3+ clears on unload; applying again afterwards succeeds (no nonzero refusal)
    lm.going("ext4")
    cleared = [w for w in lm.write_log if w.phase == "going:ext4"]
    assert cleared and all(w.method == "text_poke" for w in cleared)
    lm.coming("ext4")
    # Linux 6.1 does not clear: the second application hits the nonzero check
    old = Loader(get_plugin_manager(), kernel=KernelTarget((6, 1))).load(
        klp, load_symbols(str(FIX / "mod_basic.map")), BASE
    )
    old.coming("ext4", parse_symbol_text(f"ffffffffc1000000 t {chosen[0]}\t[ext4]\n"))
    old.going("ext4")
    with pytest.raises(RelocationError, match="target already written"):
        old.coming("ext4")


def test_pc32_truncation_is_kernel_bytes(loader) -> None:
    """Out-of-range PC32: the kernel writes the low 32 bits; klpcore too (and warns)."""
    lm = load(loader, "range_pc32_ext.o", "range_pc32_ext.over_max.map")
    exp = expected("range_pc32_ext", "over_max")
    text = lm.module.section_by_name(".text")
    mine = lm.section_bytes(text.index)
    assert mine.hex() == exp["sections"][".text"]["bytes"]
    # by hand: every site's S + A - P is 0x80000000 (one past the signed limit); its low 32 bits are written
    sites = _sites("range_pc32_ext")
    assert len(sites) == 4 and {s for s, _ in sites} == {".text"}
    for _, off in sites:
        assert mine[off : off + 4] == (0x80000000).to_bytes(4, "little"), off
    warned = sorted(w.index for w in lm.warnings if w.message.startswith("value 0x80000000 does not fit"))
    assert warned == [0, 1, 2, 3]  # one warning per truncated relocation


def test_disasm_decodes_sites_and_targets(capsys) -> None:
    """capstone decodes the written call: it reaches the resolved symbol."""
    from klpcore.cli import main

    ex = Path(__import__("klpcore_x86_64").__file__).parent / "examples"
    assert main(["disasm", str(ex / "klpdemo.ko"), "-s", str(ex / "System.map"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rules = report["kernel_rules"]
    assert rules["version"] == "6.1" and rules["version_source"].startswith("vermagic 6.1.")
    sites = report["sites"]
    assert [int(s["address"], 16) for s in sites] == sorted(int(s["address"], 16) for s in sites)
    thunk = [s for s in sites if s["symbol"] == "__x86_indirect_thunk_rax"]
    assert thunk
    symaddr = next(
        int(line.split()[0], 16)
        for line in (ex / "System.map").read_text().splitlines()
        if line.endswith(" __x86_indirect_thunk_rax")
    )
    for s in thunk:
        assert s["target"] == hex(symaddr)
        assert s["target_symbol"] == "__x86_indirect_thunk_rax"
        assert s["after"].split()[1] in ("call", "jmp")
    assert all(s["before"] != s["after"] for s in sites if s["type"] != "R_X86_64_NONE")
