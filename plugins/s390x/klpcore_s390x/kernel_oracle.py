"""s390x's part of the comparison with a real kernel's bytes
(:mod:`klpcore.testing.kernel_oracle`): field widths, the exception table and
ftrace's call sites."""

from __future__ import annotations

from klpcore.testing.kernel_oracle import Context, OracleRules, Site, uint_at

#: field width of each relocation type the Debian modules use
WIDTHS = {22: 8, 5: 4, 23: 8, 19: 4, 20: 4, 16: 2, 17: 2, 18: 2, 26: 4, 4: 4, 1: 1, 2: 2, 3: 2}
#: struct exception_table_entry: s32 insn, s32 fixup, s16 type, s16 data
EXTABLE = (12, ("rel", "rel", "raw4"))


def ftrace(k: bytes, p: bytes, o: int) -> str | None:
    """ftrace_init_nop: the ``brcl`` at the call site keeps its opcode, its displacement changes."""
    if k[:2] == b"\xc0\x04" and p[:2] == b"\xc0\x04":
        return "ftrace:brcl-displacement"
    return None


def jump_label(ctx: Context, site: Site) -> str | None:
    """A static branch: ``brcl 0`` (off) or ``brcl 15`` (on) to the entry's target."""
    for a in ctx.jump_sites:
        if a <= site.address < a + 6:
            k = ctx.rec_bytes(a, 6)
            if k[0] == 0xC0 and k[1] in (0x04, 0xF4) and a + 2 * uint_at(k, 2, 4, ">", True) == ctx.jump_targets[a]:
                return "jump-label-site"
    return None


def stack_protector(ctx: Context, site: Site) -> str | None:
    """7.x: each instruction listed in ``__stack_protector_loc`` loads the canary's address; the kernel
    rewrites it to ``llilf %rX,<lowcore offset of the canary>`` (``c0 Xf imm32``), the register kept
    (klpcore wrote the relocated ``lgrl``/``larl`` of the file)."""
    for a in ctx.abs_table("__stack_protector_loc"):
        if a <= site.address and site.address + site.width <= a + 6:
            k, p = ctx.rec_bytes(a, 6), ctx.placed.read(a, 6)
            if (
                k[0] == 0xC0
                and k[1] & 0xF == 0xF
                and k[1] >> 4 == p[1] >> 4
                and (p[0], p[1] & 0xF) in ((0xC4, 0x8), (0xC0, 0x0))
                and uint_at(k, 2, 4, ">") < 0x2000
            ):
                return "s390:stack-protector-lowcore"
    return None


def alternative(ctx: Context, site: Site) -> str | None:
    """7.x ``.altinstructions``: s32 instr, s32 repl, u32 feature, u8 instrlen (13 bytes); the
    replacement has the site's length and the kernel copies it as it is."""
    if ".altinstructions" not in ctx.placed.sections:
        return None
    a0, d = ctx.placed.sections[".altinstructions"]
    if len(d) % 13:
        return None
    for o in range(0, len(d) - 12, 13):
        instr = (a0 + o + uint_at(d, o, 4, ">", True)) & (2**64 - 1)
        repl = (a0 + o + 4 + uint_at(d, o + 4, 4, ">", True)) & (2**64 - 1)
        n = d[o + 12]
        if instr <= site.address < instr + n and ctx.rec_bytes(instr, n) == ctx.placed.read(repl, n):
            return "s390:alternative-applied"
    return None


RULES = OracleRules(widths=WIDTHS, extable=EXTABLE, ftrace=ftrace, rules=(jump_label, stack_protector, alternative))
