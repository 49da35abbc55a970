"""Describing an architecture: its identity and its relocation types.

A relocation type is data (:class:`RelocType`): number, name, field width,
the formula as text, and three small vectorized pieces the core's engine
calls on whole groups of entries at once:

* ``compute(S, A, P, ctx)`` -> the value (``uint64`` array, arithmetic modulo 2**64);
* ``check(values, ctx)`` -> a boolean array, True where the kernel refuses the value;
* ``encode(values, old, ctx)`` -> the new field contents, given the old ones.

Types the kernel handles with more than arithmetic (stubs, PLTs, GOT slots,
rewriting neighbouring instructions) supply a sequential ``handler`` instead,
called once per entry in the kernel's order.  A type can do both: ``split``
picks the entries that need the handler (ppc64 calls through a stub) and the
rest stay array-shaped (direct calls).  While these pieces run,
``ctx.group`` holds the relocation indices of the entries they receive, for
per-symbol data such as ``st_other``.

Helpers below build the common pieces (:data:`ABS`, :data:`PREL`,
:func:`signed`, :func:`unsigned`, :func:`insn_field`) so that a plugin's type
table reads like the kernel's ``switch``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from .engine import SectionContext

U64 = np.uint64
Array = np.ndarray

Compute = Callable[[Array, Array, Array, "SectionContext"], Array]
Check = Callable[[Array, "SectionContext"], Array]
Encode = Callable[[Array, Array, "SectionContext"], Array]


class Handler(Protocol):
    """Sequential per-entry implementation of a relocation type.

    Called as ``handler(ctx, entry)``; reads and writes through ``ctx`` (which
    stages every write so a failure leaves the image unchanged) and raises
    :class:`~klpcore.engine.RelocFailure` to refuse the relocation.
    """

    def __call__(self, ctx: SectionContext, entry: Entry) -> None: ...


@dataclass(frozen=True)
class Entry:
    """One relocation entry, for sequential handlers."""

    index: int  # position in the section (after any arch reordering)
    offset: int  # r_offset
    type: int
    sym: int  # symbol index
    addend: int  # signed
    S: int  # resolved symbol value
    P: int  # address of the place
    symbol_name: str
    st_shndx: int
    st_other: int


# ----------------------------------------------------------------- computes
def ABS(S: Array, A: Array, P: Array, ctx: Any) -> Array:
    """S + A"""
    return S + A.view(U64)


def PREL(S: Array, A: Array, P: Array, ctx: Any) -> Array:
    """S + A - P"""
    return S + A.view(U64) - P


# ------------------------------------------------------------------- checks
def signed(bits: int, shift: int = 0) -> Check:
    """True where ``value >> shift`` (arithmetic) does not fit ``bits`` signed bits."""
    lo = -(1 << (bits - 1))
    hi = (1 << (bits - 1)) - 1

    def check(values: Array, ctx: Any) -> Array:
        v = values.view(np.int64) >> shift
        return (v < lo) | (v > hi)

    check.__doc__ = f"signed {bits}-bit" + (f" after >> {shift}" if shift else "")
    return check


def unsigned(bits: int, shift: int = 0) -> Check:
    """True where ``value >> shift`` (logical) exceeds ``2**bits - 1``."""
    hi = U64((1 << bits) - 1)

    def check(values: Array, ctx: Any) -> Array:
        return (values >> U64(shift)) > hi

    check.__doc__ = f"unsigned {bits}-bit" + (f" after >> {shift}" if shift else "")
    return check


def misaligned(align: int) -> Check:
    """True where the value is not a multiple of ``align``."""
    mask = U64(align - 1)

    def check(values: Array, ctx: Any) -> Array:
        return (values & mask) != 0

    check.__doc__ = f"multiple of {align}"
    return check


def any_of(*checks: Check) -> Check:
    def check(values: Array, ctx: Any) -> Array:
        bad = np.zeros(values.shape, dtype=bool)
        for c in checks:
            bad |= c(values, ctx)
        return bad

    check.__doc__ = " and ".join(c.__doc__ or "" for c in checks)
    return check


# ----------------------------------------------------------------- encoders
def low_bits(width: int) -> Encode:
    """The field is the low ``8 * width`` bits of the value (data relocations)."""
    mask = U64((1 << (8 * width)) - 1) if width < 8 else U64(0xFFFFFFFFFFFFFFFF)

    def encode(values: Array, old: Array, ctx: Any) -> Array:
        return values & mask

    return encode


def insn_field(mask: int, shift: int = 0, rshift: int = 0) -> Encode:
    """Replace the bits ``mask`` of the old field with ``(value >> rshift) << shift``."""
    m = U64(mask)
    keep = ~m

    def encode(values: Array, old: Array, ctx: Any) -> Array:
        return (old & keep) | (((values >> U64(rshift)) << U64(shift)) & m)

    return encode


@dataclass(frozen=True)
class RelocType:
    """One relocation type as the kernel's ``apply_relocate_add`` handles it."""

    number: int
    name: str
    width: int = 0  # bytes read and written at P; 0 = nothing
    formula: str = ""  # human-readable, e.g. "S + A - P"
    compute: Compute | None = None
    check: Check | None = None  # True = the kernel refuses the value
    error: str = "relocation value {value:#x} out of range"  # message when ``check`` fails
    kernel_error: str | None = None  # what the kernel prints then ({module}, {number}, {value:x}, ...)
    encode: Encode | None = None  # default: low_bits(width)
    insn: bool = False  # the field is (part of) an instruction: instruction byte order
    require_zero: bool = False  # the kernel refuses a place whose current bytes are nonzero
    zero_error: str | None = None  # kernel message for a nonzero place
    truncates: Check | None = None  # the kernel writes a truncated value silently; warn where True
    handler: Handler | None = None  # sequential implementation (stubs, PLTs, ...)
    #: with a handler: which entries of ``ctx.group`` need it (bool array); the
    #: others take the array-shaped path (compute/check/encode).  None: all.
    split: Callable[[SectionContext], Array] | None = None
    #: instead of ``handler`` per entry: ``batch(ctx, indices)`` handles all
    #: the entries of this type that need sequential treatment, in section
    #: order, in one call (after the array-shaped groups; batches of different
    #: types run in type-table order, then per-entry handlers in section order)
    batch: Callable[[SectionContext, Array], None] | None = None
    #: the primitive the kernel writes this type's field with (e.g.
    #: "patch_instruction"); None: a plain store
    write_hint: str | None = None
    range_doc: str = ""  # human-readable range rule, for ``klpcore plugins`` and docs
    #: the kernel lists this type only to refuse it (its case returns an error,
    #: e.g. s390's R_390_COPY: -ENOEXEC with no message): ``handler`` raises
    #: RelocFailure for every entry.  Such a type writes nothing, so the
    #: conformance suite asks for a refusal test instead of a byte test.
    refuses: bool = False

    @property
    def is_noop(self) -> bool:
        return self.width == 0 and self.handler is None and not self.refuses

    def describe(self) -> dict[str, Any]:
        rng = self.range_doc or (self.check.__doc__ if self.check else "none")
        return {
            "number": self.number,
            "name": self.name,
            "width": self.width,
            "formula": self.formula or ("none" if self.is_noop else ""),
            "range": rng,
            "special": self.handler is not None,
        }


