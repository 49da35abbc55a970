"""Module PLTs, erratum 843419 veneers and the ftrace trampoline
(``arch/arm64/kernel/module-plts.c`` and ``module_finalize``).

* :func:`frob` is ``module_frob_arch_sections``: for every ``SHT_RELA``
  section (``.klp.rela.*`` included) whose target is executable it moves the
  CALL26/JUMP26 entries against symbols outside the target section to the
  front (``partition_branch_plt_relas``, with its quirk: when every entry
  needs a PLT the last one is left out of the sort), sorts that prefix by
  (type, symbol, signed addend), and counts PLT slots (``count_plts``: a
  branch counts unless it repeats the previous entry with addend 0; an ADRP at
  a place whose offset bits [11:3] are all ones reserves a veneer slot, other
  ADRPs raise the target section's alignment; with the erratum active each
  section adds ``ceil(n / 341)`` spare slots).  ``.plt``/``.init.plt`` become
  NOBITS of ``(count + 1) * 12`` bytes.
* :func:`emit_plt_entry` is ``module_emit_plt_entry``: the slot after the
  last one used (skipping one whose ADRP would sit at page offset >= 0xff8),
  written even when it turns out to duplicate the previous entry (then the
  previous one is used and the count does not move).
* :func:`emit_veneer` is ``module_emit_veneer_for_adrp``.
* :func:`sequential_batch` applies, in section order, the entries that need
  more than arithmetic: branches out of direct range and ADRPs at forbidden
  offsets, which share the PLT slot counter.
* :func:`ftrace_trampoline` is ``module_init_ftrace_plt``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from klpcore import constants as C
from klpcore.arch import Entry
from klpcore.engine import ApplyContext, RelocFailure, SectionContext, gather, scatter
from klpcore.errors import Diagnostic, ElfFormatError
from klpcore.kernel import KernelTarget

from . import options, versions
from .protection import insn_hint
from .types import (
    ADRP_TYPES,
    BRANCH_TYPES,
    BREAK_FAULT,
    BY_NUMBER,
    IMM_26,
    IMM_ADR,
    KERNEL_OVERFLOW,
    OP_PREL,
    R_AARCH64_ADR_PREL_PG_HI21,
    encode_imm,
    insn_imm,
    places,
    s64,
)

U64 = np.uint64
MASK64 = (1 << 64) - 1
PLT_ENTRY = 12  # sizeof(struct plt_entry)
L1_CACHE_BYTES = 64
ADRP_X16 = 0x90000010
ADD_X16 = 0x91000210
BR_X16 = 0xD61F0200
INSN_ADRP = 0x90000000
INSN_ADD_IMM64 = 0x91000000
INSN_B = 0x14000000
SZ_128M = 1 << 27
TRAMPOLINE = ".text.ftrace_trampoline"
INIT_TRAMPOLINE = ".init.text.ftrace_trampoline"


# ------------------------------------------------------------ encodings
def forbidden(kernel: KernelTarget, address: int) -> bool:
    """``is_forbidden_offset_for_adrp``."""
    return (address & 0xFFF) >= 0xFF8 and options.erratum_843419(kernel)


def gen_adrp(pc: int, dst: int, reg: int) -> int:
    """``aarch64_insn_gen_adr(pc, dst, reg, ADRP)`` (BREAK_FAULT beyond +-4 GiB)."""
    raw = (((dst - (pc & ~0xFFF)) & MASK64) >> 12) & 0xFFFFFFFF
    offset = raw - (1 << 32) if raw >> 31 else raw  # s32
    if offset < -(1 << 20) or offset >= (1 << 20):
        return BREAK_FAULT
    return encode_imm(IMM_ADR, INSN_ADRP | reg, offset)


def gen_add_imm(reg: int, imm: int) -> int:
    """``aarch64_insn_gen_add_sub_imm(reg, reg, imm < 4096, 64-bit, ADD)``."""
    return INSN_ADD_IMM64 | (imm << 10) | (reg << 5) | reg


def gen_branch(pc: int, addr: int) -> int:
    """``aarch64_insn_gen_branch_imm(pc, addr, NOLINK)``: ``b addr`` or BREAK_FAULT."""
    if pc & 3 or addr & 3:
        return BREAK_FAULT
    offset = s64(addr - pc)
    if offset < -SZ_128M or offset >= SZ_128M:
        return BREAK_FAULT
    return INSN_B | ((offset >> 2) & 0x3FFFFFF)


def plt_words(dst: int, pc: int, reg: int = 16) -> tuple[int, int]:
    """``__get_adrp_add_pair``: adrp/add of ``reg`` to ``dst`` for an entry at ``pc``."""
    return gen_adrp(pc, dst, reg), gen_add_imm(reg, dst % 4096)


def plt_entry(dst: int, pc: int) -> tuple[int, int, int]:
    """``get_plt_entry``: adrp x16 / add x16 / br x16."""
    adrp, add = plt_words(dst, pc)
    return adrp, add, BR_X16


def adrp_offset(insn: int) -> int:
    """``aarch64_insn_adrp_get_offset``: the immediate << 12 as an ``s32``."""
    imm = (((insn >> 5) & 0x7FFFF) << 2) | ((insn >> 29) & 3)
    raw = (imm << 12) & 0xFFFFFFFF
    return raw - (1 << 32) if raw >> 31 else raw


def entries_equal(a: tuple[int, int, int], a_addr: int, b: tuple[int, int, int], b_addr: int) -> bool:
    """``plt_entries_equal``."""
    if a[1] != b[1] or a[2] != b[2]:
        return False
    p, q = a_addr & ~0xFFF, b_addr & ~0xFFF
    if a[0] == b[0] and p == q:
        return True
    return (p + adrp_offset(a[0])) & MASK64 == (q + adrp_offset(b[0])) & MASK64


# ------------------------------------------------------------ frob
def partition(need: np.ndarray) -> tuple[np.ndarray, int]:
    """``partition_branch_plt_relas`` as a permutation: (order, returned count).

    The kernel's two-pointer loop swaps the k-th non-PLT entry from the left
    with the k-th PLT entry from the right while the first lies left of the
    second; it returns the number of PLT entries, less one when every entry
    needs a PLT (the pointers meet on the last one without counting it).
    """
    n = need.size
    order = np.arange(n)
    left = np.flatnonzero(~need)
    right = np.flatnonzero(need)[::-1]
    k = min(left.size, right.size)
    pairs = np.flatnonzero(left[:k] < right[:k])
    m = int(pairs[-1]) + 1 if pairs.size else 0
    a, b = left[:m], right[:m]
    order[a], order[b] = b, a
    count = int(need.sum())
    if n and count == n:
        count -= 1
    return order, count


def partition_reference(need: list[bool]) -> tuple[list[int], int]:
    """The kernel's loop, entry by entry (for tests)."""
    order = list(range(len(need)))
    need = list(need)
    i, j = 0, len(need) - 1
    while i < j:
        if need[i]:
            i += 1
        elif need[j]:
            need[i], need[j] = need[j], need[i]
            order[i], order[j] = order[j], order[i]
        else:
            j -= 1
    return order, i


