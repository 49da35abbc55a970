"""The relocation engine, memory model, layout and livepatch phases, on the toy arch."""

from __future__ import annotations

import dataclasses
import struct

import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import (
    KernelTarget,
    Loader,
    MemoryAccessError,
    MemType,
    ModuleState,
    NoPluginError,
    Perm,
    RelocationError,
    ResolutionError,
    get_plugin_manager,
    parse_symbol_text,
)
from klpcore import constants as C
from klpcore.elf import ElfModule
from klpcore.layout import layout_sections
from klpcore.testing.klpify import KlpSym, klpify

TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR
DATA = C.SHF_ALLOC | C.SHF_WRITE
BASE = 0xFFFFFFFFC0000000
SYMS = """\
ffffffff81000000 T printk
ffffffff82000000 r __ksymtab_printk
ffffffff81000100 t secret
ffffffff81000200 t dup
ffffffff81000300 t dup
ffffffff81000500 T internal_fn
"""


def symbols(extra: str = ""):
    return parse_symbol_text(SYMS + extra)


def module(relas, endian="<", text_size=64, **kw) -> bytes:
    return Obj(
        endian=endian,
        sections=[
            Sec(".text", flags=TEXT, data=bytes(text_size), align=16),
            Sec(".data", flags=DATA, data=bytes(32), align=8),
        ],
        symbols=[Sym("printk"), Sym("local_fn", ".text", 0x10, bind=C.STB_LOCAL, type=C.STT_FUNC)],
        relas=relas,
        modinfo={"name": "toymod"},
        **kw,
    ).build()


@pytest.mark.parametrize("endian", ["<", ">"])
def test_values_and_byte_order(toy_loader, endian) -> None:
    data = module(
        [
            Rela(".text", 0, T.PREL32, "printk", -4),
            Rela(".text", 8, T.ABS64, "local_fn", 2),
            Rela(".data", 0, T.ABS64, "local_fn", 0),
            Rela(".text", 4, T.NONE, "printk", 0),
        ],
        endian,
    )
    lm = toy_loader.load(data, symbols(), BASE)
    text = lm.section_bytes(lm.module.section_by_name(".text").index)
    e = endian
    P = BASE
    S = 0xFFFFFFFF81000000
    assert struct.unpack_from(e + "I", text, 0)[0] == (S - 4 - P) & 0xFFFFFFFF
    assert struct.unpack_from(e + "Q", text, 8)[0] == BASE + 0x10 + 2
    assert text[4:8] == bytes(4)  # NONE writes nothing
    d = lm.section_bytes(lm.module.section_by_name(".data").index)
    assert struct.unpack_from(e + "Q", d, 0)[0] == BASE + 0x10


def test_overflow_error_names_everything_and_writes_nothing(toy_loader) -> None:
    data = module([Rela(".text", 0, T.ABS64, "printk", 0), Rela(".text", 8, T.ABS32, "printk", 0)])
    with pytest.raises(RelocationError) as ei:
        toy_loader.load(data, symbols(), BASE)
    (d,) = ei.value.diagnostics
    assert (d.module, d.section, d.index, d.rtype, d.symbol) == ("toymod", ".rela.text", 1, "R_TOY_ABS32", "printk")
    assert d.kernel_message == "toymod: ovf ffffffff81000000"


def test_all_or_nothing_image_unchanged(toy_pm) -> None:
    """A failing phase leaves every byte as it was, including good relocations."""
    data = module([Rela(".text", 0, T.ABS64, "printk", 0), Rela(".data", 0, T.ABS32, "printk", 0)])
    loader = Loader(toy_pm)
    mod = loader.open(data)
    loader.prepare(mod, BASE)
    image = loader._image(mod)
    before = {r.address: image.backend.read(r.address, r.size) for r in image.regions}
    from klpcore.loader import LoadedModule

    lm = LoadedModule(loader, mod, image, symbols())
    assert lm._simplify_symbols() == []
    with pytest.raises(RelocationError):
        lm._run_phase("load", lm._load_sections())
    after = {r.address: image.backend.read(r.address, r.size) for r in image.regions}
    assert before == after
    assert image.log == []


