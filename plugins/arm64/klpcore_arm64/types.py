"""The R_AARCH64_* types of ``apply_relocate_add`` as data, with their field
encoders (``arch/arm64/kernel/module.c`` and ``arch/arm64/lib/insn.c``).

The kernel computes ``val = S + A`` for every entry and hands it to one of
four helpers with an operation (``do_reloc``):

* ``RELOC_OP_ABS``  -> val
* ``RELOC_OP_PREL`` -> val - P
* ``RELOC_OP_PAGE`` -> Page(val) - Page(P)  (4 KiB pages whatever PAGE_SIZE is)

and, per type, whether an ``-ERANGE`` from the helper is an error
(``overflow_check``).  As in the kernel, ``compute`` here returns ``val`` and
the check and encoder apply the operation, so the error message shows the
``val`` the kernel prints (``"module %s: overflow in relocation type %d val
%Lx"``, ``-ENOEXEC``).

Helpers (rows of :data:`TABLE`):

* ``data`` (``reloc_data``): the low 16/32/64 bits of the op result, in the
  data byte order; ABS16/32 refuse a result outside [0, U16/U32_MAX], PREL16/32
  outside the signed range; 64-bit never.
* ``imm`` (``reloc_insn_imm``): ``sval = op >> lsb`` (arithmetic; the low bits
  are dropped without an alignment check), the low ``len`` bits go into the
  instruction field; overflow unless the bits from ``len - 1`` up are all
  equal (``-2**(len-1) <= sval < 2**(len-1)``).
* ``movw`` (``reloc_insn_movw``): ``imm = op >> lsb``; for the signed groups
  (MOVNZ) the opcode becomes MOVZ for op >= 0 and MOVN (with ``imm = ~imm``)
  for op < 0; the low 16 bits of imm go into bits [20:5]; overflow when imm as
  an unsigned 64-bit value exceeds 0xffff (so a negative UABS value overflows).
* ``adrp``: as ``imm`` with PAGE/12/21 unless the place is at a page offset
  >= 0xff8 and the erratum 843419 workaround is active (see :mod:`.plt`).
* ``branch`` (CALL26/JUMP26): as ``imm`` with PREL/2/26; out of range goes
  through a module PLT (see :mod:`.plt`).

``aarch64_insn_encode_immediate`` leaves an instruction equal to
``AARCH64_BREAK_FAULT`` (0xd4202000) unchanged; every encoder here does too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from klpcore.arch import Array, RelocType

U64 = np.uint64
BREAK_FAULT = 0xD4202000

OP_ABS, OP_PREL, OP_PAGE = "ABS", "PREL", "PAGE"
OP_FORMULA = {OP_ABS: "S + A", OP_PREL: "S + A - P", OP_PAGE: "Page(S + A) - Page(P)"}

#: immediate field types: name -> (mask, shift) of aarch64_get_imm_shift_mask
IMM_26 = "IMM_26"
IMM_19 = "IMM_19"
IMM_16 = "IMM_16"
IMM_14 = "IMM_14"
IMM_12 = "IMM_12"
IMM_ADR = "IMM_ADR"
IMM_FIELDS = {
    IMM_26: (0x3FFFFFF, 0),
    IMM_19: (0x7FFFF, 5),
    IMM_16: (0xFFFF, 5),
    IMM_14: (0x3FFF, 5),
    IMM_12: (0xFFF, 10),
}

KERNEL_OVERFLOW = "module {module}: overflow in relocation type {number} val {value:x}"
KERNEL_UNSUPPORTED = "module {module}: unsupported RELA relocation: {number}"


@dataclass(frozen=True)
class Row:
    """One ``case`` of the kernel's switch."""

    number: int
    name: str
    helper: str  # "none", "data", "imm", "movw", "adrp", "branch"
    op: str = OP_ABS
    lsb: int = 0
    length: int = 0  # bits: data length, or imm field length
    imm: str = ""  # immediate field type (imm/adrp/branch)
    movnz: bool = False  # movw: signed group (MOVZ/MOVN switch)
    overflow_check: bool = True


