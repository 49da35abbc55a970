"""The x86_64 relocation types of ``apply_relocate_add``, as a table, with the
kernel's messages per era.

The kernel's ``apply_relocate_add`` for x86_64 handles seven types; every one
writes ``S + A`` or ``S + A - P`` into a 4- or 8-byte little-endian field and
refuses a place whose bytes are not all zero (so a relocation is never applied
twice).  ``R_X86_64_32``/``32S`` are range checked; ``PC32``/``PLT32`` are
truncated silently (klpcore warns).  Linux 6.15+ also accepts the clang < 17
stack-cookie ``R_X86_64_REX_GOTPCRELX``.
"""

from __future__ import annotations

from typing import Any

from klpcore.arch import ABS, PREL, Entry, RelocType, signed, unsigned
from klpcore.engine import RelocFailure, SectionContext
from klpcore.kernel import KernelTarget

from . import versions

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
    if kernel.has(versions.WRITE_RELOCATE_ADD):
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
    if cfg is None or not kernel.has(versions.CLANG_STACK_COOKIE_GOTPCREL):
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
