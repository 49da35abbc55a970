"""klpcore.kimage: kallsyms read from kernel images (synthesized: tests/kimagebuild.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import kimagebuild as kb
import pytest

from klpcore.errors import SymbolFileError
from klpcore.kimage import is_kernel_image
from klpcore.kimage.container import decompress, open_image
from klpcore.kimage.kallsyms import read_kallsyms
from klpcore.kimage.source import cache_dir, decode_image, symbols_from_image
from klpcore.symbols import load_symbols

X86_BASE = 0xFFFFFFFF81000000
ARM64_BASE = 0xFFFF800080000000
S390_BASE = 0x100000


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images decoded here never touch the user's cache (a test that wants it sets its own)."""
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")


@pytest.mark.parametrize("layout", ["4.19", "6.1", "abs", "6.4", "7.0"])
def test_every_layout_from_an_elf(layout: str) -> None:
    syms = kb.sample_symbols(X86_BASE)
    assert kb.decoded(kb.elf_kernel(syms, layout, X86_BASE)) == kb.rows(syms)


def test_absolute_percpu_offsets() -> None:
    syms = kb.sample_symbols(X86_BASE, percpu=5)
    k = read_kallsyms(open_image(kb.elf_kernel(syms, "6.1-percpu", X86_BASE), "<test>"))
    assert k.tables.address_mode == "absolute-percpu"
    assert [int(a) for a in k.addresses] == [s.addr for s in syms]
    assert k.names[:2] == ["percpu_var0", "percpu_var1"]


def test_a_name_longer_than_127_uses_two_length_bytes() -> None:
    syms = kb.sample_symbols(X86_BASE)
    names = [n for _, _, n in kb.decoded(kb.elf_kernel(syms, "7.0", X86_BASE))]
    assert "a_very_long_rust_symbol_" + "x" * 130 in names


def test_big_endian_tables() -> None:
    syms = kb.sample_symbols(S390_BASE)
    assert kb.decoded(kb.elf_kernel(syms, "6.4", S390_BASE, machine=22, e=">")) == kb.rows(syms)


def test_zboot_wrapper() -> None:
    syms = kb.sample_symbols(X86_BASE)
    z = kb.zboot(gzip.compress(kb.elf_kernel(syms, "6.4", X86_BASE), 1))
    assert open_image(z, "<test>").container == "zboot (gzip)"
    assert kb.decoded(z) == kb.rows(syms)


def test_zboot_with_an_unknown_compression_is_named() -> None:
    with pytest.raises(SymbolFileError, match="'snappy'"):
        open_image(kb.zboot(b"x" * 64, "snappy"), "<test>")


def test_no_tables_is_one_clear_error() -> None:
    elf = kb.elf_kernel(kb.sample_symbols(X86_BASE), "7.0", X86_BASE)
    broken = elf.replace(b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00", b"x" * 20)
    with pytest.raises(SymbolFileError, match="no kallsyms token table"):
        read_kallsyms(open_image(broken, "<test>"))


def test_not_an_image() -> None:
    with pytest.raises(SymbolFileError, match="not a kernel image"):
        open_image(b"\x01" * 4096, "junk")


def test_corrupt_payload_names_the_format() -> None:
    with pytest.raises(SymbolFileError, match="corrupt xz data"):
        decompress("xz", b"\xfd7zXZ\x00garbage", "img")


def test_lz4_without_the_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "lz4", None)
    monkeypatch.setitem(sys.modules, "lz4.block", None)
    with pytest.raises(SymbolFileError, match=r"pip install lz4"):
        decompress("lz4", b"\x02\x21\x4c\x18" + b"\0" * 8, "img")


def lz4_legacy_with_size(data: bytes) -> bytes:
    """``lz4 -l -9`` then ``size_append`` (scripts/Makefile.lib ``cmd_lz4_with_size``): the legacy frame's
    magic, then per 8 MiB of input one block as (u32 LE compressed size, raw LZ4 block), then the
    input's size as u32 LE."""
    import struct

    import lz4.block

    out = bytearray(b"\x02\x21\x4c\x18")
    for i in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[i : i + (8 << 20)], mode="high_compression", compression=9, store_size=False)
        out += struct.pack("<I", len(block)) + block
    return bytes(out + struct.pack("<I", len(data)))


def test_lz4_payload_read_back_through_the_real_decoder() -> None:
    pytest.importorskip("lz4.block", reason="the optional 'lz4' package is not installed (pip install lz4)")
    syms = kb.sample_symbols(X86_BASE)
    elf = kb.elf_kernel(syms, "6.4", X86_BASE)
    # past 8 MiB: two legacy blocks, the second short, then the appended size
    kernel = elf + b"\0" * ((8 << 20) + 4096 - len(elf))
    payload = lz4_legacy_with_size(kernel)
    assert decompress("lz4", payload, "img") == kernel
    z = kb.zboot(payload, "lz4")
    assert open_image(z, "<test>").container == "zboot (lz4)"
    assert kb.decoded(z) == kb.rows(syms)
    # and found inside a self-decompressing image by the last-resort scan
    assert kb.decoded(b"\x07" * 4096 + payload) == kb.rows(syms)


def test_corrupt_lz4_block_names_the_format() -> None:
    pytest.importorskip("lz4.block", reason="the optional 'lz4' package is not installed (pip install lz4)")
    payload = bytearray(lz4_legacy_with_size(b"kernel " * 4096))
    payload[8:40] = b"\xff" * 32
    with pytest.raises(SymbolFileError, match="corrupt lz4 data"):
        decompress("lz4", bytes(payload), "img")


