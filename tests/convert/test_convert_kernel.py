"""The real kernel decides: a livepatch (tests/kernel_oracle/fixtures/src/koc_convert.c:
it replaces uptime_proc_show and reads the unexported nr_threads and
total_forks) built with Debian's kbuild for 6.1.0-50 and 7.2.13+deb14 amd64,
converted by ``klpcore convert`` against that kernel's symbols, then loaded in
that kernel under qemu (tools/kernel_oracle): insmod 0, the patch enabled, and
/proc/uptime read from user space shows the replacement; the module as
compiled fails with "Unknown symbol" (fixtures/debian-*-amd64/recording.json;
fixtures/oracle.sh regenerates them).  Here: convert today writes the very
bytes each kernel loaded, and klpcore agrees with the kernel on both modules."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from klpcore.convert.plan import convert, from_kernel_symbols
from klpcore.elf import ElfModule
from klpcore.errors import ResolutionError
from klpcore.kernel import KernelTarget
from klpcore.loader import Loader
from klpcore.symbols import load_many

pytest.importorskip("klpcore_x86_64")
FIX = Path(__file__).resolve().parent / "fixtures"
RELEASES = {"6.1": (6, 1), "7.2": (7, 2)}
FULL_RELEASES = {"6.1": "6.1.0-50-amd64", "7.2": "7.2.13+deb14-amd64"}
BASE = 0xFFFFFFFFC0000000


def fixture(release: str) -> tuple[Path, dict[str, object]]:
    d = FIX / f"debian-{release}-amd64"
    return d, json.loads((d / "recording.json").read_text())


def converted(release: str) -> bytes:
    d, _ = fixture(release)
    symbols = from_kernel_symbols(load_many([str(d / "systemmap")]))
    return convert(ElfModule.from_file(d / "koc_convert.ko"), symbols, KernelTarget(RELEASES[release])).data


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_the_kernel_loaded_enabled_and_ran_the_converted_patch(release: str) -> None:
    _, rec = fixture(release)
    assert "insmod koc_convert.klp.ko 0" in rec["log"]  # type: ignore[operator]
    assert rec["livepatch"] == ["koc_convert/enabled 1", "koc_convert/vmlinux/patched 1"]
    assert "uptime_after_insmod KLPCORE-CONVERTED" in rec["log"]  # type: ignore[operator]  # user space read it
    assert "livepatch: enabling patch 'koc_convert'" in rec["dmesg"]  # type: ignore[operator]
    assert not [ln for ln in rec["dmesg"] if "WARNING" in ln or "cut here" in ln]  # type: ignore[attr-defined]


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_convert_writes_the_bytes_the_kernel_loaded(release: str) -> None:
    _, rec = fixture(release)
    assert hashlib.sha256(converted(release)).hexdigest() == rec["converted_sha256"]


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_klpcore_agrees_with_the_kernel(release: str) -> None:
    d, rec = fixture(release)
    kernel = KernelTarget(RELEASES[release])
    smap = {ln.split()[2]: int(ln.split()[0], 16) for ln in (d / "systemmap").read_text().splitlines()}
    symbols = load_many([str(d / "systemmap")])
    loaded = Loader(kernel=kernel).load(converted(release), symbols, BASE)
    klp = {r.name: r.value for r in loaded.resolutions if r.how == "livepatch"}
    assert klp == {
        ".klp.sym.vmlinux.nr_threads,0": smap["nr_threads"],
        ".klp.sym.vmlinux.total_forks,0": smap["total_forks"],
    }
    # the module as compiled: the kernel said "Unknown symbol" for both, and so does klpcore
    with pytest.raises(ResolutionError) as exc:
        Loader(kernel=kernel).load(ElfModule.from_file(d / "koc_convert.ko"), symbols, BASE)
    said = {diag.kernel_message for diag in exc.value.diagnostics}
    plain = rec["plain"]
    assert said == {line for line in plain["dmesg"] if "Unknown symbol" in line}  # type: ignore[index]
    assert "insmod koc_convert.ko 2" in plain["log"]  # type: ignore[index]


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_check_agrees(release: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``klpcore check`` (the symbols a target gives, nothing else): the converted module loads and its
    patched function resolves; the module as compiled is refused, as the kernel refused it."""
    from klpcore.cli import main

    d, _ = fixture(release)
    # the target as Debian ships it, sliced to what check reads for this module (fixtures/target_slices.py):
    # System.map and config named for the release, Module.symvers, the ftrace location of uptime_proc_show
    rel = FULL_RELEASES[release]
    target = tmp_path / "target"
    (target / "boot").mkdir(parents=True)
    (target / "boot" / f"System.map-{rel}").write_text((d / "systemmap").read_text())
    (target / "boot" / f"config-{rel}").write_text((d / "config").read_text())
    (target / "Module.symvers").write_text((d / "Module.symvers").read_text())
    (target / "available_filter_functions_addrs").write_text((d / "ftrace_addrs").read_text())
    # and one in-tree module of the release, which gives its sizeof(struct module) (6.4+: the
    # .gnu.linkonce.this_module size check); Debian's own slhc, from tests/check's slice of 7.2.13
    current = Path(__file__).resolve().parents[1] / "check/fixtures/kernel/current"
    intree = current / f"amd64-{rel.removesuffix('-amd64')}"
    if (intree / "target" / "slhc.ko.xz").is_file():
        kernel_dir = target / "lib" / "modules" / rel / "kernel"
        kernel_dir.mkdir(parents=True)
        shutil.copy(intree / "target" / "slhc.ko.xz", kernel_dir / "slhc.ko.xz")
    out = tmp_path / "klp.ko"
    out.write_bytes(converted(release))
    verdicts = {}
    for mod in (out, d / "koc_convert.ko"):
        main(["check", str(mod), "--target", str(target), "--json", "-"])
        doc = json.loads(capsys.readouterr().out)
        verdicts[mod.name] = doc["targets"][0]["verdict"]
        if mod == out:
            (pf,) = doc["targets"][0]["patched_functions"]
            assert pf["old_name"] == "uptime_proc_show"
            assert pf["ftrace"] == "0x" + (d / "ftrace_addrs").read_text().split()[0].lstrip("0")
            assert doc["targets"][0]["release"] == rel
            unchecked = [f for f in doc["targets"][0]["findings"] if f["severity"] in ("not-checked", "error")]
            assert unchecked == [], unchecked  # everything check reads was there: the verdict is not a guess
    assert verdicts == {"klp.ko": "loads", "koc_convert.ko": "refused"}
