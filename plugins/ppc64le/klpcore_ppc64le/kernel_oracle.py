"""ppc64le's part of the comparison with a real kernel's bytes
(:mod:`klpcore.testing.kernel_oracle`): field widths, the exception table and
ftrace's call sites."""

from __future__ import annotations

from klpcore.testing.kernel_oracle import OracleRules, uint_at

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


RULES = OracleRules(widths=WIDTHS, extable=EXTABLE, ftrace=ftrace)
