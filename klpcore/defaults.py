"""The core's own hook implementations, registered last.

They are the kernel's generic (``__weak``) behaviour: the table-driven
``apply_relocate_add``, a ``clear_relocate_add`` that does nothing, and no
``module_frob_arch_sections`` work.
"""

from __future__ import annotations

from .engine import SectionContext, apply_section
from .hookspecs import hookimpl


@hookimpl(trylast=True)
def klp_arch_apply_section(ctx: SectionContext) -> bool:
    apply_section(ctx)
    return True


@hookimpl(trylast=True)
def klp_arch_clear_section(ctx: SectionContext) -> bool:
    """The kernel's weak ``clear_relocate_add`` does nothing."""
    return True
