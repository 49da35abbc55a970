"""Test helper: the livepatch writer by name, for modules ``klpcore convert`` will not make.

The arch plugins' livepatch fixtures and examples are made by ``klpcore
convert``'s planner and writer (:func:`klpcore.convert.named.convert_named`:
the symbols named, the plugin's rules applied).  This helper is the writer
alone, :func:`klpcore.convert.elfedit.rewrite`, with the symbols chosen by
name and no plugin rules; it stays for what the planner refuses or cannot
express: modules the loader must refuse (a late write the kernel cannot do,
a relocation type that must stay ordinary), a chosen ``style`` or the 2015
RFC's ``external`` flag, several module objects at once, and the core tests,
which run with no architecture plugin installed.
"""

from __future__ import annotations

from collections.abc import Mapping

from klpcore import constants as C
from klpcore.convert.elfedit import ElfEditError, Format, KlpSym, Style, rewrite
from klpcore.elf import ElfModule
from klpcore.errors import ElfFormatError

__all__ = ["Format", "KlpSym", "KlpifyError", "Style", "klpify"]

KlpifyError = ElfEditError


def klpify(
    data: bytes,
    symbols: Mapping[str, KlpSym],
    *,
    fmt: Format = "final",
    style: Style = "kpatch",
    livepatch_modinfo: bool = True,
) -> bytes:
    """Convert an ELF64 ``ET_REL`` object into a livepatch module image.

    ``symbols`` maps the name of a symbol in the input's ``.symtab`` (unique
    among its non-section, non-file symbols) to the object it belongs to.
    Raises :class:`KlpifyError` on invalid input or requests.
    """
    for name, ksym in symbols.items():
        if not isinstance(ksym, KlpSym):
            raise KlpifyError(f"symbol {name!r}: expected a KlpSym, got {type(ksym).__name__}")
    try:
        module = ElfModule(data)
    except ElfFormatError as exc:
        raise KlpifyError(str(exc.diagnostics[0])) from exc
    by_name: dict[str, list[int]] = {}
    infos = module.symbols["st_info"].tolist()
    for index, name in enumerate(module.symbol_names):
        if index and infos[index] & 0xF not in (C.STT_SECTION, C.STT_FILE):
            by_name.setdefault(name, []).append(index)
    chosen: dict[int, KlpSym] = {}
    for name, ksym in symbols.items():
        indexes = by_name.get(name, []) if name else []
        if not indexes:
            raise KlpifyError(f"unknown symbol {name!r}: not in .symtab")
        if len(indexes) > 1:
            raise KlpifyError(f"ambiguous symbol {name!r}: .symtab entries {', '.join(map(str, indexes))}")
        chosen[indexes[0]] = ksym
    return rewrite(module, chosen, fmt=fmt, style=style, livepatch_modinfo=livepatch_modinfo)
