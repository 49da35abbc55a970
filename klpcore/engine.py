"""The relocation engine.

Writes are staged: every relocation of a phase (module load, patch enable, a
target module coming) is computed into copies of the affected sections, and
only when the whole phase succeeds are the changed bytes committed to the
module image.  Any error leaves the image exactly as it was.

The generic engine applies an architecture's type table to a whole section
with numpy: entries are grouped by type and each group is computed, checked
and encoded as arrays.  Types with a sequential ``handler`` run afterwards,
one entry at a time, in section order.  A section in which two relocations
write overlapping bytes is applied strictly in order, entry by entry, so the
result matches the kernel's sequential loop.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .arch import ArchSpec, Entry, RelocType, low_bits
from .elf import Section
from .errors import Diagnostic
from .kernel import KernelTarget
from .memory import ModuleImage, WritePolicy
from .staging import RelocFailure, StagedMemory, unique_sorted

__all__ = ["RelocFailure", "StagedMemory", "unique_sorted"]  # re-exported: they lived here before klpcore.staging

if TYPE_CHECKING:
    from .symbols import KernelSymbols

if TYPE_CHECKING:
    from .loader import LoadingModule

U64 = np.uint64
MAX_DIAGS_PER_KIND = 20


@dataclass
class ApplyContext:
    """State of one phase: what every section application sees."""

    module: LoadingModule
    arch: ArchSpec
    kernel: KernelTarget
    staged: StagedMemory
    symvals: np.ndarray  # uint64 value of every symtab entry for this phase
    state: dict[str, Any]  # arch per-module state (a private copy for this phase)
    phase: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: decides how a write reaches memory (the arch's memory-protection hook)
    write_policy: WritePolicy | None = None
    #: the kernel's symbols (for arch code that needs e.g. the kernel's TOC)
    kernel_symbols: KernelSymbols | None = None

    @property
    def image(self) -> ModuleImage:
        return self.staged.image

    @property
    def module_name(self) -> str:
        return self.module.name

    def read_uint(self, address: int, width: int, insn: bool = False) -> int:
        order = self.arch.insn_order if insn else self.module.elf.byteorder
        return int.from_bytes(self.staged.read(address, width), order)  # type: ignore[arg-type]

    def write_uint(self, address: int, width: int, value: int, insn: bool = False, hint: str | None = None) -> None:
        order = self.arch.insn_order if insn else self.module.elf.byteorder
        data = (value & ((1 << (8 * width)) - 1)).to_bytes(width, order)  # type: ignore[arg-type]
        self.staged.write(address, data, hint)

    def section_address(self, index: int) -> int | None:
        return self.module.layout.address_of(index)

    def function_at(self, address: int) -> tuple[int, int, str] | None:
        """``(start, size, name)`` of the module function containing
        ``address`` (the one starting last, as ``%pS`` picks), or ``None``.

        The sorted index of the module's placed ``STT_FUNC`` symbols is built
        once per layout, so describing many addresses (thousands of failing
        relocations) costs a binary search each, not a scan of the symtab."""
        mod = self.module
        index = _FUNCTION_INDEX.get(id(mod.layout))
        if index is None or index[0] is not mod.layout:
            index = (mod.layout, *_function_index(mod))
            _FUNCTION_INDEX.clear()
            _FUNCTION_INDEX[id(mod.layout)] = index
        _, starts, sizes, names, longest = index
        k = bisect.bisect_right(starts, address) - 1
        while k >= 0 and starts[k] + longest > address:
            if address < starts[k] + max(sizes[k], 1):
                return starts[k], sizes[k], names[k]
            k -= 1
        return None


#: id(layout) -> (layout, starts, sizes, names, longest): the last module's function index
_FUNCTION_INDEX: dict[int, tuple[Any, list[int], list[int], list[str], int]] = {}


def _function_index(mod: LoadingModule) -> tuple[list[int], list[int], list[str], int]:
    elf = mod.elf
    syms = elf.symbols
    shndx = syms["st_shndx"].astype(np.int64)
    funcs = np.flatnonzero(((syms["st_info"] & 0xF) == 2) & (shndx > 0) & (shndx < 0xFF00))  # STT_FUNC
    rows = []
    for i in funcs.tolist():
        base = mod.layout.address_of(int(shndx[i]))
        if base is None:
            continue
        start = base + int(syms["st_value"][i])
        rows.append((start, -i, int(syms["st_size"][i]), elf.symbol_names[i]))
    rows.sort()  # by address; at one address the first in the symtab is met first going backwards
    longest = max((max(r[2], 1) for r in rows), default=1)
    return [r[0] for r in rows], [r[2] for r in rows], [r[3] for r in rows], longest


@dataclass
class SectionContext(ApplyContext):
    """One relocation section being applied (or cleared)."""

    relsec: Section = field(default=None)  # type: ignore[assignment]
    target: Section = field(default=None)  # type: ignore[assignment]
    target_address: int = 0
    relas: np.ndarray = field(default=None)  # type: ignore[assignment,arg-type]
    objname: str | None = None  # klp object of a livepatch section
    #: while a type's compute/check/encode/split runs: the indices (into
    #: ``relas``) of the entries in the arrays it receives
    group: np.ndarray | None = None

    def group_symbols(self) -> np.ndarray:
        """Symbol indexes of the entries of the current group."""
        assert self.group is not None
        return (self.relas["r_info"][self.group] >> U64(32)).astype(np.int64)

    @classmethod
    def for_section(
        cls, ctx: ApplyContext, relsec: Section, relas: np.ndarray, objname: str | None = None
    ) -> SectionContext:
        target = ctx.module.sections[relsec.info]
        addr = ctx.module.layout.address_of(target.index)
        if addr is None:  # percpu or otherwise separately placed
            addr = ctx.module.extra_addresses.get(target.index, 0)
        return cls(
            module=ctx.module,
            arch=ctx.arch,
            kernel=ctx.kernel,
            staged=ctx.staged,
            symvals=ctx.symvals,
            state=ctx.state,
            phase=ctx.phase,
            diagnostics=ctx.diagnostics,
            counts=ctx.counts,
            write_policy=ctx.write_policy,
            kernel_symbols=ctx.kernel_symbols,
            relsec=relsec,
            target=target,
            target_address=addr,
            relas=relas,
            objname=objname,
        )

    # ------------------------------------------------------------ reporting
    def diag(
        self,
        message: str,
        index: int | None,
        rtype: int | None = None,
        sym: int | None = None,
        kernel_message: str | None = None,
        severity: str = "error",
        **extra: Any,
    ) -> Diagnostic:
        d = Diagnostic(
            message,
            severity=severity,
            module=self.module.name,
            section=self.relsec.name,
            index=index,
            rtype=self.arch.type_name(rtype) if rtype is not None else None,
            symbol=self._symbol_label(sym, index) if sym is not None else None,
            kernel_message=kernel_message,
            extra=extra,
        )
        self.diagnostics.append(d)
        return d

    def _symbol_label(self, sym: int, index: int | None) -> str:
        """The symbol's name; for a section symbol the section and the addend
        as readelf shows them (``.rodata.str1.1 + 0``)."""
        label = self.module.elf.symbol_label(sym)
        if label == self.module.elf.symbol_names[sym] or self.relas is None or index is None:
            return label
        if not 0 <= index < len(self.relas):
            return label
        addend = int(self.relas["r_addend"][index])
        return f"{label} {'-' if addend < 0 else '+'} {abs(addend):x}"

    def entry(self, i: int) -> Entry:
        r = self.relas[i]
        info = int(r["r_info"])
        sym = info >> 32
        syms = self.module.elf.symbols
        return Entry(
            index=i,
            offset=int(r["r_offset"]),
            type=info & 0xFFFFFFFF,
            sym=sym,
            addend=int(r["r_addend"]),
            S=int(self.symvals[sym]),
            P=(self.target_address + int(r["r_offset"])) & 0xFFFFFFFFFFFFFFFF,
            symbol_name=self.module.elf.symbol_names[sym],
            st_shndx=int(syms["st_shndx"][sym]),
            st_other=int(syms["st_other"][sym]),
        )

    def fmt(self, template: str | None, rt: RelocType | None, value: int, index: int, **kw: Any) -> str | None:
        if template is None:
            return None
        e = self.entry(index)
        return template.format(
            module=self.module.name,
            number=rt.number if rt else e.type,
            name=rt.name if rt else "",
            value=value & 0xFFFFFFFFFFFFFFFF,
            svalue=value if value < (1 << 63) else value - (1 << 64),
            loc=e.P,
            symbol=e.symbol_name,
            sec=self.relsec.index if self.relsec is not None else 0,
            idx=index,
            **kw,
        )


# ---------------------------------------------------------------------------
# Array helpers
# ---------------------------------------------------------------------------
def _shifts(width: int, order: str) -> np.ndarray:
    s = np.arange(width, dtype=np.uint64) * U64(8)
    return s if order == "little" else s[::-1].copy()


_FIELD = {1: "u1", 2: "u2", 4: "u4", 8: "u8"}


def _field_dtype(width: int, order: str) -> np.dtype[Any] | None:
    code = _FIELD.get(width)
    return np.dtype(("<" if order == "little" else ">") + code) if code else None


def _fields(buf: np.ndarray, offsets: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A (len(buf) - width + 1, width) view of ``buf`` whose row ``i`` is the ``width`` bytes at ``i``
    (writable: rows share bytes), and ``offsets`` as row numbers, each checked to be a whole field
    inside ``buf``."""
    rows = offsets.astype(np.intp)
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) > buf.size - width):
        raise IndexError(f"a {width}-byte field at offset {int(rows.max()):#x} is outside {buf.size} bytes")
    window = np.lib.stride_tricks.as_strided(buf, shape=(max(buf.size - width + 1, 0), width), strides=(1, 1))
    return window, rows


