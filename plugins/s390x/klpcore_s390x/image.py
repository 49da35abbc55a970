"""The s390x kernel image (arch/s390/boot): the decompressor, marked
``S390EP`` at 0x10008, followed by the compressed ``vmlinux.bin`` (raw, byte
0 at ``_text``, big-endian).  The kernel is linked low (from 1 MiB); pointers
are at least halfword-aligned.  ``ftrace_call_adjust`` keeps the site.

A relocatable kernel (``CONFIG_RELOCATABLE``, linked ``-pie``) keeps some
absolute pointers only in its ``.rela.dyn`` (Elf64_Rela, inside the image,
right after its ``.dynsym``): the boot code's ``handle_relocs``
(arch/s390/boot/startup.c) writes, at ``r_offset + offset``, the addend plus
``offset`` (``R_390_RELATIVE``, symbol 0) or plus the dynamic symbol's
``st_value + offset`` when that symbol is defined (``R_390_64``).  Debian
6.1's image holds 0 for its data exports' values until then.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from klpcore.kimage.container import KernelImage
from klpcore.kimage.rules import ImageRules

from .identify import EM_S390


def kernel_pointers(v: np.ndarray) -> np.ndarray:
    return v[(v >= np.uint64(1 << 20)) & (v < np.uint64(1 << 40)) & ((v & np.uint64(1)) == 0)]


R_390_RELATIVE, R_390_64 = 12, 22
_RELA = np.dtype([("offset", ">u8"), ("info", ">u8"), ("addend", ">i8")])
_SYM = np.dtype([("name", ">u4"), ("info", "u1"), ("other", "u1"), ("shndx", ">u2"), ("value", ">u8"), ("size", ">u8")])


def _is_rela(v: np.ndarray, end: int) -> np.ndarray:
    t = v["info"] & np.uint64(0xFFFFFFFF)
    return ((t == R_390_RELATIVE) | (t == R_390_64)) & (v["offset"] > 0) & (v["offset"] < np.uint64(end))


def boot_words(img: KernelImage, vas: np.ndarray) -> np.ndarray:
    """What ``handle_relocs`` writes at each of ``vas`` at a boot without KASLR (offset 0)."""
    out = np.zeros(len(vas), dtype=np.uint64)
    if not len(vas) or not img.segments:
        return out
    base = img.segments[0][0]
    end = base + len(img.data)
    first = int(vas[0]).to_bytes(8, "big")
    at = img.data.find(first)
    while at >= 0 and not (at % 8 == 0 and _is_rela(np.frombuffer(img.data, _RELA, 1, at), end).all()):
        at = img.data.find(first, at + 1)
    if at < 0:
        return out
    n = (len(img.data) - at % 24) // 24
    table = np.frombuffer(img.data, _RELA, n, at % 24)
    ok = _is_rela(table, end)
    i = at // 24
    lo = i - int(np.argmin(ok[i::-1])) + 1 if not ok[: i + 1].all() else 0
    hi = i + int(np.argmin(ok[i:])) if not ok[i:].all() else n
    rela = table[lo:hi]
    # .dynsym ends where .rela.dyn starts; its entry 0 is all zeros
    start = at % 24 + 24 * lo
    sym = (rela["info"] >> np.uint64(32)).astype(np.int64)
    before = np.frombuffer(img.data, _SYM, start // 24, start % 24)
    words = np.frombuffer(img.data, ">u8", 3 * (start // 24), start % 24).reshape(-1, 3)
    zero = np.flatnonzero(~words.any(axis=1))
    if not len(zero) or len(before) - int(zero[-1]) <= int(sym.max()):
        return out
    dynsym = before[int(zero[-1]) :]
    val = rela["addend"].astype(np.uint64)
    # a symbol the boot code would take: defined, and (read back here) a kernel address
    sv = dynsym["value"][sym]
    defined = (dynsym["shndx"][sym] != 0) & (sv >= np.uint64(base)) & (sv < np.uint64(1 << 40))
    val = val + np.where((sym != 0) & defined, dynsym["value"][sym], np.uint64(0))
    known = (sym == 0) | defined
    order = np.argsort(rela["offset"], kind="stable")
    offs = rela["offset"][order]
    pos = np.clip(np.searchsorted(offs, vas), 0, len(offs) - 1)
    hit = offs[pos] == vas
    got = val[order][pos]
    out[hit & known[order][pos]] = got[hit & known[order][pos]]
    return out


def boot_offset(config: Mapping[str, str] | None) -> int:
    """Where a boot without KASLR runs the kernel, relative to its link addresses.

    Kernels with ``CONFIG_KERNEL_IMAGE_BASE`` (the s390 boot rework that maps the
    kernel image apart from the identity mapping) link it from ``TEXT_OFFSET``
    and ``setup_kernel_memory_layout`` (arch/s390/boot/startup.c) sets
    ``__kaslr_offset = __NO_KASLR_START_KERNEL`` (= ``CONFIG_KERNEL_IMAGE_BASE``)
    without KASLR; the boot code adds ``__kaslr_offset`` to every kernel
    address.  (It takes a lower start instead when the virtual layout leaves no
    room there, "constrained": not the case for the sizes the kernel oracle
    boots, and not modelled.)  Older kernels run at their link addresses.
    """
    value = (config or {}).get("CONFIG_KERNEL_IMAGE_BASE")
    if not value:
        return 0
    try:
        return int(value, 0) if value.lower().startswith("0x") else int(value, 16)
    except ValueError:
        return 0


RULES = ImageRules(
    arch="s390x",
    machine=EM_S390,
    byteorder="big",
    magics=((0x10008, b"S390EP"),),
    pointer_mask=kernel_pointers,
    boot_words=boot_words,
    boot_offset=boot_offset,
)
