"""ELFv2 ABI facts the other parts share: relocation type numbers, the LI
field of ``b``/``bl``, ``PPC_HA``/``PPC_LO`` halves and the local entry point."""

from __future__ import annotations

import numpy as np

U64 = np.uint64
MASK64 = (1 << 64) - 1
LI_MASK = 0x03FFFFFC

R_PPC64_ADDR32 = 1
R_PPC64_REL24 = 10
R_PPC64_REL32 = 26
R_PPC64_ADDR64 = 38
R_PPC64_REL64 = 44
R_PPC64_TOC16 = 47
R_PPC64_TOC16_LO = 48
R_PPC64_TOC16_HA = 50
R_PPC64_TOC = 51
R_PPC64_TOC16_DS = 63
R_PPC64_TOC16_LO_DS = 64
R_PPC64_TOCSAVE = 109
R_PPC64_ENTRY = 118
R_PPC64_REL16_LO = 250
R_PPC64_REL16_HA = 252


def ha16(v: int) -> int:
    """``PPC_HA``: the high half, adjusted for the sign of the low half."""
    return ((v + 0x8000) >> 16) & 0xFFFF


def lo16(v: int) -> int:
    return v & 0xFFFF


def s64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def local_entry_offset(st_other: int) -> int:
    """ELFv2 local entry point offset from ``st_other`` bits 7:5."""
    return ((1 << ((st_other & 0xE0) >> 5)) >> 2) << 2