TABLE: tuple[Row, ...] = (
    Row(0, "R_ARM_NONE", "none"),
    Row(256, "R_AARCH64_NONE", "none"),
    Row(257, "R_AARCH64_ABS64", "data", OP_ABS, length=64, overflow_check=False),
    Row(258, "R_AARCH64_ABS32", "data", OP_ABS, length=32),
    Row(259, "R_AARCH64_ABS16", "data", OP_ABS, length=16),
    Row(260, "R_AARCH64_PREL64", "data", OP_PREL, length=64, overflow_check=False),
    Row(261, "R_AARCH64_PREL32", "data", OP_PREL, length=32),
    Row(262, "R_AARCH64_PREL16", "data", OP_PREL, length=16),
    Row(263, "R_AARCH64_MOVW_UABS_G0", "movw", OP_ABS, 0),
    Row(264, "R_AARCH64_MOVW_UABS_G0_NC", "movw", OP_ABS, 0, overflow_check=False),
    Row(265, "R_AARCH64_MOVW_UABS_G1", "movw", OP_ABS, 16),
    Row(266, "R_AARCH64_MOVW_UABS_G1_NC", "movw", OP_ABS, 16, overflow_check=False),
    Row(267, "R_AARCH64_MOVW_UABS_G2", "movw", OP_ABS, 32),
    Row(268, "R_AARCH64_MOVW_UABS_G2_NC", "movw", OP_ABS, 32, overflow_check=False),
    Row(269, "R_AARCH64_MOVW_UABS_G3", "movw", OP_ABS, 48, overflow_check=False),
    Row(270, "R_AARCH64_MOVW_SABS_G0", "movw", OP_ABS, 0, movnz=True),
    Row(271, "R_AARCH64_MOVW_SABS_G1", "movw", OP_ABS, 16, movnz=True),
    Row(272, "R_AARCH64_MOVW_SABS_G2", "movw", OP_ABS, 32, movnz=True),
    Row(273, "R_AARCH64_LD_PREL_LO19", "imm", OP_PREL, 2, 19, IMM_19),
    Row(274, "R_AARCH64_ADR_PREL_LO21", "imm", OP_PREL, 0, 21, IMM_ADR),
    Row(275, "R_AARCH64_ADR_PREL_PG_HI21", "adrp", OP_PAGE, 12, 21, IMM_ADR),
    Row(276, "R_AARCH64_ADR_PREL_PG_HI21_NC", "adrp", OP_PAGE, 12, 21, IMM_ADR, overflow_check=False),
    Row(277, "R_AARCH64_ADD_ABS_LO12_NC", "imm", OP_ABS, 0, 12, IMM_12, overflow_check=False),
    Row(278, "R_AARCH64_LDST8_ABS_LO12_NC", "imm", OP_ABS, 0, 12, IMM_12, overflow_check=False),
    Row(279, "R_AARCH64_TSTBR14", "imm", OP_PREL, 2, 14, IMM_14),
    Row(280, "R_AARCH64_CONDBR19", "imm", OP_PREL, 2, 19, IMM_19),
    Row(282, "R_AARCH64_JUMP26", "branch", OP_PREL, 2, 26, IMM_26),
    Row(283, "R_AARCH64_CALL26", "branch", OP_PREL, 2, 26, IMM_26),
    Row(284, "R_AARCH64_LDST16_ABS_LO12_NC", "imm", OP_ABS, 1, 11, IMM_12, overflow_check=False),
    Row(285, "R_AARCH64_LDST32_ABS_LO12_NC", "imm", OP_ABS, 2, 10, IMM_12, overflow_check=False),
    Row(286, "R_AARCH64_LDST64_ABS_LO12_NC", "imm", OP_ABS, 3, 9, IMM_12, overflow_check=False),
    Row(287, "R_AARCH64_MOVW_PREL_G0", "movw", OP_PREL, 0, movnz=True),
    Row(288, "R_AARCH64_MOVW_PREL_G0_NC", "movw", OP_PREL, 0, overflow_check=False),
    Row(289, "R_AARCH64_MOVW_PREL_G1", "movw", OP_PREL, 16, movnz=True),
    Row(290, "R_AARCH64_MOVW_PREL_G1_NC", "movw", OP_PREL, 16, overflow_check=False),
    Row(291, "R_AARCH64_MOVW_PREL_G2", "movw", OP_PREL, 32, movnz=True),
    Row(292, "R_AARCH64_MOVW_PREL_G2_NC", "movw", OP_PREL, 32, overflow_check=False),
    Row(293, "R_AARCH64_MOVW_PREL_G3", "movw", OP_PREL, 48, movnz=True, overflow_check=False),
    Row(299, "R_AARCH64_LDST128_ABS_LO12_NC", "imm", OP_ABS, 4, 8, IMM_12, overflow_check=False),
)
BY_NUMBER = {r.number: r for r in TABLE}
BY_NAME = {r.name: r for r in TABLE}

