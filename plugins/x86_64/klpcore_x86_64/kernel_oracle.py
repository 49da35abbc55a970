"""x86_64's part of the comparison with a real kernel's bytes
(:mod:`klpcore.testing.kernel_oracle`): what x86_64 rewrites after relocation
(ftrace's NOP, return thunks, static calls, jump labels, alternatives)."""

from __future__ import annotations

from klpcore.testing.kernel_oracle import Context, OracleRules, Site, uint_at

#: the 5-byte NOP ftrace and static calls leave at a call site
X86_NOP5 = bytes.fromhex("0f1f440000")
#: x86 NOPs the 6.1 kernel pads with (x86_nops[] for 64-bit), longest first
X86_NOPS = [
    bytes.fromhex(h)
    for h in (
        "0f1f840000000000",
        "0f1f8000000000",
        "660f1f440000",
        "0f1f440000",
        "0f1f4000",
        "0f1f00",
        "6690",
        "90",
    )
]
#: field width of each relocation type the Debian modules use (NONE, 64, PC32, PLT32, 32, 32S, PC64)
WIDTHS = {0: 0, 1: 8, 2: 4, 4: 4, 10: 4, 11: 4, 24: 8}
#: struct exception_table_entry: s32 insn, s32 fixup, s32 data
EXTABLE = (12, ("rel", "rel", "raw4"))


def ftrace(k: bytes, p: bytes, o: int) -> str | None:
    """ftrace_init_nop: the call to __fentry__ becomes a 5-byte NOP."""
    if k[:5] == X86_NOP5 and p[0] == 0xE8 and o >= -4:
        return "ftrace:call-to-nop5"
    return None


def return_thunk(ctx: Context, site: Site) -> str | None:
    for a in ctx.return_sites:
        if (
            a <= site.address < a + 5
            and ctx.rec_bytes(a, 5) == b"\xc3\xcc\xcc\xcc\xcc"
            and ctx.placed.read(a, 1) == b"\xe9"
        ):
            return "x86:return-thunk-to-ret"
    return None


#: a static call to __static_call_return0 becomes ``xor %eax,%eax`` with CS prefixes (7.x)
X86_RET0 = bytes.fromhex("2e2e2e31c0")


def static_call(ctx: Context, site: Site) -> str | None:
    """``.static_call_sites``: the kernel points each call at the key's current function: a NOP, a
    direct call/jmp, ``xor %eax,%eax`` for ``__static_call_return0`` (7.x) or, for the WARN trap
    static call, an ``addr32 ud1`` (``67 48 0f b9 <modrm>``, 7.x)."""
    for a in ctx.static_calls:
        if a <= site.address < a + 5 and site.address + site.width <= a + 5:
            k = ctx.rec_bytes(a, 5)
            if k == X86_NOP5 or k[0] in (0xE8, 0xE9):
                return "x86:static-call-site"
            if k == X86_RET0:
                return "x86:static-call-ret0"
            if k[:4] == bytes.fromhex("67480fb9"):
                return "x86:static-call-ud1"
    return None


def endbr_seal(ctx: Context, site: Site) -> str | None:
    """IBT: an ``endbr64`` listed in ``.ibt_endbr_seal`` (a function never called indirectly) is
    poisoned by ``apply_seal_endbr`` into a 4-byte NOP (``66 0f 1e fa`` or ``66 0f 1f 00``; 7.x
    ``0f 1f 40 d6``, ``nopl -42(%rax)``)."""
    for a in ctx.rel_table(".ibt_endbr_seal"):
        if a <= site.address and site.address + site.width <= a + 4:
            k, p = ctx.rec_bytes(a, 4), ctx.placed.read(a, 4)
            if p == bytes.fromhex("f30f1efa") and k.hex() in ("660f1efa", "660f1f00", "0f1f40d6"):
                return "x86:endbr-sealed"
    return None


