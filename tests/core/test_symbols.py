"""Symbol sources and the kernel's resolution rules."""

from __future__ import annotations

import gzip

import pytest

from klpcore import KernelSymbols, ResolutionError, SymbolFileError, load_symbols, parse_symbol_text

MAP = """\
ffffffff81000000 T _text
ffffffff81000100 t dup
ffffffff81000200 T printk
ffffffff81000050 t dup
ffffffff82000000 r __ksymtab_printk
0000000000000000 D fixed_percpu_data
ffffffff81000300 t zero_dup
"""

KALLSYMS = """\
ffffffff81000000 T _text
ffffffffc0001000 t helper\t[ext4]
ffffffffc0002000 t helper\t[ext4]
ffffffffc0003000 T ext4_api\t[ext4]
ffffffffc0004000 r __ksymtab_ext4_api\t[ext4]
"""


def test_system_map_positions_follow_address_order() -> None:
    ks = parse_symbol_text(MAP)
    # two 'dup' symbols: counted in address order, not file order
    assert ks.find_object_symbol(None, "dup", 1) == 0xFFFFFFFF81000050
    assert ks.find_object_symbol(None, "dup", 2) == 0xFFFFFFFF81000100
    assert ks.find_object_symbol(None, "printk", 0) == 0xFFFFFFFF81000200
    assert ks.find_object_symbol(None, "printk", 1) == 0xFFFFFFFF81000200


def test_ambiguity_lists_every_position() -> None:
    ks = parse_symbol_text(MAP)
    with pytest.raises(ResolutionError) as ei:
        ks.find_object_symbol(None, "dup", 0)
    d = ei.value.diagnostics[0]
    assert d.kernel_message == "unresolvable ambiguity for symbol 'dup' in object '(null)'"
    assert "1: 0xffffffff81000050, 2: 0xffffffff81000100" in d.message
    assert d.extra["positions"] == [
        {"sympos": 1, "address": "0xffffffff81000050"},
        {"sympos": 2, "address": "0xffffffff81000100"},
    ]


def test_position_not_found_and_not_found() -> None:
    ks = parse_symbol_text(MAP)
    with pytest.raises(ResolutionError) as ei:
        ks.find_object_symbol(None, "dup", 3)
    assert ei.value.diagnostics[0].kernel_message == (
        "symbol position 3 for symbol 'dup' in object 'vmlinux' not found"
    )
    with pytest.raises(ResolutionError) as ei:
        ks.find_object_symbol(None, "nope", 0)
    assert ei.value.diagnostics[0].kernel_message == "symbol 'nope' not found in symbol table"


def test_address_zero_counts_as_not_found() -> None:
    ks = parse_symbol_text(MAP)
    with pytest.raises(ResolutionError, match="address 0 counts as not found"):
        ks.find_object_symbol(None, "fixed_percpu_data", 0)


def test_kallsyms_modules_are_objects() -> None:
    ks = parse_symbol_text(KALLSYMS)
    assert sorted(ks.objects) == ["ext4", "vmlinux"]
    assert ks.find_object_symbol("ext4", "helper", 2) == 0xFFFFFFFFC0002000
    with pytest.raises(ResolutionError) as ei:
        ks.find_object_symbol("ext4", "helper", 0)
    assert ei.value.diagnostics[0].kernel_message == "unresolvable ambiguity for symbol 'helper' in object 'ext4'"
    # a module symbol is not a vmlinux symbol
    with pytest.raises(ResolutionError):
        ks.find_object_symbol(None, "helper", 1)


def test_exports() -> None:
    ks = parse_symbol_text(MAP)
    ks.merge(parse_symbol_text(KALLSYMS))
    assert ks.find_exported("printk").address == 0xFFFFFFFF81000200
    m = ks.find_exported("ext4_api")
    assert (m.address, m.objname) == (0xFFFFFFFFC0003000, "ext4")
    assert ks.find_exported("dup") is None  # present but not exported
    assert ks.has_export_info


def test_merge_deduplicates_same_symbol() -> None:
    ks = KernelSymbols()
    ks.merge(parse_symbol_text(MAP))
    ks.merge(parse_symbol_text(MAP))
    assert ks.find_object_symbol(None, "printk", 0) == 0xFFFFFFFF81000200


def test_zero_kallsyms_refused() -> None:
    with pytest.raises(SymbolFileError, match="every address is zero"):
        parse_symbol_text("0000000000000000 T a\n0000000000000000 T b\n")


def test_bad_line_refused() -> None:
    with pytest.raises(SymbolFileError, match=r"<text>:2: not a symbol line"):
        parse_symbol_text("ffffffff81000000 T a\nhello world\n")


