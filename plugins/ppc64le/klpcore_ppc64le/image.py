"""The ppc64le kernel image: the ``vmlinux`` ELF itself (Debian ships it
unstripped, named ``vmlinuz`` since 7.x); the core reads ELF images.  The
record adjustment of patchable-entry kernels is not modelled here: the call
sites are the records."""

from __future__ import annotations

from klpcore.kimage.rules import ImageRules

from .identify import EM_PPC64

RULES = ImageRules(arch="ppc64le", machine=EM_PPC64, byteorder="little")