def gather(buf: np.ndarray, offsets: np.ndarray, width: int, order: str) -> np.ndarray:
    """Read ``width``-byte unsigned fields at ``offsets`` of ``buf``."""
    window, rows = _fields(buf, offsets, width)
    dt = _field_dtype(width, order)
    if dt is not None:
        return window[rows].view(dt).reshape(-1).astype(np.uint64)
    b = window[rows].astype(np.uint64)
    return (b << _shifts(width, order)).sum(axis=1, dtype=np.uint64)


def scatter(buf: np.ndarray, offsets: np.ndarray, width: int, order: str, values: np.ndarray) -> None:
    """Write ``width``-byte fields at ``offsets`` of ``buf`` (in order: a later field wins where two overlap)."""
    window, rows = _fields(buf, offsets, width)
    dt = _field_dtype(width, order)
    if dt is not None:
        window[rows] = values.astype(dt).view(np.uint8).reshape(-1, width)
        return
    window[rows] = ((values[:, None] >> _shifts(width, order)) & U64(0xFF)).astype(np.uint8)


# ---------------------------------------------------------------------------
# The generic engine
# ---------------------------------------------------------------------------
def _limited(ctx: SectionContext, idx: np.ndarray, kind: str, make: Any) -> None:
    """Report entries ``idx`` with ``make(i)``, at most MAX_DIAGS_PER_KIND, then a summary."""
    for i in idx[:MAX_DIAGS_PER_KIND].tolist():
        make(int(i))
    if idx.size > MAX_DIAGS_PER_KIND:
        first = int(idx[MAX_DIAGS_PER_KIND])
        ctx.diag(
            f"... and {idx.size - MAX_DIAGS_PER_KIND} more entries with the same problem ({kind}), "
            f"the first of them relocation #{first} at offset {int(ctx.relas['r_offset'][first]):#x}",
            None,
        )