def test_load_detects_gzip_and_text(tmp_path) -> None:
    p = tmp_path / "System.map.gz"
    p.write_bytes(gzip.compress(MAP.encode()))
    assert load_symbols(str(p)).find_exported("printk") is not None
    q = tmp_path / "kallsyms"
    q.write_text(KALLSYMS)
    assert "ext4" in load_symbols(str(q)).objects
    with pytest.raises(SymbolFileError, match="cannot read"):
        load_symbols(str(tmp_path / "missing"))
    b = tmp_path / "bin"
    b.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SymbolFileError, match="neither an ELF file nor"):
        load_symbols(str(b))


def test_module_ko_at_base(tmp_path, monkeypatch) -> None:
    """A loaded module's .ko at an address: its symbols at klpcore's layout."""
    from elfbuild import Obj, Sec, Sym

    import klpcore.plugins as P
    from klpcore import constants as C

    monkeypatch.setenv("KLPCORE_PLUGINS", "toyarch")
    monkeypatch.setenv("KLPCORE_LOAD_PLUGINS", "")
    monkeypatch.setattr(P, "_PM_CACHE", {})
    ko = Obj(
        sections=[
            Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(64), align=16),
            Sec(".data", flags=C.SHF_ALLOC | C.SHF_WRITE, data=bytes(16), align=8),
        ],
        symbols=[
            Sym("helper", ".text", 0x10, bind=C.STB_LOCAL, type=C.STT_FUNC),
            Sym("helper2", ".text", 0x20, bind=C.STB_LOCAL, type=C.STT_FUNC),
            Sym("api", ".text", 0x30, type=C.STT_FUNC),
            Sym("counter", ".data", 8, type=C.STT_OBJECT),
            Sym("undef"),
        ],
        modinfo={"name": "ext4"},
    ).build()
    p = tmp_path / "ext4.ko"
    p.write_bytes(ko)
    ks = load_symbols(f"{p}@0xffffffffc1000000")
    assert list(ks.objects) == ["ext4"]
    assert ks.find_object_symbol("ext4", "helper", 0) == 0xFFFFFFFFC1000010
    assert ks.find_object_symbol("ext4", "api", 0) == 0xFFFFFFFFC1000030
    assert ks.find_object_symbol("ext4", "counter", 0) == 0xFFFFFFFFC1002008  # data: after text's page and a guard page
    with pytest.raises(ResolutionError):
        ks.find_object_symbol("ext4", "undef", 0)
    named = load_symbols(f"{p}@0xffffffffc1000000:renamed")
    assert list(named.objects) == ["renamed"]
    with pytest.raises(SymbolFileError, match="give its load address"):
        load_symbols(str(p))


def test_vmlinux_elf(tmp_path) -> None:
    import struct

    from elfbuild import Obj, Sec, Sym

    from klpcore import constants as C

    data = bytearray(
        Obj(
            machine=62,
            sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=bytes(16))],
            symbols=[
                Sym("printk", ".text", 0xFFFFFFFF81000000, type=C.STT_FUNC),
                Sym("local_dup", ".text", 0xFFFFFFFF81000020, bind=C.STB_LOCAL),
                Sym("local_dup", ".text", 0xFFFFFFFF81000010, bind=C.STB_LOCAL),
            ],
        ).build()
    )
    struct.pack_into("<H", data, 16, C.ET_EXEC)
    p = tmp_path / "vmlinux"
    p.write_bytes(bytes(data))
    ks = load_symbols(str(p))
    assert ks.find_object_symbol(None, "printk", 0) == 0xFFFFFFFF81000000
    assert ks.find_object_symbol(None, "local_dup", 1) == 0xFFFFFFFF81000010  # address order
    assert ks.objects["vmlinux"].types[ks.objects["vmlinux"].positions("printk")[0]] == "T"


def test_address_wider_than_64_bits_is_a_clear_error() -> None:
    with pytest.raises(SymbolFileError, match="x:2: address '10000000000001024' is not a 64-bit hex address"):
        parse_symbol_text("ffffffff81000000 T printk\n10000000000001024 t far\t[mod]\n", source="x")


def test_system_map_fast_path_in_chunks_equals_one_piece(monkeypatch) -> None:
    """The fast path splits bounded chunks of whole lines; the result is the same for any chunk size, and a
    malformed line in a later chunk still reaches the line parser's error."""
    import klpcore.symbols as S

    text = (
        "".join(f"ffffffff81{i:06x} {'Tt'[i % 2]} fn_{i}\n" for i in range(500)) + "ffffffff82000000 r __ksymtab_fn_0\n"
    )
    whole = S.parse_symbol_text(text, "map").objects["vmlinux"]
    monkeypatch.setattr(S, "SPLIT_CHUNK", 37)
    parts = S.parse_symbol_text(text, "map").objects["vmlinux"]
    assert (parts.names, parts.addrs, parts.types) == (whole.names, whole.addrs, whole.types)
    assert len(parts.names) == 501
    with pytest.raises(S.SymbolFileError, match=r"map:400: "):
        S.parse_symbol_text(text.replace("fn_399\n", "fn_399 extra\n"), "map")
