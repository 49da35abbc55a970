"""The real kernel decides: a livepatch built with Debian's 6.1 kbuild (src in
tests/kernel_oracle/fixtures/src/koc_convert.c), converted by ``klpcore convert``
against Debian's 6.1.0-50 amd64 symbols, loaded in that kernel under qemu
(tools/kernel_oracle): insmod 0, the patch enabled, /proc/uptime read from
user space shows the replacement (fixtures/debian-6.1-amd64/recording.json;
fixtures/oracle.sh regenerates it).  Here: convert today writes the very bytes
the kernel loaded, and klpcore agrees with the kernel on both modules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from klpcore.convert.plan import convert, from_kernel_symbols
from klpcore.elf import ElfModule
from klpcore.errors import ResolutionError
from klpcore.kernel import KernelTarget
from klpcore.loader import Loader
from klpcore.symbols import load_many

pytest.importorskip("klpcore_x86_64")
FIX = Path(__file__).resolve().parent / "fixtures" / "debian-6.1-amd64"
REC = json.loads((FIX / "recording.json").read_text())
KERNEL = KernelTarget(version=(6, 1))


def converted() -> bytes:
    symbols = from_kernel_symbols(load_many([str(FIX / "systemmap")]))
    return convert(ElfModule.from_file(FIX / "koc_convert.ko"), symbols, KERNEL).data


def test_the_kernel_loaded_enabled_and_ran_the_converted_patch() -> None:
    assert "insmod koc_convert.klp.ko 0" in REC["log"]
    assert REC["livepatch"] == ["koc_convert/enabled 1", "koc_convert/vmlinux/patched 1"]
    assert "uptime_after_insmod KLPCORE-CONVERTED" in REC["log"]  # user space read the new /proc/uptime
    assert "livepatch: enabling patch 'koc_convert'" in REC["dmesg"]


def test_convert_writes_the_bytes_the_kernel_loaded() -> None:
    assert hashlib.sha256(converted()).hexdigest() == REC["converted_sha256"]


def test_klpcore_agrees_with_the_kernel() -> None:
    symbols = load_many([str(FIX / "systemmap")])
    loaded = Loader(kernel=KERNEL).load(converted(), symbols, 0xFFFFFFFFC0000000)
    klp = {r.name: r.value for r in loaded.resolutions if r.how == "livepatch"}
    assert klp == {
        ".klp.sym.vmlinux.nr_threads,0": 0xFFFFFFFF83F7FE08,
        ".klp.sym.vmlinux.total_forks,0": 0xFFFFFFFF83F7FE10,
    }
    # the module as compiled: the kernel said "Unknown symbol" for both, and so does klpcore
    with pytest.raises(ResolutionError) as exc:
        Loader(kernel=KERNEL).load(ElfModule.from_file(FIX / "koc_convert.ko"), symbols, 0xFFFFFFFFC0000000)
    said = {d.kernel_message for d in exc.value.diagnostics}
    assert said == {line for line in REC["plain"]["dmesg"] if "Unknown symbol" in line}
    assert "insmod koc_convert.ko 2" in REC["plain"]["log"]
