"""The module GOT and PLT: slot counting, placement, and their bytes.

``module_frob_arch_sections`` walks every ``SHT_RELA`` section in section
order (``.klp.rela.*`` and relocations of non-allocated sections included)
and gives each *symbol* one 8-byte GOT slot on its first GOT-type relocation
and one PLT entry on its first PLT-type relocation, whatever the addend.  It
then grows ``MOD_TEXT`` (6.1: the core) before ``layout_sections`` runs, when
its size is still 0: ``ALIGN(0, 4)`` is the GOT, the PLT follows directly
(plus one more entry for the expoline thunk), and the module's first text
section comes after them.  klpcore reserves the two areas with
``LoadingModule.reserve`` as :data:`GOT_NAME` and :data:`PLT_NAME`.

``apply_rela`` fills a symbol's GOT slot with S (no addend) and writes its PLT
entry (target S) the first time a relocation of that kind is applied, through
the same ``write`` as the field (``memcpy`` or ``s390_kernel_write``), even
when a PLT32DBL then branches directly.  ``got_initialized`` and
``plt_initialized`` are never reset, and s390 has no ``clear_relocate_add``:
when a patched module is unloaded and loaded again, the livepatch
relocations reuse the slots written for its earlier load.  klpcore warns when
that happens (:func:`fill`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from klpcore import constants as C
from klpcore.constants import MemType
from klpcore.engine import ApplyContext, SectionContext, StagedMemory, scatter
from klpcore.kernel import KernelTarget
from klpcore.loader import LoadingModule

from . import versions
from .options import expoline

U64 = np.uint64
GOT_NAME = ".klpcore.s390.got"
PLT_NAME = ".klpcore.s390.plt"
GOT_ENTRY_SIZE = 8
PLT_ENTRY_SIZE = 22

#: relocation types that use a GOT slot (``check_rela``)
GOT_SLOT_TYPES = {
    6: "R_390_GOT12",
    15: "R_390_GOT16",
    58: "R_390_GOT20",
    7: "R_390_GOT32",
    24: "R_390_GOT64",
    26: "R_390_GOTENT",
    29: "R_390_GOTPLT12",
    30: "R_390_GOTPLT16",
    59: "R_390_GOTPLT20",
    31: "R_390_GOTPLT32",
    32: "R_390_GOTPLT64",
    33: "R_390_GOTPLTENT",
}
#: relocation types that use a PLT entry (``check_rela``)
PLT_SLOT_TYPES = {
    18: "R_390_PLT16DBL",
    20: "R_390_PLT32DBL",
    8: "R_390_PLT32",
    25: "R_390_PLT64",
    34: "R_390_PLTOFF16",
    35: "R_390_PLTOFF32",
    36: "R_390_PLTOFF64",
}
_LUT = 64  # type numbers below this are looked up in tables
_IS_GOT = np.zeros(_LUT + 1, dtype=bool)
_IS_GOT[list(GOT_SLOT_TYPES)] = True
_IS_PLT = np.zeros(_LUT + 1, dtype=bool)
_IS_PLT[list(PLT_SLOT_TYPES)] = True
_KIND = _IS_GOT.astype(np.uint8) | (_IS_PLT.astype(np.uint8) << 1)  # 1: GOT slot, 2: PLT entry

# PLT entry: basr %r1,%r0 / lg %r1,12(%r1), then br %r1 (+2 bytes the kernel leaves
# unset: klpcore writes 0) or brcl 15,__jump_r1, then the 8-byte target at +14
PLT_HEAD = bytes.fromhex("0d10e310100c0004")
PLT_BR = bytes.fromhex("07f10000")
PLT_BRCL = bytes.fromhex("c0f4")
#: the expoline thunk module_finalize writes in the PLT's last slot:
#: exrl %r0,.+10 / j . / br %r1 (the rest of the slot stays zero)
EXPOLINE_THUNK = bytes.fromhex("c60000000005a7f4000007f1")


def _type_mask(types: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[np.minimum(types, U64(_LUT)).astype(np.int64)]  # type: ignore[no-any-return]


def first_use_slots(syms: np.ndarray, nsyms: int, entry: int) -> tuple[np.ndarray, int]:
    """Offsets (-1 = none) per symbol for slots handed out in order of first
    use by ``syms``, ``entry`` bytes each; and the total size."""
    offsets = np.full(nsyms, -1, dtype=np.int64)
    if syms.size == 0:
        return offsets, 0
    uniq, first = np.unique(syms, return_index=True)
    ordered = uniq[np.argsort(first, kind="stable")]
    offsets[ordered] = np.arange(ordered.size, dtype=np.int64) * entry
    return offsets, int(ordered.size) * entry


def frob(module: LoadingModule, kernel: KernelTarget) -> None:
    """``module_frob_arch_sections``: ``_GLOBAL_OFFSET_TABLE_`` becomes
    ``SHN_ABS``, GOT slots and PLT entries are counted per symbol, and both
    areas are reserved at the start of ``MOD_TEXT``."""
    elf = module.elf
    shndx = elf.symbols["st_shndx"]
    for i, name in enumerate(elf.symbol_names):
        if name == "_GLOBAL_OFFSET_TABLE_" and int(shndx[i]) == C.SHN_UNDEF:
            shndx[i] = C.SHN_ABS  # "define" it as absolute; its value stays as in the file
    infos = [elf.relas(s.index)["r_info"] for s in module.sections if s.type == C.SHT_RELA]
    info = np.concatenate(infos) if infos else np.zeros(0, dtype=np.uint64)
    types = info & U64(0xFFFFFFFF)
    syms = (info >> U64(32)).astype(np.int64)
    got_off, got_size = first_use_slots(syms[_type_mask(types, _IS_GOT)], elf.nsyms, GOT_ENTRY_SIZE)
    plt_off, plt_size = first_use_slots(syms[_type_mask(types, _IS_PLT)], elf.nsyms, PLT_ENTRY_SIZE)
    thunk = bool(plt_size) and expoline(kernel)
    if thunk:
        plt_size += PLT_ENTRY_SIZE
    module.reserve(MemType.TEXT, GOT_NAME, got_size, align=4)
    module.reserve(MemType.TEXT, PLT_NAME, plt_size)
    module.arch_state.update(
        got_off=got_off,
        plt_off=plt_off,
        got_size=got_size,
        plt_size=plt_size,
        expoline=thunk,
        # per symbol: 0 = not initialized, else the number of the phase that wrote it
        got_init=np.zeros(elf.nsyms, dtype=np.int32),
        plt_init=np.zeros(elf.nsyms, dtype=np.int32),
        phases=[],
    )


@dataclass(frozen=True)
class Geometry:
    """Where the GOT and PLT are: ``base`` is ``mem[MOD_TEXT].base`` (6.1:
    ``core_layout.base``); ``got_offset``/``plt_offset`` are ``me->arch``'s."""

    base: int
    got_offset: int
    plt_offset: int
    got_key: int  # staged-memory key of the reservations
    plt_key: int

    @property
    def got(self) -> int:
        return self.base + self.got_offset

    @property
    def plt(self) -> int:
        return self.base + self.plt_offset


