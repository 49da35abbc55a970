"""Every core behaviour of klpcore/versions.py observed on both sides of its first
release: the release before gives the old behaviour, the release itself the
new one.  ``test_every_behaviour_has_a_boundary_test`` fails when a behaviour
is added to the table without a test here or a named test elsewhere.  Each
plugin's behaviours are tested the same way in its own tests
(``tests/<arch>/test_<arch>_versions.py``)."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import toyarch as T
from elfbuild import Obj, Rela, Sec, Sym

from klpcore import KernelTarget, Loader, get_plugin_manager, parse_symbol_text
from klpcore import constants as C
from klpcore.testing.klpify import KlpSym, klpify
from klpcore.versions import BEHAVIOURS

TEXT = C.SHF_ALLOC | C.SHF_EXECINSTR
DATA = C.SHF_ALLOC | C.SHF_WRITE
BASE = 0xFFFFFFFFC0000000
SYMS = "ffffffff81000000 T printk\nffffffff82000000 r __ksymtab_printk\nffffffff81000100 t secret\n"


def before(name: str) -> tuple[int, int]:
    major, minor = BEHAVIOURS[name].since
    return (major, minor - 1) if minor else (major - 1, 19)


def pair(name: str) -> list[KernelTarget]:
    return [KernelTarget(before(name)), KernelTarget(BEHAVIOURS[name].since)]


def toy() -> Loader:
    return Loader(get_plugin_manager(autoload=False, plugins=[T]))


def vmlinux_patch(sec_obj: str = "vmlinux") -> bytes:
    """A .klp.rela.<sec_obj> section using the vmlinux livepatch symbol 'secret'."""
    name = f".klp.rela.{sec_obj}..text.fn"
    return Obj(
        sections=[Sec(".text.fn", flags=TEXT, data=bytes(16), align=16)],
        symbols=[Sym(".klp.sym.vmlinux.secret,0", C.SHN_LIVEPATCH)],
        relas=[Rela(".text.fn", 0, T.ABS64, ".klp.sym.vmlinux.secret,0")],
        rela_names={".text.fn": name},
        rela_flags={name: C.SHF_RELA_LIVEPATCH | C.SHF_ALLOC},
        modinfo={"name": "lp", "livepatch": "Y"},
    ).build()


def unprotected(version: tuple[int, int]) -> KernelTarget:
    """The toy arch has no text-poking primitive: late writes need writable text."""
    return KernelTarget(version, strict_module_rwx=False)


# ----------------------------------------------------------------- core
def check_early_vmlinux_klp() -> None:
    phases = []
    for k in (unprotected(before("early_vmlinux_klp")), unprotected(BEHAVIOURS["early_vmlinux_klp"].since)):
        lm = Loader(toy().pm, kernel=k).load(vmlinux_patch(), parse_symbol_text(SYMS), BASE)
        phases.append({p.name: p.sections for p in lm.phases})
    assert ".klp.rela.vmlinux..text.fn" in phases[0]["enable"]
    assert ".klp.rela.vmlinux..text.fn" in phases[1]["load"] and "enable" not in phases[1]


def check_klp_vmlinux_symbol_check() -> None:
    old = unprotected(before("klp_vmlinux_symbol_check"))
    new = unprotected(BEHAVIOURS["klp_vmlinux_symbol_check"].since)
    syms = SYMS + "ffffffffc1000000 t other\t[ext4]\n"
    data = vmlinux_patch("ext4")
    lm = Loader(toy().pm, kernel=old).load(data, parse_symbol_text(syms), BASE)
    text = lm.section_bytes(lm.module.section_by_name(".text.fn").index)
    assert struct.unpack_from("<Q", text)[0] == 0xFFFFFFFF81000100
    with pytest.raises(Exception) as ei:
        Loader(toy().pm, kernel=new).load(data, parse_symbol_text(syms), BASE)
    assert any("invalid access to vmlinux symbol 'secret'" in (d.kernel_message or "") for d in ei.value.diagnostics)


def check_ksym_name_len_512() -> None:
    old, new = pair("ksym_name_len_512")
    assert old.ksym_name_len == 128 and new.ksym_name_len == 512
    from klpcore.livepatch import parse_klp_symbol_name

    name = ".klp.sym.vmlinux." + "a" * 200 + ",0"
    assert parse_klp_symbol_name(name, old.ksym_name_len) is None
    assert parse_klp_symbol_name(name, new.ksym_name_len) is not None


#: a module built for Debian 6.1.0-50 and a slice of Debian 7.2.13's tree (its struct module is larger)
CURRENT_72 = Path(__file__).resolve().parents[1] / "check/fixtures/kernel/current/amd64-7.2.13+deb14"


def check_this_module_size() -> None:
    """The 6.1 module on a 7.2 tree: from 6.4 refused for its .gnu.linkonce.this_module size with the
    kernel's line (recorded on Debian 7.2.13), before it the step is not taken.  Only the steps up to
    ``setup_load_info`` run: no plugin needed."""
    from klpcore.check.pair import Stop
    from klpcore.check.steps import PairCheck
    from klpcore.check.target import Target

    line = (
        "module kc_plain: .gnu.linkonce.this_module section size must match the kernel's built struct module "
        "size at run time"
    )
    seen = []
    for k in pair("this_module_size"):
        release = ".".join(map(str, k.version)) + ".0-1-amd64"
        pc = PairCheck(Target(CURRENT_72 / "target", release=release), str(CURRENT_72 / "kc_61.ko"))
        elf, raw = pc.step_elf()
        try:
            pc.step_load_info(elf, raw)
        except Stop:
            pass
        seen.append([(f.check, f.kernel_message) for f in pc.findings if f.check == "this_module"])
    assert seen == [[], [("this_module", line)]]


def check_module_namespaces() -> None:
    """Debian 7.2's kvm_amd using an export of ``module:kvm-amd,kvm-intel``: reached without an import
    from 6.16; before, an ordinary namespace it does not import."""
    from klpcore.check.steps import PairCheck
    from klpcore.check.target import Target

    reach = []
    for k in pair("module_namespaces"):
        release = ".".join(map(str, k.version)) + ".0-1-amd64"
        pc = PairCheck(Target(CURRENT_72 / "target", release=release), str(CURRENT_72 / "kc_plain.ko"))
        reach.append(
            (
                pc.module_namespace_reaches("module:kvm-amd,kvm-intel", "kvm_amd"),
                pc.module_namespace_reaches("module:kvm-amd", "kvm"),
            )
        )
    assert reach == [(False, False), (True, False)]


def check_module_memory() -> None:
    old, new = pair("module_memory")
    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(16)), Sec(".data", flags=DATA, data=bytes(8), align=8)],
        symbols=[Sym("printk")],
        relas=[],
        modinfo={"name": "m"},
    ).build()
    lms = [Loader(toy().pm, kernel=k).load(obj, parse_symbol_text(SYMS), BASE) for k in (old, new)]
    assert lms[0].module.layout.style == "legacy" and lms[1].module.layout.style == "memory"


def check_strict_align_config() -> None:
    from klpcore.config import KernelConfig

    cfg = KernelConfig.from_text("CONFIG_ARCH_HAS_STRICT_MODULE_RWX=y\n# CONFIG_STRICT_MODULE_RWX is not set\n")
    obj = Obj(
        sections=[Sec(".text", flags=TEXT, data=bytes(16)), Sec(".rodata", flags=C.SHF_ALLOC, data=bytes(8))],
        symbols=[Sym("printk")],
        relas=[],
        modinfo={"name": "m"},
    ).build()
    addrs = []
    for v in (before("strict_align_config"), BEHAVIOURS["strict_align_config"].since):
        lm = Loader(toy().pm, kernel=KernelTarget(v, config=cfg)).load(obj, parse_symbol_text(SYMS), BASE)
        addrs.append(lm.section_address(lm.module.section_by_name(".rodata").index))
    assert addrs == [BASE + 0x1000, BASE + 0x10]


def check_final_klp_format() -> None:
    old, new = pair("final_klp_format")
    rfc = klpify(
        Obj(
            sections=[Sec(".text.fn", flags=TEXT, data=bytes(16), align=16)],
            symbols=[Sym("secret")],
            relas=[Rela(".text.fn", 0, T.ABS64, "secret")],
            modinfo={"name": "lp"},
        ).build(),
        {"secret": KlpSym("vmlinux")},
        fmt="rfc",
    )
    k_old = KernelTarget(old.version, strict_module_rwx=False)
    Loader(toy().pm, kernel=k_old).load(rfc, parse_symbol_text(SYMS), BASE)
    with pytest.raises(Exception, match="only the RFC prototype kernels"):
        Loader(toy().pm, kernel=KernelTarget(new.version, strict_module_rwx=False)).load(
            rfc, parse_symbol_text(SYMS), BASE
        )


def check_ignore_undef_symbol() -> None:
    """The toy architecture's ignore_undef_symbol() names __toy_ignored (ArchSpec.ignored_undefined)."""
    obj = Obj(
        machine=T.TOY,
        sections=[Sec(".text", flags=TEXT, data=bytes(8))],
        symbols=[Sym("__toy_ignored")],
        relas=[],
        modinfo={"name": "got"},
    ).build()
    old, new = pair("ignore_undef_symbol")
    with pytest.raises(Exception, match="Unknown symbol __toy_ignored"):
        Loader(toy().pm, kernel=old).load(obj, parse_symbol_text(SYMS), BASE)
    Loader(toy().pm, kernel=new).load(obj, parse_symbol_text(SYMS), BASE)


