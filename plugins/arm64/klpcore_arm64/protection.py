"""How late writes reach arm64 module memory, by kernel version.

============================================================  =======
behaviour                                                      since
============================================================  =======
``NR_FTRACE_PLTS`` 1 (ftrace_caller only; 2 before)             6.2
module PLTs always built; branch partition/count not gated     6.5
on CONFIG_RANDOMIZE_BASE (module VA rework)
``HAVE_LIVEPATCH``; relocation writes after the module is      6.17
formed go through ``aarch64_insn_copy`` (``WRITE_PLACE``)
============================================================  =======

Before 6.17 every write of ``apply_relocate_add`` is a plain store, which
faults on read-only module memory.  Since 6.17 the helpers write with
``aarch64_insn_copy`` (fixmap text poke) when the module is not UNFORMED; the
PLT entries and veneers of ``module-plts.c`` remain plain stores
(``plt[i] = ...``), which fault late on the read-only ``.plt``.
"""

from __future__ import annotations

from klpcore.constants import ModuleState
from klpcore.errors import Diagnostic, ElfFormatError
from klpcore.kernel import KernelTarget
from klpcore.memory import ModuleImage, Perm, Region

LIVEPATCH_SINCE = (6, 17)
TEXT_POKE = "aarch64_insn_copy"


def insn_hint(kernel: KernelTarget) -> str | None:
    """The primitive relocation writes use once the module is formed."""
    return TEXT_POKE if kernel.at_least(*LIVEPATCH_SINCE) else None


def check_livepatch(module_name: str, is_livepatch: bool, kernel: KernelTarget) -> None:
    """``check_modinfo_livepatch`` on a kernel without CONFIG_LIVEPATCH: arm64
    selects HAVE_LIVEPATCH only since 6.17."""
    if not is_livepatch or kernel.at_least(*LIVEPATCH_SINCE):
        return
    raise ElfFormatError(
        Diagnostic(
            f"arm64 kernels support livepatch only since 6.17 (HAVE_LIVEPATCH); a {kernel.label} kernel refuses "
            "livepatch modules",
            module=module_name,
            kernel_message=(f"{module_name}: module is marked as livepatch module, but livepatch support is disabled"),
        )
    )


def write_method(image: ModuleImage, region: Region, kernel: KernelTarget, hint: str | None) -> str | None:
    if image.state == ModuleState.UNFORMED:
        return "memcpy"
    if hint == TEXT_POKE and kernel.at_least(*LIVEPATCH_SINCE):
        return TEXT_POKE
    if region.perms & Perm.W:
        return "store"
    return None
