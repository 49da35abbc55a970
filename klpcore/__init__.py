"""klpcore: the Linux module loader's and livepatch core's relocation writing, in user space.

Typical use::

    from klpcore import Loader, load_symbols, write_elf

    symbols = load_symbols("System.map")
    loaded = Loader().load("patch.ko", symbols)  # at the architecture's module area
    for p in loaded.module.layout.placements.values():
        print(p.name, hex(p.address))
    open("patch.relocated.ko", "wb").write(write_elf(loaded))
"""

from __future__ import annotations

from .arch import ABS, PREL, ArchSpec, Entry, RelocType, insn_field, misaligned, signed, unsigned
from .compress import read_input
from .constants import MemType, ModuleState
from .elf import ElfModule, Section
from .engine import ApplyContext, RelocFailure, SectionContext
from .errors import (
    Diagnostic,
    ElfFormatError,
    InputError,
    InputFileError,
    KlpError,
    LivepatchFormatError,
    MemoryAccessError,
    NoPluginError,
    OutputError,
    PlacementError,
    RelocationError,
    ResolutionError,
    SymbolFileError,
)
from .hookspecs import hookimpl
from .kernel import KernelTarget
from .livepatch import KlpObject, KlpRelocSec, LivepatchInfo, discover
from .loader import Example, LoadedModule, Loader, LoadingModule, examples
from .memory import BytesBackend, MemoryBackend, ModuleImage, Perm, Region
from .output import write_elf
from .plugins import get_plugin_manager
from .symbols import KernelSymbols, load_many, load_symbols, parse_symbol_text

__version__ = "0.1.0"

__all__ = [
    "ABS",
    "PREL",
    "ApplyContext",
    "ArchSpec",
    "BytesBackend",
    "Diagnostic",
    "ElfFormatError",
    "ElfModule",
    "Entry",
    "Example",
    "InputError",
    "InputFileError",
    "KernelSymbols",
    "KernelTarget",
    "KlpError",
    "KlpObject",
    "KlpRelocSec",
    "LivepatchFormatError",
    "LivepatchInfo",
    "LoadedModule",
    "Loader",
    "LoadingModule",
    "MemType",
    "MemoryAccessError",
    "MemoryBackend",
    "ModuleImage",
    "ModuleState",
    "NoPluginError",
    "OutputError",
    "Perm",
    "PlacementError",
    "Region",
    "RelocFailure",
    "RelocType",
    "RelocationError",
    "ResolutionError",
    "Section",
    "SectionContext",
    "SymbolFileError",
    "discover",
    "examples",
    "get_plugin_manager",
    "hookimpl",
    "insn_field",
    "load_many",
    "load_symbols",
    "misaligned",
    "parse_symbol_text",
    "read_input",
    "signed",
    "unsigned",
    "write_elf",
]
