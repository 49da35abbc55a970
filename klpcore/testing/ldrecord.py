"""Compare a loaded module with GNU ld's bytes, as ``tools/ld_oracle.py`` records them.

A recording maps each section name to ``{"address": "0x...", "bytes": HEX}``
(ld's link at the addresses klpcore chose) or ``{"not_loaded": true}`` for a
section the kernel does not load.  Plugin tests use :func:`assert_equals_ld`
so every architecture compares the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..loader import LoadedModule


def assert_equals_ld(
    lm: LoadedModule,
    sections: Mapping[str, Mapping[str, Any]],
    *,
    excluded: Mapping[str, Sequence[Sequence[int]]] | None = None,
    skip: Collection[str] = (),
    label: str = "",
) -> int:
    """Assert that every recorded section is at ld's address with ld's bytes.

    :param excluded: byte ranges ``[start, end)`` per section that only the
        kernel writes (calls through ppc64 stubs, the s390 GOT/PLT); they are
        checked elsewhere and blanked on both sides here.
    :param skip: sections only the kernel fills (arm64 ``.plt``), not compared.
    :return: how many sections were compared.
    """
    compared = 0
    for name, rec in sections.items():
        if name in skip:
            continue
        sec = lm.module.section_by_name(name)
        assert sec is not None, f"{label}{name}: not in the module"
        if rec.get("not_loaded"):
            assert lm.section_address(sec.index) is None, f"{label}{name}: the kernel does not load it"
            continue
        assert lm.section_address(sec.index) == int(rec["address"], 16), f"{label}{name}: address differs from ld"
        mine = bytearray(lm.section_bytes(sec.index))
        ld = bytearray(bytes.fromhex(rec["bytes"]))
        for a, b in (excluded or {}).get(name, []):
            mine[a:b] = ld[a:b] = bytes(b - a)
        assert mine.hex() == ld.hex(), f"{label}{name} differs from ld"
        compared += 1
    return compared
