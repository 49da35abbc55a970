"""What an architecture's plugin says about its kernel images (hook ``klp_arch_kernel_image``).

The core reads kallsyms, exports and ftrace tables the same way on every
architecture; what differs is how the image is wrapped, how its bytes map to
addresses and how ftrace turns a call site into a record.  Each plugin
returns one :class:`ImageRules`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .container import KernelImage


@dataclass(frozen=True)
class ImageRules:
    #: the plugin's name for its architecture
    arch: str
    #: e_machine of its vmlinux ELF
    machine: int
    #: "little" or "big"
    byteorder: str
    #: (offset, bytes) that mark a file as this architecture's image (any one suffices)
    magics: tuple[tuple[int, bytes], ...] = ()
    #: such a file is the kernel itself, byte 0 at ``_text`` (else: it carries the
    #: kernel as one compressed stream somewhere inside, behind its decompressor)
    raw: bool = False
    #: for a file ``magics`` mark: a structured container's unwrapper, ``(data, what) ->
    #: (inner bytes, description)`` or None; the inner bytes are unwrapped again
    unwrap: Callable[[bytes, str], tuple[bytes, str] | None] | None = None
    #: which u64 values of a raw image can be kernel pointers (its link address is voted on them)
    pointer_mask: Callable[[np.ndarray], np.ndarray] | None = None
    #: ``ftrace_call_adjust``: (image, sorted call sites, sorted function addresses) -> record addresses
    ftrace_adjust: Callable[[KernelImage, np.ndarray, np.ndarray | None], np.ndarray] | None = None
    #: for a raw image whose absolute pointers the boot code fills from relocations
    #: the image carries: (image, link-time addresses of u64 words) -> the values
    #: written there at a boot without KASLR (0 where the image does not say)
    boot_words: Callable[[KernelImage, np.ndarray], np.ndarray] | None = None
    #: the constant a boot without KASLR adds to every link-time address, from the
    #: kernel's configuration (``CONFIG_*`` -> value; None when not known): 0 for most
    boot_offset: Callable[[Mapping[str, str] | None], int] | None = None


def image_rules() -> list[ImageRules]:
    """Every installed architecture's rules."""
    from ..plugins import default_plugin_manager

    out: list[ImageRules] = []
    for got in default_plugin_manager().hook.klp_arch_kernel_image():
        if got is not None:
            out.append(got)
    return out
