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


def test_boot_offset_from_the_kernel_image_base() -> None:
    """A kernel with CONFIG_KERNEL_IMAGE_BASE runs at link address + that base without KASLR
    (arch/s390/boot/startup.c: __kaslr_offset = __NO_KASLR_START_KERNEL); Debian 7.2.13+deb14's
    booted kallsyms shows _text at 0x3ffe0100000 for a link-time 0x100000.  Without the option
    (6.1) or without a config, link addresses."""
    from klpcore.kimage.source import symbols_from_image

    syms = kb.sample_symbols(S390_BASE)
    image = kb.s390_image(kb.raw_kernel(syms, "7.0", S390_BASE, e=">", size=(1 << 20) + 4096))
    link = next(s.addr for s in syms if s.name == "_text")
    for config, offset in (
        ({"CONFIG_KERNEL_IMAGE_BASE": "0x3FFE0000000"}, 0x3FFE0000000),
        ({"CONFIG_RELOCATABLE": "y"}, 0),
        (None, 0),
    ):
        ks = symbols_from_image(image, "<test>", cache=False, config=config)
        assert ks.find_object_symbol(None, "_text", 0) == link + offset
