"""arm64 plugin: kernel images (Image, zboot) as symbol sources (synthesized: tests/kimagebuild.py)."""

from __future__ import annotations

import gzip
import struct

import kimagebuild as kb
import pytest

from klpcore.kimage.container import open_image
from klpcore.kimage.source import decode_image, symbols_from_image

ARM64_BASE = 0xFFFF800080000000


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images decoded here never touch the user's cache (a test that wants it sets its own)."""
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")


@pytest.mark.parametrize("layout", ["6.1", "6.4", "7.0"])
def test_arm64_image_link_address_from_its_pointers(layout: str) -> None:
    syms = kb.sample_symbols(ARM64_BASE)
    image = kb.arm64_image(kb.raw_kernel(syms, layout, ARM64_BASE))
    assert kb.decoded(image) == kb.rows(syms)


def test_arm64_unrelocated_relative_base_uses_the_pointers() -> None:
    """arm64 with RELA relocations keeps 0 in kallsyms_relative_base's slot."""
    syms = kb.sample_symbols(ARM64_BASE)
    raw = bytearray(kb.raw_kernel(syms, "6.1", ARM64_BASE))
    blob = kb.kallsyms_blob(syms, "6.1", blob_va=ARM64_BASE + 0x10000)
    count_at = 0x10000 + blob.index(struct.pack("<I", len(syms)) + b"\0\0\0\0")
    raw[count_at - 8 : count_at] = b"\0" * 8
    assert kb.decoded(kb.arm64_image(bytes(raw))) == kb.rows(syms)


def test_zboot_and_gzip_wrapped_images() -> None:
    syms = kb.sample_symbols(ARM64_BASE)
    image = kb.arm64_image(kb.raw_kernel(syms, "7.0", ARM64_BASE))
    z = kb.zboot(gzip.compress(image, 1))
    assert open_image(z, "<test>").container == "zboot (gzip)"
    assert kb.decoded(z) == kb.rows(syms)
    assert kb.decoded(gzip.compress(image, 1)) == kb.rows(syms)


def test_exports_of_a_raw_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = kb.sample_symbols(ARM64_BASE)
    image = kb.arm64_image(kb.raw_kernel(syms, "6.4", ARM64_BASE, exports=kb.sample_exports(), flagstab=True))
    ks = symbols_from_image(image, "img")
    assert set(ks.exported["vmlinux"]) == {x.name for x in kb.sample_exports()}


def test_arm64_call_ops_records_skip_the_nops_and_a_bti(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = kb.sample_symbols(ARM64_BASE)
    funcs = kb.first_funcs(syms)
    nop, bti_c = 0xD503201F, 0xD503245F
    insns = {f: (bti_c if i % 2 else nop) for i, f in enumerate(funcs)}
    image = kb.arm64_image(kb.raw_kernel(syms, "6.4", ARM64_BASE, mcount=[f - 8 for f in funcs], insns=insns))
    ks = symbols_from_image(image, "img")
    assert ks.ftrace["vmlinux"].tolist() == sorted(f + (8 if i % 2 else 4) for i, f in enumerate(funcs))


def test_arm64_without_pre_function_nops_records_the_second_nop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = kb.sample_symbols(ARM64_BASE)
    funcs = kb.first_funcs(syms)
    image = kb.arm64_image(kb.raw_kernel(syms, "6.4", ARM64_BASE, mcount=funcs))
    assert symbols_from_image(image, "img").ftrace["vmlinux"].tolist() == [f + 4 for f in funcs]


def test_unrelocated_mcount_table_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = kb.sample_symbols(ARM64_BASE)
    image = kb.arm64_image(kb.raw_kernel(syms, "6.4", ARM64_BASE, mcount=[0] * 8))
    d = decode_image(image, "img")
    assert d.ftrace is None and "relocations" in str(d.info["ftrace"])
