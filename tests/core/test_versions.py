"""The version table is the one place version boundaries live, and its
document cannot drift from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpcore import KernelTarget
from klpcore.versions import BEHAVIOURS, NEWEST, render_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_docs_versions_md_is_generated_from_the_table() -> None:
    assert (ROOT / "docs" / "versions.md").read_text() == render_markdown(), (
        "docs/versions.md is stale: python -m klpcore.versions > docs/versions.md"
    )


def test_newest_is_7_1_and_the_default() -> None:
    assert NEWEST == (7, 1)
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
    "codetag_separate": ((6, 12), (6, 13)),
    "extended_modversions": ((6, 13), (6, 14)),
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


@pytest.mark.parametrize("name", sorted(BEHAVIOURS))
def test_each_boundary_both_sides(name: str) -> None:
    b = BEHAVIOURS[name]
    major, minor = b.since
    before = (major, minor - 1) if minor else (major - 1, 19)
    assert not KernelTarget(before).has(name)
    assert KernelTarget(b.since).has(name)
    assert KernelTarget(NEWEST).has(name)
    # an option overrides the version rule (a distribution backport)
    assert KernelTarget(before, options={name: True}).has(name)
    assert not KernelTarget(b.since, options={name: False}).has(name)


def test_no_version_comparisons_outside_the_table() -> None:
    """Core and plugins ask kernel.has(name); at_least() stays only for the
    documented pre-table eras (before 4.5 / 5.8 write methods)."""
    offenders = []
    for path in [*ROOT.glob("klpcore/*.py"), *ROOT.glob("plugins/*/klpcore_*/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"at_least\(\d", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "version comparisons outside klpcore/versions.py:\n" + "\n".join(offenders)


def test_every_behaviour_is_used() -> None:
    text = "".join(p.read_text() for p in [*ROOT.glob("klpcore/*.py"), *ROOT.glob("plugins/*/klpcore_*/**/*.py")])
    # each name must appear at least once outside its own definition
    counts = {n: text.count(f'"{n}"') for n in BEHAVIOURS}
    unused = [n for n, c in counts.items() if c < 2]
    assert not unused, f"behaviours declared but never asked: {unused}"
