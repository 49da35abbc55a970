"""Identification: ``EM_PPC64`` (21), ELFCLASS64, little-endian, and branch
targets of decoded instructions.

* **Identification.**  An ELFv2 kernel accepts only ``(e_flags & 3) == 2``;
  anything else is refused by the generic loader with ``"Invalid module
  architecture in ELF header: %u"`` (``%u`` = ``e_machine``).
"""

from __future__ import annotations

from typing import Any

from klpcore.arch import ArchSpec
from klpcore.errors import Diagnostic, ElfFormatError

from .abi import LI_MASK, MASK64
from .options import OPTION_KINDS
from .types import OTHER_TYPES

EM_PPC64 = 21
#: (e_machine, class, byte order, e_flags) this plugin answers to.
ARCHES = [(EM_PPC64, 2, "little", 2)]
#: start of the ppc64 module/vmalloc area (radix): the default --base
DEFAULT_BASE = 0xC008000000000000
#: modules are vmalloc memory: RADIX_VMALLOC_SIZE (``RADIX_KERN_MAP_SIZE``, 1 << 49)
VMALLOC_SIZE = 1 << 49
#: where ``.data..percpu`` lands when --percpu-base is not given: measured, the address Debian's
#: 6.1.0-50-powerpc64le kernel under qemu gave a module's per-CPU section (the reserved area after the
#: static per-CPU data; tests/kernel_oracle/fixtures/ppc64le/koc_basic.json ``percpu_base``), the
#: same kernel as DEFAULT_BASE. Another kernel's differs: give --percpu-base (check reads it from
#: the target's symbols where the plugin can)
PERCPU_BASE = 0xC0000000021B9BB8
#: ``R_PPC64_ADDR64``: a pointer in data
R_PPC64_ADDR64 = 38


def insn_target(insn: Any) -> int | None:
    """Where a decoded ``b``/``bl``/``bc`` (relative or absolute) goes."""
    raw = bytes(insn.bytes)
    if len(raw) != 4:
        return None
    word = int.from_bytes(raw, "little")
    opcode = word >> 26
    if opcode == 18:
        disp = word & LI_MASK
        if disp & 0x02000000:
            disp -= 0x04000000
    elif opcode == 16:
        disp = word & 0xFFFC
        if disp & 0x8000:
            disp -= 0x10000
    else:
        return None
    if word & 2:  # AA: absolute
        return disp & MASK64
    return (int(insn.address) + disp) & MASK64


def identify(machine: int, elfclass: int, byteorder: str, e_flags: int) -> ArchSpec | None:
    """``EM_PPC64``, ELFCLASS64, little-endian, ELFv2 (``(e_flags & 3) == 2``)."""
    if machine != EM_PPC64 or elfclass != 2 or byteorder != "little":
        return None
    if e_flags & 3 != 2:
        raise ElfFormatError(
            Diagnostic(
                f"ELF ABI version {e_flags & 3} in e_flags: a ppc64le (ELFv2) kernel loads only ELFv2 modules "
                "((e_flags & 3) == 2)",
                kernel_message=f"Invalid module architecture in ELF header: {machine}",
            )
        )
    return ArchSpec(
        name="ppc64le",
        machine=EM_PPC64,
        byteorder="little",
        description="ppc64le ELFv2 (arch/powerpc/kernel/module_64.c)",
        unknown_type_error="{module}: Unknown ADD relocation: {number}",
        frob_defined=frozenset({".TOC."}),  # dedotify (module_64.c)
        default_base=DEFAULT_BASE,
        percpu_base=PERCPU_BASE,
        module_area_size=VMALLOC_SIZE,
        stub_sections=frozenset({".stubs"}),
        pointer_type=R_PPC64_ADDR64,
        config_symbol="CONFIG_PPC64",
        capstone=("CS_ARCH_PPC", "CS_MODE_64"),  # CS_MODE_LITTLE_ENDIAN is 0
        insn_target=insn_target,
        type_names=OTHER_TYPES,
        kernel_text_range=(0xC000000000000000, 0xD000000000000000),  # the linear map (PAGE_OFFSET)
        options=OPTION_KINDS,
    )