def test_unsupported_types_reported_together(toy_loader) -> None:
    data = module(
        [
            Rela(".text", 0, 99, "printk"),
            Rela(".text", 4, 98, "printk"),
            Rela(".text", 8, 99, "printk"),
            Rela(".data", 0, 97, "printk"),
        ]
    )
    with pytest.raises(RelocationError) as ei:
        toy_loader.load(data, symbols(), BASE)
    msgs = sorted((d.section, d.rtype, d.extra.get("count")) for d in ei.value.diagnostics)
    assert msgs == [(".rela.data", "type 97", 1), (".rela.text", "R_TOY_UNKNOWN", 2), (".rela.text", "type 98", 1)]
    k = {d.rtype: d.kernel_message for d in ei.value.diagnostics}
    assert k["R_TOY_UNKNOWN"] == "toymod: Unknown toy relocation: 99"


def test_write_outside_section(toy_loader) -> None:
    data = module([Rela(".text", 62, T.PREL32, "printk", 0)])
    with pytest.raises(RelocationError, match=r"writes 4 bytes at offset 0x3e, outside \.text \(size 0x40\)"):
        toy_loader.load(data, symbols(), BASE)


def test_target_already_written(toy_loader) -> None:
    obj = module([Rela(".text", 0, T.ZERO32, "printk", 0)])
    # put a nonzero byte in .text at offset 1
    lm_data = bytearray(obj)
    from klpcore import ElfModule

    off = ElfModule(obj).section_by_name(".text").offset
    lm_data[off + 1] = 7
    with pytest.raises(RelocationError) as ei:
        toy_loader.load(bytes(lm_data), symbols(), BASE)
    d = ei.value.diagnostics[0]
    assert "target already written: existing value 0x700 is nonzero" in d.message
    assert d.kernel_message == f"toymod: nonzero at {BASE:#x}"


def test_overlapping_writes_are_sequential(toy_loader) -> None:
    """Two relocations on the same place: the second sees the first's bytes."""
    data = module([Rela(".text", 0, T.ABS64, "printk", 0), Rela(".text", 0, T.ZERO32, "printk", 0)])
    with pytest.raises(RelocationError, match="target already written"):
        toy_loader.load(data, symbols(), BASE)


def test_handler_and_state_rollback(toy_pm) -> None:
    """A handler's state and writes are kept when its phase succeeds, and dropped, every one, when a later
    entry of the same phase fails: the state the failing phase built is not the module's, no byte changes."""
    loader = Loader(toy_pm)
    good = module([Rela(".text", 0, T.CALL, "printk", 1), Rela(".text", 4, T.CALL, "printk", 2)])
    lm = loader.load(good, symbols(), BASE)
    assert lm.module.arch_state["calls"] == 2
    text = lm.section_bytes(lm.module.section_by_name(".text").index)
    assert struct.unpack_from("<II", text, 0) == (0x81000001, 0x81000002)

    # the first CALL succeeds (counts, writes), the second refuses S == 0xdead: the phase fails
    dead = "000000000000dead T dead\nffffffff82000010 r __ksymtab_dead\n"
    bad = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(64), align=16)],
        symbols=[Sym("printk"), Sym("dead")],
        relas=[Rela(".text", 0, T.CALL, "printk", 1), Rela(".text", 4, T.CALL, "dead", 0)],
        modinfo={"name": "toymod"},
    ).build()
    mod = loader.open(bad)
    loader.prepare(mod, BASE)
    mod.arch_state["calls"] = 40  # what earlier phases left
    image = loader._image(mod)
    before = {r.address: image.backend.read(r.address, r.size) for r in image.regions}
    from klpcore.loader import LoadedModule

    failing = LoadedModule(loader, mod, image, symbols(dead))
    assert failing._simplify_symbols() == []
    with pytest.raises(RelocationError) as ei:
        failing._run_phase("load", failing._load_sections())
    assert [d.kernel_message for d in ei.value.diagnostics] == ["toymod: dead"]
    assert mod.arch_state == {"calls": 40}  # the first entry's count (41) is rolled back
    assert {r.address: image.backend.read(r.address, r.size) for r in image.regions} == before
    assert image.log == []
    assert failing.phases == []


