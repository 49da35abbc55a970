"""Call stubs: ``.stubs`` sizing in ``module_frob_arch_sections``, stub
creation (``stub_for_addr``), R_PPC64_REL24 (entry by entry, and the batch and
split paths that write the same bytes), the ftrace stubs and the out-of-line
ftrace block.

* **module_frob_arch_sections.**  ``.stubs`` is required (``"%s: doesn't contain
  .stubs."``); ``.toc`` gets ``sh_addralign`` >= 8; ``dedotify`` drops the
  leading ``.`` of undefined symbol names and makes ``.TOC.`` an ``SHN_ABS``
  symbol named ``TOC.``; every ``SHT_RELA`` section (``.klp.rela.*``
  included) is sorted in place, descending by ``r_info`` then by signed
  ``r_addend``; ``.stubs`` is sized ``(1 + count_relocs(REL24) per section +
  DYNAMIC_FTRACE + DYNAMIC_FTRACE_WITH_REGS) * 40``.  The kernel sorts with
  ``lib/sort.c``'s heap sort, which is *not* stable; klpcore uses a stable sort,
  so only the order of entries with equal keys (same ``r_info`` and addend,
  different ``r_offset``) can differ, and applying them is order-independent.
* **REL24.**  A call to an ``SHN_UNDEF`` or ``SHN_LIVEPATCH`` symbol goes
  through a 40-byte stub (``stub_for_addr``: first slot with the same target,
  else the first empty one) and the ``nop`` after a ``bl`` becomes ``ld
  r2,24(r1)``.  Linux 6.3+ accepts an ``ld r2,24(r1)`` already there (re-applied
  livepatch relocations); 6.1 refuses it like any non-nop.  Module-local
  calls go to the local entry point (``st_other`` bits 7:5).  Calls to the
  mprofile-kernel ftrace entry points (``_mcount``, ``ftrace_caller``,
  ``ftrace_regs_caller``) get the ftrace stub, which uses the kernel TOC
  from the paca: its address and the paca offset are kernel-build facts that
  klpcore takes from ``KernelTarget.options`` (``kernel_toc``,
  ``paca_kernel_toc_offset``, ``ftrace_caller``, ``ftrace_regs_caller``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from klpcore import constants as C
from klpcore.arch import Entry
from klpcore.engine import ApplyContext, RelocFailure, SectionContext, gather, scatter
from klpcore.errors import Diagnostic, ElfFormatError
from klpcore.kernel import KernelTarget
from klpcore.loader import LoadingModule

from . import versions
from .abi import LI_MASK, MASK64, R_PPC64_REL24, U64, ha16, lo16, local_entry_offset, s64
from .options import kernel_address, option
from .protection import patch_hint
from .toc import dedotify, my_r2

STUB_SIZE = 40  # sizeof(struct ppc64_stub_entry) on ELFv2
STUB_MAGIC = 0x73747562
MAGIC_OFFSET = 28
FUNCDATA_OFFSET = 32
INSN_NOP = 0x60000000
INSN_LD_TOC = 0xE8410018  # ld r2,24(r1)
#: ELFv2 call stub: addis r11,r2,HA / addi r11,r11,LO / std r2,24(r1) /
#: ld r12,32(r11) / mtctr r12 / bctr
STUB_INSNS = (0x3D620000, 0x396B0000, 0xF8410018, 0xE98B0020, 0x7D8903A6, 0x4E800420)
#: mprofile-kernel ftrace stub: ld r12,PACATOC(r13) / addis r12,r12,HA /
#: addi r12,r12,LO / mtctr r12 / bctr
FTRACE_STUB_INSNS = (0xE98D0000, 0x3D8C0000, 0x398C0000, 0x7D8903A6, 0x4E800420)
FTRACE_NAMES = ("_mcount", "ftrace_caller", "ftrace_regs_caller")


def stub_words(stub: int, r2: int) -> list[int]:
    """The six instruction words of an ELFv2 call stub at ``stub`` for TOC pointer ``r2``."""
    reladdr = s64(stub - r2)
    return [STUB_INSNS[0] | ha16(reladdr), STUB_INSNS[1] | lo16(reladdr), *STUB_INSNS[2:]]


def branch_insn(old: int, p: int, target: int) -> int:
    """``old`` (a b/bl) with its LI field pointing from ``p`` to ``target``."""
    return (old & ~LI_MASK & 0xFFFFFFFF) | ((target - p) & LI_MASK)


def describe_address(ctx: ApplyContext, address: int) -> str:
    """``%pS`` as the kernel prints it: ``func+0xoff/0xsize [module]``."""
    found = ctx.function_at(address)
    if found is None:
        return f"{address:#x}"
    start, size, name = found
    return f"{name}+{address - start:#x}/{size:#x} [{ctx.module.name}]"


def count_relocs(relas: np.ndarray, rtype: int) -> int:
    """The kernel's ``count_relocs``: REL24 entries whose (symbol, addend)
    differ from the last counted pair, held in 32-bit unsigned variables."""
    info = relas["r_info"]
    sel = np.flatnonzero((info & U64(0xFFFFFFFF)) == U64(rtype))
    count = 0
    prev_sym = prev_add = 0
    for sym, add in zip((info[sel] >> U64(32)).tolist(), relas["r_addend"][sel].astype(np.int64).tolist(), strict=True):
        if sym != prev_sym or add != prev_add:
            count += 1
            prev_sym, prev_add = sym & 0xFFFFFFFF, add & 0xFFFFFFFF
    return count


def sort_relas(relas: np.ndarray) -> None:
    """Sort in place: descending ``r_info``, then descending signed ``r_addend``
    (stable; the kernel's heap sort is not, which matters only for equal keys)."""
    if len(relas) < 2:
        return
    info = relas["r_info"].astype(np.uint64)
    add = relas["r_addend"].astype(np.int64)
    order = np.lexsort((~add, ~info))
    relas[:] = relas[order]


def frob(module: LoadingModule, kernel: KernelTarget) -> None:
    """``module_frob_arch_sections`` for ELFv2 non-PCREL kernels."""
    stubs = toc = None
    for s in module.sections[1:]:
        if s.name == ".stubs":
            stubs = s
        elif s.name == ".toc":
            toc = s
            if s.addralign < 8:
                s.addralign = 8
    if stubs is None:
        raise ElfFormatError(
            Diagnostic(
                "the module has no .stubs section (ppc64 modules get one from asm/module.h)",
                module=module.name,
                kernel_message=f"{module.name}: doesn't contain .stubs.",
            )
        )
    dedotify(module)
    # up to 6.16 one spare slot keeps the funcdata scan terminated
    total = 0 if kernel.has(versions.STUB_COUNT) else 1
    for s in module.sections[1:]:
        if s.type != C.SHT_RELA:
            continue
        relas = module.elf.relas(s.index)
        sort_relas(relas)
        total += count_relocs(relas, R_PPC64_REL24)
    total += int(bool(option(kernel, "dynamic_ftrace")))
    total += int(bool(option(kernel, "dynamic_ftrace")) and bool(option(kernel, "dynamic_ftrace_with_regs")))
    module.arch_state["ool_slots"] = ool_slots(module, kernel)
    total += module.arch_state["ool_slots"]
    stubs.size = total * STUB_SIZE
    module.arch_state["stubs"] = stubs.index
    module.arch_state["toc"] = (toc or stubs).index
    module.arch_state["toc_fixed"] = False


def _stub_area(ctx: ApplyContext) -> tuple[int, int]:
    idx = int(ctx.module.arch_state["stubs"])
    base = ctx.section_address(idx)
    if base is None:
        raise RelocFailure(".stubs is not placed in module memory")
    return base, ctx.module.sections[idx].size // STUB_SIZE


def _stub_table(ctx: ApplyContext, base: int, num: int) -> dict[str, Any]:
    """Target address -> slot of the stubs in use, and the first free slot.

    Up to 6.16 the kernel scans the slots from 0 while ``funcdata`` is
    non-zero; slots are only ever appended, so the first free slot is the
    number in use.  From 6.17 it looks only at the first ``me->arch.stub_count``
    slots and appends at ``stub_count`` (which also counts the out-of-line
    ftrace block).  The table is read from memory once and kept in
    ``ctx.state`` (committed with the phase); ``next`` is ``stub_count``.
    """
    tab: dict[str, Any] | None = ctx.state.get("stub_table")
    if tab is None:
        raw = np.frombuffer(ctx.staged.read(base, num * STUB_SIZE), dtype=np.uint8).reshape(num, STUB_SIZE)
        funcdata = raw[:, FUNCDATA_OFFSET : FUNCDATA_OFFSET + 8].copy().view("<u8").reshape(-1)
        empty = np.flatnonzero(funcdata == 0)
        if ctx.kernel.has(versions.STUB_COUNT):
            used = 0  # module_frob_arch_sections: stub_count starts at 0
        else:
            used = int(empty[0]) if empty.size else num
        slots: dict[int, int] = {}
        for i, a in enumerate(funcdata[:used].tolist()):
            slots.setdefault(int(a), i)
        tab = ctx.state["stub_table"] = {"slots": slots, "next": used}
    return tab


def stub_for_addr(ctx: ApplyContext, addr: int, name: str) -> int:
    """``stub_for_addr``: the stub jumping to ``addr`` (created if needed)."""
    base, num = _stub_area(ctx)
    if addr != 0:
        tab = _stub_table(ctx, base, num)
        found = tab["slots"].get(addr)
        if found is not None:
            return base + found * STUB_SIZE
        i = tab["next"]
        if i >= num:
            raise RelocFailure(
                f"no free call stub: all {num} slots of .stubs are used "
                + (
                    "(Linux 6.17+ would write this stub past the end of .stubs, then warn in stub_for_addr on "
                    "the next search; klpcore refuses)"
                    if ctx.kernel.has(versions.STUB_COUNT)
                    else "(the kernel warns in stub_for_addr and refuses the relocation with -ENOENT)"
                ),
            )
        _warn_ool_overwrite(ctx, i)
        slot = base + i * STUB_SIZE
        if option(ctx.kernel, "mprofile_kernel") and name in _ftrace_names(ctx.kernel):
            create_ftrace_stub(ctx, slot, addr, name)
        else:
            create_stub(ctx, slot, addr)
        tab["slots"][addr] = i
        tab["next"] = i + 1
        return slot
    if ctx.kernel.has(versions.STUB_COUNT):
        tab = _stub_table(ctx, base, num)
        if 0 in tab["slots"]:
            return base + int(tab["slots"][0]) * STUB_SIZE
        i = tab["next"]
        if i >= num:
            raise RelocFailure(f"no free call stub: all {num} slots of .stubs are used")
        create_stub(ctx, base + i * STUB_SIZE, addr)
        tab["slots"][0] = i
        tab["next"] = i + 1
        return base + i * STUB_SIZE
    ctx.state.pop("stub_table", None)  # a stub to address 0 looks empty to the kernel: scan as it does
    i = 0
    while True:
        if i >= num:
            # The kernel reads the slot past the end, WARN_ON(i >= num_stubs) and -ENOENT.
            raise RelocFailure(
                f"no free call stub: all {num} slots of .stubs are used (the kernel warns in stub_for_addr "
                "and refuses the relocation with -ENOENT)",
            )
        slot = base + i * STUB_SIZE
        funcdata = ctx.read_uint(slot + FUNCDATA_OFFSET, 8)
        if funcdata == 0:
            break
        if funcdata == addr:
            return slot
        i += 1
    if option(ctx.kernel, "mprofile_kernel") and name in _ftrace_names(ctx.kernel):
        create_ftrace_stub(ctx, slot, addr, name)
    else:
        create_stub(ctx, slot, addr)
    return slot


def ool_slots(module: LoadingModule, kernel: KernelTarget) -> int:
    """Stub slots for the out-of-line ftrace stubs (``CONFIG_PPC_FTRACE_OUT_OF_LINE``,
    6.13+): roundup(entries * sizeof(struct ftrace_ool_stub), 40) / 40, with one
    entry per 8-byte pointer in ``__patchable_function_entries``."""
    if not kernel.has(versions.OOL_FTRACE_STUBS) or not option(kernel, "ftrace_out_of_line"):
        return 0
    sec = module.section_by_name("__patchable_function_entries")
    if sec is None:
        return 0
    entries = sec.size // 8
    size = int(option(kernel, "ftrace_ool_stub_size"))
    return (entries * size + STUB_SIZE - 1) // STUB_SIZE


def setup_ftrace_ool_stubs(ctx: ApplyContext) -> None:
    """``setup_ftrace_ool_stubs`` (after the ftrace stubs, at load).

    6.17+: the block is the next ``n`` slots and ``stub_count`` moves past it.
    6.13-6.16: the block starts at the first slot whose funcdata is zero and
    only that slot's funcdata gets a ``nop`` word (patch_u32), so later
    livepatch stubs are allocated inside the block, over the ftrace stubs."""
    n = int(ctx.module.arch_state.get("ool_slots", 0))
    if not ctx.kernel.has(versions.OOL_FTRACE_STUBS) or not option(ctx.kernel, "ftrace_out_of_line"):
        return
    base, num = _stub_area(ctx)
    tab = _stub_table(ctx, base, num)
    first = int(tab["next"])
    if first + n > num:
        ctx.diagnostics.append(
            Diagnostic(
                f"no room for {n} out-of-line ftrace stub slots after slot {first} of {num}",
                module=ctx.module.name,
                kernel_message="WARNING in setup_ftrace_ool_stubs (module_finalize_ftrace returns -ENOENT)",
            )
        )
        return
    ctx.state["ool_block"] = (first, first + n)
    if ctx.kernel.has(versions.STUB_COUNT):
        tab["next"] = first + n
    elif n:
        ctx.write_uint(base + first * STUB_SIZE + FUNCDATA_OFFSET, 4, INSN_NOP, hint=patch_hint(ctx))
        tab["slots"].setdefault(INSN_NOP, first)
        tab["next"] = first + 1


def _warn_ool_overwrite(ctx: ApplyContext, slot: int) -> None:
    block = ctx.state.get("ool_block")
    if block and block[0] <= slot < block[1]:
        ctx.diagnostics.append(
            Diagnostic(
                f"call stub {slot} lies inside the out-of-line ftrace stub block (slots {block[0]}-{block[1] - 1}): "
                "Linux 6.13-6.16 writes it over the module's ftrace stubs, corrupting function tracing of this "
                "module (fixed in 6.17 by allocating at stub_count)",
                severity="warning",
                module=ctx.module.name,
            )
        )


def _ftrace_names(kernel: KernelTarget) -> tuple[str, ...]:
    names = ["_mcount"]
    if option(kernel, "dynamic_ftrace"):
        names.append("ftrace_caller")
        if option(kernel, "dynamic_ftrace_with_regs"):
            names.append("ftrace_regs_caller")
    return tuple(names)


def _write_stub_tail(ctx: ApplyContext, slot: int, addr: int, hint: str | None = None) -> None:
    # funcdata as two 32-bit halves, then the magic (patch_instruction in 6.1, patch_u32 later: same bytes)
    ctx.write_uint(slot + FUNCDATA_OFFSET, 4, addr & 0xFFFFFFFF, hint=hint)
    ctx.write_uint(slot + FUNCDATA_OFFSET + 4, 4, addr >> 32, hint=hint)
    ctx.write_uint(slot + MAGIC_OFFSET, 4, STUB_MAGIC, hint=hint)


def create_stub(ctx: ApplyContext, slot: int, addr: int) -> None:
    """The ELFv2 call stub: TOC-relative address of the stub, target in funcdata."""
    hint = patch_hint(ctx)
    for k, word in enumerate(STUB_INSNS):
        ctx.write_uint(slot + 4 * k, 4, word, insn=True, hint=hint)
    r2 = my_r2(ctx)
    reladdr = s64(slot - r2)
    if not -(1 << 31) <= reladdr <= (1 << 31) - 1:
        raise RelocFailure(
            f"call stub at {slot:#x} is {reladdr:#x} from the TOC pointer {r2:#x}: outside the signed 32-bit "
            "reach of addis/addi",
            # "%p of stub out of range of %p" with (void *)reladdr and the *function* my_r2, as printed
            # with no_hash_pointers (16 hex digits); the function's address comes from vmlinux's symbols
            f"{ctx.module.name}: Address {reladdr & MASK64:016x} of stub out of range of {_my_r2_function(ctx)}.",
        )
    words = stub_words(slot, r2)
    ctx.write_uint(slot, 4, words[0], insn=True, hint=hint)
    ctx.write_uint(slot + 4, 4, words[1], insn=True, hint=hint)
    _write_stub_tail(ctx, slot, addr, hint)


def _my_r2_function(ctx: ApplyContext) -> str:
    syms = ctx.kernel_symbols
    found = syms.objects["vmlinux"].matches("my_r2") if syms is not None and "vmlinux" in syms.objects else []
    return f"{found[0]:016x}" if len(found) == 1 else "<address of my_r2()>"


def create_ftrace_stub(ctx: ApplyContext, slot: int, addr: int, name: str) -> None:
    """The mprofile-kernel stub for ``_mcount``/``ftrace_caller``: relative to
    the kernel TOC.  The kernel builds it with memcpy and plain stores in every
    version (no patch_instruction)."""
    ktoc = kernel_address(ctx, "kernel_toc")
    if ktoc is None:
        raise RelocFailure(
            f"the call to {name} needs the kernel's ftrace stub, which is relative to the kernel TOC "
            "(kernel_toc_addr()): give vmlinux symbols with .TOC. (System.map) or the option kernel_toc=ADDR"
        )
    hint = "store"
    first = FTRACE_STUB_INSNS[0] | (int(option(ctx.kernel, "paca_kernel_toc_offset")) & 0xFFFC)
    words = (first, *FTRACE_STUB_INSNS[1:])
    for k, word in enumerate(words):
        ctx.write_uint(slot + 4 * k, 4, word, insn=True, hint=hint)
    reladdr = s64(addr - int(ktoc))
    if not -(1 << 31) <= reladdr <= (1 << 31) - 1:
        raise RelocFailure(
            f"{name} at {addr:#x} is out of the signed 32-bit reach of the kernel TOC {int(ktoc):#x}",
            f"{ctx.module.name}: Address of {name} out of range of kernel_toc.",
        )
    ctx.write_uint(slot + 4, 4, words[1] | ha16(reladdr), insn=True, hint=hint)
    ctx.write_uint(slot + 8, 4, words[2] | lo16(reladdr), insn=True, hint=hint)
    _write_stub_tail(ctx, slot, addr, hint)


def finalize_ftrace(ctx: ApplyContext) -> None:
    """``module_finalize_ftrace``: stubs for ftrace_caller (and ftrace_regs_caller)."""
    if not option(ctx.kernel, "dynamic_ftrace"):
        return
    wanted = ["ftrace_caller"]
    if option(ctx.kernel, "dynamic_ftrace_with_regs"):
        wanted.append("ftrace_regs_caller")
    for name in wanted:
        addr = kernel_address(ctx, name)
        if addr is None:
            ctx.diagnostics.append(
                Diagnostic(
                    f"module_finalize_ftrace's stub for {name} is not reproduced (no vmlinux symbol {name}; give "
                    f"the option {name}=ADDR); later stubs would take a different slot than in the kernel",
                    severity="warning",
                    module=ctx.module.name,
                )
            )
            continue
        try:
            stub_for_addr(ctx, int(addr), name)
        except RelocFailure as f:
            ctx.diagnostics.append(
                Diagnostic(f.message, module=ctx.module.name, kernel_message=f.kernel_message, symbol=name)
            )
    setup_ftrace_ool_stubs(ctx)


def is_relative_link_branch(insn: int) -> bool:
    """I-form (18) or B-form (16) branch, AA clear, LK set."""
    opcode = insn >> 26
    return opcode in (16, 18) and insn & 3 == 1


#: REL24 range failure: our message and the kernel's (``{svalue}`` = displacement)
REL24_ERROR = "branch displacement {svalue:#x} is not a multiple of 4 in [-0x2000000, 0x1fffffc]"
REL24_KERNEL_ERROR = "{module}: REL24 {svalue} out of range!"


def rel24_range_failure(ctx: ApplyContext, d: int) -> RelocFailure:
    d = s64(d)
    return RelocFailure(REL24_ERROR.format(svalue=d), REL24_KERNEL_ERROR.format(module=ctx.module.name, svalue=d))


def nop_failure(ctx: ApplyContext, insn: int, at: int) -> RelocFailure:
    """restore_r2's refusal: the word after a call through a stub is not a nop."""
    return RelocFailure(
        f"the call through a stub must be followed by a nop (to become ld r2,24(r1)), found {insn:08x}"
        + (" (an already rewritten ld r2,24(r1) is accepted only since Linux 6.3)" if insn == INSN_LD_TOC else ""),
        f"{ctx.module.name}: Expected nop after call, got {insn:08x} at {describe_address(ctx, at)}",
    )


def restore_r2(ctx: SectionContext, e: Entry) -> None:
    """After a call through a stub the caller's r2 comes back: nop -> ld r2,24(r1)."""
    if option(ctx.kernel, "mprofile_kernel") and e.symbol_name in _ftrace_names(ctx.kernel):
        return
    if not is_relative_link_branch(ctx.read_uint(e.P, 4, insn=True)):
        return  # sibling call (b): nothing to restore
    after = e.P + 4
    insn = ctx.read_uint(after, 4, insn=True)
    if insn == INSN_LD_TOC and ctx.kernel.has(versions.RESTORE_R2_ACCEPTS_LD):
        return  # already restored: a livepatch relocation applied again (6.3+)
    if insn != INSN_NOP:
        raise nop_failure(ctx, insn, after)
    ctx.write_uint(after, 4, INSN_LD_TOC, insn=True, hint=patch_hint(ctx))


def rel24(ctx: SectionContext, entry: Entry) -> None:
    """R_PPC64_REL24: a stub for external/livepatch targets, else the local entry point."""
    e = entry
    value = (e.S + e.addend) & MASK64
    if e.st_shndx in (C.SHN_UNDEF, C.SHN_LIVEPATCH, C.SHN_LIVEPATCH_RFC):
        value = stub_for_addr(ctx, value, e.symbol_name)
        restore_r2(ctx, e)
    else:
        value = (value + local_entry_offset(e.st_other)) & MASK64
    d = (value - e.P) & MASK64
    if ((d + 0x2000000) & MASK64) > 0x3FFFFFF or d & 3:
        raise rel24_range_failure(ctx, d)
    old = ctx.read_uint(e.P, 4, insn=True)
    ctx.write_uint(e.P, 4, (old & ~LI_MASK & 0xFFFFFFFF) | (d & LI_MASK), insn=True, hint=patch_hint(ctx))


def rel24_stub_calls(ctx: SectionContext, idx: np.ndarray) -> None:
    """Calls through stubs, all of a section's at once (same result as the
    kernel's entry-by-entry loop, which is :func:`rel24`): a stub per distinct
    target address, allocated in order of first use; then the branches and the
    nop -> ``ld r2,24(r1)`` rewrites as arrays."""
    rel = ctx.relas
    syms = (rel["r_info"][idx] >> U64(32)).astype(np.int64)
    targets = ctx.symvals[syms] + rel["r_addend"][idx].astype(np.int64).view(U64)
    P = U64(ctx.target_address) + rel["r_offset"][idx].astype(np.uint64)
    names = ctx.module.elf.symbol_names
    uniq, first = np.unique(targets, return_index=True)
    stub_of = np.zeros(len(uniq), dtype=np.uint64)
    failed = np.zeros(len(uniq), dtype=bool)
    for k in np.argsort(first, kind="stable").tolist():
        i = int(idx[first[k]])
        try:
            stub_of[k] = stub_for_addr(ctx, int(uniq[k]), names[int(syms[first[k]])])
        except RelocFailure as f:
            failed[k] = True
            ctx.diag(f.message, i, rtype=R_PPC64_REL24, sym=int(syms[first[k]]), kernel_message=f.kernel_message)
    where = np.searchsorted(uniq, targets)
    ok = ~failed[where]
    buf = ctx.staged.buffer(ctx.target.index)
    offs = rel["r_offset"][idx].astype(np.uint64)
    order = ctx.arch.insn_order
    hint = patch_hint(ctx)
    # restore_r2 for link branches (not for mprofile ftrace calls)
    branch = gather(buf, offs, 4, order)
    opcode = branch >> U64(26)
    link = ((opcode == 18) | (opcode == 16)) & ((branch & U64(3)) == 1)
    if option(ctx.kernel, "mprofile_kernel"):
        ftrace = set(_ftrace_names(ctx.kernel))
        link &= ~np.array([names[int(s)] in ftrace for s in syms], dtype=bool)
    need = ok & link
    after = offs + U64(4)
    if need.any() and int(after[need].max()) + 4 > ctx.target.size:
        for j in np.flatnonzero(need & (after + U64(4) > U64(ctx.target.size))).tolist():
            ctx.diag("the instruction after the call is outside the section", int(idx[j]), R_PPC64_REL24, int(syms[j]))
            need[j] = ok[j] = False
    nxt = gather(buf, after[need], 4, order) if need.any() else np.zeros(0, np.uint64)
    ld_ok = nxt == U64(INSN_LD_TOC)
    accepted = ld_ok if ctx.kernel.has(versions.RESTORE_R2_ACCEPTS_LD) else np.zeros_like(ld_ok)
    bad = ~accepted & (nxt != U64(INSN_NOP))
    need_idx = np.flatnonzero(need)
    for j, word in zip(need_idx[bad].tolist(), nxt[bad].tolist(), strict=True):
        nop = nop_failure(ctx, word, int(P[j]) + 4)
        ctx.diag(nop.message, int(idx[j]), R_PPC64_REL24, int(syms[j]), kernel_message=nop.kernel_message)
        ok[j] = False
    rewrite = need_idx[~bad & ~accepted]
    # the kernel rewrites the nop before the range check; klpcore writes nothing when anything fails
    d = (stub_of[where] - P).view(np.int64)
    out = ok & ((d < -0x2000000) | (d > 0x1FFFFFF) | ((d & 3) != 0))
    for j in np.flatnonzero(out).tolist():
        far = rel24_range_failure(ctx, int(d[j]))
        ctx.diag(far.message, int(idx[j]), R_PPC64_REL24, int(syms[j]), kernel_message=far.kernel_message)
    good = ok & ~out
    if rewrite.size:
        scatter(buf, after[rewrite], 4, order, np.full(rewrite.size, INSN_LD_TOC, dtype=np.uint64))
    new = (branch[good] & U64(~LI_MASK & 0xFFFFFFFF)) | (d[good].view(U64) & U64(LI_MASK))
    scatter(buf, offs[good], 4, order, new)
    if hint is not None:
        spans = [(int(o), int(o) + 4, hint) for o in offs[good].tolist()]
        spans += [(int(o), int(o) + 4, hint) for o in after[rewrite].tolist()]
        ctx.staged.hints.setdefault(ctx.target.index, []).extend(spans)


def rel24_needs_stub(ctx: SectionContext) -> np.ndarray:
    """The REL24 entries of ``ctx.group`` that call through a stub: targets
    that are undefined (resolved externals) or livepatch symbols."""
    shndx = ctx.module.elf.symbols["st_shndx"][ctx.group_symbols()]
    return (shndx == C.SHN_UNDEF) | (shndx == C.SHN_LIVEPATCH) | (shndx == C.SHN_LIVEPATCH_RFC)


def rel24_local(S: np.ndarray, A: np.ndarray, P: np.ndarray, ctx: SectionContext) -> np.ndarray:
    """Direct calls: S + A + local entry offset (st_other bits 7:5) - P."""
    k = (ctx.module.elf.symbols["st_other"][ctx.group_symbols()].astype(np.uint64) & U64(0xE0)) >> U64(5)
    offset = ((U64(1) << k) >> U64(2)) << U64(2)
    return S + A.view(U64) + offset - P


def rel24_bad(values: np.ndarray, ctx: SectionContext) -> np.ndarray:
    """Out of the +-32 MiB branch range, or not a multiple of 4."""
    d = values.view(np.int64)
    return (d < -0x2000000) | (d > 0x1FFFFFF) | ((values & U64(3)) != 0)
