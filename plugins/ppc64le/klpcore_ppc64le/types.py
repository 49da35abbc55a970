"""The ppc64 (ELFv2, non-PCREL) relocation types of ``apply_relocate_add``, as
a table, with their computes and field encoders.

* **apply_relocate_add.**  ADDR32, ADDR64, TOC, TOC16, TOC16_LO, TOC16_HA,
  TOC16_DS, TOC16_LO_DS, REL24, REL32, REL64, TOCSAVE (ignored), ENTRY,
  REL16_HA, REL16_LO.  Everything else (``R_PPC64_NONE`` included, and the
  PCREL-only REL24_NOTOC/PCREL34/GOT_PCREL34 on non-PCREL kernels) is
  ``"%s: Unknown ADD relocation: %lu"``.

REL24 (stubs, local entry points) is in :mod:`.stubs`, ENTRY in :mod:`.toc`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from klpcore.arch import ABS, PREL, Array, RelocType, any_of, insn_field, misaligned, signed
from klpcore.kernel import KernelTarget

from . import versions
from .abi import (
    LI_MASK,
    R_PPC64_ADDR32,
    R_PPC64_ADDR64,
    R_PPC64_ENTRY,
    R_PPC64_REL16_HA,
    R_PPC64_REL16_LO,
    R_PPC64_REL24,
    R_PPC64_REL32,
    R_PPC64_REL64,
    R_PPC64_TOC,
    R_PPC64_TOC16,
    R_PPC64_TOC16_DS,
    R_PPC64_TOC16_HA,
    R_PPC64_TOC16_LO,
    R_PPC64_TOC16_LO_DS,
    R_PPC64_TOCSAVE,
    U64,
)
from .stubs import REL24_ERROR, REL24_KERNEL_ERROR, rel24, rel24_bad, rel24_local, rel24_needs_stub, rel24_stub_calls
from .toc import entry_batch, entry_reloc, my_r2

#: Numbers the kernel does not handle, named for error messages.
OTHER_TYPES = {
    0: "R_PPC64_NONE",
    2: "R_PPC64_ADDR24",
    3: "R_PPC64_ADDR16",
    4: "R_PPC64_ADDR16_LO",
    5: "R_PPC64_ADDR16_HI",
    6: "R_PPC64_ADDR16_HA",
    7: "R_PPC64_ADDR14",
    11: "R_PPC64_REL14",
    14: "R_PPC64_GOT16",
    18: "R_PPC64_PLTREL24",
    20: "R_PPC64_GLOB_DAT",
    21: "R_PPC64_JMP_SLOT",
    22: "R_PPC64_RELATIVE",
    24: "R_PPC64_UADDR32",
    25: "R_PPC64_UADDR16",
    37: "R_PPC64_ADDR30",
    39: "R_PPC64_ADDR16_HIGHER",
    40: "R_PPC64_ADDR16_HIGHERA",
    41: "R_PPC64_ADDR16_HIGHEST",
    42: "R_PPC64_ADDR16_HIGHESTA",
    43: "R_PPC64_UADDR64",
    49: "R_PPC64_TOC16_HI",
    56: "R_PPC64_ADDR16_DS",
    57: "R_PPC64_ADDR16_LO_DS",
    58: "R_PPC64_GOT16_DS",
    59: "R_PPC64_GOT16_LO_DS",
    116: "R_PPC64_REL24_NOTOC",
    123: "R_PPC64_PCREL_OPT",
    132: "R_PPC64_PCREL34",
    133: "R_PPC64_GOT_PCREL34",
    249: "R_PPC64_REL16",
    251: "R_PPC64_REL16_HI",
}


def _toc_rel(S: Array, A: Array, P: Array, ctx: Any) -> Array:
    """S + A - my_r2"""
    return S + A.view(U64) - U64(my_r2(ctx))


def _toc(S: Array, A: Array, P: Array, ctx: Any) -> Array:
    """my_r2 (S and A ignored)"""
    return np.full(S.shape, my_r2(ctx), dtype=np.uint64)


def _ha_encode(values: Array, old: Array, ctx: Any) -> Array:
    return ((values + U64(0x8000)) >> U64(16)) & U64(0xFFFF)


def _lo_encode(values: Array, old: Array, ctx: Any) -> Array:
    return values & U64(0xFFFF)


def _ds_encode(values: Array, old: Array, ctx: Any) -> Array:
    return (old & U64(3)) | (values & U64(0xFFFC))


def _fits_neither_32(values: Array, ctx: Any) -> Array:
    v = values.view(np.int64)
    return (v < -(1 << 31)) | (v > 0xFFFFFFFF)


def reloc_types(kernel: KernelTarget) -> list[RelocType]:
    """The ppc64 (ELFv2, non-PCREL) type table."""
    m = "{module}"
    return [
        RelocType(
            R_PPC64_ADDR32,
            "R_PPC64_ADDR32",
            4,
            "S + A",
            ABS,
            truncates=_fits_neither_32,
            range_doc="none (low 32 bits stored)",
        ),
        RelocType(R_PPC64_ADDR64, "R_PPC64_ADDR64", 8, "S + A", ABS, range_doc="none"),
        RelocType(R_PPC64_TOC, "R_PPC64_TOC", 8, "my_r2", _toc, range_doc="none"),
        RelocType(
            R_PPC64_TOC16,
            "R_PPC64_TOC16",
            2,
            "S + A - my_r2",
            _toc_rel,
            check=signed(16),
            error="TOC offset {value:#x} does not fit a signed 16-bit field",
            kernel_error=m + ": bad TOC16 relocation (0x{value:x})",
            encode=_lo_encode,
            range_doc="-0x8000 <= S + A - my_r2 <= 0x7fff",
        ),
        RelocType(
            R_PPC64_TOC16_LO, "R_PPC64_TOC16_LO", 2, "lo(S + A - my_r2)", _toc_rel, encode=_lo_encode, range_doc="none"
        ),
        RelocType(
            R_PPC64_TOC16_HA, "R_PPC64_TOC16_HA", 2, "ha(S + A - my_r2)", _toc_rel, encode=_ha_encode, range_doc="none"
        ),
        RelocType(
            R_PPC64_TOC16_DS,
            "R_PPC64_TOC16_DS",
            2,
            "S + A - my_r2 (DS field)",
            _toc_rel,
            check=any_of(misaligned(4), signed(16)),
            error="TOC offset {value:#x} is not a multiple of 4 in [-0x8000, 0x7fff]",
            kernel_error=m + ": bad TOC16_DS relocation (0x{value:x})",
            encode=_ds_encode,
            range_doc="multiple of 4, -0x8000 <= S + A - my_r2 <= 0x7fff",
        ),
        RelocType(
            R_PPC64_TOC16_LO_DS,
            "R_PPC64_TOC16_LO_DS",
            2,
            "lo(S + A - my_r2) (DS field)",
            _toc_rel,
            check=misaligned(4),
            error="TOC offset {value:#x} is not a multiple of 4",
            kernel_error=m + ": bad TOC16_LO_DS relocation (0x{value:x})",
            encode=_ds_encode,
            range_doc="S + A - my_r2 multiple of 4",
        ),
        RelocType(
            R_PPC64_REL24,
            "R_PPC64_REL24",
            4,
            "stub or local entry - P",
            compute=rel24_local,
            check=rel24_bad,
            error=REL24_ERROR,
            kernel_error=REL24_KERNEL_ERROR,
            encode=insn_field(LI_MASK),
            handler=rel24,
            batch=rel24_stub_calls,
            split=rel24_needs_stub,
            write_hint="patch_instruction" if kernel.has(versions.PATCH_INSTRUCTION) else None,
            insn=True,
            range_doc="multiple of 4, -0x2000000 <= d <= 0x1fffffc",
        ),
        RelocType(
            R_PPC64_REL32,
            "R_PPC64_REL32",
            4,
            "S + A - P",
            PREL,
            check=signed(32),
            error="value {value:#x} does not fit a signed 32-bit field",
            kernel_error=m + ": REL32 {svalue} out of range!",
            range_doc="-2**31 <= S + A - P < 2**31",
        ),
        RelocType(R_PPC64_REL64, "R_PPC64_REL64", 8, "S + A - P", PREL, range_doc="none"),
        RelocType(R_PPC64_TOCSAVE, "R_PPC64_TOCSAVE", 0, "none"),
        RelocType(
            R_PPC64_ENTRY,
            "R_PPC64_ENTRY",
            8,
            "addis/addi r2,r12,my_r2 - P",
            handler=entry_reloc,
            batch=entry_batch,
            insn=True,
            range_doc="rewritten only if -0x80008000 <= my_r2 - P <= 0x7fff7fff",
        ),
        RelocType(R_PPC64_REL16_LO, "R_PPC64_REL16_LO", 2, "lo(S + A - P)", PREL, encode=_lo_encode, range_doc="none"),
        RelocType(R_PPC64_REL16_HA, "R_PPC64_REL16_HA", 2, "ha(S + A - P)", PREL, encode=_ha_encode, range_doc="none"),
    ]
