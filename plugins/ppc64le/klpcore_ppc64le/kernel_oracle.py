"""ppc64le's part of the comparison with a real kernel's bytes
(:mod:`klpcore.testing.kernel_oracle`): field widths, the exception table and
ftrace's call sites."""

from __future__ import annotations

from klpcore.testing.kernel_oracle import Context, OracleRules, Site, uint_at

#: field width of each relocation type the Debian modules use; ENTRY (118)
#: rewrites the two-instruction global entry sequence
WIDTHS = {38: 8, 44: 8, 26: 4, 10: 4, 50: 2, 48: 2, 64: 2, 49: 2, 63: 2, 51: 8, 118: 8}
#: struct exception_table_entry: s32 insn, s32 fixup
EXTABLE = (8, ("rel", "rel"))


def ftrace(k: bytes, p: bytes, o: int) -> str | None:
    """ftrace_init_nop / ftrace_make_nop: the ``bl _mcount`` becomes a NOP."""
    if uint_at(k, 0, 4, "<") == 0x60000000 and uint_at(p, 0, 4, "<") >> 26 == 18:
        return "ftrace:bl-to-nop"
    return None


def jump_label(ctx: Context, site: Site) -> str | None:
    """A static branch the running kernel turned on or off: NOP, or ``b`` to the entry's target."""
    for a in ctx.jump_sites:
        if a <= site.address < a + 4:
            insn = uint_at(ctx.rec_bytes(a, 4), 0, 4, "<")
            rel = insn & 0x03FFFFFC
            rel -= (rel & 0x02000000) << 1
            if insn == 0x60000000 or (insn >> 26 == 18 and insn & 3 == 0 and a + rel == ctx.jump_targets[a]):
                return "jump-label-site"
    return None


def lwsync(ctx: Context, site: Site) -> str | None:
    """Each barrier listed in ``__lwsync_fixup`` becomes ``lwsync`` on a CPU with CPU_FTR_LWSYNC
    (do_lwsync_fixups in module_finalize; klpcore keeps the file's ``isync``)."""
    for a in ctx.rel_table("__lwsync_fixup"):
        inside = a <= site.address and site.address + site.width <= a + 4
        if inside and uint_at(ctx.rec_bytes(a, 4), 0, 4, "<") == 0x7C2004AC:
            return "ppc64:lwsync-fixup"
    return None


RULES = OracleRules(widths=WIDTHS, extable=EXTABLE, ftrace=ftrace, rules=(jump_label, lwsync))
