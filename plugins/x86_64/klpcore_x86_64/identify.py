"""Identification: ``EM_X86_64`` (62), ELFCLASS64, little-endian, and the
targets of decoded instructions."""

from __future__ import annotations

from typing import Any

from klpcore.arch import ArchSpec

from .types import OTHER_TYPES

EM_X86_64 = 62
#: the module area: MODULES_VADDR (``__START_KERNEL_map`` + 1 GiB of kernel image) to
#: MODULES_END (0xffffffffff000000); the default --base
DEFAULT_BASE = 0xFFFFFFFFC0000000
MODULES_END = 0xFFFFFFFFFF000000
#: where ``.data..percpu`` lands when --percpu-base is not given (the per-CPU reserved chunk)
PERCPU_BASE = 0xFFFFFFFFA0000000
#: ``R_X86_64_64``: a pointer in data
R_X86_64_64 = 1
#: (e_machine, class, byte order, e_flags) this plugin answers to.
ARCHES = [(EM_X86_64, 2, "little", 0)]


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


def identify(machine: int, elfclass: int, byteorder: str) -> ArchSpec | None:
    """``EM_X86_64``, ELFCLASS64, little-endian."""
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
        default_base=DEFAULT_BASE,
        percpu_base=PERCPU_BASE,
        module_area_size=MODULES_END - DEFAULT_BASE,
        ignored_undefined=frozenset({"_GLOBAL_OFFSET_TABLE_"}),
        pointer_type=R_X86_64_64,
        config_symbol="CONFIG_X86_64",
        type_names=OTHER_TYPES,
        kernel_text_range=(0xFFFFFFFF80000000, 1 << 64),  # __START_KERNEL_map and up
        # &__stack_chk_guard for R_X86_64_REX_GOTPCRELX (clang < 17 stack-protector kernels, 6.15+)
        options={"stack_chk_guard_ptr": "address"},
    )
