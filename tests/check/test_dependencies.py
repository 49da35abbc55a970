"""Dependencies as depmod computes them and modprobe loads them: judged once per target, the same
answer whatever else is on the command line and in whatever order; cycles as depmod reports them."""

from __future__ import annotations

import itertools
from pathlib import Path

from kbuild import EXPORTS, Mod, make_target

from klpcore.check import Target, check_pair
from klpcore.check.depgraph import DepGraph

CRC = {"module_layout": EXPORTS["module_layout"][0]}
SYMVERS_CRC = 0x66666666  # what make_target writes for the tree's exports


def versions(*names: str) -> dict[str, int]:
    return {**CRC, **{n: SYMVERS_CRC for n in names}}


# lib_b <- lib_c <- user, and user also needs lib_b directly (stmmac-platform needs stmmac and both
# need the same libraries): the sibling dependency met twice
TREE = {
    "kernel/lib/lib-b.ko": Mod("lib_b", exports=["b_fn"], functions=["b_fn"], modinfo={"intree": "Y"}),
    "kernel/lib/lib-c.ko": Mod(
        "lib_c",
        exports=["c_fn"],
        functions=["c_fn"],
        imports=["b_fn"],
        versions=versions("b_fn"),
        modinfo={"intree": "Y"},
    ),
    "kernel/drivers/user.ko": Mod(
        "user", imports=["b_fn", "c_fn"], versions=versions("b_fn", "c_fn"), modinfo={"intree": "Y"}
    ),
}


def tree_target(tmp: Path, tree: dict[str, Mod] | None = None) -> Path:
    return make_target(tmp / "t", tree=tree or TREE)


def test_graph_from_symbols_without_modules_dep(tmp_path: Path) -> None:
    g = DepGraph(Target(tree_target(tmp_path)))
    assert g.direct("user") == ["lib_b", "lib_c"]
    assert g.load_order("user") == ["lib_b", "lib_c"]
    assert g.load_order("lib_c") == ["lib_b"]
    assert g.load_order("lib_b") == []


def test_modules_dep_wins_where_present(tmp_path: Path) -> None:
    root = tree_target(tmp_path)
    moddir = next((root / "lib/modules").iterdir())
    (moddir / "modules.dep").write_text("kernel/drivers/user.ko: kernel/lib/lib-c.ko\nkernel/lib/lib-c.ko:\n")
    g = DepGraph(Target(root))
    assert g.load_order("user") == ["lib_c"]


def test_verdicts_do_not_depend_on_order(tmp_path: Path) -> None:
    root = tree_target(tmp_path)
    mods = sorted((root / "lib/modules").rglob("*.ko"))
    seen = set()
    for order in itertools.permutations(mods):
        t = Target(root)  # one target per run: its cache is shared by the run's pairs
        got = tuple(sorted((p.name, check_pair(str(p), t).verdict) for p in order))
        seen.add(got)
    assert seen == {(("lib-b.ko", "loads"), ("lib-c.ko", "loads"), ("user.ko", "loads"))}, seen


def test_refused_dependency_refuses_every_user_in_any_order(tmp_path: Path) -> None:
    tree = dict(TREE)
    tree["kernel/lib/lib-b.ko"] = Mod("lib_b", exports=["b_fn"], functions=["b_fn"], imports=["nowhere_fn"])
    root = tree_target(tmp_path, tree)
    mods = sorted((root / "lib/modules").rglob("*.ko"))
    for order in (mods, mods[::-1]):
        t = Target(root)
        got = {p.name: check_pair(str(p), t) for p in order}
        assert {k: r.verdict for k, r in got.items()} == {
            "lib-b.ko": "refused",
            "lib-c.ko": "refused",
            "user.ko": "refused",
        }
        msg = next(f for f in got["user.ko"].findings if f.check == "dependencies" and f.severity == "error")
        assert msg.kernel_message == "lib_b: Unknown symbol nowhere_fn (err -2)"


def test_cycle_reported_as_depmod_does(tmp_path: Path) -> None:
    tree = {
        "kernel/a/mod-a.ko": Mod("mod_a", exports=["a_fn"], functions=["a_fn"], imports=["b_fn"]),
        "kernel/b/mod-b.ko": Mod("mod_b", exports=["b_fn"], functions=["b_fn"], imports=["a_fn"]),
        "kernel/u/user.ko": Mod("user", imports=["a_fn"], versions=versions("a_fn")),
    }
    root = tree_target(tmp_path, tree)
    for first in ("mod-a.ko", "mod-b.ko", "user.ko"):
        t = Target(root)
        path = next((root / "lib/modules").rglob(first))
        check_pair(str(path), t)
        r = check_pair(str(next((root / "lib/modules").rglob("user.ko"))), t)
        assert r.verdict == "refused"
        assert any(f.kernel_message == "depmod: ERROR: Cycle detected: mod_a -> mod_b -> mod_a" for f in r.findings), (
            r.findings
        )


def test_module_from_elsewhere_uses_its_own_symbols(tmp_path: Path) -> None:
    """A file that is not the tree's own (another release's module of the same name) needs what its
    own symbols need, not what the tree's module of that name needs."""
    root = tree_target(tmp_path)
    other = tmp_path / "user.ko"
    other.write_bytes(Mod("user", imports=["b_fn"], versions=versions("b_fn")).build())
    t = Target(root)
    r = check_pair(str(other), t)
    assert r.verdict == "loads", r.findings
    assert any(f.message == "loaded first: lib_b" for f in r.findings)
    assert DepGraph.of(t).load_order("user") == ["lib_b", "lib_c"]  # the tree's user is unchanged
