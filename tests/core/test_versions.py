"""The version table is the one place version boundaries live, and its
document cannot drift from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpcore import KernelTarget, get_plugin_manager
from klpcore.versions import BEHAVIOURS, NEWEST, Behaviour, all_behaviours, render_markdown, render_row

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = all_behaviours()


def _arch_column(line: str) -> str | None:
    """The arch cell of a row of the table in docs/versions.md (None: not a behaviour row)."""
    cells = line.split(" | ")
    return cells[2] if line.startswith("| `") and len(cells) >= 5 else None


def test_docs_versions_md_is_generated_from_the_table() -> None:
    """docs/versions.md is the table of the core and every plugin; with some
    plugins not installed, it is that table once their rows are left out."""
    archs = {b.arch for b in INSTALLED.values()} | {"core"}
    docs = (ROOT / "docs" / "versions.md").read_text()
    kept = "".join(line for line in docs.splitlines(keepends=True) if _arch_column(line) in (None, *archs))
    assert kept == render_markdown(INSTALLED.values()), (
        "docs/versions.md is stale: python -m klpcore.versions > docs/versions.md (with every plugin installed)"
    )


def test_docs_versions_md_lists_every_core_behaviour() -> None:
    lines = (ROOT / "docs" / "versions.md").read_text().splitlines()
    assert [render_row(b) for b in BEHAVIOURS.values() if render_row(b) not in lines] == []
    assert all(b.arch == "core" for b in BEHAVIOURS.values())


def test_plugin_behaviours_are_collected_and_names_unique() -> None:
    import toyarch

    pm = get_plugin_manager(autoload=False, plugins=[toyarch])
    rows = all_behaviours(pm)
    assert set(rows) == set(BEHAVIOURS) | {b.name for b in toyarch.BEHAVIOURS}
    assert KernelTarget().has(toyarch.FEATURE) and not KernelTarget(toyarch.FEATURE.sides()[0][0].version).has(
        toyarch.FEATURE
    )
    with pytest.raises(KeyError, match="not a core behaviour"):
        KernelTarget().has(toyarch.FEATURE.name)

    class Clash:
        @staticmethod
        @toyarch.hookimpl
        def klp_arch_behaviours() -> list[Behaviour]:
            return [Behaviour("module_memory", (6, 4), "clash", "a second row of a core name", "-")]

    with pytest.raises(ValueError, match="'module_memory' is declared twice"):
        all_behaviours(get_plugin_manager(autoload=False, plugins=[toyarch, Clash]))


def test_newest_is_7_2_and_the_default() -> None:
    assert NEWEST == (7, 2)
    assert not KernelTarget(NEWEST).beyond_newest and KernelTarget((7, 3)).beyond_newest
    assert KernelTarget().version == NEWEST
    assert KernelTarget.from_string("newest").version == NEWEST


#: The core behaviours, stated here and not read from the table under test: (the last release without, the
#: first release with), each the mainline release of the kernel change the row's ``source`` names.
CORE_RELEASES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "module_rwx_helpers": ((4, 4), (4, 5)),
    "final_klp_format": ((4, 6), (4, 7)),
    "early_vmlinux_klp": ((5, 7), (5, 8)),
    "klp_vmlinux_symbol_check": ((5, 7), (5, 8)),
    "klp_no_module_disable_ro": ((5, 7), (5, 8)),
    "ignore_undef_symbol": ((5, 11), (5, 12)),
    "strict_align_config": ((5, 18), (5, 19)),
    "ksym_name_len_512": ((6, 0), (6, 1)),
    "module_memory": ((6, 3), (6, 4)),
    "this_module_size": ((6, 3), (6, 4)),
    "codetag_separate": ((6, 12), (6, 13)),
    "extended_modversions": ((6, 13), (6, 14)),
    "module_namespaces": ((6, 15), (6, 16)),
    "relocates_percpu": ((6, 15), (6, 16)),
    "static_call_sites_ro_after_init": ((6, 15), (6, 16)),
    "reloc_messages_sec_idx": ((6, 18), (6, 19)),
    "invalid_shndx_refused": ((6, 19), (7, 0)),
}


def test_the_core_rows_are_the_stated_ones() -> None:
    assert {n for n, b in BEHAVIOURS.items() if b.arch == "core"} == set(CORE_RELEASES)


@pytest.mark.parametrize(("name", "sides"), sorted(CORE_RELEASES.items()))
def test_each_core_behaviour_at_the_stated_release(name: str, sides: tuple[tuple[int, int], ...]) -> None:
    """Each side of the stated boundary, asked through the rules (``KernelTarget.has``), not the table's ``since``."""
    without, with_ = sides
    assert not KernelTarget(without).has(name), f"{name} already in {without}"
    assert KernelTarget(with_).has(name), f"{name} not yet in {with_}"
    assert KernelTarget(NEWEST).has(name)


