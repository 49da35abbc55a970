"""``klpcore convert`` rules for x86_64.

* No symbol or type is kept ordinary (klp-build converts every needed
  relocation whatever its type).
* ``R_X86_64_NONE`` (0) is a no-op: a moved relocation leaves type 0, as
  ``objtool klp post-link`` does.
* Late writes: ``text_poke`` from 5.8 (``x86_text_poke``), before that
  ``module_disable_ro``: no late hazard.
"""

from __future__ import annotations

from klpcore.convert.rules import ConvertRules
from klpcore.kernel import KernelTarget


def rules(kernel: KernelTarget) -> ConvertRules:
    return ConvertRules(none_type=0)
