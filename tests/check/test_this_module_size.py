"""The size of ``.gnu.linkonce.this_module`` against the target's ``sizeof(struct module)`` (6.4+):
learnt from an in-tree module of the target's tree; without one the step is not checked, never passed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from klpcore.check import check_pair
from klpcore.check.target import Target, this_module_size

CURRENT = Path(__file__).parent / "fixtures/kernel/current"
REC = CURRENT / "amd64-7.2.13+deb14"


def test_the_target_struct_module_size_comes_from_an_in_tree_module() -> None:
    target = Target(REC / "target")
    assert target.module_struct_size is not None
    assert this_module_size((REC / "kc_plain.ko").read_bytes()) == target.module_struct_size
    assert this_module_size((REC / "kc_61.ko").read_bytes()) != target.module_struct_size


def test_without_an_in_tree_module_the_size_is_not_checked(tmp_path: Path) -> None:
    pytest.importorskip("klpcore_x86_64")
    for f in (REC / "target").iterdir():
        if ".ko" not in f.name:
            shutil.copy(f, tmp_path / f.name)
    r = check_pair(str(REC / "kc_61.ko"), Target(tmp_path))
    assert r.verdict != "loads"
    unchecked = [f for f in r.findings if f.severity == "not-checked" and f.check == "this_module"]
    assert unchecked and "in-tree module" in unchecked[0].message, [f.as_dict() for f in r.findings]
    # the module of the target's own build is still refused for nothing at this step
    ok = check_pair(str(REC / "kc_plain.ko"), Target(REC / "target"))
    assert not [f for f in ok.findings if f.check == "this_module"]
