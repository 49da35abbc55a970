"""The s390 relocation types of ``apply_rela``, as a table, and their field encoders.

Every type computes a value, then ``apply_rela_bits(loc, val, sign, bits,
shift)`` checks and writes it: the value must be a multiple of ``1 << shift``;
``val >> shift`` (arithmetic when signed) must fit ``bits`` signed or unsigned
bits; the field is written big-endian:

====  =====  =================================================================
bits  bytes  field
====  =====  =================================================================
8     1      the low 8 bits
12    2      ``(v & 0xfff) | (old & 0xf000)``: the top nibble (base register) stays
16    2      the low 16 bits
20    4      ``(v & 0xfff) << 16 | (v & 0xff000) >> 4 | (old & 0xf00000ff)``:
             DL (low 12 bits) and DH (high 8 bits) of an RXY/RSY displacement
32    4      the low 32 bits
64    8      all 64 bits
====  =====  =================================================================

A refused value prints ``module %s: relocation error for symbol %s (r_type %i,
value 0x%lx)`` with the value before the shift; an unknown type prints
``module %s: unknown relocation: %u``; ``R_390_COPY``, ``GLOB_DAT``,
``JMP_SLOT`` and ``RELATIVE`` fail with ``-ENOEXEC`` and no message.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from klpcore.arch import ABS, PREL, Array, Check, Encode, Entry, RelocType, any_of, misaligned, signed, unsigned
from klpcore.engine import RelocFailure, SectionContext
from klpcore.kernel import KernelTarget

from . import gotplt

U64 = np.uint64

R_390_NONE = 0
R_390_8 = 1
R_390_12 = 2
R_390_16 = 3
R_390_32 = 4
R_390_PC32 = 5
R_390_GOT12 = 6
R_390_GOT32 = 7
R_390_PLT32 = 8
R_390_COPY = 9
R_390_GLOB_DAT = 10
R_390_JMP_SLOT = 11
R_390_RELATIVE = 12
R_390_GOTOFF32 = 13
R_390_GOTPC = 14
R_390_GOT16 = 15
R_390_PC16 = 16
R_390_PC16DBL = 17
R_390_PLT16DBL = 18
R_390_PC32DBL = 19
R_390_PLT32DBL = 20
R_390_GOTPCDBL = 21
R_390_64 = 22
R_390_PC64 = 23
R_390_GOT64 = 24
R_390_PLT64 = 25
R_390_GOTENT = 26
R_390_GOTOFF16 = 27
R_390_GOTOFF64 = 28
R_390_GOTPLT12 = 29
R_390_GOTPLT16 = 30
R_390_GOTPLT32 = 31
R_390_GOTPLT64 = 32
R_390_GOTPLTENT = 33
R_390_PLTOFF16 = 34
R_390_PLTOFF32 = 35
R_390_PLTOFF64 = 36
R_390_20 = 57
R_390_GOT20 = 58
R_390_GOTPLT20 = 59

#: Numbers the kernel does not handle ("unknown relocation"), named for messages.
OTHER_TYPES = {
    37: "R_390_TLS_LOAD",
    38: "R_390_TLS_GDCALL",
    39: "R_390_TLS_LDCALL",
    40: "R_390_TLS_GD32",
    41: "R_390_TLS_GD64",
    42: "R_390_TLS_GOTIE12",
    43: "R_390_TLS_GOTIE32",
    44: "R_390_TLS_GOTIE64",
    45: "R_390_TLS_LDM32",
    46: "R_390_TLS_LDM64",
    47: "R_390_TLS_IE32",
    48: "R_390_TLS_IE64",
    49: "R_390_TLS_IEENT",
    50: "R_390_TLS_LE32",
    51: "R_390_TLS_LE64",
    52: "R_390_TLS_LDO32",
    53: "R_390_TLS_LDO64",
    54: "R_390_TLS_DTPMOD",
    55: "R_390_TLS_DTPOFF",
    56: "R_390_TLS_TPOFF",
    60: "R_390_TLS_GOTIE20",
    61: "R_390_IRELATIVE",
    62: "R_390_PC12DBL",
    63: "R_390_PLT12DBL",
    64: "R_390_PC24DBL",
    65: "R_390_PLT24DBL",
}

KERNEL_ERROR = "module {module}: relocation error for symbol {symbol} (r_type {number}, value 0x{value:x})"


# ------------------------------------------------------------------ encoders
def field12(values: Array, old: Array, ctx: Any) -> Array:
    """12-bit displacement: the low 12 bits, keeping the old top nibble (B2)."""
    return (values & U64(0xFFF)) | (old & U64(0xF000))


def field20(values: Array, old: Array, ctx: Any) -> Array:
    """20-bit long displacement: DL (low 12) at bits 27..16, DH (high 8) at
    bits 15..8 of the word; B2 (31..28) and the opcode byte (7..0) stay."""
    return cast(
        Array, ((values & U64(0xFFF)) << U64(16)) | ((values & U64(0xFF000)) >> U64(4)) | (old & U64(0xF00000FF))
    )


def low(bits: int, shift: int = 0) -> Encode:
    """The low ``bits`` bits of ``value >> shift``."""
    mask = U64((1 << bits) - 1) if bits < 64 else U64(0xFFFFFFFFFFFFFFFF)

    def encode(values: Array, old: Array, ctx: Any) -> Array:
        return (values >> U64(shift)) & mask

    return encode


def bits_check(sign: bool, bits: int, shift: int) -> Check | None:
    """``apply_rela_bits``'s refusal rule (None where nothing can fail)."""
    rng = signed(bits, shift) if sign else unsigned(bits, shift)
    if bits == 64 and not shift:
        return None
    return any_of(misaligned(1 << shift), rng) if shift else rng


