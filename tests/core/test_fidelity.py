"""Kernel config, page size, init/percpu placement and version-keyed core
behaviour, each boundary tested on both sides (toy architecture)."""

from __future__ import annotations

import gzip
import struct

import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import KernelTarget, Loader, MemType, get_plugin_manager, parse_symbol_text
from klpcore import constants as C
from klpcore.config import ConfigError, KernelConfig
from klpcore.errors import InputError, KlpError
from klpcore.hookspecs import hookimpl
from klpcore.kernel import config_setting, page_size_setting
from klpcore.layout import layout_sections

TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR
DATA = C.SHF_ALLOC | C.SHF_WRITE
RO = C.SHF_ALLOC
BASE = 0xFFFFFFFFC0000000
SYMS = "ffffffff81000000 T printk\nffffffff82000000 r __ksymtab_printk\n"

CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
# Linux/powerpc 6.1.176 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
CONFIG_PPC_64K_PAGES=y
# CONFIG_PPC_4K_PAGES is not set
CONFIG_LOG_BUF_SHIFT=18
CONFIG_ILLEGAL_POINTER_VALUE=0x5deadbeef0000000
CONFIG_EXT4_FS=m
"""


# ------------------------------------------------------------------ config
def test_config_values() -> None:
    cfg = KernelConfig.from_text(CONFIG)
    assert cfg.get("PPC_64K_PAGES") == cfg.get("CONFIG_PPC_64K_PAGES") == "y"
    assert cfg.get("PPC_4K_PAGES") == "n" and not cfg.enabled("PPC_4K_PAGES")
    assert cfg.enabled("EXT4_FS") and cfg.get("EXT4_FS") == "m"
    assert cfg.get("CC_VERSION_TEXT") == "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
    assert cfg.integer("LOG_BUF_SHIFT") == 18 and cfg.integer("ILLEGAL_POINTER_VALUE") == 0x5DEADBEEF0000000
    assert cfg.get("NOT_THERE") is None and not cfg.enabled("NOT_THERE")
    assert cfg.release == "6.1.176"


def test_config_gzip_and_plain_files(tmp_path) -> None:
    plain = tmp_path / "config"
    plain.write_text(CONFIG)
    gz = tmp_path / "config.gz"
    gz.write_bytes(gzip.compress(CONFIG.encode()))
    assert KernelConfig.from_file(plain).values == KernelConfig.from_file(gz).values
    assert KernelConfig.from_file(gz).source == str(gz)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x7fELF\x02\x01\x01" + bytes(60), "not text"),
        (b"hello world\n", "not a kernel configuration line"),
        (b"# only a comment\n", "no CONFIG_ option"),
        (b"CONFIG_X=y\nCONFIG_Y=maybe\n", ":2:"),
        (b"\x1f\x8b\x08\x00broken", "corrupt gzip data"),
    ],
)
def test_bad_config_refused_clearly(tmp_path, data, words) -> None:
    p = tmp_path / "bad"
    p.write_bytes(data)
    with pytest.raises(ConfigError) as exc:
        KernelConfig.from_file(p)
    assert words in str(exc.value)
    assert isinstance(exc.value, KlpError)


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read kernel config"):
        KernelConfig.from_file(tmp_path / "nope")


# ------------------------------------------------------ page size and facts
class BigPages:
    """A plugin that answers the page size from the config, else 64 KiB."""

    @hookimpl
    def klp_arch_page_size(self, kernel: KernelTarget) -> int:
        if kernel.config is not None and kernel.config.enabled("PPC_4K_PAGES"):
            return 4096
        return 1 << 16

    @hookimpl
    def klp_arch_config_default(self, name: str, kernel: KernelTarget) -> str | None:
        return {"STRICT_MODULE_RWX": "n"}.get(name)


def module() -> bytes:
    return Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(16)),
            Sec(".rodata", flags=RO, data=bytes(8), align=8),
            Sec(".data", flags=DATA, data=bytes(16), align=8),
            Sec(".init.text", flags=TEXT, data=bytes(8)),
            Sec(".init.data", flags=DATA, data=bytes(8), align=8),
        ],
        symbols=[Sym("printk"), Sym("here", ".rodata", 0, bind=C.STB_LOCAL)],
        relas=[
            Rela(".data", 0, T.ABS64, "here", 0),
            Rela(".init.data", 0, T.ABS64, "here", 4),
        ],
        modinfo={"name": "pg"},
    ).build()


def addresses(lm) -> dict[str, int]:
    return {s.name: lm.section_address(s.index) for s in lm.module.sections if lm.section_address(s.index)}


def test_core_default_page_size_is_4k(toy_pm) -> None:
    lm = Loader(toy_pm).load(module(), parse_symbol_text(SYMS), BASE)
    assert lm.module.settings["PAGE_SIZE"].value == 4096
    assert lm.module.settings["PAGE_SIZE"].source == "core default"
    # 6.4+: TEXT, a guard page, DATA, a guard page, RODATA (each type its own allocation)
    assert addresses(lm)[".data"] == BASE + 0x2000
    assert addresses(lm)[".rodata"] == BASE + 0x4000


def test_plugin_page_size_from_default_and_config() -> None:
    pm = get_plugin_manager(autoload=False, plugins=[T, BigPages()])
    lm = Loader(pm).load(module(), parse_symbol_text(SYMS), BASE)
    assert addresses(lm)[".data"] == BASE + 0x20000
    assert addresses(lm)[".rodata"] == BASE + 0x40000
    assert lm.module.settings["PAGE_SIZE"].source == "arch default"
    small = KernelTarget(config=KernelConfig.from_text("CONFIG_PPC_4K_PAGES=y\n"))
    lm = Loader(pm, kernel=small).load(module(), parse_symbol_text(SYMS), BASE)
    assert addresses(lm)[".rodata"] == BASE + 0x4000
    assert lm.module.settings["PAGE_SIZE"].source == "config"


def test_config_settings_sources() -> None:
    pm = get_plugin_manager(autoload=False, plugins=[T, BigPages()])
    from klpcore.plugins import identify

    hooks = identify(pm, T.TOY, 2, "little", 0, KernelTarget())
    assert config_setting(hooks, KernelTarget(), "STRICT_MODULE_RWX").source == "arch default"
    assert config_setting(hooks, KernelTarget(), "LIVEPATCH").source == "core default"
    k = KernelTarget(config=KernelConfig.from_text("CONFIG_LIVEPATCH=y\n"))
    assert config_setting(hooks, k, "LIVEPATCH").value == "y"
    assert config_setting(hooks, k, "STRICT_MODULE_RWX").value == "n"  # absent from a .config: not set
    assert page_size_setting(hooks, KernelTarget(options={"page_size": 8192})).value == 8192
    for bad in (0, 3, -4096, 4096 + 1024, 1 << 21):  # not a page size: an input error, never a crash
        with pytest.raises(InputError, match=rf"-O page_size={bad}: a page size is a power of two"):
            page_size_setting(hooks, KernelTarget(options={"page_size": bad}))


def test_unaligned_base_is_an_input_error() -> None:
    pm = get_plugin_manager(autoload=False, plugins=[T, BigPages()])
    with pytest.raises(KlpError, match=r"is not page aligned \(0x10000\)"):
        Loader(pm).load(module(), parse_symbol_text(SYMS), BASE + 0x1000)


# ---------------------------------------------------------------- init base
@pytest.mark.parametrize("version", [(6, 3), (6, 4)])
def test_init_base_places_init_memory(toy_pm, version) -> None:
    init = 0xFFFFFFFFC0200000
    lm = Loader(toy_pm, kernel=KernelTarget(version)).load(module(), parse_symbol_text(SYMS), BASE, init_base=init)
    a = addresses(lm)
    assert a[".init.text"] == init
    # 6.3: one init allocation, rows page aligned; 6.4: INIT_DATA is its own area after a guard page
    assert a[".init.data"] == init + (0x1000 if version < (6, 4) else 0x2000)
    assert a[".text"] == BASE
    idx = lm.module.section_by_name(".init.data").index
    assert struct.unpack_from("<Q", lm.section_bytes(idx))[0] == a[".rodata"] + 4
    default = Loader(toy_pm, kernel=KernelTarget(version)).load(module(), parse_symbol_text(SYMS), BASE)
    # 6.3: the init allocation follows the core one (3 page-aligned rows); 6.4+: INIT_TEXT follows
    # RODATA's page and its guard page (TEXT, DATA, RODATA each one page and a guard page)
    assert addresses(default)[".init.text"] == BASE + (0x3000 if version < (6, 4) else 0x6000)


# --------------------------------------------- legacy layout and rwx settings
def _secs():
    from klpcore.elf import ElfModule

    return ElfModule(module()).sections


def test_legacy_layout_packed_without_page_alignment() -> None:
    secs = _secs()
    lay = layout_sections(secs, 0x10000, style="legacy", page_size=0x10000, page_align_rows=False)
    by = {p.name: p.address for p in lay.placements.values()}
    # (.modinfo is still SHF_ALLOC here, in the rodata row: no rewrite_section_headers)
    assert by[".text"] == 0x10000 and by[".rodata"] == 0x10010
    assert 0x10018 <= by[".data"] < 0x10100 and by[".data"] % 8 == 0
    assert by[".init.text"] == by[".data"] + 16  # init allocation follows the (unaligned) core
    assert lay.regions[MemType.TEXT].size == 0x10 and lay.regions[MemType.DATA].address <= by[".data"]
    aligned = layout_sections(secs, 0x10000, style="legacy", page_size=0x10000)
    by = {p.name: p.address for p in aligned.placements.values()}
    assert by[".rodata"] == 0x20000 and by[".data"] == 0x30000


class NoRwx:
    @hookimpl
    def klp_arch_config_default(self, name: str, kernel: KernelTarget) -> str | None:
        if name in ("STRICT_MODULE_RWX", "ARCH_HAS_STRICT_MODULE_RWX"):
            return "n"
        return None


@pytest.mark.parametrize("version", [(5, 10), (6, 1)])
def test_no_strict_module_rwx_packs_legacy_and_leaves_text_writable(version) -> None:
    pm = get_plugin_manager(autoload=False, plugins=[T, NoRwx()])
    lm = Loader(pm, kernel=KernelTarget(version)).load(module(), parse_symbol_text(SYMS), BASE)
    assert addresses(lm)[".rodata"] == BASE + 0x10
    assert all("w" in str(r.perms) for r in lm.image.regions)
    strict = Loader(get_plugin_manager(autoload=False, plugins=[T]), kernel=KernelTarget(version))
    lm = strict.load(module(), parse_symbol_text(SYMS), BASE)
    assert addresses(lm)[".rodata"] == BASE + 0x1000
    assert str(next(r for r in lm.image.regions if r.memtype == MemType.TEXT).perms) == "r-x"


def test_strict_align_keys_on_strict_module_rwx_from_5_19() -> None:
    """5.19-6.3 strict_align follows CONFIG_STRICT_MODULE_RWX; before, debug_align
    follows CONFIG_ARCH_HAS_STRICT_MODULE_RWX."""
    cfg = KernelConfig.from_text("CONFIG_ARCH_HAS_STRICT_MODULE_RWX=y\n# CONFIG_STRICT_MODULE_RWX is not set\n")
    pm = get_plugin_manager(autoload=False, plugins=[T])
    old = Loader(pm, kernel=KernelTarget((5, 18), config=cfg)).load(module(), parse_symbol_text(SYMS), BASE)
    new = Loader(pm, kernel=KernelTarget((5, 19), config=cfg)).load(module(), parse_symbol_text(SYMS), BASE)
    assert addresses(old)[".rodata"] == BASE + 0x1000
    assert addresses(new)[".rodata"] == BASE + 0x10


# ------------------------------------------------------ D3 static_call_sites
def _static_call_module() -> bytes:
    return Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(16)),
            Sec(".static_call_sites", flags=DATA, data=bytes(16), align=4),
            Sec(".data", flags=DATA, data=bytes(8), align=8),
        ],
        symbols=[Sym("printk")],
        relas=[Rela(".static_call_sites", 0, T.ABS64, "printk", 0)],
        modinfo={"name": "sc"},
    ).build()


class StaticCallInline:
    @hookimpl
    def klp_arch_config_default(self, name: str, kernel: KernelTarget) -> str | None:
        return "y" if name == "HAVE_STATIC_CALL_INLINE" else None


@pytest.mark.parametrize(("version", "memtype"), [((6, 15), MemType.DATA), ((6, 16), MemType.RO_AFTER_INIT)])
def test_static_call_sites_ro_after_init_from_6_16(version, memtype) -> None:
    pm = get_plugin_manager(autoload=False, plugins=[T, StaticCallInline()])
    lm = Loader(pm, kernel=KernelTarget(version)).load(_static_call_module(), parse_symbol_text(SYMS), BASE)
    idx = lm.module.section_by_name(".static_call_sites").index
    assert lm.module.layout.placements[idx].memtype == memtype


def test_static_call_sites_stay_data_without_inline_static_calls() -> None:
    pm = get_plugin_manager(autoload=False, plugins=[T])
    lm = Loader(pm, kernel=KernelTarget((6, 19))).load(_static_call_module(), parse_symbol_text(SYMS), BASE)
    idx = lm.module.section_by_name(".static_call_sites").index
    assert lm.module.layout.placements[idx].memtype == MemType.DATA


# -------------------------------------------------------- D2 percpu at 6.16
def _percpu_module() -> bytes:
    return Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(16)), Sec(".data..percpu", flags=DATA, data=bytes(16), align=8)],
        symbols=[Sym("printk")],
        relas=[Rela(".data..percpu", 0, T.ABS64, "printk", 0)],
        modinfo={"name": "pcpu"},
    ).build()


@pytest.mark.parametrize(("version", "applied"), [((6, 15), False), ((6, 16), True)])
def test_percpu_relocations_from_6_16(toy_pm, version, applied) -> None:
    lm = Loader(toy_pm, kernel=KernelTarget(version), percpu_base=0xFFFFFFFFA0010000).load(
        _percpu_module(), parse_symbol_text(SYMS), BASE
    )
    idx = lm.module.section_by_name(".data..percpu").index
    assert lm.section_address(idx) == 0xFFFFFFFFA0010000
    value = struct.unpack_from("<Q", lm.section_bytes(idx))[0]
    assert value == (0xFFFFFFFF81000000 if applied else 0)


def test_percpu_backport_option(toy_pm) -> None:
    k = KernelTarget((6, 12), options={"relocates_percpu": True})
    lm = Loader(toy_pm, kernel=k).load(_percpu_module(), parse_symbol_text(SYMS), BASE)
    idx = lm.module.section_by_name(".data..percpu").index
    assert struct.unpack_from("<Q", lm.section_bytes(idx))[0] == 0xFFFFFFFF81000000


# ------------------------------------------------- codetag (6.13), LIVEPATCH
def _codetag_module() -> bytes:
    return Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(16)),
            Sec(".codetag.alloc_tags", flags=DATA, data=bytes(0x40), align=8),
            Sec(".data", flags=DATA, data=bytes(8), align=8),
        ],
        symbols=[Sym("printk")],
        relas=[Rela(".data", 0, T.ABS64, "printk", 0)],
        modinfo={"name": "ct"},
    ).build()


class AllocProfiling:
    @hookimpl
    def klp_arch_config_default(self, name: str, kernel: KernelTarget) -> str | None:
        return "y" if name == "MEM_ALLOC_PROFILING" else None


@pytest.mark.parametrize(("version", "separate"), [((6, 12), False), ((6, 13), True)])
def test_codetag_section_outside_module_memory_from_6_13(version, separate) -> None:
    pm = get_plugin_manager(autoload=False, plugins=[T, AllocProfiling()])
    lm = Loader(pm, kernel=KernelTarget(version)).load(_codetag_module(), parse_symbol_text(SYMS), BASE)
    a = addresses(lm)
    assert (".codetag.alloc_tags" not in a) == separate
    assert a[".data"] == (BASE + 0x2000 if separate else BASE + 0x2040)  # TEXT, guard page, DATA
    assert any("alloc-tag area" in w.message for w in lm.warnings) == separate


def test_no_livepatch_in_config_warns(toy_pm) -> None:
    from klpcore.testing.klpify import KlpSym, klpify

    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(16))],
        symbols=[Sym("secret")],
        relas=[Rela(".text", 0, T.ABS64, "secret")],
        modinfo={"name": "lp"},
    ).build()
    klp = klpify(obj, {"secret": KlpSym("vmlinux")})
    syms = SYMS + "ffffffff81000100 t secret\n"
    k = KernelTarget(config=KernelConfig.from_text("# CONFIG_LIVEPATCH is not set\nCONFIG_STRICT_MODULE_RWX=y\n"))
    lm = Loader(toy_pm, kernel=k).load(klp, parse_symbol_text(syms), BASE)
    assert any("no CONFIG_LIVEPATCH (from --config)" in w.message for w in lm.warnings)
    lm = Loader(toy_pm).load(klp, parse_symbol_text(syms), BASE)
    assert not any("CONFIG_LIVEPATCH" in w.message for w in lm.warnings)


# ---------------------------------------------- D12 a LIVE module's kallsyms
def test_module_ko_symbols_as_a_live_module(tmp_path, monkeypatch) -> None:
    """A loaded (LIVE) module's kallsyms is its core table: init-section
    symbols are gone, per-CPU symbols are in, absolute symbols are out; so a
    static name in .text and .init.text is unique (sympos 0 resolves)."""
    import klpcore.plugins as P
    from klpcore import load_symbols

    monkeypatch.setenv("KLPCORE_PLUGINS", "toyarch")
    monkeypatch.setenv("KLPCORE_LOAD_PLUGINS", "")
    monkeypatch.setattr(P, "_PM_CACHE", {})
    ko = Obj(
        sections=[
            Sec(".text", flags=TEXT, data=bytes(32), align=16),
            Sec(".init.text", flags=TEXT, data=bytes(16), align=16),
            Sec(".data..percpu", flags=DATA, data=bytes(16), align=8),
        ],
        symbols=[
            Sym("foo", ".text", 0x10, bind=C.STB_LOCAL, type=C.STT_FUNC),
            Sym("foo", ".init.text", 0x4, bind=C.STB_LOCAL, type=C.STT_FUNC),
            Sym("pcpu_var", ".data..percpu", 8, bind=C.STB_LOCAL, type=C.STT_OBJECT),
            Sym("absval", C.SHN_ABS, 0x1234, bind=C.STB_LOCAL),
        ],
        modinfo={"name": "tgt"},
    ).build()
    p = tmp_path / "tgt.ko"
    p.write_bytes(ko)
    ks = load_symbols(f"{p}@0xffffffffc1000000")
    assert ks.find_object_symbol("tgt", "foo", 0) == 0xFFFFFFFFC1000010
    assert ks.find_object_symbol("tgt", "pcpu_var", 0) == 0xFFFFFFFFA0000008
    assert ks.objects["tgt"].matches("absval") == []


# --------------------------------------------- 7.0 invalid section index
@pytest.mark.parametrize("version", [(6, 19), (7, 0)])
def test_symbol_with_section_index_past_the_headers_is_refused(toy_pm, version) -> None:
    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(16))],
        # a reserved index the loader has no case for (indexes below 0xff00 past the headers are
        # refused earlier, when klpcore reads the ELF)
        symbols=[Sym("printk"), Sym("broken", 0xFF10, 0, bind=C.STB_LOCAL)],
        relas=[Rela(".text", 0, T.ABS64, "broken")],
        modinfo={"name": "bad"},
    ).build()
    from klpcore import ResolutionError

    with pytest.raises(ResolutionError) as ei:
        Loader(toy_pm, kernel=KernelTarget(version)).load(obj, parse_symbol_text(SYMS), BASE)
    d = ei.value.diagnostics[0]
    assert d.symbol == "broken" and "section index 0xff10" in d.message
    if version >= (7, 0):
        assert d.kernel_message.startswith("bad: Symbol broken has an invalid section index 65296 (max ")
    else:
        assert d.kernel_message is None and "reads past its section header table" in d.message


def test_pc_relative_percpu_relocation_warns(toy_pm) -> None:
    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(16)), Sec(".data..percpu", flags=DATA, data=bytes(16), align=8)],
        symbols=[Sym("printk")],
        relas=[Rela(".data..percpu", 0, T.PREL32, "printk", 0), Rela(".data..percpu", 8, T.ABS64, "printk", 0)],
        modinfo={"name": "pcpu"},
    ).build()
    lm = Loader(toy_pm, kernel=KernelTarget((6, 16)), percpu_base=0xFFFFFFFF80100000).load(
        obj, parse_symbol_text(SYMS), BASE
    )
    assert any("R_TOY_PREL32" in w.message and "temporary copy" in w.message for w in lm.warnings)
    assert not any("R_TOY_ABS64" in w.message for w in lm.warnings)


def test_rela_sh_link_and_entsize_are_ignored_like_the_kernel(toy_pm) -> None:
    """apply_relocations uses the module's one symbol table and sizeof(Elf64_Rela)
    whatever a relocation section's sh_link and sh_entsize say (D14)."""
    from klpcore.elf import ElfModule

    data = bytearray(
        Obj(
            sections=[Sec(".text", flags=TEXT, data=bytes(16))],
            symbols=[Sym("printk")],
            relas=[Rela(".text", 0, T.ABS64, "printk")],
            modinfo={"name": "odd"},
        ).build()
    )
    elf = ElfModule(bytes(data))
    rela = next(s for s in elf.sections if s.type == C.SHT_RELA)
    shoff = int.from_bytes(data[0x28:0x30], "little")
    at = shoff + rela.index * 64
    data[at + 40 : at + 44] = (0).to_bytes(4, "little")  # sh_link
    data[at + 56 : at + 64] = (7).to_bytes(8, "little")  # sh_entsize
    lm = Loader(toy_pm).load(bytes(data), parse_symbol_text(SYMS), BASE)
    assert struct.unpack_from("<Q", lm.section_bytes(lm.module.section_by_name(".text").index))[0] == 0xFFFFFFFF81000000