BOUNDARY_TESTS: dict[str, Callable[[], None] | str] = {
    "module_rwx_helpers": "tests/x86_64/test_x86_64_versions.py::test_module_rwx_helpers_from_4_5",
    "final_klp_format": check_final_klp_format,
    "early_vmlinux_klp": check_early_vmlinux_klp,
    "klp_vmlinux_symbol_check": check_klp_vmlinux_symbol_check,
    "klp_no_module_disable_ro": "tests/ppc64le/test_ppc64le_versions.py::test_no_module_disable_ro_from_5_8",
    "ignore_undef_symbol": check_ignore_undef_symbol,
    "ksym_name_len_512": check_ksym_name_len_512,
    "strict_align_config": check_strict_align_config,
    "module_memory": check_module_memory,
    "this_module_size": check_this_module_size,
    "module_namespaces": check_module_namespaces,
    # the livepatch core's message, with the toy (x86's own messages: test_messages_name_section_and_index_from_6_19)
    "reloc_messages_sec_idx": "tests/core/test_engine.py::test_not_a_livepatch_symbol",
    # tested elsewhere, on both sides of the boundary:
    "extended_modversions": "tests/core/test_exports.py::test_extended_modversions_from_6_14",
    "codetag_separate": "tests/core/test_fidelity.py::test_codetag_section_outside_module_memory_from_6_13",
    "relocates_percpu": "tests/core/test_fidelity.py::test_percpu_relocations_from_6_16",
    "static_call_sites_ro_after_init": "tests/core/test_fidelity.py::test_static_call_sites_ro_after_init_from_6_16",
    "invalid_shndx_refused": "tests/core/test_fidelity.py::test_symbol_with_section_index_past_the_headers_is_refused",
}


