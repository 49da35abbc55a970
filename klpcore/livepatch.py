"""Finding livepatch objects, relocation sections and symbols in a module.

Two formats are understood:

* ``final`` (Linux 4.7+, Documentation/livepatch/module-elf-format.rst):
  sections ``.klp.rela.<objname>.<section>`` flagged ``SHF_RELA_LIVEPATCH``
  (0x00100000) and symbols ``.klp.sym.<objname>.<name>,<sympos>`` with
  ``st_shndx == SHN_LIVEPATCH`` (0xff20);
* ``rfc`` (the 2015 RFC "livepatch: reuse module loader code to write
  relocations" and its kpatch prototype): sections ``__klp_rela_<objname><section>``
  flagged 0x04000000, symbols with plain names and ``st_shndx == 0xff21``,
  external ones bound ``STB_LIVEPATCH_EXT`` (11).

Name parsing follows the kernel's ``sscanf`` formats
(``".klp.rela.%55[^.]"`` and ``".klp.sym.%55[^.].%511[^,],%lu"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from . import constants as C
from .elf import ElfModule
from .errors import Diagnostic, LivepatchFormatError


@dataclass(frozen=True)
class KlpRelocSec:
    """A livepatch relocation section, as the RFC's ``struct klp_reloc_sec``."""

    index: int
    name: str
    objname: str
    target: int  # section index the relocations apply to (sh_info)
    target_name: str
    fmt: str = "final"


@dataclass
class KlpObject:
    """A patched object (``vmlinux`` or a module) and its relocation sections."""

    name: str
    reloc_secs: list[KlpRelocSec] = field(default_factory=list)

    @property
    def is_vmlinux(self) -> bool:
        return self.name == C.VMLINUX


@dataclass(frozen=True)
class KlpSymbolName:
    objname: str
    name: str
    sympos: int
    trailing: str = ""  # characters after the position; sscanf ignores them


@dataclass(frozen=True)
class KlpSymbol:
    index: int
    raw: str
    parsed: KlpSymbolName | None  # None for the RFC format (plain names) or a malformed name
    external: bool = False  # RFC: STB_LIVEPATCH_EXT
    error: Diagnostic | None = None  # malformed name: reported when a relocation uses it, as the kernel does


@dataclass
class LivepatchInfo:
    fmt: str | None  # "final", "rfc" or None when the module has no klp sections
    objects: dict[str, KlpObject]
    symbols: list[KlpSymbol]
    is_livepatch: bool  # modinfo livepatch=Y
    warnings: list[Diagnostic] = field(default_factory=list)

    @property
    def reloc_secs(self) -> list[KlpRelocSec]:
        out = [rs for obj in self.objects.values() for rs in obj.reloc_secs]
        return sorted(out, key=lambda rs: rs.index)


#: vsscanf's ``%lu``: skip white space (the kernel's isspace, ASCII here),
#: then decimal digits; unsigned conversions take no sign, so ``-1``/``+1`` fail
_NUM = re.compile(r"[ \t\n\v\f\r]*([0-9]+)")


def parse_rela_objname(name: str) -> str | None:
    """The kernel's ``sscanf(name, ".klp.rela.%55[^.]", objname)``: the object
    name, or ``None`` when the kernel would find the name malformed.  A name
    longer than 55 characters is returned whole so callers can report it."""
    if not name.startswith(C.KLP_RELA_PREFIX):
        return None
    rest = name[len(C.KLP_RELA_PREFIX) :]
    obj = rest.split(".", 1)[0]
    return obj or None


def rfc_objname(name: str) -> str | None:
    """The 2015 kpatch prototype's ``klp_extract_objname``: cut the section
    name at its first '.', then take the text after the last '_'
    (``__klp_rela_snd_hda_intel.text`` -> ``intel``)."""
    if not name.startswith(C.KLP_RFC_RELA_PREFIX):
        return None
    head = name.split(".", 1)[0]
    return head.rsplit("_", 1)[-1] or None


def parse_klp_symbol_name(name: str, ksym_name_len: int = 512) -> KlpSymbolName | None:
    """The kernel's ``sscanf(name, ".klp.sym.%55[^.].%511[^,],%lu", ...)``.

    Returns ``None`` when sscanf would not fill all three fields.  With
    ``ksym_name_len=128`` the pre-6.1 width ``%127[^,]`` is used.
    """
    if not name.startswith(C.KLP_SYM_PREFIX):
        return None
    rest = name[len(C.KLP_SYM_PREFIX) :]
    obj, dot, rest = rest.partition(".")
    if not obj or not dot or len(obj) > C.KLP_OBJNAME_MAX:
        return None
    sym, comma, rest = rest.partition(",")
    if not sym or not comma or len(sym) > ksym_name_len - 1:
        return None
    m = _NUM.match(rest)
    if m is None:
        return None
    value = int(m.group(1)) % (1 << 64)  # simple_strntoull wraps on overflow
    return KlpSymbolName(obj, sym, value, rest[m.end() :])