def sort_prefix(relas: np.ndarray, count: int) -> None:
    """Sort ``relas[:count]`` by (type, symbol, signed addend).  The kernel's
    heap sort is not stable; entries with equal keys emit the same PLT entry,
    so their order does not show in memory."""
    if count < 2:
        return
    head = relas[:count]
    info = head["r_info"].astype(np.uint64)
    order = np.lexsort((head["r_addend"].astype(np.int64), info >> U64(32), info & U64(0xFFFFFFFF)))
    relas[:count] = head[order]


def count_plts(relas: np.ndarray, shndx: np.ndarray, dstidx: int, kernel: KernelTarget) -> tuple[int, int]:
    """``count_plts``: (slots, minimum alignment for the target section)."""
    info = relas["r_info"].astype(np.uint64)
    types = (info & U64(0xFFFFFFFF)).astype(np.int64)
    syms = (info >> U64(32)).astype(np.int64)
    addend = relas["r_addend"].astype(np.int64)
    ret = 0
    if options.branch_plts_counted(kernel):
        branch = np.isin(types, BRANCH_TYPES) & (shndx[syms] != dstidx)
        dup = np.zeros(types.size, dtype=bool)
        if types.size > 1:
            dup[1:] = (types[1:] == types[:-1]) & (syms[1:] == syms[:-1]) & (addend[1:] == addend[:-1])
        ret += int(np.count_nonzero(branch & ((addend != 0) | ~dup)))
    align = 0
    erratum = options.erratum_843419(kernel)
    if erratum:
        adrp = np.isin(types, ADRP_TYPES)
        if adrp.any():
            offs = relas["r_offset"][adrp].astype(np.uint64) | U64(7)
            # ffz: index of the lowest zero bit; min_align = 2 << ffz
            low_ones = (~offs) & (offs + U64(1))  # the lowest zero bit, isolated
            min_align = low_ones << U64(1)
            ret += int(np.count_nonzero(min_align > U64(4096)))
            small = min_align[min_align <= U64(4096)]
            if small.size:
                align = int(small.max())
        ret += -(-ret // (4096 // PLT_ENTRY))
    return ret, align


def frob(module: Any, kernel: KernelTarget) -> None:
    """``module_frob_arch_sections`` (6.1 and newer)."""
    if not options.plts_enabled(kernel):
        return  # 6.1 without CONFIG_ARM64_MODULE_PLTS has no such step
    name = module.name
    core = init = None
    tramps = []
    init_tramp_name = INIT_TRAMPOLINE if kernel.has(versions.INIT_FTRACE_TRAMPOLINE) else None
    for s in module.sections[1:]:
        if s.name == ".plt":
            core = s
        elif s.name == ".init.plt":
            init = s
        elif s.name == ".text.ftrace_trampoline" or (init_tramp_name and s.name == init_tramp_name):
            tramps.append(s)
    if core is None or init is None:
        raise ElfFormatError(
            Diagnostic(
                "the module has no .plt or .init.plt section (arm64 modules get them from module.lds)",
                module=name,
                kernel_message=f"{name}: module PLT section(s) missing",
            )
        )
    if module.elf.nsyms == 0:
        raise ElfFormatError(
            Diagnostic(
                "the module has no symbol table", module=name, kernel_message=f"{name}: module symtab section missing"
            )
        )
    shndx = module.elf.symbols["st_shndx"].astype(np.int64)
    counted = options.branch_plts_counted(kernel)
    core_plts = init_plts = 0
    for s in module.sections[1:]:
        if s.type != C.SHT_RELA or s.info >= len(module.sections):
            continue
        dst = module.sections[s.info]
        if not dst.flags & C.SHF_EXECINSTR:
            continue
        relas = module.elf.relas(s.index)
        if counted and len(relas):
            info = relas["r_info"].astype(np.uint64)
            types = (info & U64(0xFFFFFFFF)).astype(np.int64)
            need = np.isin(types, BRANCH_TYPES) & (shndx[(info >> U64(32)).astype(np.int64)] != s.info)
            if need.any():
                order, nents = partition(need)
                relas[:] = relas[order]
                sort_prefix(relas, nents)
        n, align = count_plts(relas, shndx, s.info, kernel)
        if align > dst.addralign:
            dst.addralign = align
        if dst.name.startswith(".init"):
            init_plts += n
        else:
            core_plts += n
    state: dict[str, Any] = {}
    for key, sec, count in (("core", core, core_plts), ("init", init, init_plts)):
        sec.type = C.SHT_NOBITS
        sec.flags = C.SHF_EXECINSTR | C.SHF_ALLOC
        sec.addralign = L1_CACHE_BYTES
        sec.size = (count + 1) * PLT_ENTRY
        state[key] = {"shndx": sec.index, "num": 0, "max": count}
    for t in tramps:
        t.type = C.SHT_NOBITS
        t.flags = C.SHF_EXECINSTR | C.SHF_ALLOC
        t.addralign = 4
        t.size = nr_ftrace_plts(kernel) * PLT_ENTRY
    module.arch_state["plt"] = state


def nr_ftrace_plts(kernel: KernelTarget) -> int:
    """``NR_FTRACE_PLTS``: 2 in 6.1 (ftrace_caller, ftrace_regs_caller), 1 once
    arm64 moved to DYNAMIC_FTRACE_WITH_ARGS (6.2)."""
    return 1 if kernel.has(versions.SINGLE_FTRACE_PLT) else 2


# ------------------------------------------------------------ emission
def _in_init(ctx: ApplyContext, loc: int) -> bool:
    """``in_init(mod, loc)``: is ``loc`` in the module's init memory?"""
    for r in ctx.module.layout.regions.values():
        if r.memtype.is_init and r.address <= loc < r.address + max(r.size, 1):
            return True
    return False


def _slot_limit(sec: dict[str, int]) -> RelocFailure:
    return RelocFailure(
        f"no free PLT slot: the section was sized for {sec['max']} entries "
        "(the kernel warns in module_emit_plt_entry / module_emit_veneer_for_adrp and fails with -ENOEXEC)"
    )


class PltArea:
    """``.plt`` or ``.init.plt`` of the module during one phase: its slot
    counters (``struct mod_plt_sec``, kept in ``ctx.state``) and its staged bytes."""

    def __init__(self, ctx: ApplyContext, init: bool) -> None:
        state = ctx.state.get("plt")
        if state is None:
            raise RelocFailure("module PLTs are not set up (no .plt section)")
        self.sec: dict[str, int] = state["init" if init else "core"]
        base = ctx.section_address(self.sec["shndx"])
        if base is None:
            raise RelocFailure("the PLT section is not placed in module memory")
        self.base = base
        self.ctx = ctx
        self.kernel = ctx.kernel
        self.buf = ctx.staged.buffer(self.sec["shndx"])
        self.checked = False

    def read(self, i: int) -> tuple[int, int, int]:
        raw = self.buf[i * PLT_ENTRY : (i + 1) * PLT_ENTRY].tobytes()
        return (
            int.from_bytes(raw[0:4], "little"),
            int.from_bytes(raw[4:8], "little"),
            int.from_bytes(raw[8:12], "little"),
        )

    def write(self, i: int, words: tuple[int, int, int]) -> None:
        if not self.checked:
            _check_plain_store(self.ctx, self.base + i * PLT_ENTRY)
            self.checked = True
        if (i + 1) * PLT_ENTRY > self.buf.size:
            raise _slot_limit(self.sec)
        data = b"".join(w.to_bytes(4, "little") for w in words)  # plain stores (plt[i] = ...)
        self.buf[i * PLT_ENTRY : (i + 1) * PLT_ENTRY] = np.frombuffer(data, dtype=np.uint8)

    def emit_plt(self, val: int) -> int:
        """``module_emit_plt_entry``: the address of the PLT entry for ``val``."""
        sec, base = self.sec, self.base
        i = sec["num"]
        j = i - 1
        if forbidden(self.kernel, base + i * PLT_ENTRY):
            i += 1
        new = plt_entry(val, base + i * PLT_ENTRY)
        self.write(i, new)  # written even when it turns out to be a duplicate
        if j >= 0 and entries_equal(new, base + i * PLT_ENTRY, self.read(j), base + j * PLT_ENTRY):
            return base + j * PLT_ENTRY
        sec["num"] += i - j
        if sec["num"] > sec["max"]:
            raise _slot_limit(sec)
        return base + i * PLT_ENTRY

    def emit_veneer(self, loc: int, val: int, rd: int) -> int:
        """``module_emit_veneer_for_adrp``: adrp rd / add rd / b loc + 4."""
        sec, base = self.sec, self.base
        i = sec["num"]
        sec["num"] += 1
        if sec["num"] > sec["max"]:
            raise _slot_limit(sec)
        if forbidden(self.kernel, base + i * PLT_ENTRY):
            i = sec["num"]
            sec["num"] += 1
        at = base + i * PLT_ENTRY
        br = gen_branch(at + 8, loc + 4)
        adrp, add = plt_words(val, at, rd)
        self.write(i, (adrp, add, br))
        return at


def _write_entry(ctx: ApplyContext, addr: int, words: tuple[int, int, int]) -> None:
    data = b"".join(w.to_bytes(4, "little") for w in words)
    _check_plain_store(ctx, addr)
    ctx.staged.write(addr, data)


def _check_plain_store(ctx: ApplyContext, addr: int) -> None:
    """Late (module formed), the kernel still writes PLT entries and veneers
    with plain stores: on read-only module text that faults."""
    from klpcore.constants import ModuleState

    if ctx.write_policy is None or ctx.image.state == ModuleState.UNFORMED:
        return
    region = ctx.image.region_at(addr, PLT_ENTRY)
    if ctx.write_policy(ctx.image, region, addr, PLT_ENTRY, None) is None:
        raise RelocFailure(
            f"a new PLT entry at {addr:#x} is written with a plain store (plt[i] = ...), but {region.name} is "
            f"{region.perms} once the module is {ctx.image.state.name}: the kernel faults",
            "Unable to handle kernel write to read-only memory",
        )


def emit_plt_entry(ctx: ApplyContext, loc: int, val: int) -> int:
    """``module_emit_plt_entry`` for a branch at ``loc`` to ``val``."""
    return PltArea(ctx, _in_init(ctx, loc)).emit_plt(val)


def emit_veneer(ctx: ApplyContext, loc: int, val: int, rd: int) -> int:
    """``module_emit_veneer_for_adrp`` for the ADRP at ``loc``."""
    return PltArea(ctx, _in_init(ctx, loc)).emit_veneer(loc, val, rd)


# ------------------------------------------------------------ the sequential family
_PENDING = "_pending_sequential"


def record(ctx: SectionContext, needs: np.ndarray) -> np.ndarray:
    """Remember the entries of ``ctx.group`` that ``needs`` marks; they are
    applied together, in section order, by :func:`sequential_batch`."""
    assert ctx.group is not None
    if needs.any():
        ctx.state.setdefault(_PENDING, {}).setdefault(ctx.relsec.index, []).append(ctx.group[needs])
    return needs


def branch_split(ctx: SectionContext) -> np.ndarray:
    """CALL26/JUMP26 entries out of direct range when PLTs exist."""
    from .types import imm_check

    assert ctx.group is not None
    if not options.plts_enabled(ctx.kernel):
        return np.zeros(ctx.group.size, dtype=bool)
    rel = ctx.relas[ctx.group]
    S = ctx.symvals[(rel["r_info"] >> U64(32)).astype(np.int64)]
    val = S + rel["r_addend"].astype(np.int64).view(U64)
    needs = np.asarray(imm_check(BY_NUMBER[283])(val, ctx), dtype=bool)
    return record(ctx, needs)


def adrp_split(ctx: SectionContext) -> np.ndarray:
    """ADRPs at page offsets 0xff8/0xffc when the erratum workaround is active."""
    assert ctx.group is not None
    if not options.erratum_843419(ctx.kernel):
        return np.zeros(ctx.group.size, dtype=bool)
    needs = (places(ctx) & U64(0xFFF)) >= U64(0xFF8)
    return record(ctx, needs)


def sequential_batch(ctx: SectionContext, indices: np.ndarray) -> None:
    """Apply every recorded branch/ADRP entry of this section, in section order
    (they share the PLT slot counter, so the order is the kernel's).  The
    instruction words are gathered and scattered as arrays; the PLT slots are
    allocated one entry at a time, as the kernel does."""
    waiting = ctx.state.get(_PENDING, {})
    pending = waiting.pop(ctx.relsec.index, None)
    if not waiting:
        ctx.state.pop(_PENDING, None)
    if not pending:
        return
    idx = np.unique(np.concatenate(pending))
    rel = ctx.relas[idx]
    types = (rel["r_info"] & U64(0xFFFFFFFF)).astype(np.int64).tolist()
    syms = (rel["r_info"] >> U64(32)).astype(np.int64)
    offs = rel["r_offset"].astype(np.uint64)
    vals = (ctx.symvals[syms] + rel["r_addend"].astype(np.int64).view(U64)).tolist()
    buf = ctx.staged.buffer(ctx.target.index)
    olds = gather(buf, offs, 4, "little").tolist()
    start = ctx.target_address
    plts = PltArea(ctx, _in_init(ctx, start))
    new: list[int] = []
    for k, off in enumerate(offs.tolist()):
        loc = (start + off) & MASK64
        try:
            if types[k] in BRANCH_TYPES:
                new.append(_branch(plts, loc, vals[k], types[k], olds[k], ctx.module.name))
            else:
                new.append(_adrp(plts, loc, vals[k], olds[k]))
        except RelocFailure as f:
            i = int(idx[k])
            ctx.diag(f.message, i, rtype=types[k], sym=int(syms[k]), kernel_message=f.kernel_message)
            return  # apply_relocate_add returns at the first error
    scatter(buf, offs, 4, "little", np.array(new, dtype=np.uint64))
    hint = insn_hint(ctx.kernel)
    if hint is not None:
        ctx.staged.hints.setdefault(ctx.target.index, []).extend((o, o + 4, hint) for o in offs.tolist())


def apply_one(ctx: SectionContext, e: Entry) -> None:
    """One branch through a PLT, or one ADRP at a forbidden offset (the
    per-entry form of :func:`sequential_batch`)."""
    ctx.state.get(_PENDING, {}).pop(ctx.relsec.index, None)
    old = ctx.read_uint(e.P, 4, insn=True)
    plts = PltArea(ctx, _in_init(ctx, e.P))
    val = (e.S + e.addend) & MASK64
    word = (
        _branch(plts, e.P, val, e.type, old, ctx.module.name) if e.type in BRANCH_TYPES else _adrp(plts, e.P, val, old)
    )
    ctx.write_uint(e.P, 4, word, insn=True, hint=insn_hint(ctx.kernel))


def _branch(plts: PltArea, loc: int, val: int, rtype: int, insn: int, module: str) -> int:
    """The branch's new word, through a PLT entry (the direct branch is out of range)."""
    plt = plts.emit_plt(val)
    new, overflow = insn_imm(OP_PREL, loc, plt, 2, 26, IMM_26, insn)
    if overflow:
        raise RelocFailure(
            f"the PLT entry at {plt:#x} is out of branch range too (+-128 MiB from {loc:#x}); -ENOEXEC",
            KERNEL_OVERFLOW.format(module=module, number=rtype, value=plt),
        )
    return new


def _adrp(plts: PltArea, loc: int, val: int, insn: int) -> int:
    """``reloc_insn_adrp`` at a forbidden offset: ADR if Page(val) is within
    +-1 MiB, else ``b`` to a veneer.  Never an overflow error."""
    page = val & ~0xFFF
    adr, overflow = insn_imm(OP_PREL, loc, page, 0, 21, IMM_ADR, insn)
    if not overflow:
        return adr & ~(1 << 31)
    veneer = plts.emit_veneer(loc, page, insn & 0x1F)
    return gen_branch(loc, veneer)


# ------------------------------------------------------------ ftrace
def _kernel_address(ctx: ApplyContext, name: str) -> int | None:
    value = options.fact(ctx.kernel, name)
    if value is not None:
        return int(value)
    syms = ctx.kernel_symbols
    if syms is None or "vmlinux" not in syms.objects:
        return None
    found = syms.objects["vmlinux"].matches(name)
    return found[0] if len(found) == 1 else None


def ftrace_trampoline(ctx: ApplyContext) -> None:
    """``module_init_ftrace_plt``: PLT entries to ftrace_caller (and, in 6.1,
    ftrace_regs_caller) in ``.text.ftrace_trampoline``; since 6.17 also one
    in ``.init.text.ftrace_trampoline``.  A missing section makes
    ``module_finalize`` fail with -ENOEXEC (no message)."""
    if not options.plts_enabled(ctx.kernel) or not options.fact(ctx.kernel, "dynamic_ftrace"):
        return
    wanted = ["ftrace_caller"]
    if nr_ftrace_plts(ctx.kernel) == 2 and options.fact(ctx.kernel, "dynamic_ftrace_with_regs"):
        wanted.append("ftrace_regs_caller")
    names = [TRAMPOLINE]
    if ctx.kernel.has(versions.INIT_FTRACE_TRAMPOLINE):
        names.append(INIT_TRAMPOLINE)
    for secname in names:
        sec = ctx.module.section_by_name(secname)
        if sec is None:
            ctx.diagnostics.append(
                Diagnostic(
                    f"the module has no {secname} section: module_finalize fails with -ENOEXEC (arm64 modules "
                    "get it from module.lds)",
                    module=ctx.module.name,
                    kernel_message=None,
                )
            )
            return
        base = ctx.section_address(sec.index)
        if base is None:
            continue
        for k, name in enumerate(wanted):
            addr = _kernel_address(ctx, name)
            if addr is None:
                ctx.diagnostics.append(
                    Diagnostic(
                        f"the ftrace trampoline entry for {name} in {secname} is not written (no vmlinux symbol "
                        f"{name}; give -O {name}=ADDR)",
                        severity="warning",
                        module=ctx.module.name,
                    )
                )
                continue
            at = base + k * PLT_ENTRY
            _write_entry(ctx, at, plt_entry(addr, at))


__all__ = [
    "ADD_X16",
    "ADRP_X16",
    "BR_X16",
    "R_AARCH64_ADR_PREL_PG_HI21",
    "count_plts",
    "emit_plt_entry",
    "emit_veneer",
    "frob",
    "ftrace_trampoline",
    "partition",
]