R_AARCH64_ADR_PREL_PG_HI21 = 275
R_AARCH64_ADR_PREL_PG_HI21_NC = 276
R_AARCH64_JUMP26 = 282
R_AARCH64_CALL26 = 283
BRANCH_TYPES = (R_AARCH64_JUMP26, R_AARCH64_CALL26)
ADRP_TYPES = (R_AARCH64_ADR_PREL_PG_HI21, R_AARCH64_ADR_PREL_PG_HI21_NC)

#: R_AARCH64_* numbers the kernel refuses, named for messages (AArch64 ELF ABI)
OTHER_TYPES = {
    300: "R_AARCH64_GOTREL64",
    301: "R_AARCH64_GOTREL32",
    302: "R_AARCH64_GOT_LD_PREL19",
    303: "R_AARCH64_LD64_GOTOFF_LO15",
    311: "R_AARCH64_ADR_GOT_PAGE",
    312: "R_AARCH64_LD64_GOT_LO12_NC",
    313: "R_AARCH64_LD64_GOTPAGE_LO15",
    314: "R_AARCH64_PLT32",
    315: "R_AARCH64_GOTPCREL32",
    512: "R_AARCH64_TLSGD_ADR_PREL21",
    513: "R_AARCH64_TLSGD_ADR_PAGE21",
    514: "R_AARCH64_TLSGD_ADD_LO12_NC",
    541: "R_AARCH64_TLSIE_ADR_GOTTPREL_PAGE21",
    542: "R_AARCH64_TLSIE_LD64_GOTTPREL_LO12_NC",
    544: "R_AARCH64_TLSLE_MOVW_TPREL_G2",
    549: "R_AARCH64_TLSLE_ADD_TPREL_HI12",
    550: "R_AARCH64_TLSLE_ADD_TPREL_LO12",
    551: "R_AARCH64_TLSLE_ADD_TPREL_LO12_NC",
    560: "R_AARCH64_TLSDESC_ADR_PAGE21",
    561: "R_AARCH64_TLSDESC_LD64_LO12",
    562: "R_AARCH64_TLSDESC_ADD_LO12",
    569: "R_AARCH64_TLSDESC_CALL",
    1024: "R_AARCH64_COPY",
    1025: "R_AARCH64_GLOB_DAT",
    1026: "R_AARCH64_JUMP_SLOT",
    1027: "R_AARCH64_RELATIVE",
    1028: "R_AARCH64_TLS_DTPMOD64",
    1029: "R_AARCH64_TLS_DTPREL64",
    1030: "R_AARCH64_TLS_TPREL64",
    1031: "R_AARCH64_TLSDESC",
    1032: "R_AARCH64_IRELATIVE",
}


# ----------------------------------------------------------------- scalars
def s64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def encode_imm(kind: str, insn: int, imm: int) -> int:
    """``aarch64_insn_encode_immediate`` for one instruction word."""
    if insn == BREAK_FAULT:
        return BREAK_FAULT
    imm &= (1 << 64) - 1
    if kind == IMM_ADR:
        value = ((imm & 3) << 29) | (((imm >> 2) & 0x7FFFF) << 5)
        mask = (3 << 29) | (0x7FFFF << 5)
        return (insn & ~mask & 0xFFFFFFFF) | value
    m, sh = IMM_FIELDS[kind]
    return (insn & ~(m << sh) & 0xFFFFFFFF) | ((imm & m) << sh)


def do_reloc(op: str, place: int, val: int) -> int:
    if op == OP_ABS:
        return val & ((1 << 64) - 1)
    if op == OP_PREL:
        return (val - place) & ((1 << 64) - 1)
    return ((val & ~0xFFF) - (place & ~0xFFF)) & ((1 << 64) - 1)


