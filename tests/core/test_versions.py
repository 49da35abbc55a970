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
    for path in [*ROOT.glob("klpcore/**/*.py"), *ROOT.glob("plugins/*/klpcore_*/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"at_least\(\d", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "version comparisons outside klpcore/versions.py:\n" + "\n".join(offenders)


def test_every_behaviour_is_used() -> None:
    text = "".join(p.read_text() for p in [*ROOT.glob("klpcore/**/*.py"), *ROOT.glob("plugins/*/klpcore_*/**/*.py")])
    # each name must appear at least once outside its own definition
    counts = {n: text.count(f'"{n}"') for n in BEHAVIOURS}
    unused = [n for n, c in counts.items() if c < 2]
    assert not unused, f"behaviours declared but never asked: {unused}"
