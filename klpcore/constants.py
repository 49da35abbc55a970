"""ELF and kernel constants used by klpcore.

Values come from the ELF gABI, ``include/uapi/linux/elf.h`` and the kernel's
module loader.  Architecture-specific relocation numbers live in the plugins.
"""

from __future__ import annotations

import enum

# --- ELF identification -----------------------------------------------------
ELFMAG = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2

ET_REL = 1
ET_EXEC = 2
ET_DYN = 3

PT_LOAD = 1  # p_type of a loaded segment

# --- section types ----------------------------------------------------------
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9

# --- section flags ----------------------------------------------------------
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_MERGE = 0x10
SHF_STRINGS = 0x20
SHF_INFO_LINK = 0x40
#: Marks a livepatch relocation section (final format, Linux 4.7+).
SHF_RELA_LIVEPATCH = 0x00100000
#: Set by the loader on ro_after_init sections (kernel-internal).
SHF_RO_AFTER_INIT = 0x00200000
#: The 2015 RFC prototype's livepatch relocation section flag.
SHF_RELA_LIVEPATCH_RFC = 0x04000000

# --- special section indexes ------------------------------------------------
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
#: Section index of livepatch symbols (final format).
SHN_LIVEPATCH = 0xFF20
#: Section index of livepatch symbols in the 2015 RFC prototype.
SHN_LIVEPATCH_RFC = 0xFF21
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF

# --- symbol binding and type ------------------------------------------------
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
#: 2015 RFC binding of a livepatch symbol defined outside the patched object.
STB_LIVEPATCH_EXT = 11

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4

# --- record sizes (ELF64) ---------------------------------------------------
EHDR_SIZE = 64
SHDR_SIZE = 64
SYM_SIZE = 24
RELA_SIZE = 24
REL_SIZE = 16

# --- livepatch naming -------------------------------------------------------
KLP_RELA_PREFIX = ".klp.rela."
KLP_SYM_PREFIX = ".klp.sym."
KLP_RFC_RELA_PREFIX = "__klp_rela_"
KLP_TOMBSTONE_PREFIX = ".klp.tombstone."
#: sizeof(module name) - 1 on 64-bit: MODULE_NAME_LEN (56) - 1.
KLP_OBJNAME_MAX = 55
VMLINUX = "vmlinux"

PAGE_SIZE = 4096


class ModuleState(enum.IntEnum):
    """The kernel's ``enum module_state``."""

    LIVE = 0
    COMING = 1
    GOING = 2
    UNFORMED = 3


class MemType(enum.IntEnum):
    """The kernel's ``enum mod_mem_type`` (Linux 6.4+)."""

    TEXT = 0
    DATA = 1
    RODATA = 2
    RO_AFTER_INIT = 3
    INIT_TEXT = 4
    INIT_DATA = 5
    INIT_RODATA = 6

    @property
    def kernel_name(self) -> str:
        return "MOD_" + self.name

    @property
    def is_init(self) -> bool:
        return self >= MemType.INIT_TEXT

    @property
    def is_text(self) -> bool:
        return self in (MemType.TEXT, MemType.INIT_TEXT)
