"""s390x plugin: the kernel image (decompressor + compressed vmlinux.bin) as a symbol source."""

from __future__ import annotations

import kimagebuild as kb
import pytest

from klpcore.kimage.container import open_image

S390_BASE = 0x100000


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images decoded here never touch the user's cache (a test that wants it sets its own)."""
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")


def test_s390_compressed_raw_kernel() -> None:
    syms = kb.sample_symbols(S390_BASE)
    image = kb.s390_image(kb.raw_kernel(syms, "7.0", S390_BASE, e=">", size=(1 << 20) + 4096))
    img = open_image(image, "<test>")
    assert img.byteorder == "big"
    assert kb.decoded(image) == kb.rows(syms)
