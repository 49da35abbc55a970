"""A kernel image as a symbol source: kallsyms, exports and ftrace call sites
read from the image a distribution ships (``vmlinuz``), without System.map or
a debug vmlinux.  See :mod:`.container` for the image formats and
:mod:`.kallsyms` for the symbol tables."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .container import KernelImage, looks_like_image, open_image
from .kallsyms import Kallsyms, read_kallsyms

__all__ = ["ImageSymbols", "Kallsyms", "KernelImage", "looks_like_image", "open_image", "read_image"]


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