def encoder(bits: int, shift: int) -> Encode:
    if bits == 12:
        return field12
    if bits == 20:
        return field20
    return low(bits, shift)


# ------------------------------------------------------------------ computes
def _sym(ctx: SectionContext) -> np.ndarray:
    return ctx.group_symbols()


def got_rel(S: Array, A: Array, P: Array, ctx: SectionContext) -> Array:
    """G + A: the symbol's GOT slot offset in the GOT."""
    return cast(Array, ctx.state["got_off"][_sym(ctx)].view(U64) + A.view(U64))


def got_ent(S: Array, A: Array, P: Array, ctx: SectionContext) -> Array:
    """GOT + G + A - P (6.5+; before: text base + G + A - P)."""
    return cast(Array, U64(gotplt.gotent_base(ctx)) + got_rel(S, A, P, ctx) - P)


def _plt_addr(ctx: SectionContext) -> Array:
    return cast(Array, U64(gotplt.geometry(ctx).plt) + ctx.state["plt_off"][_sym(ctx)].view(U64))


def plt_rel(S: Array, A: Array, P: Array, ctx: SectionContext) -> Array:
    """PLTe + A - P: always through the PLT entry."""
    return cast(Array, _plt_addr(ctx) + A.view(U64) - P)


def plt_dbl(reach: int) -> Any:
    """T + A - P, T = S when -``reach`` <= S - P <= ``reach`` - 1 (the range
    test ignores A), else the symbol's PLT entry."""
    k = U64(reach)
    limit = U64(2 * reach)

    def compute(S: Array, A: Array, P: Array, ctx: SectionContext) -> Array:
        direct = (S - P + k) < limit
        return cast(Array, np.where(direct, S, _plt_addr(ctx)) + A.view(U64) - P)

    compute.__doc__ = f"T + A - P; T = S if -{reach:#x} <= S - P <= {reach - 1:#x} else PLTe"
    return compute


def plt_off(S: Array, A: Array, P: Array, ctx: SectionContext) -> Array:
    """PLTe - GOT + A (``arch.plt_offset - arch.got_offset + plt_offset + A``)."""
    geo = gotplt.geometry(ctx)
    return cast(Array, U64(geo.plt_offset - geo.got_offset) + ctx.state["plt_off"][_sym(ctx)].view(U64) + A.view(U64))


def got_off(S: Array, A: Array, P: Array, ctx: SectionContext) -> Array:
    """S + A - GOT"""
    return S + A.view(U64) - U64(gotplt.geometry(ctx).got)


def got_pc(S: Array, A: Array, P: Array, ctx: SectionContext) -> Array:
    """GOT + A - P (the symbol is ignored)"""
    return cast(Array, U64(gotplt.geometry(ctx).got) + A.view(U64) - P)


def refuse(ctx: SectionContext, entry: Entry) -> None:
    """COPY, GLOB_DAT, JMP_SLOT, RELATIVE: -ENOEXEC without a message."""
    name = ctx.arch.type_name(entry.type)
    raise RelocFailure(
        f"{name} is only for modules linked with -shared; the kernel refuses it (-ENOEXEC) without printing a message",
        None,
    )


