"""The arm64 rows of the version table: what changes in arch/arm64/kernel/ (module.c, module-plts.c,
ftrace.c), and when.

The plugin asks ``kernel.has(ROW)``; :data:`BEHAVIOURS` is what the hook
``klp_arch_behaviours`` returns (``docs/versions.md`` lists them with the
core's rows).
"""

from __future__ import annotations

from klpcore.versions import Behaviour

SINGLE_FTRACE_PLT = Behaviour(
    "arm64_single_ftrace_plt",
    (6, 2),
    "arm64",
    "NR_FTRACE_PLTS is 1: .text.ftrace_trampoline holds one PLT entry, to ftrace_caller (before: two, "
    "ftrace_caller and ftrace_regs_caller)",
    "arm64: ftrace: move from REGS to ARGS (6.2)",
)

MODULE_PLTS_ALWAYS = Behaviour(
    "arm64_module_plts_always",
    (6, 5),
    "arm64",
    "module PLTs always exist and module_frob_arch_sections partitions and counts branch PLTs whatever "
    "CONFIG_RANDOMIZE_BASE says (before: only with CONFIG_ARM64_MODULE_PLTS, and branches only with "
    "CONFIG_RANDOMIZE_BASE)",
    "arm64: module: mandate MODULE_PLTS; arm64: module: rework module VA range selection (6.5)",
)

LIVEPATCH = Behaviour(
    "arm64_livepatch",
    (6, 17),
    "arm64",
    "arm64 selects HAVE_LIVEPATCH (before: a livepatch module is refused, 'module is marked as livepatch "
    "module, but livepatch support is disabled')",
    "arm64: Implement HAVE_LIVEPATCH (6.17)",
)

LATE_TEXT_POKE = Behaviour(
    "arm64_late_text_poke",
    (6, 17),
    "arm64",
    "apply_relocate_add writes through aarch64_insn_copy once the module is formed (WRITE_PLACE), so late "
    "livepatch relocations reach read-only text; PLT entries and veneers stay plain stores",
    "arm64/module: Use text-poke API for late relocations. (6.17)",
)

INIT_FTRACE_TRAMPOLINE = Behaviour(
    "arm64_init_ftrace_trampoline",
    (6, 17),
    "arm64",
    "module_frob_arch_sections sizes .init.text.ftrace_trampoline and module_finalize requires and fills it "
    "(an ftrace PLT in init text); present in the 6.17-rc3 tree, absent in 6.6 (first release believed 6.17); "
    "backported to 6.12.46 (Debian's 6.12 changelog lists it under ChangeLog-6.12.46; Debian's 6.12.117 arm64 "
    "kernel lays the section out, recorded), not in Debian's 6.1.176",
    "arm64: ftrace: fix unreachable PLT for ftrace_caller in init_module (2025)",
    stable=((6, 12, 46),),
)

#: every row, for ``klp_arch_behaviours``
BEHAVIOURS = (
    SINGLE_FTRACE_PLT,
    MODULE_PLTS_ALWAYS,
    LIVEPATCH,
    LATE_TEXT_POKE,
    INIT_FTRACE_TRAMPOLINE,
)
