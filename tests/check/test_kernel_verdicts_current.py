"""``klpcore check`` against today's real kernels: Debian trixie's 6.12.117+deb13 and sid's 7.2.13+deb14
(amd64, arm64) under qemu decided.

Each case in ``fixtures/kernel/current/<arch>-<release>/cases.json`` is a module built with that
release's own kbuild and compiler (gcc-14 for 6.12, gcc-16 for 7.2), or a module of the target's own
tree, insmodded by ``tools/kernel_oracle/run.py --target ... --insmod-only`` (a freshly booted kernel
per case); ``fixtures/kernel/build_current.py`` regenerates it all.  The target of each recording is
the committed slice ``target/``.  The verdict and the kernel's lines are compared exactly as for the
6.1 recordings (``test_kernel_verdicts.py``: same normalisation, same reading of the verdict).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import test_kernel_verdicts as base

from klpcore.check import Target, check_pair

CURRENT = Path(__file__).resolve().parent / "fixtures" / "kernel" / "current"
RECORDINGS: dict[str, dict[str, dict[str, Any]]] = {
    d.name: json.loads((d / "cases.json").read_text())
    for d in sorted(CURRENT.glob("*-*"))
    if (d / "cases.json").exists()
}
PAIRS = [(rec, name) for rec, cases in RECORDINGS.items() for name in sorted(cases)]
#: (recording, case) -> why check does not yet give the kernel's answer (xfail, strict): none today
#: (Debian 6.1.0-50's kc_61 on 6.12/7.2 is refused for its .gnu.linkonce.this_module size, as the kernel does).
DISAGREEMENTS: dict[tuple[str, str], str] = {}
#: the cases every recording has
COMMON = {"kc_plain", "kc_chain", "kc_unknown", "kc_release", "ppp_synctty"}
#: a module built with the other release's kbuild: where the archive has both releases (amd64, arm64)
BOTH_RELEASES = {"amd64", "arm64"}
#: amd64 only: livepatch (only amd64 has CONFIG_LIVEPATCH), a module of 6.1.0-50 (built for the 6.1 recordings)
AMD64_ONLY = {"kc_lp", "kc_lp_nosym", "kc_lp_notrace", "kc_lp_ambig", "kc_lp_sympos2", "kc_61"}
AMD64_ONLY |= {"kc_lp_objname", "kc_lp_objok", "kc_lp_modnosym"}
#: Debian arch -> the kernel flavour in the release string
FLAVOUR = {"amd64": "amd64", "arm64": "arm64", "ppc64el": "powerpc64le", "s390x": "s390x"}


def expected_cases(rec: str) -> set[str]:
    arch = rec.split("-", 1)[0]
    out = set(COMMON)
    if arch in BOTH_RELEASES:
        out.add("kc_other")
    if arch == "amd64":
        out |= AMD64_ONLY
    if rec == "amd64-7.2.13+deb14":
        out.add("kc_relv")
    return out


#: Debian arch -> the plugin check needs for its modules (the x86_64 tox env has only klpcore_x86_64)
PLUGIN = {"amd64": "klpcore_x86_64", "arm64": "klpcore_arm64", "ppc64el": "klpcore_ppc64le", "s390x": "klpcore_s390x"}

_TARGETS: dict[str, Target] = {}


def target_of(rec: str) -> Target:
    if rec not in _TARGETS:
        _TARGETS[rec] = Target(CURRENT / rec / "target")
    return _TARGETS[rec]


def test_recordings_are_complete() -> None:
    assert set(RECORDINGS) >= {"amd64-6.12.117+deb13", "amd64-7.2.13+deb14"}
    for rec, cases in RECORDINGS.items():
        assert set(cases) == expected_cases(rec), rec
        for name in cases:
            assert (CURRENT / rec / f"{name}.ko").is_file(), (rec, name)
        verdicts = {base.kernel_verdict(c) for c in cases.values()}
        # patch-fails: a livepatch whose object's module is then refused when it loads (amd64)
        assert verdicts == {"loads", "refused"} | ({"patch-fails"} if rec.startswith("amd64-") else set()), rec


@pytest.mark.parametrize(("rec", "name"), PAIRS)
def test_verdict_and_lines_match_the_kernel(rec: str, name: str, request: pytest.FixtureRequest) -> None:
    if (rec, name) in DISAGREEMENTS:
        request.applymarker(pytest.mark.xfail(reason=DISAGREEMENTS[rec, name], strict=True))
    pytest.importorskip(PLUGIN[rec.split("-", 1)[0]])
    case = RECORDINGS[rec][name]
    r = check_pair(str(CURRENT / rec / f"{name}.ko"), target_of(rec))
    found = [f.as_dict() for f in r.findings]
    assert r.verdict == base.kernel_verdict(case), (case["what"], found)
    assert not [f for f in r.findings if f.severity == "not-checked"], found
    at_insmod = [f for f in r.findings if f.extra.get("object") in (None, "vmlinux")]
    mod_lines = base.check_lines(at_insmod)
    complete = f"livepatch: '{name}': patching complete"
    if complete not in case["kernel_lines"] and mod_lines[-1:] == [complete]:
        mod_lines.pop()
    assert mod_lines == case["kernel_lines"], (case["what"], found)
    # what the kernel printed later, when the patched module loaded, against check's findings for that object
    # (the insmod's transition may complete while the patched module loads: its line is then among those)
    later = [ln for lines in case["after"].values() for ln in lines if ln.startswith("livepatch:") and ln != complete]
    assert base.check_lines([f for f in r.findings if f not in at_insmod]) == later, (case["what"], found)


@pytest.mark.parametrize("rec", sorted(RECORDINGS))
def test_the_target_is_a_slice_of_the_release(rec: str) -> None:
    arch, release = rec.split("-", 1)
    pytest.importorskip(PLUGIN[arch])
    t = target_of(rec)
    assert t.release == f"{release}-{FLAVOUR[arch]}"
    assert set(t.module_index) >= {"ppp_generic", "slhc"}
    config = (CURRENT / rec / "target" / "config").read_text().splitlines()
    # Debian's 7.2 is built without modversions (vermagic compared whole), 6.12 with them
    modversions = "CONFIG_MODVERSIONS=y" in config
    assert modversions == release.startswith("6.12"), rec
    assert ("CONFIG_LIVEPATCH=y" in config) == (arch == "amd64"), rec
