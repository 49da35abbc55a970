"""x86_64 plugin: kernel images (bzImage) as symbol sources (synthesized: tests/kimagebuild.py)."""

from __future__ import annotations

import gzip
import lzma
import struct

import kimagebuild as kb
import pytest

from klpcore.kimage.container import open_image
from klpcore.symbols import load_symbols

X86_BASE = 0xFFFFFFFF81000000


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images decoded here never touch the user's cache (a test that wants it sets its own)."""
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")


@pytest.mark.parametrize(("fmt", "pack"), [("gzip", gzip.compress), ("xz", lzma.compress)])
def test_bzimage_payload(fmt: str, pack: object) -> None:
    syms = kb.sample_symbols(X86_BASE)
    image = kb.bzimage(pack(kb.elf_kernel(syms, "7.0", X86_BASE)))  # type: ignore[operator]
    img = open_image(image, "<test>")
    assert img.container == f"bzImage ({fmt})"
    assert img.arch == "x86_64"
    assert kb.decoded(image) == kb.rows(syms)


def test_bzimage_zstd_payload_with_the_appended_size() -> None:
    import zstandard

    syms = kb.sample_symbols(X86_BASE)
    elf = kb.elf_kernel(syms, "6.4", X86_BASE)
    image = kb.bzimage(zstandard.ZstdCompressor().compress(elf) + struct.pack("<I", len(elf)))
    assert kb.decoded(image) == kb.rows(syms)


def test_load_symbols_reads_a_bzimage(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = kb.sample_symbols(X86_BASE)
    path = tmp_path / "vmlinuz"
    path.write_bytes(kb.bzimage(gzip.compress(kb.elf_kernel(syms, "7.0", X86_BASE))))
    ks = load_symbols(str(path))
    assert ks.objects["vmlinux"].addrs == sorted(s.addr for s in syms)
