"""Memory protection: which writes the kernel does with ``patch_instruction``
(by version) and how each write reaches module memory.

* **Writes.**  Since Linux 5.16 stubs, the ``ld r2`` restore and REL24
  fields are written with ``patch_instruction`` (and so reach read-only
  module text late, for livepatch); all other types are plain stores, which
  fault on read-only memory once the module is formed.
"""

from __future__ import annotations

from klpcore.constants import ModuleState
from klpcore.engine import ApplyContext
from klpcore.kernel import KernelTarget
from klpcore.memory import ModuleImage, Perm, Region

from . import versions


def patch_hint(ctx: ApplyContext) -> str | None:
    """The hint for writes the kernel does with ``patch_instruction`` (5.16+)."""
    return "patch_instruction" if ctx.kernel.has(versions.PATCH_INSTRUCTION) else None


def write_method(image: ModuleImage, region: Region, kernel: KernelTarget, hint: str | None) -> str | None:
    """memcpy while unformed; then ``patch_instruction`` for the writes the
    kernel does with it (5.16+), plain stores into writable memory, and a
    fault (None) otherwise.  Before 5.8 livepatch made the module writable
    around its writes (``module_disable_ro``)."""
    if image.state == ModuleState.UNFORMED:
        return "memcpy"
    if hint == "patch_instruction" and kernel.has(versions.PATCH_INSTRUCTION):
        return "patch_instruction"
    # hint "store" (or None): a plain store
    if region.perms & Perm.W:
        return "store"
    if not kernel.has("klp_no_module_disable_ro"):
        return "module_disable_ro"
    return None
