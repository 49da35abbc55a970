"""Memory protection: how each write reaches module memory, by version.

Once the module is formed, writes go through ``text_poke`` (Linux 5.8+);
before that livepatch made the module writable around its writes.
"""

from __future__ import annotations

from klpcore.constants import MemType, ModuleState
from klpcore.kernel import KernelTarget
from klpcore.memory import ModuleImage, Perm, Region

from . import versions


def write_method(image: ModuleImage, region: Region, kernel: KernelTarget) -> str | None:
    """``write_relocate_add`` uses memcpy while the module is unformed and
    text_poke afterwards (5.8+).  Before 5.8 livepatch made the module
    writable around its writes (``module_disable_ro``, 4.5-5.7; the 2015 RFC
    era's ``set_memory_rw``/``set_memory_ro`` before that)."""
    if image.state == ModuleState.UNFORMED:
        return "memcpy"
    if kernel.has(versions.TEXT_POKE):
        return "text_poke"
    if kernel.has("module_rwx_helpers"):
        return "module_disable_ro"
    # the 2015 RFC made only the core text writable (set_memory_rw on module_core..core_text_size)
    if region.memtype == MemType.TEXT:
        return "set_memory_rw"
    return "store" if region.perms & Perm.W else None