def insn_imm(op: str, place: int, val: int, lsb: int, length: int, kind: str, insn: int) -> tuple[int, bool]:
    """``reloc_insn_imm`` on one word: (new instruction, overflowed)."""
    sval = s64(do_reloc(op, place, val)) >> lsb
    imm_mask = ((1 << (lsb + length)) - 1) >> lsb
    new = encode_imm(kind, insn, sval & imm_mask)
    upper = sval >> (length - 1)
    return new, upper not in (0, -1)


# ------------------------------------------------------------------ arrays
def places(ctx: Any) -> Array:
    """P of the entries in ``ctx.group``."""
    return U64(ctx.target_address) + ctx.relas["r_offset"][ctx.group].astype(np.uint64)


def op_values(op: str, val: Array, ctx: Any) -> Array:
    """``do_reloc(op, P, val)`` for the group (uint64)."""
    if op == OP_ABS:
        return val
    P = places(ctx)
    if op == OP_PREL:
        return val - P
    mask = U64(0xFFFFFFFFFFFFF000)
    return (val & mask) - (P & mask)


def _keep_break(old: Array, new: Array) -> Array:
    return np.where(old == U64(BREAK_FAULT), old, new)


def imm_encoder(kind: str) -> Callable[[Array, Array], Array]:
    """Array form of ``aarch64_insn_encode_immediate`` for ``kind``."""
    if kind == IMM_ADR:
        mask = U64((3 << 29) | (0x7FFFF << 5))

        def enc_adr(imm: Array, old: Array) -> Array:
            value = ((imm & U64(3)) << U64(29)) | (((imm >> U64(2)) & U64(0x7FFFF)) << U64(5))
            return _keep_break(old, (old & ~mask & U64(0xFFFFFFFF)) | value)

        return enc_adr
    m, sh = IMM_FIELDS[kind]
    field = U64(m << sh)

    def enc(imm: Array, old: Array) -> Array:
        return _keep_break(old, (old & ~field & U64(0xFFFFFFFF)) | ((imm & U64(m)) << U64(sh)))

    return enc


def _shifted(row: Row, values: Array, ctx: Any) -> Array:
    return op_values(row.op, values, ctx).view(np.int64) >> row.lsb


def imm_check(row: Row) -> Callable[[Array, Any], Array]:
    def check(values: Array, ctx: Any) -> Array:
        sval = _shifted(row, values, ctx) >> (row.length - 1)
        return (sval + 1).view(np.uint64) >= U64(2)

    lo, hi = -(1 << (row.length - 1 + row.lsb)), (1 << (row.length - 1 + row.lsb)) - 1
    check.__doc__ = f"{lo:#x} <= {OP_FORMULA[row.op]} <= {hi:#x}"
    return check


def imm_encode(row: Row) -> Callable[[Array, Array, Any], Array]:
    enc = imm_encoder(row.imm)
    imm_mask = U64(((1 << (row.lsb + row.length)) - 1) >> row.lsb)

    def encode(values: Array, old: Array, ctx: Any) -> Array:
        return enc(_shifted(row, values, ctx).view(np.uint64) & imm_mask, old)

    return encode


def _movw_imm(row: Row, values: Array, ctx: Any) -> tuple[Array, Array]:
    sval = op_values(row.op, values, ctx).view(np.int64)
    imm = (sval >> row.lsb).view(np.uint64)
    neg = sval < 0
    if row.movnz:
        imm = np.where(neg, ~imm, imm)
    return imm, neg


def movw_check(row: Row) -> Callable[[Array, Any], Array]:
    def check(values: Array, ctx: Any) -> Array:
        imm, _ = _movw_imm(row, values, ctx)
        return imm > U64(0xFFFF)

    if row.movnz:
        bound = 1 << (16 + row.lsb)
        check.__doc__ = f"{-bound:#x} <= {OP_FORMULA[row.op]} < {bound:#x} (MOVN below 0)"
    else:
        check.__doc__ = f"0 <= {OP_FORMULA[row.op]} <= {(1 << (16 + row.lsb)) - 1:#x}"
    return check


def movw_encode(row: Row) -> Callable[[Array, Array, Any], Array]:
    enc = imm_encoder(IMM_16)

    def encode(values: Array, old: Array, ctx: Any) -> Array:
        imm, neg = _movw_imm(row, values, ctx)
        insn = old
        if row.movnz:
            insn = (old & U64(~(3 << 29) & 0xFFFFFFFF)) | np.where(neg, U64(0), U64(2 << 29))
        # the opcode change happens before encode_immediate's BREAK_FAULT test
        return enc(imm, insn)

    return encode


