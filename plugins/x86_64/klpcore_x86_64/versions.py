"""The x86_64 rows of the version table: what changes in arch/x86/kernel/module.c, and when.

The plugin asks ``kernel.has(ROW)``; :data:`BEHAVIOURS` is what the hook
``klp_arch_behaviours`` returns (``docs/versions.md`` lists them with the
core's rows).
"""

from __future__ import annotations

from klpcore.versions import Behaviour

TEXT_POKE = Behaviour(
    "x86_text_poke",
    (5, 8),
    "x86_64",
    "late (livepatch) relocations are written with text_poke (before: module_disable_ro + plain stores)",
    "x86/module: Use text_poke() for late relocations (5.8)",
)

WRITE_RELOCATE_ADD = Behaviour(
    "x86_write_relocate_add",
    (6, 3),
    "x86_64",
    "x86 checks the 32/32S range before writing and reports 'Invalid relocation target' (before: writes the "
    "truncated value, then reports; 'Skipping invalid relocation target'); clear_relocate_add zeroes a "
    "livepatch object's relocations when it unloads",
    "livepatch,x86: Clear relocation targets on a module removal (6.3)",
)

CLANG_STACK_COOKIE_GOTPCREL = Behaviour(
    "x86_clang_stack_cookie_gotpcrel",
    (6, 15),
    "x86_64",
    "with CONFIG_STACKPROTECTOR and clang < 17 (CONFIG_CLANG_VERSION < 170000) R_X86_64_REX_GOTPCRELX "
    "against __stack_chk_guard is accepted as a PC32 to a static pointer; anything else is "
    "'Unsupported GOTPCREL relocation' (a later kbuild series reverts it; still present in 7.1.5)",
    "x86/module: Deal with GOT based stack cookie load on Clang < 17 (tip, Feb 2025)",
)

#: every row, for ``klp_arch_behaviours``
BEHAVIOURS = (
    TEXT_POKE,
    WRITE_RELOCATE_ADD,
    CLANG_STACK_COOKIE_GOTPCREL,
)
