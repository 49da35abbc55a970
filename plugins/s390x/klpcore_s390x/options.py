"""Build and boot facts of the target kernel that s390 module loading depends on.

Version-dependent behaviour is in this plugin's rows of the version table (:mod:`.versions`:
``s390_kernel_write`` 5.8, ``s390_gotent_got_offset`` 6.5).  Configuration is
read from the target's ``.config`` (``--config``), else from this plugin's
distribution defaults (:data:`CONFIG_DEFAULTS`, Debian 6.1's s390x config);
``-O KEY=VALUE`` overrides either for one run:

==================  ===================  ============================================================
option              source               meaning
==================  ===================  ============================================================
``expoline``        ``CONFIG_EXPOLINE``  PLT entries end in ``brcl 15,__jump_r1`` and the PLT gets one
                    (Debian: not set)    more 22-byte slot for the ``exrl``/``br %r1`` thunk
``nospec_disable``  boot (``nospec``)    expolines switched off at boot: plain ``br %r1`` PLT entries
==================  ===================  ============================================================

The 22-byte PLT entry (``basr; lg %r1,12(%r1); br %r1 | brcl; .quad``) is the
layout of 6.1 and newer; older releases used 20-byte entries, which klpcore
does not model.
"""

from __future__ import annotations

from typing import Any

from klpcore.kernel import KernelTarget

PAGE_SIZE = 4096  # s390 has 4 KiB pages in every configuration

#: ``CONFIG_*`` values of Debian's 6.1 s390x kernel (and of the common
#: distribution kernels where noted), used when no ``--config`` is given
CONFIG_DEFAULTS: dict[str, str] = {
    "EXPOLINE": "n",  # Debian: not set (SUSE/RHEL set it; give --config or -O expoline=y)
    "STRICT_MODULE_RWX": "y",
    "ARCH_HAS_STRICT_MODULE_RWX": "y",
    "LIVEPATCH": "y",  # SUSE/RHEL/Ubuntu; Debian's s390x kernel has it off
    "HAVE_STATIC_CALL_INLINE": "n",
}


#: ``-O`` keys and their kinds, for the command line's checks (``ArchSpec.options``)
OPTION_KINDS: dict[str, str] = {"expoline": "bool", "nospec_disable": "bool"}


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "y", "m", "yes", "true", "on")
    return bool(value)


def config_value(kernel: KernelTarget, name: str) -> bool:
    """``CONFIG_<name>`` of the target: its ``.config``, else the default."""
    if kernel.config is not None:
        return kernel.config.enabled(name)
    return CONFIG_DEFAULTS.get(name, "n") in ("y", "m")


def expoline(kernel: KernelTarget) -> bool:
    """Expoline PLT entries: ``CONFIG_EXPOLINE`` and not ``nospec_disable``."""
    on = _flag(kernel.options["expoline"]) if "expoline" in kernel.options else config_value(kernel, "EXPOLINE")
    return on and not _flag(kernel.options.get("nospec_disable", False))
