"""klpcore.testing.examples: the System.map the example makers ship."""

from __future__ import annotations

from pathlib import Path

from klpcore import load_symbols
from klpcore.testing.examples import system_map_with_ksymtab

KERNEL_MAP = [
    "ffffffff81000000 T _stext",
    "ffffffff81200000 T zeta",
    "ffffffff81100000 T alpha",
    "ffffffff82000000 D data_obj",
    "ffffffff82000010 d local_obj",
]


def test_every_exported_symbol_gets_a_ksymtab_entry_in_name_order() -> None:
    text = system_map_with_ksymtab(KERNEL_MAP, 0xFFFFFFFF82400000, not_exported=("_stext",))
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[-3:] == [
        "ffffffff82400000 r __ksymtab_alpha",
        "ffffffff8240000c r __ksymtab_data_obj",
        "ffffffff82400018 r __ksymtab_zeta",
    ]
    addresses = [int(line.split()[0], 16) for line in lines]
    assert addresses == sorted(addresses)
    assert sorted(lines[:5]) == sorted(KERNEL_MAP)


def test_klpcore_reads_the_exports(tmp_path: Path) -> None:
    path = tmp_path / "System.map"
    path.write_text(system_map_with_ksymtab(KERNEL_MAP, 0xFFFFFFFF82400000, not_exported=("_stext",)))
    syms = load_symbols(str(path))
    assert syms.has_export_info
    assert syms.find_exported("alpha") is not None
    assert syms.find_exported("data_obj") is not None
    assert syms.find_exported("_stext") is None  # left out on request
    assert syms.find_exported("local_obj") is None  # a local symbol is never exported
