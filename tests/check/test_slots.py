"""Where check places dependencies and patched modules in the module area: today's addresses for a
large area, distinct addresses inside the area for a small one (6.1 arm64's 128 MiB)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from kbuild import EXPORTS, Mod, make_target

from klpcore.check import Target, check_pair
from klpcore.check import dependencies as D

MIB = 1 << 20
#: the four plugins' module areas: x86_64 (MODULES_END - base), arm64, ppc64le, s390x
PLUGIN_AREAS = [1008 * MIB, 2 << 30, 1 << 49, 1 << 31]


@pytest.mark.parametrize("area", PLUGIN_AREAS)
def test_large_areas_keep_the_fixed_slots(area: int) -> None:
    lay = D.slot_layout(area)
    old_count = (area - D.DEP_OFFSET) // D.DEP_STRIDE - 1  # the slot count before small areas were handled
    assert (lay.offset, lay.stride, lay.patched) == (D.DEP_OFFSET, D.DEP_STRIDE, old_count - 24)
    for i in range(24):
        assert lay.address(0, lay.dependencies, i) == D.DEP_OFFSET + i * D.DEP_STRIDE
    for j in range(min(lay.patched, 100)):
        assert lay.address(lay.dependencies, lay.patched, j) == D.DEP_OFFSET + (24 + j) * D.DEP_STRIDE


@pytest.mark.parametrize("area", [128 * MIB, 256 * MIB, 671 * MIB, 1008 * MIB])
def test_every_module_has_its_own_address_inside_the_area(area: int) -> None:
    lay = D.slot_layout(area)
    assert lay.patched > 0
    deps = [lay.address(0, lay.dependencies, i) for i in range(300)]
    patched = [lay.address(lay.dependencies, lay.patched, j) for j in range(300)]
    assert len(set(deps + patched)) == 600  # no wrap after 24 dependencies, no patched module on a dependency
    assert all(lay.offset <= a and a + lay.stride < area and a % 4096 == 0 for a in deps + patched)
    assert max(deps) < min(patched)


def test_livepatch_with_a_dependency_in_a_small_module_area(tmp_path: Path, monkeypatch: Any) -> None:
    """A 128 MiB module area (6.1 arm64's): the livepatch's dependency and the patched module are placed
    in its second half (before: a division by zero while reading the patched module)."""
    real = D.arch_spec

    def small(*args: Any) -> Any:
        spec = real(*args)
        return None if spec is None else dataclasses.replace(spec, module_area_size=128 * MIB)

    monkeypatch.setattr(D, "arch_spec", small)
    lib = Mod("helper_lib", exports=["helper_fn"], functions=["helper_fn"], imports=["printk"])
    tree = {"kernel/lib/helper-lib.ko": lib, "drivers/target-mod.ko": Mod("target_mod", functions=["tfunc"])}
    make_target(tmp_path / "t", tree=tree)
    lp = Mod(
        "lp",
        imports=["klp_enable_patch", "helper_fn"],
        versions={"module_layout": EXPORTS["module_layout"][0], "helper_fn": 0x66666666},
        modinfo={"depends": "helper-lib"},
        livepatch=True,
        patch={"target_mod": [("tfunc", 0)]},
    )
    (tmp_path / "lp.ko").write_bytes(lp.build())
    target = Target(tmp_path / "t")
    r = check_pair(str(tmp_path / "lp.ko"), target)
    assert r.verdict == "loads", r.findings
    base = D.module_base(target, D.ElfModule(lp.build()))
    got = {}
    for name, sym in (("target_mod", "tfunc"), ("helper_lib", "helper_fn")):
        if name == "target_mod":
            ks = target.cache["patched_modules"][name][1]
        else:
            ks = target.cache["deps"][name].symbols
        (addr,) = ks.objects[name].matches(sym)
        got[name] = int(addr) - base
    assert 64 * MIB <= got["helper_lib"] < got["target_mod"] < 128 * MIB