def apply_section(ctx: SectionContext) -> None:
    """Apply ``ctx.relas`` to ``ctx.target`` with the arch's type table."""
    rel = ctx.relas
    n = len(rel)
    if n == 0:
        return
    arch = ctx.arch
    types = (rel["r_info"] & U64(0xFFFFFFFF)).astype(np.int64)
    syms = (rel["r_info"] >> U64(32)).astype(np.int64)
    offs = rel["r_offset"].astype(np.uint64)
    A = rel["r_addend"].astype(np.int64)
    S = ctx.symvals[syms]
    P = U64(ctx.target_address) + offs
    buf = ctx.staged.buffer(ctx.target.index) if ctx.target_address and ctx.target.size else None

    uniq = _distinct(types)
    known = [t for t in uniq if t in arch.types]
    for t in uniq:
        if t in arch.types:
            continue
        bad = np.flatnonzero(types == t)
        first = int(bad[0])
        ctx.diag(
            f"unsupported relocation type {t} ({arch.type_name(t)}) in {bad.size} "
            f"entr{'y' if bad.size == 1 else 'ies'}",
            first,
            rtype=t,
            sym=int(syms[first]),
            kernel_message=arch.unknown_type_error.format(module=ctx.module.name, number=t),
            count=int(bad.size),
        )

    widths = _per_type(types, {t: arch.types[t].width for t in known}, np.uint64)
    out = (offs + widths > U64(ctx.target.size)) | (offs + widths < offs)
    if out.any():
        bad = np.flatnonzero(out)
        _limited(
            ctx,
            bad,
            "write outside the section",
            lambda i: ctx.diag(
                f"writes {int(widths[i])} bytes at offset {int(offs[i]):#x}, outside {ctx.target.name} "
                f"(size {ctx.target.size:#x})",
                i,
                rtype=int(types[i]),
                sym=int(syms[i]),
            ),
        )
        return
    if buf is None and any(arch.types[t].width or arch.types[t].handler for t in known):
        ctx.diag(f"target section {ctx.target.name} is not placed in module memory", None)
        return

    if not _plain_stores_allowed(ctx, types, syms, known):
        return

    handled = {t: True for t in known if arch.types[t].handler is not None}
    active = widths > 0
    if handled:
        active |= _per_type(types, handled, np.bool_)
    if _overlaps(offs[active], np.maximum(widths[active], U64(1))):
        assert buf is not None
        _apply_sequential(ctx, types, buf)
        return

    sequential: list[np.ndarray] = []
    for t in known:
        rt = arch.types[t]
        idx = np.flatnonzero(types == t)
        if rt.handler is not None:
            if rt.split is None:
                sequential.append(idx)
                continue
            ctx.group = idx
            needs = np.asarray(rt.split(ctx), dtype=bool)
            sequential.append(idx[needs])
            idx = idx[~needs]
        if not idx.size:
            continue
        if rt.width == 0:  # a no-op the kernel accepts (R_*_NONE): counted by type, as every entry is
            ctx.counts[rt.name] += int(idx.size)
            continue
        _apply_group(ctx, rt, idx, S[idx], A[idx], P[idx], offs[idx], buf)  # type: ignore[arg-type]
    ctx.group = None
    if sequential:
        order = np.sort(np.concatenate(sequential))
        for t in known:  # batch handlers: all their entries at once, in section order
            rt = arch.types[t]
            if rt.batch is not None:
                mine = order[types[order] == t]
                if mine.size:
                    rt.batch(ctx, mine)
                    ctx.counts[rt.name] += int(mine.size)
        batched = {t: True for t in known if arch.types[t].batch is not None}
        if batched:
            order = order[~_per_type(types[order], batched, np.bool_)]
        for i in order.tolist():
            _run_handler(ctx, i)
    ctx.counts["applied"] += int(n)


