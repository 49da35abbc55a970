"""Regenerate the example livepatch module shipped in klpcore_s390x/examples/.

The example is tests/s390x/fixtures/mod_calls.o (compiled with s390x
kernel-module flags, ``-fPIC``, see that folder's build.py) turned into a
livepatch module by the project's own converter: its calls to ``ext_add`` and
``ext_log`` become ``.klp.rela.vmlinux`` relocations against
``.klp.sym.vmlinux.*`` symbols.  vmlinux sits near address 0 and the module at
Debian's module area (``0x3ff7fd00000``), beyond ``brasl``'s +-4 GiB, so the
calls go through the module PLT, whose GOT and PLT sit at the start of the
module text.  The symbol file is the fixture's kernel map plus the
``__ksymtab_<name>`` entries a real System.map has for each exported symbol,
so that exports are known and the example runs without a warning.

    python plugins/s390x/example-src/make_example.py
"""

from __future__ import annotations

from pathlib import Path

from klpcore.testing.examples import system_map_with_ksymtab, write_example

ROOT = Path(__file__).resolve().parents[3]
FIX = ROOT / "tests" / "s390x" / "fixtures"
OUT = ROOT / "plugins" / "s390x" / "klpcore_s390x" / "examples"


def main() -> None:
    lines = (FIX / "kernel.map").read_text().splitlines()
    system_map = system_map_with_ksymtab(lines, 0x0000000000E00000)
    write_example(OUT, (FIX / "mod_calls.o").read_bytes(), ["ext_add", "ext_log"], system_map)


if __name__ == "__main__":
    main()