def data_check(row: Row) -> Callable[[Array, Any], Array] | None:
    if not row.overflow_check:
        return None
    bits = row.length

    if row.op == OP_ABS:

        def check_abs(values: Array, ctx: Any) -> Array:
            return values > U64((1 << bits) - 1)

        check_abs.__doc__ = f"0 <= S + A <= {(1 << bits) - 1:#x}"
        return check_abs

    def check_prel(values: Array, ctx: Any) -> Array:
        v = op_values(row.op, values, ctx).view(np.int64)
        return (v < -(1 << (bits - 1))) | (v > (1 << (bits - 1)) - 1)

    check_prel.__doc__ = f"{-(1 << (bits - 1)):#x} <= S + A - P <= {(1 << (bits - 1)) - 1:#x}"
    return check_prel


def data_encode(row: Row) -> Callable[[Array, Array, Any], Array]:
    mask = U64((1 << row.length) - 1) if row.length < 64 else U64(0xFFFFFFFFFFFFFFFF)

    def encode(values: Array, old: Array, ctx: Any) -> Array:
        return op_values(row.op, values, ctx) & mask

    return encode


def val(S: Array, A: Array, P: Array, ctx: Any) -> Array:
    """val = S + A (the helper applies the type's operation)"""
    return S + A.view(U64)


def field_doc(row: Row) -> str:
    if row.helper == "data":
        return f"{row.length}-bit data"
    if row.helper == "movw":
        return "imm16 [20:5]" + (" + MOVZ/MOVN opcode [30:29]" if row.movnz else "")
    if row.imm == IMM_ADR:
        return "ADR immlo [30:29] / immhi [23:5]"
    m, sh = IMM_FIELDS[row.imm]
    return f"imm{m.bit_length()} [{sh + m.bit_length() - 1}:{sh}]"


def formula(row: Row) -> str:
    if row.helper == "none":
        return "none"
    base = OP_FORMULA[row.op]
    if row.helper == "movw":
        return f"({base}) >> {row.lsb}" if row.lsb else base
    if row.helper in ("imm", "adrp", "branch") and row.lsb:
        return f"({base}) >> {row.lsb}"
    return base


def plain_type(row: Row, write_hint: str | None, **extra: Any) -> RelocType:
    """The :class:`RelocType` for a row whose entries are all plain arithmetic."""
    width = {"data": row.length // 8}.get(row.helper, 4)
    common: dict[str, Any] = {
        "formula": formula(row),
        "compute": val,
        "kernel_error": KERNEL_OVERFLOW,
        "write_hint": write_hint,
    }
    if row.helper == "data":
        check = data_check(row)
        rng = check.__doc__ if check else "none (no overflow check)"
        return RelocType(
            row.number,
            row.name,
            width,
            check=check,
            encode=data_encode(row),
            error=f"{OP_FORMULA[row.op]} out of range for {row.length}-bit data (val = S + A = {{value:#x}}); -ENOEXEC",
            range_doc=rng or "",
            **common,
            **extra,
        )
    if row.helper == "movw":
        check = movw_check(row) if row.overflow_check else None
        return RelocType(
            row.number,
            row.name,
            4,
            check=check,
            encode=movw_encode(row),
            insn=True,
            error=f"imm16 of {formula(row)} overflows (val = S + A = {{value:#x}}); -ENOEXEC",
            range_doc=(check.__doc__ or "") if check else "none (no overflow check; " + field_doc(row) + ")",
            **common,
            **extra,
        )
    check = imm_check(row) if row.overflow_check else None
    rng = (check.__doc__ or "") if check else "none (no overflow check)"
    if check and row.lsb:
        rng += f" (low {row.lsb} bits dropped)"
    return RelocType(
        row.number,
        row.name,
        4,
        check=check,
        encode=imm_encode(row),
        insn=True,
        error=f"{formula(row)} does not fit the {row.length}-bit field (val = S + A = {{value:#x}}); -ENOEXEC",
        range_doc=rng,
        **common,
        **extra,
    )