@dataclass
class ArchSpec:
    """Identity of an architecture plugin and its relocation types."""

    name: str  # plugin / entry point name, e.g. "x86_64"
    machine: int  # e_machine
    byteorder: str = "little"  # data byte order of modules this spec describes
    insn_byteorder: str | None = None  # defaults to ``byteorder``
    description: str = ""
    unknown_type_error: str = "{module}: Unknown relocation: {number}"  # kernel message
    #: where the kernel's module area starts: the layout base when none is given
    #: (``--base``), and where ``check`` places the module it checks
    default_base: int = field(kw_only=True)
    #: where a module's ``.data..percpu`` lands when the loader is not told
    #: (``--percpu-base``; the per-CPU reserved chunk)
    percpu_base: int = field(kw_only=True)
    #: bytes of the module area from :attr:`default_base` on (``MODULES_END -
    #: MODULES_VADDR`` of the newest kernel): ``check`` places the modules a
    #: checked module depends on in it
    module_area_size: int = field(kw_only=True)
    #: [start, end) of the addresses vmlinux's code can have on this architecture
    #: (``_stext``); a symbol source whose code lies elsewhere belongs to another
    #: architecture and is refused.  ``None``: not checked.
    kernel_text_range: tuple[int, int] | None = None
    #: the ``-O KEY=VALUE`` options the plugin reads: key -> kind ("bool",
    #: "int" or "address"); the CLI refuses other keys and checks the values
    options: Mapping[str, str] = field(default_factory=dict)
    capstone: tuple[str, str] | None = None  # capstone arch and mode constant names
    #: address an instruction decoded by capstone (with detail) reaches, for ``klpcore disasm``
    insn_target: Callable[[Any], int | None] | None = None
    ignored_undefined: frozenset[str] = frozenset()  # kernel's ignore_undef_symbol()
    #: undefined symbols the arch's module_frob_arch_sections defines before symbols are resolved
    #: (ppc64's dedotify makes ``.TOC.`` SHN_ABS): never "Unknown symbol", whatever the version
    frob_defined: frozenset[str] = frozenset()
    #: sections the arch writes call stubs or PLT entries into (``klpcore disasm``
    #: shows a branch into one as a call through it)
    stub_sections: frozenset[str] = frozenset()
    #: the relocation type of a 64-bit absolute pointer in data (``R_X86_64_64``):
    #: ``check`` reads a livepatch's ``klp_patch``/``klp_func`` pointers through
    #: these.  None: every relocation type counts as a pointer
    pointer_type: int | None = None
    #: the ``CONFIG_`` symbol that only kernels of this architecture set
    #: (``CONFIG_X86_64``): ``check`` finds a target kernel's architecture from
    #: its ``.config`` with it
    config_symbol: str | None = None
    type_names: Mapping[int, str] = field(default_factory=dict)  # numbers the kernel rejects, for messages
    types: dict[int, RelocType] = field(default_factory=dict)  # filled from klp_arch_reloc_types
    plugin_name: str = ""  # set by the plugin manager
    distribution: str = ""
    version: str = ""

    @property
    def insn_order(self) -> str:
        return self.insn_byteorder or self.byteorder

    def type_name(self, number: int) -> str:
        t = self.types.get(number)
        if t is not None:
            return t.name
        return self.type_names.get(number, f"type {number}")

    def set_types(self, types: Sequence[RelocType]) -> None:
        self.types = {t.number: t for t in types}
