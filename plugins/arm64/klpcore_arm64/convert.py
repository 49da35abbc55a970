"""``klpcore convert`` rules for arm64.

* No symbol or type is kept ordinary (klp-build's arm64 port and kpatch add none).
* ``apply_relocate_add`` takes ``R_ARM_NONE`` (0) as a no-op: a moved
  relocation leaves type 0.
* Late writes: ``apply_relocate_add`` writes read-only module text late only
  through the text-poke API, from 6.17 (``arm64_late_text_poke``); before,
  a late relocation into text faults (kpatch issues #1216, #1439).
"""

from __future__ import annotations

from klpcore.convert.rules import ConvertRules
from klpcore.kernel import KernelTarget
from klpcore.versions import Behaviour

from .versions import LATE_TEXT_POKE


def late_hazard(rtype: int, section: str, writable: bool, kernel: KernelTarget) -> Behaviour | None:
    if writable or kernel.has(LATE_TEXT_POKE) or not kernel.has("klp_no_module_disable_ro"):
        return None
    return LATE_TEXT_POKE


def rules(kernel: KernelTarget) -> ConvertRules:
    return ConvertRules(late_hazard=late_hazard, none_type=0)