def test_unknown_symbol_and_weak(toy_loader) -> None:
    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(16))],
        symbols=[Sym("missing"), Sym("internal_fn"), Sym("maybe", bind=C.STB_WEAK)],
        relas=[Rela(".text", 0, T.ABS64, "maybe")],
        modinfo={"name": "m"},
    ).build()
    with pytest.raises(ResolutionError) as ei:
        toy_loader.load(obj, symbols(), BASE)
    msgs = {d.symbol: d.message for d in ei.value.diagnostics}
    assert msgs["missing"] == "unknown symbol missing: not found in any symbol source"
    assert msgs["internal_fn"] == "unknown symbol internal_fn: defined in vmlinux but not exported"
    assert "maybe" not in msgs  # weak undefined becomes 0
    assert ei.value.diagnostics[0].kernel_message == "m: Unknown symbol missing (err -2)"


def test_no_plugin_for_machine(toy_loader) -> None:
    data = Obj(machine=0x1234, sections=[Sec(".text", flags=TEXT, data=b"x")]).build()
    with pytest.raises(NoPluginError, match="no installed plugin for machine 4660, little-endian; installed: "):
        toy_loader.load(data, symbols(), BASE)


def test_write_or_exec_refused(toy_loader) -> None:
    data = Obj(sections=[Sec(".text", flags=TEXT | C.SHF_WRITE, data=b"x")], modinfo={"name": "wx"}).build()
    with pytest.raises(Exception, match=r"invalid WRITE\|EXEC flags"):
        toy_loader.load(data, symbols(), BASE)


# ---------------------------------------------------------------- layout
def test_layout_memory_and_legacy() -> None:
    from klpcore.elf import Section

    def sec(i, name, flags, size, align):
        return Section(i, name, C.SHT_PROGBITS, flags, 0, 0, size, 0, 0, align, 0)

    secs = [
        sec(0, "", 0, 0, 0),
        sec(1, ".text", TEXT, 0x30, 16),
        sec(2, ".rodata", C.SHF_ALLOC, 0x11, 8),
        sec(3, ".data", DATA, 0x10, 8),
        sec(4, ".init.text", TEXT, 0x20, 16),
        sec(5, ".text.b", TEXT, 0x8, 32),
        sec(6, ".data..ro_after_init", DATA | C.SHF_RO_AFTER_INIT, 8, 8),
        sec(7, ".comment", 0, 10, 1),
        sec(8, ".note", C.SHF_ALLOC, 4, 4),
    ]
    # 6.4+: one vmalloc area per memory type, in enum order, each followed by a guard page
    # (Debian 6.12.117 ppp_synctty: DATA at text+0x2000, RODATA at text+0x4000)
    lay = layout_sections(secs, BASE, style="memory")
    a = {p.name: (p.memtype, p.address - BASE) for p in lay.placements.values()}
    assert a == {
        ".text": (MemType.TEXT, 0),
        ".text.b": (MemType.TEXT, 0x40),
        ".data": (MemType.DATA, 0x2000),
        ".rodata": (MemType.RODATA, 0x4000),
        ".note": (MemType.RODATA, 0x4014),
        ".data..ro_after_init": (MemType.RO_AFTER_INIT, 0x6000),
        ".init.text": (MemType.INIT_TEXT, 0x8000),
    }
    # no guard pages: the types back to back, still in enum order
    packed = layout_sections(secs, BASE, style="memory", guard_pages=False)
    assert [(p.name, p.address - BASE) for p in sorted(packed.placements.values(), key=lambda p: p.address)] == [
        (".text", 0),
        (".text.b", 0x40),
        (".data", 0x1000),
        (".rodata", 0x2000),
        (".note", 0x2014),
        (".data..ro_after_init", 0x3000),
        (".init.text", 0x4000),
    ]
    # x86's read-only-executable text cache (7.2 amd64): TEXT and INIT_TEXT packed at text_base,
    # the data types from base with guard pages
    cache = BASE + 0x100000
    rox = layout_sections(secs, BASE, style="memory", text_base=cache)
    assert {p.name: p.address for p in rox.placements.values()} == {
        ".text": cache,
        ".text.b": cache + 0x40,
        ".init.text": cache + 0x1000,
        ".data": BASE,
        ".rodata": BASE + 0x2000,
        ".note": BASE + 0x2014,
        ".data..ro_after_init": BASE + 0x4000,
    }
    leg = layout_sections(secs, BASE, style="legacy")
    b = {p.name: p.address - BASE for p in leg.placements.values()}
    assert b == {
        ".text": 0,
        ".text.b": 0x40,
        ".rodata": 0x1000,
        ".note": 0x1014,
        ".data..ro_after_init": 0x2000,
        ".data": 0x3000,
        ".init.text": 0x4000,
    }


