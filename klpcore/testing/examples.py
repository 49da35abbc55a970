"""What the scripts that regenerate a plugin's example livepatch module share.

Each ``plugins/<arch>/example-src/make_example.py`` turns one of its
architecture's test fixtures into ``klpdemo.ko`` with ``klpcore convert``'s
planner and writer (:func:`klpcore.convert.named.convert_named`: the patched
symbols become ``vmlinux`` livepatch symbols under the plugin's rules) and
ships a ``System.map`` for it.  The map is the fixture's kernel symbols plus the
``__ksymtab_<name>`` entries a real System.map has for every exported symbol,
so that klpcore knows the exports and the example runs without a warning.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from ..convert.elfedit import KlpSym
from ..convert.named import convert_named

#: Distance between two ``__ksymtab`` entries: ``struct kernel_symbol`` with
#: 32-bit place-relative references (three ``int``).
KSYMTAB_ENTRY_SIZE = 12


def system_map_with_ksymtab(lines: Sequence[str], ksymtab: int, *, not_exported: Collection[str] = ()) -> str:
    """System.map text: ``lines`` (``"<hex address> <type> <name>"``) plus one
    ``__ksymtab_<name>`` entry, from address ``ksymtab`` on in name order, for
    every ``T``/``D`` symbol not in ``not_exported``; sorted by address."""
    fields = [line.split() for line in lines]
    exported = sorted(f[2] for f in fields if f[1] in ("T", "D") and f[2] not in not_exported)
    entries = [f"{ksymtab + KSYMTAB_ENTRY_SIZE * i:016x} r __ksymtab_{name}" for i, name in enumerate(exported)]
    merged = sorted([*lines, *entries], key=lambda line: int(line.split()[0], 16))
    return "\n".join(merged) + "\n"


def write_example(out: Path, module: bytes, patched: Sequence[str], system_map: str) -> None:
    """Write ``out/klpdemo.ko`` (``module`` with the ``patched`` symbols turned
    into ``vmlinux`` livepatch symbols) and ``out/System.map``."""
    out.mkdir(parents=True, exist_ok=True)
    result = convert_named(module, {name: KlpSym("vmlinux") for name in patched})
    (out / "klpdemo.ko").write_bytes(result.data)
    (out / "System.map").write_text(system_map)
    print(f"wrote {out / 'klpdemo.ko'} (livepatch symbols: {', '.join(patched)})")
