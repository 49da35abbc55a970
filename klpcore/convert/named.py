"""Convert by name: ``klpcore convert``'s planner and writer, the target kernel
described by the request instead of a symbol file.

Fixture scripts and tests need livepatch modules whose livepatch symbols are
exactly the ones they name.  :func:`convert_named` makes them the way
``klpcore convert`` does: it builds the :class:`~klpcore.convert.plan.TargetSymbols`
of a kernel in which each named symbol is defined, unexported, in the object
named for it (as many same-named copies as its position needs) and every
other symbol the module leaves undefined is exported by vmlinux, then runs
:func:`~klpcore.convert.plan.convert`.  The architecture plugin's rules apply
as they do for the command: symbols and relocation types that stay ordinary,
the original entry as ``R_*_NONE`` or removed, late-write hazards (refused
with :class:`~klpcore.convert.plan.ConvertError`), ``livepatch=Y``.
"""

from __future__ import annotations

from collections.abc import Mapping

from .. import constants as C
from ..elf import ElfModule
from ..errors import InputError
from ..kernel import KernelTarget
from ..symbols import ObjectSymbols
from .elfedit import Format, KlpSym
from .plan import ExportOwner, Result, TargetSymbols, convert

__all__ = ["convert_named", "named_target"]

#: where the made-up symbols of each object start (the addresses only order
#: same-named copies: the output holds positions, never addresses)
_BASE = 0x1000


def named_target(elf: ElfModule, symbols: Mapping[str, KlpSym]) -> TargetSymbols:
    """A target in which ``symbols`` (name -> object and position) are defined,
    unexported, and every other undefined symbol of ``elf`` is exported by vmlinux."""
    tables: dict[str, ObjectSymbols] = {C.VMLINUX: ObjectSymbols(C.VMLINUX)}
    for name, ksym in symbols.items():
        table = tables.setdefault(ksym.objname, ObjectSymbols(ksym.objname))
        for _ in range(max(ksym.sympos, 1)):
            table.add(name, _BASE * (len(table) + 1), "t", "request")
    if not len(tables[C.VMLINUX]):
        tables[C.VMLINUX].add("_stext", _BASE, "T", "request")  # convert needs a vmlinux table
    shndx = elf.symbols["st_shndx"].tolist()
    undefined = {n for i, n in enumerate(elf.symbol_names) if i and n and shndx[i] == C.SHN_UNDEF}
    exported = undefined - set(symbols)

    return TargetSymbols(
        vmlinux=tables[C.VMLINUX],
        module=lambda name: tables.get(name) if name != C.VMLINUX else None,
        export=lambda name: ExportOwner(C.VMLINUX) if name in exported else None,
        has_exports=True,
        description="the symbols named",
        module_names=lambda: [n for n in tables if n != C.VMLINUX],
    )


def convert_named(
    module: bytes | ElfModule,
    symbols: Mapping[str, KlpSym],
    kernel: KernelTarget | None = None,
    *,
    fmt: Format = "final",
    mark: bool = True,
) -> Result:
    """Convert ``module`` so that exactly ``symbols`` become livepatch symbols
    of the objects (and positions) given, with its architecture plugin's rules
    for ``kernel`` (default: the newest release klpcore knows).  At most one
    object other than vmlinux, as with ``klpcore convert --object``."""
    elf = module if isinstance(module, ElfModule) else ElfModule(module)
    objects = sorted({k.objname for k in symbols.values()} - {C.VMLINUX})
    if len(objects) > 1:
        raise InputError(f"convert_named: one module object at a time ({', '.join(objects)} given)")
    for name, ksym in symbols.items():
        if ksym.external or ksym.section_object is not None or ksym.name is not None:
            raise InputError(f"convert_named: symbol {name!r}: only an object and a position can be asked for")
    result = convert(
        elf,
        named_target(elf, symbols),
        kernel or KernelTarget(),
        objname=objects[0] if objects else C.VMLINUX,
        positions={n: k.sympos for n, k in symbols.items() if k.sympos},
        mark=mark,
        fmt=fmt,
    )
    done = {c.name for c in result.converted}
    missing = [n for n in symbols if n not in done]
    if missing:
        reasons = ", ".join(f"{n} ({result.kept.get(n, 'the module does not refer to it')})" for n in missing)
        raise InputError(f"convert_named: module {elf.name}: not converted: {reasons}")
    return result
