"""What changed in ``arch/s390/kernel/module.c``, by kernel version and configuration.

One table; every entry has a test on both sides of its boundary
(``tests/s390x``).  Read from the 6.1 tree (``core_layout``) and the 6.17-era
tree (``mem[MOD_TEXT]``); older releases are modelled only where stated.

================================  =======  ==========================================================
feature                           since    behaviour from that version on
================================  =======  ==========================================================
``late_write``                    5.8      writes after ``MODULE_STATE_UNFORMED`` go through
                                           ``s390_kernel_write`` (8207fda95a78); before, livepatch made
                                           the module writable around them (``module_disable_ro``)
``gotent_got_offset``             6.5      GOTENT/GOTPLTENT = GOT + G + A - P (11458e2b3ffa); before
                                           BASE + G + A - P (``arch.got_offset`` missing; equal when the
                                           GOT starts at offset 0 of the text, as it always does)
``plt22``                         6.1      22-byte PLT entries ``basr; lg 1,12(1); br 1|brcl; .quad``
                                           (the release that switched from 20 bytes is not pinned:
                                           klpcore models 6.1 and newer and warns for older targets)
================================  =======  ==========================================================

Configuration (``KernelTarget.options``, ``-O KEY=VALUE``; defaults = Debian 6.1's config):

=================  =======  ===========================================================================
option             default  meaning
=================  =======  ===========================================================================
``expoline``       False    ``CONFIG_EXPOLINE``: PLT entries end in ``brcl 15,__jump_r1`` and the PLT
                            gets one more 22-byte slot for the ``exrl``/``br %r1`` thunk
``nospec_disable`` False    ``nospec_disable`` at run time (``nospectre_v2``): expoline PLTs are off
=================  =======  ===========================================================================
"""

from __future__ import annotations

from typing import Any

from klpcore.kernel import KernelTarget

#: feature -> first kernel version (major, minor) that has it
SINCE: dict[str, tuple[int, int]] = {
    "late_write": (5, 8),
    "gotent_got_offset": (6, 5),
    "plt22": (6, 1),
}

#: plugin options with their defaults (Debian 6.1: ``# CONFIG_EXPOLINE is not set``)
DEFAULT_OPTIONS: dict[str, Any] = {"expoline": False, "nospec_disable": False}


def has(kernel: KernelTarget, feature: str) -> bool:
    """Does ``kernel`` have ``feature`` (a key of :data:`SINCE`)?"""
    return kernel.at_least(*SINCE[feature])


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "y", "yes", "true", "on")
    return bool(value)


def option(kernel: KernelTarget, name: str) -> bool:
    """``kernel.options[name]`` (``-O name=y``), else the kernel's configuration
    (``CONFIG_EXPOLINE``) when the target carries one, else the default."""
    if name in kernel.options:
        return _flag(kernel.options[name])
    config = getattr(kernel, "config", None)
    if name == "expoline" and config is not None:
        getter = getattr(config, "enabled", None)
        if callable(getter):
            return bool(getter("CONFIG_EXPOLINE"))
    return bool(DEFAULT_OPTIONS[name])


def expoline(kernel: KernelTarget) -> bool:
    """Expoline PLT entries: ``CONFIG_EXPOLINE`` and not ``nospec_disable``."""
    return option(kernel, "expoline") and not option(kernel, "nospec_disable")
