"""Regenerate the example livepatch module shipped in klpcore_x86_64/examples/.

The example is tests/x86_64/fixtures/mod_basic.o (compiled with kernel-module
flags, see that folder's build.py) turned into a livepatch module by the
project's own converter: its calls to ``mod_basic_helper`` and
``mod_basic_log`` become ``.klp.rela.vmlinux`` relocations against
``.klp.sym.vmlinux.*`` symbols.  The symbol file is the fixture's map plus the
``__ksymtab_<name>`` entries a real System.map has for each exported symbol
(12-byte ``struct kernel_symbol`` entries in ``__ksymtab``), so that exports
are known and the example runs without a warning.

    python plugins/x86_64/example-src/make_example.py
"""

from __future__ import annotations

from pathlib import Path

from klpcore import ElfModule
from klpcore.testing.examples import system_map_with_ksymtab, write_example

ROOT = Path(__file__).resolve().parents[3]
FIX = ROOT / "tests" / "x86_64" / "fixtures"
OUT = ROOT / "plugins" / "x86_64" / "klpcore_x86_64" / "examples"


def main() -> None:
    data = (FIX / "mod_basic.o").read_bytes()
    m = ElfModule(data)
    undefined = [
        n
        for i, n in enumerate(m.symbol_names)
        if i and n and int(m.symbols["st_shndx"][i]) == 0 and not n.startswith("__")
    ]
    lines = (FIX / "mod_basic.map").read_text().splitlines()
    system_map = system_map_with_ksymtab(lines, 0xFFFFFFFF82400000, not_exported=("_stext",))
    write_example(OUT, data, undefined[:2], system_map)


if __name__ == "__main__":
    main()