# ------------------------------------------------------------ protection
def test_formation_permissions(toy_loader) -> None:
    lm = toy_loader.load(module([]), symbols(), BASE)
    perms = {r.memtype: r.perms for r in lm.image.regions}
    assert perms[MemType.TEXT] == Perm.R | Perm.X
    assert perms[MemType.DATA] == Perm.R | Perm.W
    assert lm.image.state == ModuleState.LIVE
    assert all(not r.memtype.is_init for r in lm.image.regions)


def change(address: int, data: bytes):
    from klpcore.memory import Change

    return Change(address, data, {None}, lambda: [(0, len(data), None)])


def test_late_write_to_readonly_faults_without_hook(toy_pm) -> None:
    from klpcore.memory import default_policy

    loader = Loader(toy_pm)
    lm = loader.load(module([]), symbols(), BASE)
    text = [r for r in lm.image.regions if r.memtype == MemType.TEXT][0]
    with pytest.raises(MemoryAccessError, match=r"would fault: the module is LIVE"):
        lm.image.commit([change(text.address, b"\x01")], default_policy, "late")
    assert lm.image.read(text.address, 1) == b"\x00"
    with pytest.raises(MemoryAccessError, match="outside the module image"):
        lm.image.commit([change(0x1000, b"\x01")], default_policy, "late")


class RecordingBackend:
    def __init__(self) -> None:
        from klpcore import BytesBackend

        self.inner = BytesBackend()
        self.writes: list[tuple[int, bytes]] = []

    def map(self, address: int, size: int) -> None:
        self.inner.map(address, size)

    def read(self, address: int, size: int) -> bytes:
        return self.inner.read(address, size)

    def write(self, address: int, data: bytes) -> None:
        self.writes.append((address, data))
        self.inner.write(address, data)


def test_custom_backend_sees_writes(toy_pm) -> None:
    backend = RecordingBackend()
    loader = Loader(toy_pm, backend=backend)
    lm = loader.load(module([Rela(".text", 8, T.ABS64, "printk", 0)]), symbols(), BASE)
    # only changed bytes are written: the field's low three bytes were and stay zero
    assert backend.writes == [(BASE + 11, b"\x81\xff\xff\xff\xff")]
    assert backend.read(BASE + 8, 8) == struct.pack("<Q", 0xFFFFFFFF81000000)
    assert lm.image.write_methods()["memcpy"] == 1


# ------------------------------------------------------------- livepatch
def patch_module(helper: KlpSym = KlpSym("ext4", 2), **kw) -> bytes:
    return T.toy_livepatch(helper=helper, **kw)


EXT4 = "ffffffffc1000000 t helper\t[ext4]\nffffffffc1000100 t helper\t[ext4]\n"


def test_klp_phases_newest(toy_loader) -> None:
    lm = toy_loader.load(patch_module(), symbols(), BASE)
    phases = {p.name: p.sections for p in lm.phases}
    assert phases == {"load": [".rela.text.fn", ".klp.rela.vmlinux..text.fn"]}
    assert lm.pending_objects == ["ext4"]
    # ext4 loads later: its sections are applied then, through the hook's write method
    res = lm.coming("ext4", parse_symbol_text(EXT4))
    assert res.sections == [".klp.rela.ext4..text.fn"]
    text = lm.section_bytes(lm.module.section_by_name(".text.fn").index)
    assert struct.unpack_from("<I", text, 8)[0] == 0x81000100
    assert struct.unpack_from("<I", text, 16)[0] == 0xC1000100  # sympos 2
    assert lm.write_log[-1].method == "toy_poke"
    assert lm.going("ext4") is not None  # default clear does nothing
    assert struct.unpack_from("<I", lm.section_bytes(lm.module.section_by_name(".text.fn").index), 16)[0] == 0xC1000100


def test_klp_vmlinux_at_enable_before_5_8(toy_pm) -> None:
    lm = Loader(toy_pm, kernel=KernelTarget((5, 4))).load(patch_module(), symbols(EXT4), BASE)
    phases = {p.name: p.sections for p in lm.phases}
    assert phases["load"] == [".rela.text.fn"]
    assert phases["enable"] == [".klp.rela.vmlinux..text.fn", ".klp.rela.ext4..text.fn"]