def _distinct(types: np.ndarray) -> list[int]:
    """The distinct values of ``types``, ascending (``np.unique``, without a sort
    when the type numbers are small, as they are)."""
    if types.size and int(types.min()) >= 0 and int(types.max()) < 4096:
        return [int(t) for t in np.flatnonzero(np.bincount(types))]
    return [int(t) for t in unique_sorted(types)]


def _per_type(types: np.ndarray, values: dict[int, Any], dtype: Any) -> np.ndarray:
    """``values[type]`` for every entry (0/False for types not in ``values``)."""
    if values and types.size and int(types.min()) >= 0 and int(types.max()) < 4096:
        lut = np.zeros(int(types.max()) + 1, dtype=dtype)
        for t, v in values.items():
            if t < lut.size:
                lut[t] = v
        out: np.ndarray = lut[types]
        return out
    out = np.zeros(types.size, dtype=dtype)
    for t, v in values.items():
        out[types == t] = v
    return out


def _plain_stores_allowed(ctx: SectionContext, types: np.ndarray, syms: np.ndarray, known: list[int]) -> bool:
    """Late phases: may plain stores (the array-shaped types) reach the target?

    Each refused relocation is reported with its context, as the fault the
    kernel would take on it."""
    from .constants import ModuleState

    if ctx.write_policy is None or ctx.image.state == ModuleState.UNFORMED:
        return True
    plain = [
        t
        for t in known
        if ctx.arch.types[t].handler is None and ctx.arch.types[t].width and ctx.arch.types[t].write_hint is None
    ]
    if not plain:
        return True
    try:
        region = ctx.image.region_at(ctx.target_address, max(ctx.target.size, 1))
    except Exception:
        return True  # reported when committing
    if ctx.write_policy(ctx.image, region, ctx.target_address, ctx.target.size, None) is not None:
        return True
    bad = np.flatnonzero(np.isin(types, plain))
    _limited(
        ctx,
        bad,
        "write to read-only memory",
        lambda i: ctx.diag(
            f"late write into {region.name} ({region.perms}) while the module is {ctx.image.state.name}: "
            "the kernel writes this type with a plain store, which faults on read-only memory",
            i,
            rtype=int(types[i]),
            sym=int(syms[i]),
            kernel_message="Unable to handle kernel write to read-only memory",
        ),
    )
    return False


