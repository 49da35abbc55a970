"""A kernel image as a symbol source: kallsyms, exports and ftrace call sites
read from the image a distribution ships (``vmlinuz``), without System.map or
a debug vmlinux.  See :mod:`.container` for the image formats and
:mod:`.kallsyms` for the symbol tables."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .container import KernelImage, looks_like_image, open_image
from .kallsyms import Kallsyms, read_kallsyms


def is_kernel_image(data: bytes) -> bool:
    """Whether ``data`` (a file's bytes, decompressed) is a kernel image to read
    through kallsyms: a zboot image, an image an architecture plugin marks as
    its own, or a vmlinux ELF with no symbol table (stripped, or shipped so)."""
    if looks_like_image(data[: 1 << 17]):
        return True
    return data[:4] == b"\x7fELF" and _stripped_kernel_elf(data)


def _stripped_kernel_elf(data: bytes) -> bool:
    import struct

    if len(data) < 64 or data[4] != 2 or data[5] not in (1, 2):
        return False
    e = "<" if data[5] == 1 else ">"
    etype = struct.unpack_from(e + "H", data, 16)[0]
    if etype not in (2, 3):  # ET_EXEC, ET_DYN
        return False
    shoff = struct.unpack_from(e + "Q", data, 40)[0]
    shentsize, shnum = struct.unpack_from(e + "HH", data, 58)
    if not shoff or shoff + shnum * shentsize > len(data) or shentsize < 64:
        return True  # no section headers at all
    return not any(struct.unpack_from(e + "I", data, shoff + i * shentsize + 4)[0] == 2 for i in range(shnum))


__all__ = ["ImageSymbols", "Kallsyms", "KernelImage", "is_kernel_image", "looks_like_image", "open_image", "read_image"]


@dataclass
class ImageSymbols:
    image: KernelImage
    kallsyms: Kallsyms


def read_image(path: str | os.PathLike[str], *, data: bytes | None = None, cache: bool = True) -> ImageSymbols:
    """Read ``path`` (or its already-read, decompressed ``data``)."""
    name = os.fspath(path)
    if data is None:
        from ..compress import SYMBOL_ELF_LIMIT, read_input
        from ..errors import SymbolFileError

        data = read_input(path, limit=SYMBOL_ELF_LIMIT, what="kernel image", error=SymbolFileError)
    img = open_image(data, name)
    return ImageSymbols(img, read_kallsyms(img))
