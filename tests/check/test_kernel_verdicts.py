"""``klpcore check`` against the real kernel: Debian 6.1.0-50 amd64 under qemu decided.

Each case in ``fixtures/kernel/x86_64-6.1.0-50/cases.json`` is a module built
with Debian's kbuild and insmodded (one ``finit_module``, a freshly booted
kernel per case) by ``tools/kernel_oracle/run.py``; ``fixtures/kernel/build.py``
regenerates it all.  The target is the committed slice ``target/`` (the
System.map, Module.symvers and config lines the cases need, the ftrace
locations of the patched functions, dm-persistent-data.ko.xz).

Normalisation of the kernel's lines: the dmesg timestamp is dropped (the
recording does it); the livepatch transition's "'<patch>': patching complete"
is printed from a workqueue when the transition finishes, before or after the
marker that ends the module's lines, so it is compared only when the recording
caught it (check always reports it, as an info finding).  Lines the module's
own code prints (relt's init prints ``relt: jiffies=...``) are not the
loader's: ``OWN_LINES`` drops them.  check's lines are every finding's
``kernel_message`` followed by its ``then`` lines, in order.  Lines the kernel
prints later, when a patched module loads, are compared with the findings of
check for patched module objects (``object`` set).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from klpcore.check import Target, check_pair
from klpcore.check.target import module_kernel_name

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kernel"
HERE = FIXTURES / "x86_64-6.1.0-50"
CASES: dict[str, dict[str, Any]] = json.loads((HERE / "cases.json").read_text())
#: every recording (one per kernel ABI) and its cases
RECORDINGS = {d.name: json.loads((d / "cases.json").read_text()) for d in sorted(FIXTURES.glob("x86_64-*"))}
PAIRS = [(abi, name) for abi, cases in RECORDINGS.items() for name in sorted(cases)]


#: lines a module's own init prints (not the loader's, not predicted by check)
OWN_LINES = {"relt": re.compile(r"relt: jiffies=\d+ \d+")}


def kernel_lines(name: str, case: dict[str, Any]) -> list[str]:
    own = OWN_LINES.get(name)
    return [ln for ln in case["kernel_lines"] if own is None or not own.fullmatch(ln)]


def kernel_verdict(case: dict[str, Any]) -> str:
    """refused: insmod failed; patch-fails: a patched object whose module was then loaded was never
    patched (/sys/kernel/livepatch/<patch>/<object>/patched is 0), or its insmod failed; else loads."""
    if case["insmod"] != 0:
        return "refused"
    loaded = set(case["modules"])
    failed = {module_kernel_name(k) for k, v in case.get("insmod_all", {}).items() if v != 0}
    for key, value in case["livepatch"].items():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "patched" and value == "0":
            obj = module_kernel_name(parts[1])
            if parts[1] == "vmlinux" or obj in loaded or obj in failed:
                return "patch-fails"
    return "loads"


def check_lines(findings: list[Any]) -> list[str]:
    out: list[str] = []
    for f in findings:
        if f.kernel_message:
            out.append(f.kernel_message)
        then = f.extra.get("then")
        out += [then] if isinstance(then, str) else list(then or [])
    return out


_TARGETS: dict[str, Target] = {}


def target_of(abi: str) -> Target:
    """One Target per recording, shared by its cases (as one command shares it)."""
    if abi not in _TARGETS:
        _TARGETS[abi] = Target(FIXTURES / abi / "target")
    return _TARGETS[abi]


@pytest.fixture(scope="module")
def target() -> Target:
    return target_of(HERE.name)


def test_recording_is_complete() -> None:
    assert len(CASES) >= 12
    verdicts = {kernel_verdict(c) for c in CASES.values()}
    assert verdicts == {"loads", "refused", "patch-fails"}
    for name in CASES:
        assert (HERE / f"{name}.ko").is_file(), name


@pytest.mark.parametrize(("abi", "name"), PAIRS)
def test_verdict_and_messages_match_the_kernel(abi: str, name: str) -> None:
    case = RECORDINGS[abi][name]
    r = check_pair(str(FIXTURES / abi / f"{name}.ko"), target_of(abi))
    assert r.verdict == kernel_verdict(case), (case["what"], [f.as_dict() for f in r.findings])
    assert not [f for f in r.findings if f.severity == "not-checked"], r.findings
    at_insmod = [f for f in r.findings if f.extra.get("object") in (None, "vmlinux")]
    mod_lines = check_lines(at_insmod)
    complete = f"livepatch: '{name}': patching complete"
    if complete not in case["kernel_lines"] and mod_lines[-1:] == [complete]:
        mod_lines.pop()
    assert mod_lines == kernel_lines(name, case), case["what"]
    later = [ln for lines in case["after"].values() for ln in lines if ln.startswith("livepatch:")]
    assert check_lines([f for f in r.findings if f not in at_insmod]) == later


def test_the_target_is_a_slice(target: Target) -> None:
    # the committed target names what it has; nothing is missing for these cases
    assert target.release == "6.1.0-50-amd64"
    assert target.vermagic == "6.1.0-50-amd64 SMP preempt mod_unload modversions "
    assert set(target.module_index) == {"dm_persistent_data", "ppp_generic", "slhc"}
    assert target.ftrace_sites is not None and len(target.ftrace_sites) >= 5


def test_signers_differ_between_abis() -> None:
    # Debian signs each ABI's modules with a build-time key: 6.1.0-50's ppp_synctty is trusted by
    # 6.1.0-50 (no line) and not by 6.1.0-54 ("module verification failed"), as the kernels said
    from klpcore.check.modinfo import module_signer

    ko = (HERE / "ppp_synctty.ko").read_bytes()
    t50, t54 = target_of("x86_64-6.1.0-50"), target_of("x86_64-6.1.0-54")
    assert module_signer(ko) is not None
    assert module_signer(ko) == t50.tree_signer != t54.tree_signer
    assert RECORDINGS["x86_64-6.1.0-50"]["ppp_synctty"]["kernel_lines"] == []
    # a damaged signature block is read as no signer, never an exception
    marker = b"~Module signature appended~\n"
    for bad in (ko[:-40] + bytes(12) + marker, ko[:-200] + ko[-40:], marker):
        assert module_signer(bad) is None