def discover(module: ElfModule, ksym_name_len: int = 512) -> LivepatchInfo:
    """Find the livepatch objects, relocation sections and symbols of ``module``.

    Raises :class:`LivepatchFormatError` listing every malformed name.
    """
    errors: list[Diagnostic] = []
    warnings: list[Diagnostic] = []
    objects: dict[str, KlpObject] = {}
    fmts: set[str] = set()
    for sec in module.sections:
        if sec.type != C.SHT_RELA:
            continue
        fmt = None
        if sec.flags & C.SHF_RELA_LIVEPATCH:
            fmt = "final"
        elif sec.flags & C.SHF_RELA_LIVEPATCH_RFC:
            fmt = "rfc"
        if fmt is None:
            if sec.name.startswith(C.KLP_RFC_RELA_PREFIX):
                warnings.append(
                    Diagnostic(
                        "named like a 2015 RFC livepatch section but lacks its flag (0x4000000); the RFC loader "
                        "applies it at load as an ordinary relocation section",
                        severity="warning",
                        module=module.name,
                        section=sec.name,
                    )
                )
            if sec.name.startswith(C.KLP_RELA_PREFIX):
                warnings.append(
                    Diagnostic(
                        "named like a livepatch relocation section but lacks SHF_RELA_LIVEPATCH; "
                        "the kernel treats it as an ordinary relocation section",
                        severity="warning",
                        module=module.name,
                        section=sec.name,
                    )
                )
            continue
        if not 0 < sec.info < len(module.sections):
            errors.append(
                Diagnostic(
                    f"sh_info {sec.info} names no section",
                    module=module.name,
                    section=sec.name,
                )
            )
            continue
        if fmt == "final":
            obj = parse_rela_objname(sec.name)
            if obj is None:
                errors.append(
                    Diagnostic(
                        "section has an incorrectly formatted name (expected .klp.rela.<objname>.<section>)",
                        module=module.name,
                        section=sec.name,
                        kernel_message=f"section {sec.name} has an incorrectly formatted name",
                    )
                )
                continue
            if len(obj) > C.KLP_OBJNAME_MAX:
                # sscanf's %55[^.] keeps the first 55 characters, which name no object: the kernel
                # silently never applies the section (klpcore does the same and says so)
                warnings.append(
                    Diagnostic(
                        f"object name '{obj}' is {len(obj)} characters, more than {C.KLP_OBJNAME_MAX}; the kernel "
                        f"reads it as '{obj[: C.KLP_OBJNAME_MAX]}' and silently never applies this section",
                        severity="warning",
                        module=module.name,
                        section=sec.name,
                    )
                )
                continue
            if not sec.flags & C.SHF_ALLOC:
                warnings.append(
                    Diagnostic(
                        "livepatch relocation section lacks SHF_ALLOC: its contents are not kept after load; the "
                        "kernel applies a vmlinux section at load (5.8+) normally, but a later application "
                        "(module-specific, or any before 5.8) reads the freed load copy",
                        severity="warning",
                        module=module.name,
                        section=sec.name,
                    )
                )
        else:
            obj = rfc_objname(sec.name)
            whole = sec.name[len(C.KLP_RFC_RELA_PREFIX) :].split(".", 1)[0]
            if obj and obj != whole:
                warnings.append(
                    Diagnostic(
                        f"the 2015 prototype reads the object name '{obj}' from this section name (the text after "
                        f"the last '_'), not '{whole}': its relocations are for a module named '{obj}'",
                        severity="warning",
                        module=module.name,
                        section=sec.name,
                    )
                )
            if not obj:
                errors.append(
                    Diagnostic(
                        "RFC livepatch section name does not start with __klp_rela_<objname>",
                        module=module.name,
                        section=sec.name,
                    )
                )
                continue
        fmts.add(fmt)
        target = module.sections[sec.info]
        rs = KlpRelocSec(sec.index, sec.name, obj, sec.info, target.name, fmt)
        objects.setdefault(obj, KlpObject(obj)).reloc_secs.append(rs)

    if len(fmts) > 1:
        errors.append(
            Diagnostic(
                "module mixes the final and the 2015 RFC livepatch formats",
                module=module.name,
            )
        )

    symbols: list[KlpSymbol] = []
    shndx = module.symbols["st_shndx"]
    info = module.symbols["st_info"]
    candidates = np.nonzero((shndx == C.SHN_LIVEPATCH) | (shndx == C.SHN_LIVEPATCH_RFC))[0]
    for i in candidates.tolist():
        ndx = int(shndx[i])
        raw = module.symbol_names[i]
        if ndx == C.SHN_LIVEPATCH:
            parsed = parse_klp_symbol_name(raw, ksym_name_len)
            if parsed is None:
                symbols.append(
                    KlpSymbol(
                        i,
                        raw,
                        None,
                        error=Diagnostic(
                            "livepatch symbol has an incorrectly formatted name "
                            f"(expected .klp.sym.<objname>.<name>,<pos>, objname at most {C.KLP_OBJNAME_MAX} "
                            f"characters, name at most {ksym_name_len - 1})",
                            module=module.name,
                            section=".symtab",
                            symbol=raw,
                            kernel_message=f"symbol {raw} has an incorrectly formatted name",
                        ),
                    )
                )
                continue
            if parsed.trailing:
                warnings.append(
                    Diagnostic(
                        f"characters '{parsed.trailing}' after the symbol position are ignored by the kernel",
                        severity="warning",
                        module=module.name,
                        symbol=raw,
                    )
                )
            symbols.append(KlpSymbol(i, raw, parsed))
        elif ndx == C.SHN_LIVEPATCH_RFC and "rfc" in fmts:
            symbols.append(KlpSymbol(i, raw, None, external=(int(info[i]) >> 4) == C.STB_LIVEPATCH_EXT))

    if errors:
        raise LivepatchFormatError(errors)
    fmt_out = fmts.pop() if fmts else None
    return LivepatchInfo(fmt_out, objects, symbols, module.is_livepatch, warnings)
