"""``klpcore convert`` rules for ppc64 (kpatch's ``need_klp_reloc()`` and the kernel).

* ``.TOC.`` stays ordinary: the module loader gives it the module's own TOC
  base (``my_r2``); it is no kernel symbol.
* ``R_PPC64_REL16_HA`` / ``REL16_LO`` (the TOC pointer set-up from the global
  entry point) and ``R_PPC64_ENTRY`` refer to the module's own code and TOC,
  never to a kernel symbol; ``R_PPC64_REL64`` outside ``__jump_table`` is kept
  ordinary as kpatch keeps it.  A reference of these types to a symbol that
  would need converting is an error.
* ``apply_relocate_add`` has no ``R_PPC64_NONE``: a moved relocation is removed
  from its ordinary section, never turned into type 0.
* Late writes: module text is read-only from 5.14 (``ppc64_strict_module_rwx``);
  from 5.8 livepatch no longer makes it writable (``klp_no_module_disable_ro``);
  only ``R_PPC64_REL24`` (and its stub) reaches read-only text late, through
  ``patch_instruction`` from 5.16 (``ppc64_patch_instruction``).
"""

from __future__ import annotations

from klpcore.convert.rules import ConvertRules
from klpcore.kernel import KernelTarget
from klpcore.versions import Behaviour

from .abi import R_PPC64_ENTRY, R_PPC64_REL16_HA, R_PPC64_REL16_LO, R_PPC64_REL24, R_PPC64_REL64
from .versions import PATCH_INSTRUCTION, STRICT_MODULE_RWX


def keep_type(rtype: int, section: str) -> str | None:
    if rtype in (R_PPC64_REL16_HA, R_PPC64_REL16_LO):
        return "the TOC pointer set-up refers to the module's own TOC"
    if rtype == R_PPC64_ENTRY:
        return "R_PPC64_ENTRY refers to the module's own TOC"
    if rtype == R_PPC64_REL64 and section != "__jump_table":
        return "R_PPC64_REL64 outside __jump_table stays ordinary (kpatch need_klp_reloc)"
    return None


def late_hazard(rtype: int, section: str, writable: bool, kernel: KernelTarget) -> Behaviour | None:
    if writable or not kernel.has(STRICT_MODULE_RWX) or not kernel.has("klp_no_module_disable_ro"):
        return None
    if rtype == R_PPC64_REL24 and kernel.has(PATCH_INSTRUCTION):
        return None
    return PATCH_INSTRUCTION


def rules(kernel: KernelTarget) -> ConvertRules:
    return ConvertRules(
        keep_symbols={".TOC.": "the module loader resolves .TOC. to the module's own TOC base"},
        keep_type=keep_type,
        late_hazard=late_hazard,
        none_type=None,
    )
