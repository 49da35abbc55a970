"""s390x's part of the comparison with a real kernel's bytes
(:mod:`klpcore.testing.kernel_oracle`): field widths, the exception table and
ftrace's call sites."""

from __future__ import annotations

from klpcore.testing.kernel_oracle import OracleRules

#: field width of each relocation type the Debian modules use
WIDTHS = {22: 8, 5: 4, 23: 8, 19: 4, 20: 4, 16: 2, 17: 2, 18: 2, 26: 4, 4: 4, 1: 1, 2: 2, 3: 2}
#: struct exception_table_entry: s32 insn, s32 fixup, s16 type, s16 data
EXTABLE = (12, ("rel", "rel", "raw4"))


def ftrace(k: bytes, p: bytes, o: int) -> str | None:
    """ftrace_init_nop: the ``brcl`` at the call site keeps its opcode, its displacement changes."""
    if k[:2] == b"\xc0\x04" and p[:2] == b"\xc0\x04":
        return "ftrace:brcl-displacement"
    return None


RULES = OracleRules(widths=WIDTHS, extable=EXTABLE, ftrace=ftrace)
