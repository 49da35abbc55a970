"""Which modules this plugin claims, and how ``klpcore disasm`` reads s390 code.

The kernel's ``elf_check_arch`` accepts ``EM_S390`` (22) and ``EM_S390_OLD``
(0xA390) with ``ELFCLASS64``; s390 is big-endian, so the plugin claims only
big-endian modules (a little-endian ``EM_S390`` file would be misread by the
kernel and is left to "no plugin").
"""

from __future__ import annotations

from typing import Any

from klpcore.arch import ArchSpec

from . import types as T
from .options import OPTION_KINDS

EM_S390 = 22
EM_S390_OLD = 0xA390
ELFCLASS64 = 2
#: (e_machine, class, byte order, e_flags) this plugin answers to.
ARCHES = [(EM_S390, ELFCLASS64, "big", 0)]
#: the module area of Debian's 6.1 kernel under qemu (``/proc/modules``), 4 GiB and more from vmlinux
DEFAULT_BASE = 0x3FF7FD00000
#: MODULES_LEN (2 GiB)
MODULES_LEN = 1 << 31
#: where ``.data..percpu`` lands when --percpu-base is not given: measured, the address Debian's
#: 6.1.0-50-s390x kernel under qemu gave a module's per-CPU section (the reserved area after the
#: static per-CPU data; tests/kernel_oracle/fixtures/s390x/koc_basic.json ``percpu_base``), the
#: same kernel as DEFAULT_BASE. Another kernel's differs: give --percpu-base (check reads it from
#: the target's symbols where the plugin can)
PERCPU_BASE = 0xFE0200
#: ``R_390_64``: a pointer in data
R_390_64 = 22


def _relative_immediate(raw: bytes) -> bool:
    """Instruction formats whose immediate is a halfword offset from the
    instruction (RI-b/c, RIL-b/c, RSI): capstone shows their target address."""
    op = raw[0]
    sub = raw[1] & 0x0F if len(raw) > 1 else 0
    if op == 0xC0:
        return sub in (0x0, 0x4, 0x5)  # larl, brcl, brasl
    if op in (0xC4, 0xC6):
        return True  # lrl/lgrl/strl..., exrl/pfdrl/cgrl/crl...
    if op == 0xA7:
        return sub in (0x4, 0x5, 0x6, 0x7)  # brc, bras, brct, brctg
    return op in (0x84, 0x85)  # brxh, brxle


def insn_target(insn: Any) -> int | None:
    """The address a PC-relative instruction (``brasl``, ``larl``, ``lgrl``,
    ``brcl``, ``j`` ...) reaches, from capstone's decoded immediate."""
    raw = bytes(insn.bytes)
    if not raw or not _relative_immediate(raw):
        return None
    imms = [int(op.imm) for op in insn.operands if op.type == 2]  # SYSZ_OP_IMM
    return imms[-1] & 0xFFFFFFFFFFFFFFFF if imms else None


def identify(machine: int, elfclass: int, byteorder: str) -> ArchSpec | None:
    if machine not in (EM_S390, EM_S390_OLD) or elfclass != ELFCLASS64 or byteorder != "big":
        return None
    return ArchSpec(
        name="s390x",
        machine=EM_S390,
        byteorder="big",
        description="s390x (arch/s390/kernel/module.c)",
        unknown_type_error="module {module}: unknown relocation: {number}",
        default_base=DEFAULT_BASE,
        percpu_base=PERCPU_BASE,
        module_area_size=MODULES_LEN,
        pointer_type=R_390_64,
        config_symbol="CONFIG_S390",
        capstone=("CS_ARCH_SYSZ", "CS_MODE_BIG_ENDIAN"),
        insn_target=insn_target,
        type_names=T.OTHER_TYPES,
        options=OPTION_KINDS,
    )