def test_every_behaviour_has_a_boundary_test() -> None:
    assert set(BOUNDARY_TESTS) == set(BEHAVIOURS)


ROOT = Path(__file__).resolve().parents[2]
NAMED = {name: where for name, where in BOUNDARY_TESTS.items() if isinstance(where, str)}


def _runnable(where: str) -> bool:
    """A named test runs here when its directory's plugin is installed (tests/core: always)."""
    folder = where.split("/")[1]
    return folder == "core" or importlib.util.find_spec(f"klpcore_{folder}") is not None


@pytest.fixture(scope="module")
def inverted_outcomes() -> dict[str, list[str]]:
    """Every runnable named test, run once with the rule it guards inverted: node id -> outcomes."""
    run = {where: name for name, where in NAMED.items() if _runnable(where)}
    if not run:
        return {}
    env = dict(
        os.environ,
        KLPCORE_INVERT=json.dumps(run),
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "boundary_inverter", "-p", "no:cacheprovider", "-q", "-rA", *run],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out: dict[str, list[str]] = {}
    for line in p.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            out.setdefault(rest.split(" - ")[0].split("[")[0], []).append(word)
    return out


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_boundary_test_fails_when_its_rule_is_inverted(name: str, inverted_outcomes) -> None:
    """A named test guards its behaviour: with ``KernelTarget.has(name)`` answering the opposite, it fails."""
    where = NAMED[name]
    path, func = where.split("::")
    assert f"def {func}(" in (ROOT / path).read_text(), f"{name}: {where} not found"
    if not _runnable(where):
        pytest.skip(f"{where}: its plugin is not installed here (runs in its arch env and in all)")
    outcomes = inverted_outcomes.get(where)
    assert outcomes, f"{where} did not run"
    assert "FAILED" in outcomes, f"{where} passes with {name} inverted: it does not guard it ({outcomes})"


@pytest.mark.parametrize("name", sorted(n for n, t in BOUNDARY_TESTS.items() if callable(t)))
def test_boundary_check_fails_when_its_rule_is_inverted(name: str, monkeypatch) -> None:
    check = BOUNDARY_TESTS[name]
    assert callable(check)
    real = KernelTarget.has
    monkeypatch.setattr(
        KernelTarget, "has", lambda self, b: (not real(self, b)) if getattr(b, "name", b) == name else real(self, b)
    )
    try:
        check()
    except pytest.skip.Exception:
        raise
    except (Exception, pytest.fail.Exception):  # an assertion, a pytest.raises that did not raise, or an error
        return
    pytest.fail(f"check_{name} passes with {name} inverted: it does not guard it")


@pytest.mark.parametrize("name", sorted(n for n, t in BOUNDARY_TESTS.items() if callable(t)))
def test_boundary(name: str) -> None:
    check = BOUNDARY_TESTS[name]
    assert callable(check)
    check()
