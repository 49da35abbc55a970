"""check with only the packages a distribution ships by default: the kernel image stands in for the
-dbg System.map (klpcore.kimage), and what it supplies is said."""

from __future__ import annotations

import gzip
from pathlib import Path

import kimagebuild as kb
import pytest
from kbuild import EXPORTS, RELEASE, Mod, make_target

from klpcore.check import Target, check_pair

BASE = 0xFFFFFFFF81000000


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Images decoded here never touch the user's cache (a test that wants it sets its own)."""
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")


def image_target(root: Path) -> list[kb.Sym]:
    """A target with the placeholder System.map, no vmlinux, and boot/vmlinuz whose kallsyms and
    export table have the kernel's exports of tests/check/kbuild.py."""
    make_target(root, system_map=False, vmlinux_elf=False)
    syms = kb.sample_symbols(BASE)
    syms += [kb.Sym(BASE + 0x90000 + 0x100 * i, "T", name) for i, name in enumerate(EXPORTS)]
    syms.sort(key=lambda s: s.addr)
    exports = [
        kb.Export(name, name, gpl=kind.endswith("_GPL"), namespace=ns) for name, (_, kind, ns) in EXPORTS.items()
    ]
    funcs = kb.first_funcs(syms)
    elf = kb.elf_kernel(syms, "7.0", BASE, exports=exports, mcount=funcs)
    (root / "boot" / f"vmlinuz-{RELEASE}").write_bytes(gzip.compress(elf, 1))
    return syms


def test_the_image_stands_in_for_the_placeholder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    syms = image_target(tmp_path / "t")
    t = Target(tmp_path / "t")
    ks = t.symbols
    assert ks is not None and len(ks.objects["vmlinux"]) >= len(syms) + 4  # + __start/__stop___ksymtab[_gpl] ...
    assert set(ks.exported["vmlinux"]) == set(EXPORTS)
    assert any("kernel image" in n and f"vmlinuz-{RELEASE}" in n for n in t.notes)
    assert t.ftrace_sites is not None and t.ftrace_sites.tolist() == kb.first_funcs(syms)
    assert "symbols" not in t.missing


def test_exports_from_the_image_decide_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    image_target(tmp_path / "t")
    paths = []
    for mod in (Mod("user_ok", imports=["printk"]), Mod("user_bad", imports=["__pfx_do_thing_3_x3"])):
        p = tmp_path / f"{mod.name}.ko"
        p.write_bytes(mod.build())
        paths.append(str(p))
    ok = check_pair(paths[0], Target(tmp_path / "t"))
    bad = check_pair(paths[1], Target(tmp_path / "t"))
    assert ok.verdict != "refused"
    assert bad.verdict == "refused"  # a symbol, not an export: "Unknown symbol"
    assert any("__pfx_do_thing_3_x3" in f.message for f in bad.findings)


def test_a_module_without_an_ftrace_table_has_no_ftrace_locations(tmp_path: Path) -> None:
    """On a kernel with dynamic ftrace, a patched module built without __mcount_loc gives the
    livepatch core nothing to find: decided, not "not checked"."""
    from test_check import errors, kmsgs, lp, run

    tree = {"drivers/target-mod.ko": Mod("target_mod", functions=["tfunc"], no_mcount=True, modinfo={"intree": "Y"})}
    verdict, findings = run(tmp_path, lp({"target_mod": [("tfunc", 0)]}), tree=tree)
    assert verdict == "patch-fails"
    assert kmsgs(errors(findings)) == ["livepatch: failed to find location for function 'tfunc'"]
    assert not any(f.severity == "not-checked" and f.check == "ftrace" for f in findings)


def test_without_the_config_a_module_without_ftrace_table_is_not_checked(tmp_path: Path) -> None:
    from test_check import lp, run

    tree = {"drivers/target-mod.ko": Mod("target_mod", functions=["tfunc"], no_mcount=True, modinfo={"intree": "Y"})}
    verdict, findings = run(
        tmp_path, lp({"target_mod": [("tfunc", 0)]}), tree=tree, config={"CONFIG_DYNAMIC_FTRACE": None}
    )
    assert any(f.severity == "not-checked" and f.check == "ftrace" and "tfunc" in f.message for f in findings)


def test_a_module_exporting_what_the_image_exports_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Module.symvers the image's export table decides: "exports duplicate symbol ... (owned by kernel)"."""
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    root = tmp_path / "t"
    image_target(root)
    for p in root.rglob("Module.symvers"):
        p.unlink()
    mod = tmp_path / "dup.ko"
    mod.write_bytes(Mod("dup", functions=["printk"], exports=["printk"], imports=[]).build())
    r = check_pair(str(mod), Target(root))
    assert r.verdict == "refused"
    assert any(f.kernel_message == "dup: exports duplicate symbol printk (owned by kernel)" for f in r.findings)


def test_gpl_and_namespaces_come_from_the_image_without_module_symvers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLPCORE_NO_CACHE", "1")
    root = tmp_path / "t"
    image_target(root)
    for p in root.rglob("Module.symvers"):
        p.unlink()
    mod = tmp_path / "m.ko"
    mod.write_bytes(Mod("m", imports=["printk"]).build())
    r = check_pair(str(mod), Target(root))
    notes = [f.message for f in r.findings if f.severity == "not-checked" and f.check == "symbols"]
    assert notes == ["not checked: CRCs need Module.symvers (the kernel image has no __kcrctab)"]