def _overlaps(offs: np.ndarray, widths: np.ndarray) -> bool:
    if offs.size < 2:
        return False
    if bool(np.all(offs[1:] >= offs[:-1])):  # already in offset order (compilers emit it so): no sort
        return bool(np.any(offs[1:] < offs[:-1] + widths[:-1]))
    order = np.argsort(offs, kind="stable")
    o = offs[order]
    w = widths[order]
    return bool(np.any(o[1:] < o[:-1] + w[:-1]))


def _apply_group(
    ctx: SectionContext,
    rt: RelocType,
    idx: np.ndarray,
    S: np.ndarray,
    A: np.ndarray,
    P: np.ndarray,
    offs: np.ndarray,
    buf: np.ndarray,
) -> bool:
    """Compute, check and write one type's entries; False if any was refused."""
    order = ctx.arch.insn_order if rt.insn else ctx.module.elf.byteorder
    assert rt.compute is not None, f"{rt.name} has neither compute nor handler"
    ctx.group = idx
    values = rt.compute(S, A, P, ctx)
    ok = True
    if rt.check is not None:
        bad = np.flatnonzero(rt.check(values, ctx))
        if bad.size:
            ok = False
            _limited(
                ctx,
                idx[bad],
                rt.name + " range",
                lambda i: ctx.diag(
                    _format_error(rt.error, int(values[np.searchsorted(idx, i)])),
                    i,
                    rtype=rt.number,
                    sym=int(ctx.relas["r_info"][i] >> U64(32)),
                    kernel_message=ctx.fmt(rt.kernel_error, rt, int(values[np.searchsorted(idx, i)]), i),
                    value=hex(int(values[np.searchsorted(idx, i)])),
                ),
            )
    old = gather(buf, offs, rt.width, order)
    if rt.require_zero:
        nz = np.flatnonzero(old != 0)
        if nz.size:
            ok = False
            _limited(
                ctx,
                idx[nz],
                rt.name + " nonzero target",
                lambda i: ctx.diag(
                    f"target already written: existing value {int(old[np.searchsorted(idx, i)]):#x} is nonzero",
                    i,
                    rtype=rt.number,
                    sym=int(ctx.relas["r_info"][i] >> U64(32)),
                    kernel_message=ctx.fmt(rt.zero_error, rt, int(values[np.searchsorted(idx, i)]), i),
                ),
            )
    if rt.truncates is not None:
        tr = np.flatnonzero(rt.truncates(values, ctx))
        if tr.size:
            _limited(
                ctx,
                idx[tr],
                rt.name + " truncation",
                lambda i: ctx.diag(
                    f"value {int(values[np.searchsorted(idx, i)]):#x} does not fit the {8 * rt.width}-bit field; "
                    "the kernel writes the truncated low bits without an error",
                    i,
                    rtype=rt.number,
                    sym=int(ctx.relas["r_info"][i] >> U64(32)),
                    severity="warning",
                ),
            )
    if not ok:
        return False
    new = _encode(rt, values, old, ctx)
    scatter(buf, offs, rt.width, order, new)
    if rt.write_hint is not None:
        ctx.staged.hint_many(ctx.target.index, offs, rt.width, rt.write_hint)
    ctx.counts[rt.name] += int(idx.size)
    return True


