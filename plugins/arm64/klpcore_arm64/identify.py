"""Which modules the arm64 plugin claims, and how they are described."""

from __future__ import annotations

from typing import Any

from klpcore.arch import ArchSpec

from .options import OPTION_KINDS
from .types import KERNEL_UNSUPPORTED, OTHER_TYPES

EM_AARCH64 = 183
#: (e_machine, class, byte order, e_flags) this plugin answers to.
ARCHES = [(EM_AARCH64, 2, "little", 0), (EM_AARCH64, 2, "big", 0)]

#: where Debian 6.1's modules go without KASLR: ``module_alloc_base`` =
#: ``_etext - MODULES_VSIZE`` (128 MiB), within direct branch range of the
#: kernel text (``_etext`` = 0xffff800008d00000 in 6.1.0-50-arm64)
DEFAULT_BASE = 0xFFFF800000D00000
#: the per-CPU reserved chunk follows the kernel image's static per-CPU data
#: (``__per_cpu_end`` = 0xffff8000098184a8 in 6.1.0-50-arm64, page-rounded)
PERCPU_BASE = 0xFFFF800009819000
#: MODULES_VSIZE since the 6.5 module VA rework (128 MiB before)
MODULES_VSIZE = 2 << 30
#: ``R_AARCH64_ABS64``: a pointer in data
R_AARCH64_ABS64 = 257
#: sections module_frob_arch_sections sizes for PLT entries
STUB_SECTIONS = frozenset({".plt", ".init.plt", ".text.ftrace_trampoline"})
MASK64 = (1 << 64) - 1


def insn_target(insn: Any) -> int | None:
    """Where a decoded branch, ADR/ADRP or literal load reaches (capstone, detail mode)."""
    word = int.from_bytes(bytes(insn.bytes), "little")
    pc = int(insn.address)
    if (word & 0x7C000000) == 0x14000000:  # B / BL
        off = word & 0x3FFFFFF
        off -= (off & 0x2000000) << 1
        return (pc + 4 * off) & MASK64
    if (word & 0x1F000000) == 0x10000000:  # ADR / ADRP
        imm = (((word >> 5) & 0x7FFFF) << 2) | ((word >> 29) & 3)
        imm -= (imm & 0x100000) << 1
        if word >> 31:
            return ((pc & ~0xFFF) + (imm << 12)) & MASK64
        return (pc + imm) & MASK64
    if (word & 0xFF000010) == 0x54000000 or (word & 0x7E000000) == 0x34000000 or (word & 0x3B000000) == 0x18000000:
        off = (word >> 5) & 0x7FFFF  # B.cond, CBZ/CBNZ, LDR literal
        off -= (off & 0x40000) << 1
        return (pc + 4 * off) & MASK64
    if (word & 0x7E000000) == 0x36000000:  # TBZ / TBNZ
        off = (word >> 5) & 0x3FFF
        off -= (off & 0x2000) << 1
        return (pc + 4 * off) & MASK64
    return None


def identify(machine: int, elfclass: int, byteorder: str) -> ArchSpec | None:
    if machine != EM_AARCH64 or elfclass != 2:
        return None
    return ArchSpec(
        name="arm64",
        machine=EM_AARCH64,
        byteorder=byteorder,
        insn_byteorder="little",  # instructions are always little-endian (le32_to_cpu/cpu_to_le32)
        description="arm64 (arch/arm64/kernel/module.c, module-plts.c)",
        unknown_type_error=KERNEL_UNSUPPORTED,
        default_base=DEFAULT_BASE,
        percpu_base=PERCPU_BASE,
        module_area_size=MODULES_VSIZE,
        stub_sections=STUB_SECTIONS,
        pointer_type=R_AARCH64_ABS64,
        config_symbol="CONFIG_ARM64",
        capstone=("CS_ARCH_ARM64", "CS_MODE_ARM"),
        insn_target=insn_target,
        type_names=OTHER_TYPES,
        # the kernel image lies in the top of the address space (48- or 52-bit VA, with or without KASLR)
        kernel_text_range=(0xFFF0000000000000, 1 << 64),
        options=OPTION_KINDS,
    )