def test_klp_errors_name_symbol(toy_loader) -> None:
    syms = symbols("ffffffff81000400 t secret\n")  # now ambiguous
    with pytest.raises(RelocationError) as ei:
        toy_loader.load(patch_module(), syms, BASE)
    d = ei.value.diagnostics[0]
    assert d.section == ".klp.rela.vmlinux..text.fn" and d.symbol == ".klp.sym.vmlinux.secret,0"
    assert d.kernel_message == "unresolvable ambiguity for symbol 'secret' in object '(null)'"


def test_module_section_may_not_use_vmlinux_symbol(toy_loader) -> None:
    base = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(16))],
        symbols=[Sym(".klp.sym.vmlinux.secret,0", C.SHN_LIVEPATCH)],
        relas=[Rela(".text", 0, T.CALL, ".klp.sym.vmlinux.secret,0")],
        rela_names={".text": ".klp.rela.ext4..text"},
        rela_flags={".klp.rela.ext4..text": C.SHF_RELA_LIVEPATCH | C.SHF_ALLOC},
        modinfo={"name": "lp", "livepatch": "Y"},
    ).build()
    with pytest.raises(RelocationError) as ei:
        toy_loader.load(base, symbols(EXT4), BASE)
    assert ei.value.diagnostics[0].kernel_message == (
        "invalid access to vmlinux symbol 'secret' from module-specific livepatch relocation section"
    )


def test_not_a_livepatch_symbol(toy_loader) -> None:
    base = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(16))],
        symbols=[Sym("printk")],
        relas=[Rela(".text", 0, T.CALL, "printk")],
        rela_names={".text": ".klp.rela.vmlinux..text"},
        rela_flags={".klp.rela.vmlinux..text": C.SHF_RELA_LIVEPATCH | C.SHF_ALLOC},
        modinfo={"name": "lp", "livepatch": "Y"},
    ).build()
    symtab = ElfModule(base).symtab_index
    for version in ((6, 19), None):  # the first release with reloc_messages_sec_idx, and the newest
        with pytest.raises(RelocationError) as ei:
            Loader(toy_loader.pm, kernel=KernelTarget(version) if version else None).load(base, symbols(), BASE)
        # 6.19+ names the "rela sec" with the symbol table's index, as klp_resolve_symbols passes symndx
        assert ei.value.diagnostics[0].kernel_message == (
            f"symbol printk at rela sec {symtab} idx 0 is not marked as a livepatch symbol"
        )
    with pytest.raises(RelocationError) as ei:
        Loader(toy_loader.pm, kernel=KernelTarget((6, 18))).load(base, symbols(), BASE)
    assert ei.value.diagnostics[0].kernel_message == "symbol printk is not marked as a livepatch symbol"


def test_rfc_format_applied_at_enable(toy_loader) -> None:
    ext4 = "ffffffffc1000000 t helper\t[ext4]\n"
    rfc_era = Loader(toy_loader.pm, kernel=KernelTarget((4, 4)))
    lm = rfc_era.load(patch_module(KlpSym("ext4"), fmt="rfc"), symbols(ext4), BASE)
    phases = {p.name: p.sections for p in lm.phases}
    assert phases["load"] == [".rela.text.fn"]
    assert phases["enable"] == ["__klp_rela_vmlinux.text.fn", "__klp_rela_ext4.text.fn"]
    text = lm.section_bytes(lm.module.section_by_name(".text.fn").index)
    assert struct.unpack_from("<II", text, 8)[0] == 0x81000100
    assert struct.unpack_from("<I", text, 16)[0] == 0xC1000000
    enable = [w for w in lm.write_log if w.phase == "enable"]
    assert enable and {w.method for w in enable} == {"toy_poke"}


def test_coming_vmlinux_refused(toy_loader) -> None:
    lm = toy_loader.load(patch_module(), symbols(), BASE)
    with pytest.raises(Exception, match="vmlinux.ko: invalid module name"):
        lm.coming("vmlinux")


def test_plugins_env_registers_module(monkeypatch) -> None:
    monkeypatch.setenv("KLPCORE_PLUGINS", "toyarch")
    monkeypatch.setenv("KLPCORE_LOAD_PLUGINS", "")
    pm = get_plugin_manager()
    assert pm.get_plugin("toyarch") is not None


