"""arm64's part of the comparison with a real kernel's bytes
(:mod:`klpcore.testing.kernel_oracle`): ftrace's call sites and the ftrace
trampoline's PLT entries module_finalize writes."""

from __future__ import annotations

from klpcore.testing.kernel_oracle import Context, OracleRules, Site, uint_at

#: field width of each relocation type the Debian modules use: instructions (4 bytes), ABS64 and PREL64 (8)
WIDTHS = {
    **{t: 4 for t in (258, 261, 275, 276, 277, 278, 282, 283, 284, 285, 286, 299)},
    257: 8,
    260: 8,
}
#: struct exception_table_entry: s32 insn, s32 fixup, s16 type, s16 data
EXTABLE = (12, ("rel", "rel", "raw4"))


def ftrace(k: bytes, p: bytes, o: int) -> str | None:
    """ftrace_init_nop with DYNAMIC_FTRACE_WITH_REGS: the first NOP becomes ``mov x9, x30``."""
    if uint_at(k, 0, 4, "<") == 0xAA1E03E9 and uint_at(p, 0, 4, "<") == 0xD503201F:
        return "ftrace:nop-to-mov-x9-x30"
    return None


ARM64_NOP, ARM64_MOV_X9_X30 = 0xD503201F, 0xAA1E03E9


def call_ops(ctx: Context, site: Site) -> str | None:
    """DYNAMIC_FTRACE_WITH_CALL_OPS (6.4+; -fpatchable-function-entry=4,2): the table entry is the
    first of two NOPs before the function; ftrace_init_nop writes the address of an ftrace_ops there
    (``ftrace_nop_ops`` when nothing traces it) and ``mov x9, x30`` at the entry: 16 bytes per call
    site, the last NOP kept."""
    if "ftrace_ops" not in ctx.cache:
        ctx.cache["ftrace_ops"] = ctx.rec.ftrace_ops()
    ops_addrs: set[int] = ctx.cache["ftrace_ops"]
    for a in ctx.ftrace:
        if not (a <= site.address < a + 16 and site.address + site.width <= a + 16):
            continue
        k, p = ctx.rec_bytes(a, 16), ctx.placed.read(a, 16)
        if any(uint_at(p, o, 4, "<") != ARM64_NOP for o in (0, 4, 8, 12)):
            return None
        if (
            uint_at(k, 8, 4, "<") == ARM64_MOV_X9_X30
            and uint_at(k, 12, 4, "<") == ARM64_NOP
            and uint_at(k, 0, 8, "<") in ops_addrs
        ):
            return "ftrace:arm64-call-ops"
    return None


def jump_label(ctx: Context, site: Site) -> str | None:
    """A static branch the running kernel turned on or off: NOP, or ``b`` to the entry's target."""
    for a in ctx.jump_sites:
        if a <= site.address < a + 4:
            insn = uint_at(ctx.rec_bytes(a, 4), 0, 4, "<")
            rel = (insn & 0x03FFFFFF) << 2
            rel -= (rel & 0x08000000) << 1
            if insn == ARM64_NOP or (insn >> 26 == 0b000101 and a + rel == ctx.jump_targets[a]):
                return "jump-label-site"
    return None


def ftrace_plt(ctx: Context, site: Site) -> str | None:
    """.text.ftrace_trampoline: the PLT entries module_finalize writes (adrp x16; add x16; br x16)."""
    if site.section == ".text.ftrace_trampoline":
        s = ctx.rec.sections[site.section]
        if s.data is not None and uint_at(s.data, 8, 4, "<") == 0xD61F0200:
            return "arm64:ftrace-trampoline-plt"
    return None


RULES = OracleRules(widths=WIDTHS, extable=EXTABLE, ftrace=ftrace, rules=(call_ops, jump_label, ftrace_plt))
