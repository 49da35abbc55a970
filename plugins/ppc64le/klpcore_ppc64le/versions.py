"""The ppc64le rows of the version table: what changes in arch/powerpc/kernel/module_64.c, and when.

The plugin asks ``kernel.has(ROW)``; :data:`BEHAVIOURS` is what the hook
``klp_arch_behaviours`` returns (``docs/versions.md`` lists them with the
core's rows).
"""

from __future__ import annotations

from klpcore.versions import Behaviour

STRICT_MODULE_RWX = Behaviour(
    "ppc64_strict_module_rwx",
    (5, 14),
    "ppc64le",
    "Book3S-64 selects ARCH_HAS_STRICT_MODULE_RWX: module text becomes read-only and the legacy layout "
    "page-aligns its rows (before: packed rows, writable text)",
    "powerpc: Set ARCH_HAS_STRICT_MODULE_RWX (5.14)",
)

PATCH_INSTRUCTION = Behaviour(
    "ppc64_patch_instruction",
    (5, 16),
    "ppc64le",
    "stubs, REL24 fields and the r2 restore are written with patch_instruction (so late livepatch "
    "writes reach read-only text); in stable 5.15.y too",
    "powerpc/module_64: Fix livepatching for RO modules (5.16)",
)

RESTORE_R2_ACCEPTS_LD = Behaviour(
    "ppc64_restore_r2_accepts_ld",
    (6, 3),
    "ppc64le",
    "restore_r2 accepts an existing 'ld r2,24(r1)' after a call (re-applied livepatch relocations); "
    "before, anything but a nop is 'Expected nop after call'",
    'powerpc/module_64: Fix "expected nop" error on module re-patching (6.3)',
)

OOL_FTRACE_STUBS = Behaviour(
    "ppc64_ool_ftrace_stubs",
    (6, 13),
    "ppc64le",
    "with CONFIG_PPC_FTRACE_OUT_OF_LINE (a compiler with working patchable-function-entry) .stubs also "
    "holds the out-of-line ftrace stubs of __patchable_function_entries, reserved after the load-time stubs",
    "powerpc64/ftrace: Move ftrace sequence out of line (6.13)",
)

STUB_COUNT = Behaviour(
    "ppc64_stub_count",
    (6, 17),
    "ppc64le",
    ".stubs has no terminating spare slot and stub_for_addr allocates at me->arch.stub_count "
    "(before: one extra slot, and the first slot whose funcdata is zero)",
    "powerpc64/modules: fix ool-ftrace-stub vs. livepatch relocation corruption (6.17)",
)

#: every row, for ``klp_arch_behaviours``
BEHAVIOURS = (
    STRICT_MODULE_RWX,
    PATCH_INSTRUCTION,
    RESTORE_R2_ACCEPTS_LD,
    OOL_FTRACE_STUBS,
    STUB_COUNT,
)