def test_load_symbols_detects_an_image_by_content(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = kb.sample_symbols(X86_BASE)
    path = tmp_path / "vmlinuz-anything"
    path.write_bytes(gzip.compress(kb.elf_kernel(syms, "7.0", X86_BASE)))
    ks = load_symbols(str(path))
    assert ks.find_object_symbol("vmlinux", "__pfx_do_thing_5_x5", 0) == next(
        s.addr for s in syms if s.name == "__pfx_do_thing_5_x5"
    )
    assert not ks.text_only
    assert is_kernel_image(gzip.decompress(path.read_bytes()))


def test_a_text_only_image_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = kb.sample_symbols(X86_BASE, data=False)
    ks = symbols_from_image(kb.elf_kernel(syms, "6.4", X86_BASE), "img")
    assert ks.text_only == ["img"]


def test_cache_round_trip_and_opt_out(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KLPCORE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KLPCORE_NO_CACHE", raising=False)
    syms = kb.sample_symbols(X86_BASE)
    data = kb.elf_kernel(syms, "7.0", X86_BASE, exports=kb.sample_exports(), flagstab=True)
    first = decode_image(data, "img")
    assert first.exports is not None and len(first.exports) == 4
    files = list((tmp_path / "kimage").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    again = decode_image(data, "img")
    assert again.names == first.names and again.types == first.types
    assert again.addresses.tolist() == first.addresses.tolist()
    assert again.exports == first.exports
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    assert cache_dir() is None


@pytest.mark.parametrize(("prel32", "flagstab"), [(True, False), (True, True), (False, False), (False, True)], ids=str)
def test_exports_read_through_kernel_symbol(prel32: bool, flagstab: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = kb.sample_symbols(X86_BASE)
    data = kb.elf_kernel(syms, "7.0", X86_BASE, exports=kb.sample_exports(), prel32=prel32, flagstab=flagstab)
    ks = symbols_from_image(data, "img")
    addr = {s.name: s.addr for s in syms}
    assert ks.exported["vmlinux"] == {
        "__pfx_do_thing_1_x1": addr["__pfx_do_thing_1_x1"],
        "__pfx_do_thing_2_x2": addr["__pfx_do_thing_2_x2"],
        "some_table_6_data": addr["some_table_6_data"],
        "alias_name": addr["__pfx_do_thing_4_x4"],
    }
    meta = ks.export_meta
    assert [meta[n].gpl_only for n in ("__pfx_do_thing_1_x1", "__pfx_do_thing_2_x2", "alias_name")] == [
        False,
        True,
        True,
    ]
    assert (meta["some_table_6_data"].namespace, meta["__pfx_do_thing_1_x1"].namespace) == ("MY_NS", "")
    match = ks.find_exported("alias_name")
    assert match is not None and match.address == addr["__pfx_do_thing_4_x4"]
    assert ks.find_exported("__pfx_do_thing_4_x4") is None  # a symbol, not an export
    assert ks.has_export_info


def test_no_export_table_is_not_an_empty_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    ks = symbols_from_image(kb.elf_kernel(kb.sample_symbols(X86_BASE), "7.0", X86_BASE), "img")
    assert "vmlinux" not in ks.exported


def test_ftrace_records_from_mcount_loc_without_init_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = kb.sample_symbols(X86_BASE)
    funcs = kb.first_funcs(syms)
    init_lo, init_hi = funcs[30], funcs[35]
    syms += [kb.Sym(init_lo, "T", "_sinittext"), kb.Sym(init_hi, "T", "_einittext")]
    syms.sort(key=lambda s: s.addr)
    # unsorted, with a 0 the linker left for a discarded function
    table = [*reversed(funcs), 0]
    ks = symbols_from_image(kb.elf_kernel(syms, "7.0", X86_BASE, mcount=table), "img")
    assert ks.ftrace["vmlinux"].tolist() == [a for a in funcs if not init_lo <= a < init_hi]


def test_damaged_images_give_one_clear_error_or_a_result() -> None:
    """Bytes changed anywhere past the header: never a traceback (a damaged name may still decode)."""
    import random

    syms = kb.sample_symbols(X86_BASE)
    good = kb.elf_kernel(syms, "7.0", X86_BASE, exports=kb.sample_exports(), mcount=kb.first_funcs(syms))
    rng = random.Random(15)
    for _ in range(60):
        d = bytearray(good)
        at = rng.randrange(0x1000, len(d))
        for k in range(rng.randrange(1, 40)):
            if at + 8 * k < len(d):
                d[at + 8 * k] = rng.randrange(256)
        if rng.random() < 0.3:
            d = d[: rng.randrange(64, len(d))]
        try:
            decode_image(bytes(d), "img", cache=False)
        except SymbolFileError as exc:
            assert str(exc)


REAL = sorted((Path(__file__).parent / "fixtures" / "kimage").glob("*-slice.elf"))


@pytest.mark.parametrize("fixture", REAL, ids=[p.stem for p in REAL])
def test_real_token_tables(fixture: Path) -> None:
    """The first 512 symbols of Debian's images, as their builds compressed them (real token tables and
    codes; cut by tools/kimage_fixture.py, which also wrote the expected lines from the whole image)."""
    k = read_kallsyms(open_image(fixture.read_bytes(), str(fixture)))
    got = [f"{int(a):016x} {t} {n}" for a, t, n in zip(k.addresses, k.types, k.names, strict=True)]
    assert got == fixture.with_suffix(".expected").read_text().splitlines()
