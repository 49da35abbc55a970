"""The s390x kernel image (arch/s390/boot): the decompressor, marked
``S390EP`` at 0x10008, followed by the compressed ``vmlinux.bin`` (raw, byte
0 at ``_text``, big-endian).  The kernel is linked low (from 1 MiB); pointers
are at least halfword-aligned.  ``ftrace_call_adjust`` keeps the site.
"""

from __future__ import annotations

import numpy as np

from klpcore.kimage.rules import ImageRules

from .identify import EM_S390


def kernel_pointers(v: np.ndarray) -> np.ndarray:
    return v[(v >= np.uint64(1 << 20)) & (v < np.uint64(1 << 40)) & ((v & np.uint64(1)) == 0)]


RULES = ImageRules(
    arch="s390x", machine=EM_S390, byteorder="big", magics=((0x10008, b"S390EP"),), pointer_mask=kernel_pointers
)
