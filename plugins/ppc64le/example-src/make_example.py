"""Regenerate the example livepatch module shipped in klpcore_ppc64le/examples/.

The example is tests/ppc64le/fixtures/mod_calls.o (compiled with ppc64le
kernel-module flags, see that folder's build.py) turned into a livepatch module
by the project's own converter: its calls to ``ext_add`` and ``ext_mul`` become
``.klp.rela.vmlinux`` relocations against ``.klp.sym.vmlinux.*`` symbols (REL24
calls through ``.stubs``, with the r2 restore).  The symbol file is the
fixture's ``kernel.map`` plus ``_stext``, ``ftrace_caller``,
``ftrace_regs_caller`` and ``.TOC.`` (for module_finalize's stubs) and the ``__ksymtab_<name>`` entries a
real System.map has for each exported symbol.

    python plugins/ppc64le/example-src/make_example.py
"""

from __future__ import annotations

from pathlib import Path

from klpcore.testing.examples import system_map_with_ksymtab, write_example

ROOT = Path(__file__).resolve().parents[3]
FIX = ROOT / "tests" / "ppc64le" / "fixtures"
OUT = ROOT / "plugins" / "ppc64le" / "klpcore_ppc64le" / "examples"
PATCHED = ("ext_add", "ext_mul")


def main() -> None:
    # as in Debian's 6.1.0-50 ppc64el System.map: what module_finalize's ftrace stubs need
    kernel = [
        "c000000000000000 T _stext",
        "c00000000006e0e8 T ftrace_regs_caller",
        "c00000000006e270 T ftrace_caller",
        "c000000001148100 d .TOC.",
    ]
    lines = (FIX / "kernel.map").read_text().splitlines() + kernel
    not_exported = ("_stext", "ftrace_caller", "ftrace_regs_caller")
    system_map = system_map_with_ksymtab(lines, 0xC000000001A00000, not_exported=not_exported)
    write_example(OUT, (FIX / "mod_calls.o").read_bytes(), PATCHED, system_map)


if __name__ == "__main__":
    main()
