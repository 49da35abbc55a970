"""How late writes reach arm64 module memory, by kernel version.

The version rules are this plugin's rows of the version table (:mod:`.versions`):
``arm64_livepatch`` and ``arm64_late_text_poke`` (6.17) here,
``arm64_single_ftrace_plt`` (6.2), ``arm64_module_plts_always`` (6.5) and
``arm64_init_ftrace_trampoline`` (6.17) in :mod:`.plt` and :mod:`.options`.

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

from . import versions

TEXT_POKE = "aarch64_insn_copy"


def insn_hint(kernel: KernelTarget) -> str | None:
    """The primitive relocation writes use once the module is formed."""
    return TEXT_POKE if kernel.has(versions.LATE_TEXT_POKE) else None


def check_livepatch(module_name: str, is_livepatch: bool, kernel: KernelTarget) -> None:
    """``check_modinfo_livepatch`` on a kernel without CONFIG_LIVEPATCH: arm64
    selects HAVE_LIVEPATCH only since 6.17, and a given ``--config`` may leave
    CONFIG_LIVEPATCH off."""
    if not is_livepatch:
        return
    if not kernel.has(versions.LIVEPATCH):
        reason = (
            f"arm64 kernels support livepatch only since 6.17 (HAVE_LIVEPATCH); a {kernel.label} kernel refuses "
            "livepatch modules"
        )
    elif kernel.config is not None and not kernel.config.enabled("LIVEPATCH"):
        reason = f"the kernel's configuration ({kernel.config.source}) has CONFIG_LIVEPATCH off"
    else:
        return
    raise ElfFormatError(
        Diagnostic(
            reason,
            module=module_name,
            kernel_message=f"{module_name}: module is marked as livepatch module, but livepatch support is disabled",
        )
    )


def write_method(image: ModuleImage, region: Region, kernel: KernelTarget, hint: str | None) -> str | None:
    if image.state == ModuleState.UNFORMED:
        return "memcpy"
    if hint == TEXT_POKE and kernel.has(versions.LATE_TEXT_POKE):
        return TEXT_POKE
    if region.perms & Perm.W:
        return "store"
    return None
