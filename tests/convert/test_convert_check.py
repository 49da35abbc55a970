"""``klpcore check`` passes the converted module against the target, on each
architecture, and refuses the module as compiled as the kernel would.

Fixture: tests/convert/fixtures/lp_check.<arch>.o (src/lp_check.c, built by
fixtures/build.py): a .ko-shaped livepatch (struct module in
.gnu.linkonce.this_module, .modinfo with livepatch=Y, a samples/livepatch-style
klp_patch replacing vmlinux's hidden_fn) whose replacement uses unexported
vmlinux symbols.  The target is a flat directory: a System.map (the
arch's kallsyms fixture plus klp_enable_patch, exported) and a config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from elfbuild import intree_module

from klpcore.check.target import this_module_size
from klpcore.convert.plan import convert, from_kernel_symbols
from klpcore.elf import ElfModule
from klpcore.kernel import KernelTarget
from klpcore.symbols import load_many

FIX = Path(__file__).resolve().parent / "fixtures"
CONFIG = {"x86_64": "X86_64", "arm64": "ARM64", "ppc64le": "PPC64", "s390x": "S390"}

RELEASE = "7.2.0"  # lp_check's vermagic is "7.2.0 SMP mod_unload "


def target(arch: str, tmp: Path) -> Path:
    """A target with everything check reads for this module: System.map and config
    under boot/ (their names give the release, release + config the vermagic),
    Module.symvers (exp_fn, klp_enable_patch) and the ftrace locations
    (available_filter_functions_addrs: every function's entry)."""
    rows = [ln.split() for ln in (FIX / f"{arch}.kallsyms").read_text().splitlines() if "[" not in ln]
    text = min(int(r[0], 16) for r in rows)
    ksymtab = int(next(r[0] for r in rows if r[2] == "__ksymtab_exp_fn"), 16)
    rows += [
        [f"{text + 0x10000:016x}", "T", "klp_enable_patch"],
        [f"{ksymtab + 12:016x}", "R", "__ksymtab_klp_enable_patch"],
    ]
    rows.sort(key=lambda r: int(r[0], 16))
    d = tmp / f"target-{arch}"
    (d / "boot").mkdir(parents=True)
    (d / "boot" / f"System.map-{RELEASE}").write_text("".join(" ".join(r) + "\n" for r in rows))
    (d / "boot" / f"config-{RELEASE}").write_text(
        f"CONFIG_{CONFIG[arch]}=y\nCONFIG_LIVEPATCH=y\nCONFIG_MODULES=y\nCONFIG_SMP=y\nCONFIG_MODULE_UNLOAD=y\n"
    )
    (d / "Module.symvers").write_text(
        "0x00000000\texp_fn\tvmlinux\tEXPORT_SYMBOL\t\n0x00000000\tklp_enable_patch\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
    )
    (d / "available_filter_functions_addrs").write_text("".join(f"{r[0]} {r[2]}\n" for r in rows if r[1] in "Tt"))
    return d


def check(module: Path, tgt: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    from klpcore.cli import main

    main(["check", str(module), "--target", str(tgt), "--json", "-"])
    doc = json.loads(capsys.readouterr().out)
    return doc["targets"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("arch", ["x86_64", "arm64", "ppc64le", "s390x"])
def test_check_passes_the_converted_module(arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip(f"klpcore_{arch}")
    tgt = target(arch, tmp_path)
    smap_path = tgt / "boot" / f"System.map-{RELEASE}"
    smap = {ln.split()[2]: int(ln.split()[0], 16) for ln in smap_path.read_text().splitlines()}
    compiled = FIX / f"lp_check.{arch}.o"
    r = convert(
        ElfModule.from_file(compiled),
        from_kernel_symbols(load_many([str(smap_path)])),
        KernelTarget(),
        positions={"dup_static": 2},
    )
    assert sorted(c.name for c in r.converted) == ["dup_static", "hidden_counter", "hidden_fn"]
    out = tmp_path / "lp_check.ko"
    out.write_bytes(r.data)
    # the synthetic target's sizeof(struct module): one in-tree module built for it (this module's size)
    kernel_dir = tgt / "lib" / "modules" / RELEASE / "kernel"
    kernel_dir.mkdir(parents=True)
    size = this_module_size(r.data)
    assert size is not None
    (kernel_dir / "sizeref.ko").write_bytes(intree_module("sizeref", size))

    t = check(out, tgt, capsys)
    assert t["verdict"] == "loads", t["findings"]
    assert t["release"] == RELEASE
    assert [f for f in t["findings"] if f["severity"] in ("not-checked", "error")] == []  # type: ignore[attr-defined]
    assert t["patched_functions"] == [
        {
            "object": "vmlinux",
            "old_name": "hidden_fn",
            "sympos": 0,
            "replacement": "lp_new_fn",
            "status": "resolved",
            "address": hex(smap["hidden_fn"]),
            "ftrace": hex(smap["hidden_fn"]),
        }
    ]
    messages = [f["message"] for f in t["findings"]]  # type: ignore[attr-defined]
    assert any(m.endswith("relocations applied at load") for m in messages), messages
    assert "klp_enable_patch enables the patch" in messages

    t = check(compiled, tgt, capsys)  # as compiled: the kernel says "Unknown symbol" for each unexported one
    assert t["verdict"] == "refused"
    unknown = {f["symbol"] for f in t["findings"] if f.get("outcome") == "refused"}  # type: ignore[attr-defined]
    assert unknown >= {"hidden_fn", "hidden_counter", "dup_static"}, t["findings"]
