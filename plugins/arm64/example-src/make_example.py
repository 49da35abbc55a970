"""Regenerate the example livepatch module shipped in klpcore_arm64/examples/.

The example is tests/arm64/fixtures/plt_calls.o (compiled with arm64
kernel-module flags, see that folder's build.py) turned into a livepatch
module by the project's own converter: its calls to ``far_a`` and ``far_b``
become ``.klp.rela.vmlinux`` relocations against ``.klp.sym.vmlinux.*``
symbols, more than 128 MiB from the module, so they go through module PLT
entries.  The symbol file is the fixture's kernel map plus the
``__ksymtab_<name>`` entries a real System.map has for each exported symbol
(12-byte ``struct kernel_symbol`` entries in ``__ksymtab``), so that exports
are known and the example runs without a warning.  Livepatch exists on arm64
from 6.17 (klpcore's default kernel is newer).

    python plugins/arm64/example-src/make_example.py
"""

from __future__ import annotations

from pathlib import Path

from klpcore.testing.examples import system_map_with_ksymtab, write_example

ROOT = Path(__file__).resolve().parents[3]
FIX = ROOT / "tests" / "arm64" / "fixtures"
OUT = ROOT / "plugins" / "arm64" / "klpcore_arm64" / "examples"


def main() -> None:
    lines = (FIX / "kernel.map").read_text().splitlines()
    system_map = system_map_with_ksymtab(lines, 0xFFFF800009800000)
    write_example(OUT, (FIX / "plt_calls.o").read_bytes(), ["far_a", "far_b"], system_map)


if __name__ == "__main__":
    main()
