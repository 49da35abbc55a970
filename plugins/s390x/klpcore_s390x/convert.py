"""``klpcore convert`` rules for s390x (kpatch's ``need_klp_reloc()`` and the kernel).

* Expoline thunks (``__s390_indirect_jump_r*``) stay ordinary: the compiler
  emits them into each object (or vmlinux exports them with
  ``CONFIG_EXPOLINE_EXTERN``); they are never a patched object's symbol.
* ``R_390_NONE`` is a no-op in ``apply_rela``: a moved relocation leaves type 0.
* Late writes: from 5.8 ``s390_kernel_write`` reaches read-only module memory
  (``s390_kernel_write``); before, livepatch made the module writable
  (``module_disable_ro``): no late hazard.
"""

from __future__ import annotations

from klpcore.convert.rules import ConvertRules
from klpcore.kernel import KernelTarget

from .types import R_390_NONE

EXPOLINE_PREFIX = "__s390_indirect_jump_r"


def rules(kernel: KernelTarget) -> ConvertRules:
    return ConvertRules(
        keep_prefixes={EXPOLINE_PREFIX: "an expoline thunk, emitted into the module or exported by vmlinux"},
        none_type=R_390_NONE,
    )
