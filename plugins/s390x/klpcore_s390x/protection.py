"""How the kernel's writes reach s390 module memory.

``apply_relocate_add`` passes a ``write`` function down to every store it
makes (relocated fields, GOT slots, PLT entries): ``memcpy`` while the module
is ``MODULE_STATE_UNFORMED``, and from Linux 5.8 ``s390_kernel_write`` after
that, which stores through the real address and so reaches read-only text and
rodata (late livepatch relocations).  Before 5.8 livepatch made the module
writable around its writes (``module_disable_ro``).  Nothing else writes late,
so every write has a permitted path; a write to memory that is gone (init
memory after the module went live) is refused by the core.
"""

from __future__ import annotations

from klpcore.constants import ModuleState
from klpcore.kernel import KernelTarget
from klpcore.memory import ModuleImage

MEMCPY = "memcpy"
S390_KERNEL_WRITE = "s390_kernel_write"
MODULE_DISABLE_RO = "module_disable_ro"


def write_method(image: ModuleImage, kernel: KernelTarget) -> str:
    """The primitive a write of ``apply_relocate_add`` uses in ``image``'s state."""
    if image.state == ModuleState.UNFORMED:
        return MEMCPY
    return S390_KERNEL_WRITE if kernel.has("s390_kernel_write") else MODULE_DISABLE_RO