def test_percpu_relocations_by_version(toy_pm) -> None:
    """6.1 skips relocations into .data..percpu; the newest kernel applies them
    to the percpu copy; symbols in it get the percpu base."""
    obj = Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(16)),
            Sec(".data..percpu", flags=DATA, data=bytes(16), align=8),
        ],
        symbols=[Sym("printk"), Sym("pcpu_var", ".data..percpu", 8, bind=C.STB_LOCAL, type=C.STT_OBJECT)],
        relas=[Rela(".data..percpu", 0, T.ABS64, "printk", 0), Rela(".text", 0, T.ABS64, "pcpu_var", 0)],
        modinfo={"name": "pcpu"},
    ).build()
    new = Loader(toy_pm, percpu_base=0xFFFFFFFFA0000000).load(obj, symbols(), BASE)
    old = Loader(toy_pm, kernel=KernelTarget((6, 1)), percpu_base=0xFFFFFFFFA0000000).load(obj, symbols(), BASE)
    idx = new.module.section_by_name(".data..percpu").index
    tidx = new.module.section_by_name(".text").index
    assert struct.unpack_from("<Q", new.section_bytes(idx), 0)[0] == 0xFFFFFFFF81000000
    assert old.section_bytes(idx)[:8] == bytes(8)
    for lm in (new, old):
        assert struct.unpack_from("<Q", lm.section_bytes(tidx), 0)[0] == 0xFFFFFFFFA0000008


def test_huge_nobits_section_refused(toy_loader) -> None:
    obj = Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(16)),
            Sec(".bss", type=C.SHT_NOBITS, flags=DATA, size=1 << 50, align=8),
        ],
        modinfo={"name": "huge"},
    ).build()
    with pytest.raises(
        Exception,
        # TEXT 1 page + DATA (.bss and the kallsyms copy) 0x4000000001000 + INIT_DATA (.symtab copy) 1 page
        match=r"would need 0x4000000003000 bytes of module memory .* section \.bss has sh_size 0x4000000000000",
    ):
        toy_loader.load(obj, symbols(), BASE)


def test_plain_write_never_rides_along_hinted_write(toy_loader) -> None:
    """Late phase: a hinted (poke) write is allowed into read-only text, a plain
    store 2 bytes away is not, and is not merged into the poke."""
    base = Obj(
        sections=[Sec(".text.fn", flags=TEXT, data=bytes(32), align=16)],
        symbols=[Sym("helper")],
        relas=[Rela(".text.fn", 8, T.CALL, "helper", 0), Rela(".text.fn", 14, T.PREL32, "helper", 0)],
        modinfo={"name": "lp"},
    ).build()
    klp = klpify(base, {"helper": KlpSym("ext4")})
    lm = toy_loader.load(klp, symbols(), BASE)
    with pytest.raises(RelocationError) as ei:
        lm.coming("ext4", parse_symbol_text("ffffffffc1000000 t helper\t[ext4]\n"))
    d, note = ei.value.diagnostics
    # what the kernel keeps of the failing patch (it writes entry by entry; D6)
    assert note.severity == "warning"
    assert "the first 1 relocation(s) of .klp.rela.ext4..text.fn" in note.message
    assert (d.section, d.index, d.rtype, d.symbol) == (
        ".klp.rela.ext4..text.fn",
        1,
        "R_TOY_PREL32",
        ".klp.sym.ext4.helper,0",
    )
    assert "late write into MOD_TEXT (r-x) while the module is LIVE" in d.message
    assert d.kernel_message == "Unable to handle kernel write to read-only memory"
    # nothing was written: the allowed poke is not committed either
    text = lm.module.section_by_name(".text.fn").index
    assert lm.section_bytes(text)[8:18] == bytes(10)