def geometry(ctx: ApplyContext) -> Geometry:
    geo: Geometry | None = ctx.module.arch_state.get("geometry")
    if geo is not None:
        return geo
    lay = ctx.module.layout
    got = lay.reserved.get(GOT_NAME)
    plt = lay.reserved.get(PLT_NAME)
    region = lay.regions.get(MemType.TEXT)
    if got is None or plt is None or region is None:  # no text at all: the kernel's base is NULL
        geo = Geometry(0, 0, 0, 0, 0)
    else:
        base = region.address if lay.style == "memory" else lay.base
        geo = Geometry(base, got.address - base, plt.address - base, got.index, plt.index)
    ctx.module.arch_state["geometry"] = geo
    return geo


def gotent_base(ctx: ApplyContext) -> int:
    """What GOTENT/GOTPLTENT add to G + A - P: the GOT (6.5+) or the text base."""
    geo = geometry(ctx)
    return geo.got if ctx.kernel.has(versions.GOTENT_GOT_OFFSET) else geo.base


def plt_entries(addresses: np.ndarray, targets: np.ndarray, thunk: int | None) -> np.ndarray:
    """The 22-byte PLT entries at ``addresses`` jumping to ``targets``, as an
    (n, 22) byte array; ``thunk``: address of ``__jump_r1`` (expoline) or None."""
    n = addresses.size
    out = np.zeros((n, PLT_ENTRY_SIZE), dtype=np.uint8)
    out[:, 0:8] = np.frombuffer(PLT_HEAD, dtype=np.uint8)
    if thunk is None:
        out[:, 8:12] = np.frombuffer(PLT_BR, dtype=np.uint8)
    else:
        out[:, 8:10] = np.frombuffer(PLT_BRCL, dtype=np.uint8)
        disp = ((U64(thunk) - (addresses + U64(8))).view(np.int64) // 2).astype(">i4")
        out[:, 10:14] = disp.view(np.uint8).reshape(n, 4)
    out[:, 14:22] = targets.astype(">u8").view(np.uint8).reshape(n, 8)
    return out


def plt_entry(address: int, target: int, thunk: int | None) -> bytes:
    """One PLT entry (see :func:`plt_entries`)."""
    rows = plt_entries(np.array([address], dtype=np.uint64), np.array([target], dtype=np.uint64), thunk)
    return bytes(rows[0])


_GENERATIONS: weakref.WeakKeyDictionary[StagedMemory, int] = weakref.WeakKeyDictionary()


def _generation(ctx: ApplyContext) -> int:
    """A number per phase (load, enable, each coming), counted from 1."""
    gen = _GENERATIONS.get(ctx.staged)
    if gen is None:
        phases: list[str] = ctx.state["phases"]
        phases.append(ctx.phase)
        gen = _GENERATIONS[ctx.staged] = len(phases)
    return gen


def _thunk(ctx: ApplyContext) -> int | None:
    if not ctx.state["expoline"]:
        return None
    geo = geometry(ctx)
    return geo.plt + int(ctx.state["plt_size"]) - PLT_ENTRY_SIZE


def fill(ctx: SectionContext) -> None:
    """The GOT slots and PLT entries ``apply_rela`` writes for this section's
    relocations on their symbols' first use, and warnings where a slot
    written by an earlier phase is reused."""
    rel = ctx.relas
    if not len(rel):
        return
    kind = _KIND[np.minimum(rel["r_info"] & U64(0xFFFFFFFF), U64(_LUT)).astype(np.intp)]
    if not kind.any():
        return
    got_mask = kind == 1
    plt_mask = kind == 2
    syms = (rel["r_info"] >> U64(32)).astype(np.int64)
    gen = _generation(ctx)
    geo = geometry(ctx)
    for mask, init_key, off_key, key, base, entry in (
        (got_mask, "got_init", "got_off", geo.got_key, geo.got, GOT_ENTRY_SIZE),
        (plt_mask, "plt_init", "plt_off", geo.plt_key, geo.plt, PLT_ENTRY_SIZE),
    ):
        if not mask.any():
            continue
        s = syms[mask]
        init: np.ndarray = ctx.state[init_key]
        state = init[s]
        if (state == 0).any():
            mark = np.zeros(init.size, dtype=bool)  # each new symbol once
            mark[s[state == 0]] = True
            new = np.flatnonzero(mark)
            off = ctx.state[off_key][new].astype(np.uint64)
            buf = ctx.staged.buffer(key)
            values = ctx.symvals[new]
            if entry == GOT_ENTRY_SIZE:
                scatter(buf, off, 8, "big", values)
            else:
                rows = plt_entries(U64(base) + off, values, _thunk(ctx))
                buf[off.astype(np.int64)[:, None] + np.arange(PLT_ENTRY_SIZE)] = rows
            init[new] = gen
        earlier = (state != 0) & (state < gen)
        if earlier.any():
            idx = np.flatnonzero(mask)[earlier]
            uniq, first = np.unique(syms[idx], return_index=True)
            _warn_reuse(ctx, uniq, idx[first], ctx.state[off_key][uniq], base, entry, init)


def _warn_reuse(
    ctx: SectionContext,
    syms: np.ndarray,
    first: np.ndarray,
    offsets: np.ndarray,
    base: int,
    entry: int,
    init: np.ndarray,
) -> None:
    kind = "GOT slot" if entry == GOT_ENTRY_SIZE else "PLT entry"
    at = 0 if entry == GOT_ENTRY_SIZE else 14
    phases: list[str] = ctx.state["phases"]
    for sym, i, off in zip(syms.tolist(), first.tolist(), offsets.tolist(), strict=True):
        old = ctx.read_uint(base + off + at, 8)
        now = int(ctx.symvals[sym])
        when = phases[int(init[sym]) - 1]
        what = (
            f"so the relocation reaches {old:#x}, not the symbol's address now, {now:#x}"
            if old != now
            else f"(it still holds the symbol's address, {now:#x})"
        )
        ctx.diag(
            f"{kind} of this symbol was written in an earlier phase ({when}); the kernel reuses it "
            f"({'got' if at == 0 else 'plt'}_initialized is never reset and s390 has no clear_relocate_add) {what}",
            int(i),
            rtype=int(ctx.relas["r_info"][i] & U64(0xFFFFFFFF)),
            sym=sym,
            severity="warning",
            slot=hex(base + off),
        )


def finalize(ctx: ApplyContext) -> None:
    """``module_finalize``: the expoline thunk in the PLT's last slot."""
    thunk = _thunk(ctx)
    if thunk is not None:
        for k in range(0, len(EXPOLINE_THUNK), 4):
            ctx.write_uint(thunk + k, 4, int.from_bytes(EXPOLINE_THUNK[k : k + 4], "big"), insn=True)


def state_summary(state: dict[str, Any]) -> dict[str, int]:
    """GOT/PLT sizes and slots in use (for tests and reports)."""
    return {
        "got_size": int(state["got_size"]),
        "plt_size": int(state["plt_size"]),
        "got_slots": int(np.count_nonzero(state["got_off"] >= 0)),
        "plt_entries": int(np.count_nonzero(state["plt_off"] >= 0)),
    }