def _encode(rt: RelocType, values: np.ndarray, old: np.ndarray, ctx: SectionContext) -> np.ndarray:
    """The new field contents: the type's encoder, or the value's low bits."""
    return (rt.encode or low_bits(rt.width))(values, old, ctx)


def _format_error(template: str, value: int) -> str:
    value &= 0xFFFFFFFFFFFFFFFF
    return template.format(value=value, svalue=value - (1 << 64) if value >> 63 else value)


def _run_handler(ctx: SectionContext, i: int) -> None:
    e = ctx.entry(i)
    rt = ctx.arch.types[e.type]
    try:
        assert rt.handler is not None
        rt.handler(ctx, e)
    except RelocFailure as f:
        ctx.diag(f.message, i, rtype=e.type, sym=e.sym, kernel_message=f.kernel_message)
    else:
        ctx.counts[rt.name] += 1


def _apply_sequential(ctx: SectionContext, types: np.ndarray, buf: np.ndarray) -> None:
    """Entry-by-entry application, for sections whose writes overlap."""
    rel = ctx.relas
    syms = (rel["r_info"] >> U64(32)).astype(np.int64)
    for i in range(len(rel)):
        t = int(types[i])
        rt = ctx.arch.types.get(t)
        if rt is None:
            continue
        one = np.array([i])
        if rt.handler is not None:
            ctx.group = one
            if rt.split is None or bool(np.asarray(rt.split(ctx))[0]):
                ctx.group = None
                if rt.batch is not None:
                    rt.batch(ctx, one)
                else:
                    _run_handler(ctx, i)
                continue
        if rt.width == 0:
            ctx.counts[rt.name] += 1
            continue
        S = ctx.symvals[syms[one]]
        A = rel["r_addend"][one].astype(np.int64)
        off = rel["r_offset"][one].astype(np.uint64)
        if not _apply_group(ctx, rt, one, S, A, U64(ctx.target_address) + off, off, buf):
            return  # the kernel stops at the first refused entry
    ctx.counts["applied"] += len(rel)


def clear_section(ctx: SectionContext) -> None:
    """Clear the places of ``ctx.relas`` as x86's ``clear_relocate_add`` does:
    each field must still hold the value applying would write (else a
    warning, and clearing stops there, as in the kernel); it becomes zero."""
    rel = ctx.relas
    buf = ctx.staged.buffer(ctx.target.index)
    for i in range(len(rel)):
        e = ctx.entry(i)
        rt = ctx.arch.types.get(e.type)
        if rt is None or rt.width == 0 or rt.compute is None:
            continue
        order = ctx.arch.insn_order if rt.insn else ctx.module.elf.byteorder
        value = rt.compute(
            np.array([e.S], dtype=np.uint64),
            np.array([e.addend], dtype=np.int64),
            np.array([e.P], dtype=np.uint64),
            ctx,
        )
        off = np.array([e.offset], dtype=np.uint64)
        old = gather(buf, off, rt.width, order)
        expect = _encode(rt, value, old, ctx)
        if int(old[0]) != int(expect[0]):
            ctx.diag(
                f"existing value {int(old[0]):#x} does not match the expected {int(expect[0]):#x}; clearing stops here",
                i,
                rtype=e.type,
                sym=e.sym,
                severity="warning",
                kernel_message=ctx.fmt(ctx.state.get("clear_mismatch_message"), rt, int(value[0]), i),
            )
            return
        scatter(buf, off, rt.width, order, np.zeros(1, dtype=np.uint64))
        ctx.counts["cleared"] += 1