def test_failed_coming_names_what_the_kernel_leaves_behind(toy_loader, monkeypatch) -> None:
    """D6: klpcore stays all-or-nothing; the warning names the sections the
    kernel would already have applied to the patch module when it refuses, and,
    where the architecture refuses a place that is not zero (a type with
    ``require_zero``, as x86's apply_relocate_add does), that every later load
    of the object fails too."""
    base = Obj(
        sections=[Sec(".text.a", flags=TEXT, data=bytes(16), align=16), Sec(".text.b", flags=TEXT, data=bytes(16))],
        symbols=[Sym("helper"), Sym("missing")],
        relas=[Rela(".text.a", 0, T.CALL, "helper", 0), Rela(".text.b", 0, T.CALL, "missing", 0)],
        modinfo={"name": "lp"},
    ).build()
    klp = klpify(base, {"helper": KlpSym("ext4"), "missing": KlpSym("ext4")})
    lm = toy_loader.load(klp, symbols(), BASE)
    with pytest.raises(RelocationError) as ei:
        lm.coming("ext4", parse_symbol_text("ffffffffc1000000 t helper\t[ext4]\n"))
    note = ei.value.diagnostics[-1]
    assert note.severity == "warning"
    assert "leave behind in lp: .klp.rela.ext4..text.a applied completely" in note.message
    assert "'ext4' is refused" in note.message
    later = "every later load of 'ext4' fails at the first already-written place"
    assert later in note.message  # the toy's R_TOY_ZERO32 refuses a nonzero place
    text = lm.section_bytes(lm.module.section_by_name(".text.a").index)
    assert text[:4] == bytes(4)  # klpcore itself wrote nothing

    # the same patch on an architecture none of whose types refuses a nonzero place: no such sentence
    arch = lm.module.arch
    monkeypatch.setattr(arch, "types", {n: dataclasses.replace(t, require_zero=False) for n, t in arch.types.items()})
    with pytest.raises(RelocationError) as ei:
        lm.coming("ext4", parse_symbol_text("ffffffffc1000000 t helper\t[ext4]\n"))
    note = ei.value.diagnostics[-1]
    assert "leave behind in lp: .klp.rela.ext4..text.a applied completely" in note.message
    assert later not in note.message


def test_klp_object_order_option(toy_loader) -> None:
    """D11: the kernel initialises objects in klp_object array order (C data);
    -O klp_object_order gives it, else a warning says the order is assumed."""
    base = Obj(
        sections=[Sec(".text.a", flags=TEXT, data=bytes(16), align=16), Sec(".text.b", flags=TEXT, data=bytes(16))],
        symbols=[Sym("fa"), Sym("fb")],
        relas=[Rela(".text.a", 0, T.CALL, "fa", 0), Rela(".text.b", 0, T.CALL, "fb", 0)],
        modinfo={"name": "lp"},
    ).build()
    klp = klpify(base, {"fa": KlpSym("moda"), "fb": KlpSym("modb")})
    syms = "ffffffffc1000000 t fa\t[moda]\nffffffffc2000000 t fb\t[modb]\n"
    lm = toy_loader.load(klp, symbols(syms), BASE)
    enable = next(p for p in lm.phases if p.name == "enable")
    assert enable.sections == [".klp.rela.moda..text.a", ".klp.rela.modb..text.b"]
    assert any("klp_object_order=moda,modb" in w.message for w in lm.warnings)
    k = KernelTarget(options={"klp_object_order": "modb,moda"})
    lm = Loader(toy_loader.pm, kernel=k).load(klp, symbols(syms), BASE)
    enable = next(p for p in lm.phases if p.name == "enable")
    assert enable.sections == [".klp.rela.modb..text.b", ".klp.rela.moda..text.a"]
    assert not any("klp_object_order" in w.message for w in lm.warnings)


def test_klp_section_for_a_non_loaded_target_warns(toy_loader) -> None:
    """D9: klp_write_object_relocs applies a section whatever its target's flags
    (writing into the freed load copy); klpcore skips it and says so, once."""
    name = ".klp.rela.ext4..notes"
    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(8)), Sec(".notes", data=bytes(8))],
        symbols=[Sym(".klp.sym.ext4.helper,0", C.SHN_LIVEPATCH)],
        relas=[Rela(".notes", 0, T.ABS64, ".klp.sym.ext4.helper,0")],
        rela_names={".notes": name},
        rela_flags={name: C.SHF_RELA_LIVEPATCH | C.SHF_ALLOC},
        modinfo={"name": "lp", "livepatch": "Y"},
    ).build()
    lm = toy_loader.load(obj, symbols(), BASE)
    lm.coming("ext4", parse_symbol_text("ffffffffc1000000 t helper\t[ext4]\n"))
    lm.going("ext4")
    notes = [w for w in lm.warnings if "is not loaded (no SHF_ALLOC)" in w.message]
    assert len(notes) == 1 and notes[0].section == name
