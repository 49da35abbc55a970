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


def ftrace_plt(ctx: Context, site: Site) -> str | None:
    """.text.ftrace_trampoline: the PLT entries module_finalize writes (adrp x16; add x16; br x16)."""
    if site.section == ".text.ftrace_trampoline":
        s = ctx.rec.sections[site.section]
        if s.data is not None and uint_at(s.data, 8, 4, "<") == 0xD61F0200:
            return "arm64:ftrace-trampoline-plt"
    return None


RULES = OracleRules(widths=WIDTHS, extable=EXTABLE, ftrace=ftrace, rules=(ftrace_plt,))
