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
from klpcore.arch import ABS, PREL, ArchSpec, Entry, RelocType, signed, unsigned
from klpcore.constants import MemType, ModuleState
from klpcore.engine import RelocFailure, SectionContext, clear_section
from klpcore.kernel import KernelTarget
from klpcore.loader import Example
from klpcore.memory import ModuleImage, Perm, Region

EM_X86_64 = 62
#: (e_machine, class, byte order, e_flags) this plugin answers to.
ARCHES = [(EM_X86_64, 2, "little", 0)]

# Kernel messages per era.  ``loc %p`` is a hashed pointer the kernel makes up
# at boot; klpcore prints the address as the kernel does with
# ``no_hash_pointers`` (16 hex digits).  The overflow report is two pr_err lines.
_OVERFLOW = "overflow in relocation type {number} val {value:x}\n`{module}' likely not compiled with -mcmodel=kernel"
_OVERFLOW_619 = (
    "overflow in relocation type {number} val {value:x} sec {sec} idx {idx}\n"
    "`{module}' likely not compiled with -mcmodel=kernel"
)
_NONZERO_NEW = (
    "x86/modules: Invalid relocation target, existing value is nonzero for type {number}, loc {loc:016x}, val {value:x}"
)
_NONZERO_OLD = (
    "x86/modules: Skipping invalid relocation target, existing value is nonzero for type {number}, loc {loc:016x}, "
    "val {value:x}"
)
_NONZERO_619 = (
    "x86/modules: Invalid relocation target, existing value is nonzero for sec {sec}, idx {idx}, type {number}, "
    "loc {loc:x}, val {value:x}"
)
_MISMATCH = (
    "x86/modules: Invalid relocation target, existing value does not match expected value for type {number}, "
    "loc {loc:016x}, val {value:x}"
)
_MISMATCH_619 = (
    "x86/modules: Invalid relocation target, existing value does not match expected value for sec {sec}, "
    "idx {idx}, type {number}, loc {loc:x}, val {value:x}"
)


def messages(kernel: KernelTarget) -> dict[str, str]:
    """The x86 relocation messages as ``kernel`` prints them."""
    if kernel.has("reloc_messages_sec_idx"):
        return {"overflow": _OVERFLOW_619, "nonzero": _NONZERO_619, "mismatch": _MISMATCH_619}
    if kernel.has("x86_write_relocate_add"):
        return {"overflow": _OVERFLOW, "nonzero": _NONZERO_NEW, "mismatch": _MISMATCH}
    return {"overflow": _OVERFLOW, "nonzero": _NONZERO_OLD, "mismatch": _MISMATCH}


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


R_X86_64_REX_GOTPCRELX = 42


def clang_stack_cookie(kernel: KernelTarget) -> bool:
    """6.15+: a kernel built by clang < 17 with the stack protector accepts
    ``R_X86_64_REX_GOTPCRELX`` against ``__stack_chk_guard`` (a config fact)."""
    cfg = kernel.config
    if cfg is None or not kernel.has("x86_clang_stack_cookie_gotpcrel"):
        return False
    version = cfg.integer("CLANG_VERSION") or 0
    return cfg.enabled("CC_IS_CLANG") and cfg.enabled("STACKPROTECTOR") and 0 < version < 170000


def stack_cookie_gotpcrel(ctx: SectionContext, entry: Entry) -> None:
    """The clang < 17 stack-cookie load: the GOT slot is replaced by a static
    pointer in vmlinux that holds ``&__stack_chk_guard``; the field becomes a
    PC32 to that pointer (zero check as for every x86 type)."""
    e = entry
    syms = ctx.kernel_symbols
    guard = syms.objects["vmlinux"].matches("__stack_chk_guard") if syms and "vmlinux" in syms.objects else []
    if len(guard) != 1 or guard[0] != e.S:
        raise RelocFailure(
            "R_X86_64_REX_GOTPCRELX is accepted only against __stack_chk_guard (clang < 17 stack-protector builds)",
            f"{ctx.module_name}: Unsupported GOTPCREL relocation",
        )
    ptr = ctx.kernel.options.get("stack_chk_guard_ptr")
    if ptr is None:
        raise RelocFailure(
            "R_X86_64_REX_GOTPCRELX becomes a PC32 to the kernel's static pointer to __stack_chk_guard (a local "
            "of __write_relocate_add); give its address with -O stack_chk_guard_ptr=ADDR"
        )
    value = (int(ptr) + e.addend - e.P) & 0xFFFFFFFFFFFFFFFF
    if ctx.read_uint(e.P, 4) != 0:
        rt = ctx.arch.types[R_X86_64_REX_GOTPCRELX]
        raise RelocFailure("target already written (nonzero)", ctx.fmt(rt.zero_error, rt, value, e.index))
    ctx.write_uint(e.P, 4, value)


