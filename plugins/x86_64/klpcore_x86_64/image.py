"""The x86 kernel image: a bzImage (Documentation/arch/x86/boot.rst).

The setup header (``HdrS`` at 0x202; boot protocol 2.08+ for the payload
fields) gives ``payload_offset``/``payload_length`` (0x248/0x24c), counted
from the protected-mode code, which starts after ``setup_sects`` (0x1f1; 0
means 4) + 1 sectors of 512 bytes.  The payload, once decompressed, is the
stripped vmlinux ELF (a trailing ``vmlinux.relocs`` is ignored).  x86's
``ftrace_call_adjust`` keeps the call site as the record.
"""

from __future__ import annotations

import struct

from klpcore.errors import SymbolFileError
from klpcore.kimage.container import decompress, detect_compression
from klpcore.kimage.rules import ImageRules

from .identify import EM_X86_64


def unwrap_bzimage(data: bytes, what: str) -> tuple[bytes, str] | None:
    if len(data) < 0x260 or data[0x202:0x206] != b"HdrS":
        return None
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        raise SymbolFileError(f"{what}: bzImage boot protocol {version >> 8}.{version & 0xFF} (before 2.08) not read")
    setup_sects = data[0x1F1] or 4
    poff, plen = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + poff
    payload = memoryview(data)[start : start + plen]
    fmt = detect_compression(payload)
    if fmt is None:
        raise SymbolFileError(f"{what}: bzImage payload at {start:#x} is in no compression klpcore knows")
    return decompress(fmt, payload, what), f"bzImage ({fmt})"


RULES = ImageRules(
    arch="x86_64", machine=EM_X86_64, byteorder="little", magics=((0x202, b"HdrS"),), unwrap=unwrap_bzimage
)
