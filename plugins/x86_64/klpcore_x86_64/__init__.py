"""klpcore plugin for x86_64: arch/x86/kernel/module.c in user space.

The kernel's ``apply_relocate_add`` for x86_64 handles seven types; every one
writes ``S + A`` or ``S + A - P`` into a 4- or 8-byte little-endian field and
refuses a place whose bytes are not all zero (so a relocation is never applied
twice).  ``R_X86_64_32``/``32S`` are range checked; ``PC32``/``PLT32`` are
truncated silently (klpcore warns).  Since Linux 6.3 ``clear_relocate_add``
zeroes the places of a livepatch object's relocations when it unloads.
Once the module is formed, writes go through ``text_poke`` (Linux 5.8+).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from klpcore import hookimpl
from klpcore.arch import ABS, PREL, ArchSpec, RelocType, signed, unsigned
from klpcore.constants import ModuleState
from klpcore.engine import SectionContext, clear_section
from klpcore.kernel import KernelTarget
from klpcore.loader import Example
from klpcore.memory import ModuleImage, Region

EM_X86_64 = 62
#: (e_machine, class, byte order, e_flags) this plugin answers to.
ARCHES = [(EM_X86_64, 2, "little", 0)]

_OVERFLOW = "overflow in relocation type {number} val {value:x}; '{module}' likely not compiled with -mcmodel=kernel"
_NONZERO_NEW = (
    "x86/modules: Invalid relocation target, existing value is nonzero for type {number}, loc {loc:#x}, val {value:x}"
)
_NONZERO_OLD = (
    "x86/modules: Skipping invalid relocation target, existing value is nonzero for type {number}, loc {loc:#x}, "
    "val {value:x}"
)
_MISMATCH = (
    "x86/modules: Invalid relocation target, existing value does not match expected value for type {number}, "
    "loc {loc:#x}, val {value:x}"
)

#: Numbers the kernel does not handle, named for error messages.
OTHER_TYPES = {
    3: "R_X86_64_GOT32",
    5: "R_X86_64_COPY",
    6: "R_X86_64_GLOB_DAT",
    7: "R_X86_64_JUMP_SLOT",
    8: "R_X86_64_RELATIVE",
    9: "R_X86_64_GOTPCREL",
    12: "R_X86_64_16",
    13: "R_X86_64_PC16",
    14: "R_X86_64_8",
    15: "R_X86_64_PC8",
    41: "R_X86_64_GOTPCRELX",
    42: "R_X86_64_REX_GOTPCRELX",
}


def reloc_types(kernel: KernelTarget) -> list[RelocType]:
    """The x86_64 type table for ``kernel``."""
    zero = _NONZERO_NEW if kernel.at_least(6, 3) else _NONZERO_OLD
    common: dict[str, Any] = {"require_zero": True, "zero_error": zero}
    pc32 = signed(32)
    return [
        RelocType(0, "R_X86_64_NONE", 0, "none"),
        RelocType(1, "R_X86_64_64", 8, "S + A", ABS, range_doc="none", **common),
        RelocType(
            2, "R_X86_64_PC32", 4, "S + A - P", PREL, truncates=pc32, range_doc="none (truncated silently)", **common
        ),
        RelocType(
            4, "R_X86_64_PLT32", 4, "S + A - P", PREL, truncates=pc32, range_doc="none (truncated silently)", **common
        ),
        RelocType(
            10,
            "R_X86_64_32",
            4,
            "S + A",
            ABS,
            check=unsigned(32),
            error="value {value:#x} does not fit an unsigned 32-bit field (module not built with -mcmodel=kernel?)",
            kernel_error=_OVERFLOW,
            range_doc="0 <= S + A <= 0xffffffff",
            **common,
        ),
        RelocType(
            11,
            "R_X86_64_32S",
            4,
            "S + A",
            ABS,
            check=signed(32),
            error="value {value:#x} does not fit a signed 32-bit field (module not built with -mcmodel=kernel?)",
            kernel_error=_OVERFLOW,
            range_doc="-2**31 <= S + A < 2**31",
            **common,
        ),
        RelocType(24, "R_X86_64_PC64", 8, "S + A - P", PREL, range_doc="none", **common),
    ]


def insn_target(insn: Any) -> int | None:
    """The address a decoded instruction reaches: a branch's immediate target or
    a RIP-relative operand's address (capstone, detail mode)."""
    from capstone import x86

    for op in insn.operands:
        if op.type == x86.X86_OP_MEM and op.mem.base == x86.X86_REG_RIP:
            return (insn.address + insn.size + op.mem.disp) & 0xFFFFFFFFFFFFFFFF
    if insn.group(x86.X86_GRP_JUMP) or insn.group(x86.X86_GRP_CALL):
        for op in insn.operands:
            if op.type == x86.X86_OP_IMM:
                return int(op.imm) & 0xFFFFFFFFFFFFFFFF
    return None


@hookimpl
def klp_arch_identify(machine: int, elfclass: int, byteorder: str, e_flags: int) -> ArchSpec | None:
    if machine != EM_X86_64 or elfclass != 2 or byteorder != "little":
        return None
    return ArchSpec(
        name="x86_64",
        machine=EM_X86_64,
        byteorder="little",
        description="x86_64 (arch/x86/kernel/module.c)",
        unknown_type_error="{module}: Unknown rela relocation: {number}",
        capstone=("CS_ARCH_X86", "CS_MODE_64"),
        insn_target=insn_target,
        ignored_undefined=frozenset({"_GLOBAL_OFFSET_TABLE_"}),
        type_names=OTHER_TYPES,
        kernel_text_range=(0xFFFFFFFF80000000, 1 << 64),  # __START_KERNEL_map and up
    )


@hookimpl
def klp_arch_reloc_types(arch: ArchSpec, kernel: KernelTarget) -> Sequence[RelocType]:
    return reloc_types(kernel)


@hookimpl
def klp_arch_write_method(image: ModuleImage, region: Region, address: int, size: int, kernel: KernelTarget) -> str:
    """``write_relocate_add`` uses memcpy while the module is unformed and
    text_poke afterwards (5.8+).  Before 5.8 livepatch made the module
    writable around its writes (``module_disable_ro``, 4.5-5.7; the 2015 RFC
    era's ``set_memory_rw``/``set_memory_ro`` before that)."""
    if image.state == ModuleState.UNFORMED:
        return "memcpy"
    if kernel.at_least(5, 8):
        return "text_poke"
    if kernel.at_least(4, 5):
        return "module_disable_ro"
    return "set_memory_rw"


@hookimpl
def klp_arch_clear_section(ctx: SectionContext) -> bool:
    """``clear_relocate_add`` (Linux 6.3+); earlier kernels leave the values."""
    if ctx.kernel.at_least(6, 3):
        ctx.state["clear_mismatch_message"] = _MISMATCH
        clear_section(ctx)
    return True


@hookimpl
def klp_arch_examples() -> Sequence[Example]:
    here = Path(__file__).parent / "examples"
    return [
        Example(
            name="x86_64",
            module=here / "klpdemo.ko",
            symbols=(here / "System.map",),
            description="a livepatch module patching vmlinux (final .klp.rela format)",
        )
    ]