def jump_label(ctx: Context, site: Site) -> str | None:
    for a in ctx.jump_sites:
        if a <= site.address < a + 5:
            k = ctx.rec_bytes(a, 5)
            if k == X86_NOP5 or k[0] in (0xE9, 0xEB) or k[:2] == b"\x66\x90":
                return "jump-label-site"
    return None


def is_padding(b: bytes) -> bool:
    """NOPs from the kernel's table, or a short jmp over int3s (add_nops for long runs)."""
    if len(b) >= 2 and b[0] == 0xEB and b[1] == len(b) - 2 and set(b[2:]) <= {0xCC}:
        return True
    i = 0
    while i < len(b):
        n = next((len(nop) for nop in X86_NOPS if b[i : i + len(nop)] == nop), 0)
        if not n:
            return False
        i += n
    return True


def alternatives(ctx: Context) -> list[tuple[int, int, int, int]]:
    """.altinstructions (6.1: s32 instr, s32 repl, u16 cpuid, u8 instrlen, u8 replacementlen, 12 bytes;
    from 6.3 u32 ft_flags instead of the u16, 14 bytes): (site, site length, replacement, replacement
    length), from klpcore's bytes (computed once)."""
    if "alternatives" in ctx.cache:
        return ctx.cache["alternatives"]  # type: ignore[no-any-return]
    out = []
    size, at = (14, 12) if ctx.rec.release() >= (6, 3) else (12, 10)
    if ".altinstructions" in ctx.placed.sections:
        a, d = ctx.placed.sections[".altinstructions"]
        for o in range(0, len(d) - size + 1, size):
            instr = (a + o + uint_at(d, o, 4, "<", True)) & (2**64 - 1)
            repl = (a + o + 4 + uint_at(d, o + 4, 4, "<", True)) & (2**64 - 1)
            out.append((instr, d[o + at], repl, d[o + at + 1]))
    ctx.cache["alternatives"] = out
    return out


def alternative(ctx: Context, site: Site) -> str | None:
    """apply_alternatives: the kernel wrote the replacement (a leading call/jmp
    re-targeted to the same place) padded with NOPs, or kept the original
    with its padding NOPs optimized."""
    for a, n, repl_addr, repl_len in alternatives(ctx):
        if not a <= site.address < a + n:
            continue
        k = ctx.rec_bytes(a, n)
        orig = ctx.placed.read(a, n)
        repl = ctx.placed.read(repl_addr, repl_len)
        if repl_len <= n and is_padding(k[repl_len:]):
            if k[:repl_len] == repl:
                return "x86:alternative-applied"
            if repl_len >= 5 and repl[0] in (0xE8, 0xE9) and k[0] == repl[0]:
                t_repl = repl_addr + 5 + uint_at(repl, 1, 4, "<", True)
                t_k = a + 5 + uint_at(k, 1, 4, "<", True)
                if t_repl == t_k and k[5:repl_len] == repl[5:]:
                    return "x86:alternative-applied"
        for cut in range(n, -1, -1):  # original kept, trailing NOPs (or an all-NOP site) rewritten
            if k[:cut] == orig[:cut] and is_padding(k[cut:]) and is_padding(orig[cut:]):
                return "x86:alternative-nops-optimized"
    return None


def static_call_trampoline(ctx: Context, site: Site) -> str | None:
    """static_call_update rewrites the module's own trampoline (__SCT__*):
    jmp to the new function, or ret for NULL."""
    if site.section != ".static_call.text":
        return None
    start = site.address - 1 if site.what != "bytes" else site.address
    if ctx.placed.read(start, 1) == b"\xe9" and ctx.rec_bytes(start, 1) in (b"\xe9", b"\xc3"):
        return "x86:static-call-trampoline"
    return None


RULES = OracleRules(
    widths=WIDTHS,
    extable=EXTABLE,
    ftrace=ftrace,
    rules=(return_thunk, static_call, endbr_seal, jump_label, alternative, static_call_trampoline),
)
