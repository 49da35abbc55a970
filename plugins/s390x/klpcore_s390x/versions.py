"""The s390x rows of the version table: what changes in arch/s390/kernel/module.c, and when.

The plugin asks ``kernel.has(ROW)``; :data:`BEHAVIOURS` is what the hook
``klp_arch_behaviours`` returns (``docs/versions.md`` lists them with the
core's rows).
"""

from __future__ import annotations

from klpcore.versions import Behaviour

KERNEL_WRITE = Behaviour(
    "s390_kernel_write",
    (5, 8),
    "s390x",
    "relocation writes after MODULE_STATE_UNFORMED (late livepatch relocations, GOT slots, PLT entries) go "
    "through s390_kernel_write (before: livepatch made the module writable with module_disable_ro)",
    "s390/module: Use s390_kernel_write() for late relocations (5.8)",
)

GOTENT_GOT_OFFSET = Behaviour(
    "s390_gotent_got_offset",
    (6, 5),
    "s390x",
    "R_390_GOTENT/GOTPLTENT = GOT + G + A - P (before: text base + G + A - P, arch.got_offset missing; the "
    "same bytes whenever the GOT starts at offset 0 of the text, as module_frob_arch_sections places it)",
    "s390/module: fix rela calculation for R_390_GOTENT (11458e2b3ffa, 6.5)",
)

#: every row, for ``klp_arch_behaviours``
BEHAVIOURS = (
    KERNEL_WRITE,
    GOTENT_GOT_OFFSET,
)
