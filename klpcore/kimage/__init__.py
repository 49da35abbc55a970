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
    from .. import constants as C
    from ..elfheader import read_header, section_header

    if len(data) < C.EHDR_SIZE or data[4] != C.ELFCLASS64 or data[5] not in (C.ELFDATA2LSB, C.ELFDATA2MSB):
        return False
    hdr = read_header(data)
    if hdr.ident.type not in (2, 3):  # ET_EXEC, ET_DYN
        return False
    if not hdr.shoff or hdr.shoff + hdr.shnum * hdr.shentsize > len(data) or hdr.shentsize < C.SHDR_SIZE:
        return True  # no section headers at all
    return not any(section_header(data, hdr, i).type == C.SHT_SYMTAB for i in range(hdr.shnum))


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
