"""Writing a loaded module back out as an ELF file.

The output has the input's sections, names and order.  Every section placed
in module memory gets its load address in ``sh_addr`` and the relocated bytes
as contents, so readelf, objdump and capstone show the module as the kernel
would hold it.  A ``SHT_NOBITS`` section into which the arch wrote code or
data (ppc64 ``.stubs``, arm64 ``.plt``) becomes ``SHT_PROGBITS``.
"""

from __future__ import annotations

import struct

from . import constants as C
from .loader import LoadedModule


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1) if a > 1 else n


def write_elf(loaded: LoadedModule) -> bytes:
    """Serialize ``loaded`` as an ELF image (see module docstring)."""
    elf = loaded.module.elf
    mod = loaded.module
    e = elf.endian
    out = bytearray(elf.data[: C.EHDR_SIZE])
    headers = []
    for orig, sec in zip(elf.sections, mod.sections, strict=True):
        addr = loaded.section_address(sec.index) or 0
        stype = orig.type
        if sec.index == 0:
            headers.append((orig, stype, 0, 0, orig.size))  # keeps extended numbering
            continue
        content: bytes | None
        if addr:
            content = loaded.section_bytes(sec.index)
            if stype == C.SHT_NOBITS and not content.strip(b"\0"):
                content = None
            elif stype == C.SHT_NOBITS:
                stype = C.SHT_PROGBITS
        elif stype == C.SHT_NOBITS:
            content = None
        else:
            content = elf.data[orig.offset : orig.offset + orig.size]
        size = sec.size if addr or stype == C.SHT_NOBITS else orig.size
        if content is None:
            headers.append((orig, stype, addr, len(out), size))
            continue
        off = _align(len(out), max(orig.addralign, 1))
        out += bytes(off - len(out))
        out += content
        headers.append((orig, stype, addr, off, len(content)))
    shoff = _align(len(out), 8)
    out += bytes(shoff - len(out))
    for orig, stype, addr, off, size in headers:
        out += struct.pack(
            e + "IIQQQQIIQQ",
            _name_offset(elf.data, elf, orig.index),
            stype,
            orig.flags,
            addr,
            off,
            size,
            orig.link,
            orig.info,
            orig.addralign,
            orig.entsize,
        )
    struct.pack_into(e + "Q", out, 0x28, shoff)
    return bytes(out)


def _name_offset(data: bytes, elf: object, index: int) -> int:
    from .elf import ElfModule

    assert isinstance(elf, ElfModule)
    shoff = int.from_bytes(data[0x28:0x30], elf.byteorder)  # type: ignore[arg-type]
    off = shoff + index * C.SHDR_SIZE
    return int.from_bytes(data[off : off + 4], elf.byteorder)  # type: ignore[arg-type]