@pytest.mark.parametrize("name", sorted(INSTALLED))
def test_each_boundary_both_sides(name: str) -> None:
    """Core rows and the installed plugins' rows (asked with the row object)."""
    b = INSTALLED[name]
    assert b.sides()
    for without, with_ in b.sides():
        assert not without.has(b) and with_.has(b)
        # an option overrides the version rule (a distribution backport)
        assert KernelTarget(without.version, options={name: True}).has(b)
        assert not KernelTarget(with_.version, options={name: False}).has(b)
    assert KernelTarget(NEWEST).has(b)
    if name in BEHAVIOURS:  # a core row is asked by its name too
        assert KernelTarget(NEWEST).has(name) and not b.sides()[0][0].has(name)


def test_no_version_comparisons_outside_the_table() -> None:
    """Core and plugins ask kernel.has(name); at_least() stays only for the
    documented pre-table eras (before 4.5 / 5.8 write methods)."""
    offenders = []
    for path in [*ROOT.glob("klpcore/**/*.py"), *ROOT.glob("plugins/*/klpcore_*/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"at_least\(\d", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "version comparisons outside klpcore/versions.py:\n" + "\n".join(offenders)


def test_every_behaviour_is_used() -> None:
    text = "".join(p.read_text() for p in [*ROOT.glob("klpcore/**/*.py"), *ROOT.glob("plugins/*/klpcore_*/**/*.py")])
    # each core name must appear at least once outside its own definition (in the core or a plugin)
    counts = {n: text.count(f'"{n}"') for n in BEHAVIOURS}
    unused = [n for n, c in counts.items() if c < 2]
    assert not unused, f"behaviours declared but never asked: {unused}"


@pytest.mark.parametrize("package", sorted(p.parent.name for p in ROOT.glob("plugins/*/klpcore_*/versions.py")))
def test_every_plugin_behaviour_is_used(package: str) -> None:
    """A plugin's row (a constant of its versions.py) is asked somewhere else in the plugin."""
    folder = next(ROOT.glob(f"plugins/*/{package}"))
    rows = re.findall(r"^(\w+) = Behaviour\(", (folder / "versions.py").read_text(), re.M)
    assert rows
    text = "".join(p.read_text() for p in folder.glob("**/*.py") if p.name != "versions.py")
    unused = [r for r in rows if not re.search(rf"\bversions\.{r}\b", text)]
    assert not unused, f"{package}: behaviours declared but never asked: {unused}"


# ------------------------------------------------------------ stable releases
@pytest.mark.parametrize(
    ("text", "stable"),
    [
        ("6.12.117+deb13-arm64", 117),
        ("7.2.13+deb14-amd64 SMP preempt mod_unload modversions", 13),
        ("6.12.46", 46),
        ("v6.12.46", 46),
        ("6.12", None),
        ("6.1.0-50-amd64", None),  # Debian's ABI name: 6.1.176 in truth, the number is hidden
        ("6.1.0", 0),
    ],
)
def test_parse_stable(text: str, stable: int | None) -> None:
    from klpcore.kernel import parse_stable

    assert parse_stable(text) == stable


STABLE_ROW = Behaviour("example_backport", (6, 17), "core", "d", "s", stable=((6, 12, 46),))


@pytest.mark.parametrize(
    ("kernel", "present"),
    [
        ("6.17", True),
        ("7.2.13", True),
        ("6.16", False),  # a later line without the backport
        ("6.16.9", False),
        ("6.12.46", True),  # the first stable release of 6.12.y with it
        ("6.12.117", True),
        ("6.12.45", False),
        ("6.12", False),  # stable number unknown: only the mainline start applies
        ("6.1.0-50", False),
        ("6.6.100", False),  # a line the row does not name
    ],
)
def test_behaviour_starts_in_mainline_and_in_a_stable_line(kernel: str, present: bool) -> None:
    assert STABLE_ROW.present_in(KernelTarget.from_string(kernel)) is present


def test_stable_start_has_both_sides_and_a_label() -> None:
    pairs = [(a.version, a.stable, b.version, b.stable) for a, b in STABLE_ROW.sides()]
    assert pairs == [((6, 16), None, (6, 17), None), ((6, 12), 45, (6, 12), 46)]
    assert all(
        not a_ and b_
        for a_, b_ in ((STABLE_ROW.present_in(a), STABLE_ROW.present_in(b)) for a, b in STABLE_ROW.sides())
    )
    assert STABLE_ROW.label == "6.17, 6.12.46"
    assert KernelTarget.from_string("6.12.117").release_label == "6.12.117"
    assert KernelTarget.from_string("6.1.0-50-amd64").release_label == "6.1"