def reloc_types(kernel: KernelTarget) -> list[RelocType]:
    """The x86_64 type table for ``kernel``."""
    msg = messages(kernel)
    common: dict[str, Any] = {"require_zero": True, "zero_error": msg["nonzero"]}
    pc32 = signed(32)
    extra = []
    if clang_stack_cookie(kernel):
        extra.append(
            RelocType(
                R_X86_64_REX_GOTPCRELX,
                "R_X86_64_REX_GOTPCRELX",
                4,
                "&stack_chk_guard_ptr + A - P",
                handler=stack_cookie_gotpcrel,
                zero_error=msg["nonzero"],
                range_doc="only against __stack_chk_guard (clang < 17 + STACKPROTECTOR, 6.15+)",
            )
        )
    table = [
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
            kernel_error=msg["overflow"],
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
            kernel_error=msg["overflow"],
            range_doc="-2**31 <= S + A < 2**31",
            **common,
        ),
        RelocType(24, "R_X86_64_PC64", 8, "S + A - P", PREL, range_doc="none", **common),
    ]
    return [*extra, *table]


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
        # &__stack_chk_guard for R_X86_64_REX_GOTPCRELX (clang < 17 stack-protector kernels, 6.15+)
        options={"stack_chk_guard_ptr": "address"},
    )


@hookimpl
def klp_arch_reloc_types(arch: ArchSpec, kernel: KernelTarget) -> Sequence[RelocType]:
    return reloc_types(kernel)


#: x86_64 distribution kernels (Debian, Fedora, RHEL, SUSE, Ubuntu) all set these.
CONFIG_DEFAULTS = {
    "STRICT_MODULE_RWX": "y",
    "ARCH_HAS_STRICT_MODULE_RWX": "y",
    "LIVEPATCH": "y",
    "HAVE_STATIC_CALL_INLINE": "y",  # selected with objtool on x86_64
}


@hookimpl
def klp_arch_page_size(kernel: KernelTarget) -> int:
    """x86_64 has 4 KiB pages only."""
    return 4096


@hookimpl
def klp_arch_config_default(name: str, kernel: KernelTarget) -> str | None:
    return CONFIG_DEFAULTS.get(name)


@hookimpl
def klp_arch_write_method(
    image: ModuleImage, region: Region, address: int, size: int, kernel: KernelTarget
) -> str | None:
    """``write_relocate_add`` uses memcpy while the module is unformed and
    text_poke afterwards (5.8+).  Before 5.8 livepatch made the module
    writable around its writes (``module_disable_ro``, 4.5-5.7; the 2015 RFC
    era's ``set_memory_rw``/``set_memory_ro`` before that)."""
    if image.state == ModuleState.UNFORMED:
        return "memcpy"
    if kernel.has("x86_text_poke"):
        return "text_poke"
    if kernel.has("module_rwx_helpers"):
        return "module_disable_ro"
    # the 2015 RFC made only the core text writable (set_memory_rw on module_core..core_text_size)
    if region.memtype == MemType.TEXT:
        return "set_memory_rw"
    return "store" if region.perms & Perm.W else None


@hookimpl
def klp_arch_clear_section(ctx: SectionContext) -> bool:
    """``clear_relocate_add`` (Linux 6.3+); earlier kernels leave the values."""
    if ctx.kernel.has("x86_write_relocate_add"):
        ctx.state["clear_mismatch_message"] = messages(ctx.kernel)["mismatch"]
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
