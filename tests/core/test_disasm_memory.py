"""``disasm`` memory stays within a few times the module's size (issue 9 item 7).

The module is generated: 2 MiB of 4-byte instructions with a relocation every
4 KiB.  ``klpcore disasm`` runs in a subprocess whose address space is limited
(``RLIMIT_AS``) to what Python, numpy, capstone and klpcore occupy after import
plus a budget of a few times the module's size; a MemoryError there is an
internal error (exit 3) and fails the test.  Capstone decoding a whole section
at once (about 240 bytes per instruction) failed here even with 128 MiB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import constants as C

TESTS = Path(__file__).resolve().parents[1]
TEXT_SIZE = 2 << 20
#: address space allowed over the imported baseline: 12 times the module's code (apply alone needs about 8)
BUDGET = 12 * TEXT_SIZE

RUNNER = """
import re, resource, sys
import capstone, numpy
import klpcore.disasm, klpcore.loader, klpcore.output
from klpcore.cli import main
with open("/proc/self/status") as fh:
    vm = int(re.search(r"VmSize:\\s+(\\d+) kB", fh.read()).group(1)) * 1024
limit = vm + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def bounded(budget: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        KLPCORE_PLUGINS="toyarch",
        KLPCORE_LOAD_PLUGINS="",
        OPENBLAS_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(budget), *args], capture_output=True, text=True, env=env, timeout=600
    )


def big_module() -> bytes:
    nop4 = bytes.fromhex("0f1f4000")  # nopl 0x0(%rax)
    return Obj(
        sections=[Sec(".text", flags=C.SHF_ALLOC | C.SHF_EXECINSTR, data=nop4 * (TEXT_SIZE // 4), align=16)],
        symbols=[Sym("fn", ".text", 0, type=C.STT_FUNC, size=TEXT_SIZE), Sym("printk")],
        relas=[Rela(".text", off, T.ABS64 if off % 8192 else T.PREL32, "printk") for off in range(0, TEXT_SIZE, 4096)],
        modinfo={"name": "big"},
    ).build()


def test_disasm_of_a_big_module_in_bounded_memory(tmp_path: Path) -> None:
    mod = tmp_path / "big.ko"
    mod.write_bytes(big_module())
    syms = tmp_path / "System.map"
    syms.write_text("ffffffff81000000 T _stext\nffffffff81000010 T printk\nffffffff82000000 r __ksymtab_printk\n")
    p = bounded(BUDGET, "disasm", str(mod), "-s", str(syms), "--json")
    assert p.returncode == 0, p.stderr
    assert '"address"' in p.stdout and p.stdout.count('"type":') == TEXT_SIZE // 4096
    # the bound is a real one: the same run with a budget of a quarter of the module fails (exit 3)
    small = bounded(TEXT_SIZE // 4, "disasm", str(mod), "-s", str(syms), "--json")
    assert small.returncode == 3 and "internal error" in small.stderr, small.stderr