# ------------------------------------------------------------------ table
#: (number, name, compute, formula, sign, bits, shift)
_ROWS: list[tuple[int, str, Any, str, bool, int, int]] = [
    (R_390_8, "R_390_8", ABS, "S + A", False, 8, 0),
    (R_390_12, "R_390_12", ABS, "S + A", False, 12, 0),
    (R_390_16, "R_390_16", ABS, "S + A", False, 16, 0),
    (R_390_20, "R_390_20", ABS, "S + A", True, 20, 0),
    (R_390_32, "R_390_32", ABS, "S + A", False, 32, 0),
    (R_390_64, "R_390_64", ABS, "S + A", False, 64, 0),
    (R_390_PC16, "R_390_PC16", PREL, "S + A - P", True, 16, 0),
    (R_390_PC16DBL, "R_390_PC16DBL", PREL, "S + A - P", True, 16, 1),
    (R_390_PC32DBL, "R_390_PC32DBL", PREL, "S + A - P", True, 32, 1),
    (R_390_PC32, "R_390_PC32", PREL, "S + A - P", True, 32, 0),
    (R_390_PC64, "R_390_PC64", PREL, "S + A - P", True, 64, 0),
    (R_390_GOT12, "R_390_GOT12", got_rel, "G + A", False, 12, 0),
    (R_390_GOT16, "R_390_GOT16", got_rel, "G + A", False, 16, 0),
    (R_390_GOT20, "R_390_GOT20", got_rel, "G + A", True, 20, 0),
    (R_390_GOT32, "R_390_GOT32", got_rel, "G + A", False, 32, 0),
    (R_390_GOT64, "R_390_GOT64", got_rel, "G + A", False, 64, 0),
    (R_390_GOTENT, "R_390_GOTENT", got_ent, "GOT + G + A - P", True, 32, 1),
    (R_390_GOTPLT12, "R_390_GOTPLT12", got_rel, "G + A", False, 12, 0),
    (R_390_GOTPLT16, "R_390_GOTPLT16", got_rel, "G + A", False, 16, 0),
    (R_390_GOTPLT20, "R_390_GOTPLT20", got_rel, "G + A", True, 20, 0),
    (R_390_GOTPLT32, "R_390_GOTPLT32", got_rel, "G + A", False, 32, 0),
    (R_390_GOTPLT64, "R_390_GOTPLT64", got_rel, "G + A", False, 64, 0),
    (R_390_GOTPLTENT, "R_390_GOTPLTENT", got_ent, "GOT + G + A - P", True, 32, 1),
    (R_390_PLT16DBL, "R_390_PLT16DBL", plt_dbl(0xFFFF), "T + A - P (T = S or PLTe)", True, 16, 1),
    (R_390_PLT32DBL, "R_390_PLT32DBL", plt_dbl(0xFFFFFFFF), "T + A - P (T = S or PLTe)", True, 32, 1),
    (R_390_PLT32, "R_390_PLT32", plt_rel, "PLTe + A - P", False, 32, 0),
    (R_390_PLT64, "R_390_PLT64", plt_rel, "PLTe + A - P", False, 64, 0),
    (R_390_PLTOFF16, "R_390_PLTOFF16", plt_off, "PLTe - GOT + A", False, 16, 0),
    (R_390_PLTOFF32, "R_390_PLTOFF32", plt_off, "PLTe - GOT + A", False, 32, 0),
    (R_390_PLTOFF64, "R_390_PLTOFF64", plt_off, "PLTe - GOT + A", False, 64, 0),
    (R_390_GOTOFF16, "R_390_GOTOFF16", got_off, "S + A - GOT", False, 16, 0),
    (R_390_GOTOFF32, "R_390_GOTOFF32", got_off, "S + A - GOT", False, 32, 0),
    (R_390_GOTOFF64, "R_390_GOTOFF64", got_off, "S + A - GOT", False, 64, 0),
    (R_390_GOTPC, "R_390_GOTPC", got_pc, "GOT + A - P", True, 32, 0),
    (R_390_GOTPCDBL, "R_390_GOTPCDBL", got_pc, "GOT + A - P", True, 32, 1),
]

#: sign, bits and shift of every arithmetic type, for tests and docs
FIELDS = {number: (sign, bits, shift) for number, _, _, _, sign, bits, shift in _ROWS}


def _error(sign: bool, bits: int, shift: int) -> str:
    kind = "a signed" if sign else "an unsigned"
    parity = "is odd or " if shift else ""
    after = f" after >> {shift}" if shift else ""
    return f"value {{value:#x}} {parity}does not fit {kind} {bits}-bit field{after}"


def _range(sign: bool, bits: int, shift: int) -> str:
    if bits == 64 and not shift:
        return "none"
    kind = "signed" if sign else "unsigned"
    return f"even, {kind} {bits}-bit after >> {shift}" if shift else f"{kind} {bits}-bit"


def reloc_types(kernel: KernelTarget) -> list[RelocType]:
    """The s390 type table (the same for every supported kernel; version
    differences live in the computes, see ``versions.py``)."""
    out = [RelocType(R_390_NONE, "R_390_NONE", 0, "none")]
    for number, name, compute, formula, sign, bits, shift in _ROWS:
        out.append(
            RelocType(
                number,
                name,
                {12: 2, 20: 4}.get(bits, bits // 8),
                formula,
                compute,
                check=bits_check(sign, bits, shift),
                error=_error(sign, bits, shift),
                kernel_error=KERNEL_ERROR,
                encode=encoder(bits, shift),
                insn=bits in (12, 20) or shift == 1,
                range_doc=_range(sign, bits, shift),
            )
        )
    for number, name in (
        (R_390_COPY, "R_390_COPY"),
        (R_390_GLOB_DAT, "R_390_GLOB_DAT"),
        (R_390_JMP_SLOT, "R_390_JMP_SLOT"),
        (R_390_RELATIVE, "R_390_RELATIVE"),
    ):
        out.append(
            RelocType(
                number, name, 0, "refused (-ENOEXEC, no message)", handler=refuse, range_doc="refused", refuses=True
            )
        )
    return out
