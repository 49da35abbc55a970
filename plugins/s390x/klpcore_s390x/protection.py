"""How the kernel's writes reach s390 module memory.

``apply_relocate_add`` passes a ``write`` function down to every store it
makes (relocated fields, GOT slots, PLT entries): ``memcpy`` while the module
is ``MODULE_STATE_UNFORMED``, and from Linux 5.8 ``s390_kernel_write`` after
that, which stores through the real address and so reaches read-only text and
rodata (late livepatch relocations).  Before 5.8 livepatch made the module
writable around its writes (``module_disable_ro``).  A kernel with neither
(``-O s390_kernel_write=false`` on 5.8+) has no permitted path: the write is
an error, as the fault would be in the kernel; so is a write to memory that is
gone (init memory after the module went live), which the core refuses.
"""

from __future__ import annotations

from klpcore.constants import ModuleState
from klpcore.kernel import KernelTarget
from klpcore.memory import ModuleImage

from . import versions

MEMCPY = "memcpy"
S390_KERNEL_WRITE = "s390_kernel_write"
MODULE_DISABLE_RO = "module_disable_ro"


def write_method(image: ModuleImage, kernel: KernelTarget) -> str | None:
    """The primitive a write of ``apply_relocate_add`` uses in ``image``'s
    state; None when the kernel has no way to make it (a fault)."""
    if image.state == ModuleState.UNFORMED:
        return MEMCPY
    if kernel.has(versions.KERNEL_WRITE):
        return S390_KERNEL_WRITE
    if not kernel.has("klp_no_module_disable_ro"):
        return MODULE_DISABLE_RO
    return None
