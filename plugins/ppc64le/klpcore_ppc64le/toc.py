"""The module TOC: ``my_r2``, the ``TOC.`` symbol, ``dedotify`` and ``R_PPC64_ENTRY``.

* **TOC base.**  ``my_r2 = (sh_addr(.toc) & ~0xff) + 0x8000`` (``.stubs`` when
  there is no ``.toc``).  On the first ``apply_relocate_add`` the ``TOC.``
  symbol gets the value ``my_r2`` (``toc_fixed``).
* **ENTRY** rewrites ``ld r2,-8(r12)`` / ``add r2,r2,r12`` into ``addis
  r2,r12,HA`` / ``addi r2,r2,LO`` when ``my_r2 - P`` fits (plain stores).
"""

from __future__ import annotations

import numpy as np

from klpcore import constants as C
from klpcore.arch import Entry
from klpcore.engine import ApplyContext, SectionContext, gather, scatter
from klpcore.loader import LoadingModule

from .abi import MASK64, U64, ha16, lo16

ENTRY_LD = 0xE84C0000  # ld r2,0(r12)
ENTRY_ADD = 0x7C426214  # add r2,r2,r12
ENTRY_ADDIS = 0x3C4C0000  # addis r2,r12,0
ENTRY_ADDI = 0x38420000  # addi r2,r2,0


def toc_section(module: LoadingModule) -> int:
    return int(module.arch_state["toc"])


def my_r2(ctx: ApplyContext) -> int:
    """The module's TOC pointer: ``(sh_addr(.toc) & ~0xff) + 0x8000``."""
    addr = ctx.section_address(toc_section(ctx.module)) or 0
    return ((addr & ~0xFF) + 0x8000) & MASK64


def entry_words(p: int, r2: int) -> tuple[int, int]:
    """ENTRY's replacement for the global-entry pair at ``p``."""
    v = (r2 - p) & MASK64
    return ENTRY_ADDIS | ha16(v), ENTRY_ADDI | lo16(v)


def dedotify(module: LoadingModule) -> None:
    elf = module.elf
    syms = elf.symbols
    for i in np.flatnonzero(syms["st_shndx"] == C.SHN_UNDEF).tolist():
        name = elf.symbol_names[i]
        if i == 0 or not name.startswith("."):
            continue
        if name == ".TOC.":
            syms["st_shndx"][i] = C.SHN_ABS
        syms["st_name"][i] += 1
        elf.symbol_names[i] = name[1:]


def fix_toc(ctx: SectionContext) -> None:
    """On the first ``apply_relocate_add``, the ``TOC.`` symbol becomes ``my_r2``."""
    if not ctx.state.get("toc_fixed"):
        elf = ctx.module.elf
        for i in np.flatnonzero(elf.symbols["st_shndx"] == C.SHN_ABS).tolist():
            if i and elf.symbol_names[i] == "TOC.":
                ctx.symvals[i] = U64(my_r2(ctx))
                break
        ctx.state["toc_fixed"] = True


def entry_batch(ctx: SectionContext, idx: np.ndarray) -> None:
    """All R_PPC64_ENTRY entries of a section at once (same rule as :func:`entry_reloc`)."""
    buf = ctx.staged.buffer(ctx.target.index)
    offs = ctx.relas["r_offset"][idx].astype(np.uint64)
    inside = offs + U64(8) <= U64(ctx.target.size)
    offs = offs[inside]
    P = U64(ctx.target_address) + offs
    v = U64(my_r2(ctx)) - P
    fits = (v + U64(0x80008000)) <= U64(0xFFFFFFFF)
    order = ctx.arch.insn_order
    w0 = gather(buf, offs, 4, order)
    w1 = gather(buf, offs + U64(4), 4, order)
    match = fits & ((w0 & U64(~0xFFFC & 0xFFFFFFFF)) == U64(ENTRY_LD)) & (w1 == U64(ENTRY_ADD))
    vv = v[match]
    ha = ((vv + U64(0x8000)) >> U64(16)) & U64(0xFFFF)
    scatter(buf, offs[match], 4, order, U64(ENTRY_ADDIS) | ha)
    scatter(buf, offs[match] + U64(4), 4, order, U64(ENTRY_ADDI) | (vv & U64(0xFFFF)))
    ctx.staged.hint_many(ctx.target.index, offs[match], 8, "store")


def entry_reloc(ctx: SectionContext, entry: Entry) -> None:
    """R_PPC64_ENTRY: turn the large-model global entry into addis/addi when my_r2 - P fits."""
    e = entry
    v = (my_r2(ctx) - e.P) & MASK64
    if ((v + 0x80008000) & MASK64) > 0xFFFFFFFF:
        return
    w0 = ctx.read_uint(e.P, 4, insn=True)
    w1 = ctx.read_uint(e.P + 4, 4, insn=True)
    if (w0 & ~0xFFFC & 0xFFFFFFFF) != ENTRY_LD or w1 != ENTRY_ADD:
        return
    w0, w1 = entry_words(e.P, my_r2(ctx))
    ctx.write_uint(e.P, 4, w0, insn=True, hint="store")
    ctx.write_uint(e.P + 4, 4, w1, insn=True, hint="store")
