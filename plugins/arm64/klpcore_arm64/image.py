"""The arm64 kernel image (Documentation/arch/arm64/booting.rst).

``Image`` is the kernel itself, byte 0 at ``_text``, with ``ARM\\x64`` at
byte 56 (distributions may ship it gzip-compressed or inside an EFI zboot
image: the core unwraps both).  Kernel pointers live in the upper half of the
address space.  ``ftrace_call_adjust`` (arch/arm64/include/asm/ftrace.h):
without pre-function NOPs the record is the site + 4 (the second NOP after
the entry); with them (``DYNAMIC_FTRACE_WITH_CALL_OPS``,
``-fpatchable-function-entry=4,2``) the site is 8 bytes before the function
and the record is past those two NOPs, a ``BTI`` if the function starts with
one, and the first NOP after the entry.
"""

from __future__ import annotations

import numpy as np

from klpcore.kimage.container import KernelImage
from klpcore.kimage.rules import ImageRules

from .identify import EM_AARCH64

INSN_SIZE = 4
#: BTI {, c, j, jc}: HINT #32/#34/#36/#38
BTI_MASK, BTI_BITS = 0xFFFFFF3F, 0xD503241F


def kernel_pointers(v: np.ndarray) -> np.ndarray:
    return v[(v >> np.uint64(47)) == np.uint64(0x1FFFF)]


def ftrace_records(img: KernelImage, sites: np.ndarray, funcs: np.ndarray | None) -> np.ndarray:
    call_ops = False
    if funcs is not None and len(funcs):
        # the pre-function NOPs put each site 8 bytes before a function symbol
        call_ops = bool(np.isin(sites + np.uint64(8), funcs).sum() > np.isin(sites, funcs).sum())
    if not call_ops:
        return np.sort(sites + np.uint64(INSN_SIZE))
    ip = sites + np.uint64(2 * INSN_SIZE)
    if img.segments:
        base = img.segments[0][0] - img.segments[0][1]
        offs = (ip - np.uint64(base)).astype(np.int64)
        ok = (offs >= 0) & (offs + INSN_SIZE <= len(img.data)) & (offs % INSN_SIZE == 0)
        words = np.frombuffer(img.data, dtype="<u4", count=len(img.data) // INSN_SIZE)
        insn = np.zeros(len(ip), dtype=np.uint32)
        insn[ok] = words[offs[ok] // INSN_SIZE]
        bti = (insn & np.uint32(BTI_MASK)) == np.uint32(BTI_BITS)
        ip = ip + np.where(bti, np.uint64(INSN_SIZE), np.uint64(0))
    return np.sort(ip + np.uint64(INSN_SIZE))


RULES = ImageRules(
    arch="arm64",
    machine=EM_AARCH64,
    byteorder="little",
    magics=((56, b"ARM\x64"),),
    raw=True,
    pointer_mask=kernel_pointers,
    ftrace_adjust=ftrace_records,
)