def test_module_ko_symbols_while_coming(tmp_path, monkeypatch) -> None:
    """While the target module is COMING (klp_module_coming), its kallsyms is the
    full symtab: the static name in .init.text counts too, so sympos 0 is ambiguous."""
    import klpcore.plugins as P
    from klpcore import ResolutionError
    from klpcore.symbols import symbols_from_elf

    monkeypatch.setenv("KLPCORE_PLUGINS", "toyarch")
    monkeypatch.setenv("KLPCORE_LOAD_PLUGINS", "")
    monkeypatch.setattr(P, "_PM_CACHE", {})
    ko = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(32), align=16), Sec(".init.text", flags=TEXT, data=bytes(16))],
        symbols=[
            Sym("foo", ".text", 0x10, bind=C.STB_LOCAL, type=C.STT_FUNC),
            Sym("foo", ".init.text", 0x4, bind=C.STB_LOCAL, type=C.STT_FUNC),
        ],
        modinfo={"name": "tgt"},
    ).build()
    live = symbols_from_elf(ko, "tgt.ko", base=0xFFFFFFFFC1000000)
    coming = symbols_from_elf(ko, "tgt.ko", base=0xFFFFFFFFC1000000, coming=True)
    assert live.find_object_symbol("tgt", "foo", 0) == 0xFFFFFFFFC1000010
    with pytest.raises(ResolutionError):
        coming.find_object_symbol("tgt", "foo", 0)
    assert coming.find_object_symbol("tgt", "foo", 2) != coming.find_object_symbol("tgt", "foo", 1)
