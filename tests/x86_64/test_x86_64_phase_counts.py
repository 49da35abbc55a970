"""One definition of a phase's relocation counts for the embedding API and the CLI: every entry of a
processed section by its type, R_X86_64_NONE (a no-op the kernel accepts) included, so that the
per-type counts add up to ``applied`` (issue 14 item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from klpcore import Loader, load_many

pytest.importorskip("klpcore_x86_64")


def _example():  # type: ignore[no-untyped-def]
    from klpcore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    ex = [e for group in pm.hook.klp_arch_examples() for e in (group or []) if e.name == "x86_64"]
    assert ex, "the x86_64 plugin ships an example"
    return ex[0]


def test_api_and_cli_counts_agree_and_count_none(tmp_path: Path) -> None:
    ex = _example()
    loaded = Loader().load(ex.module.read_bytes(), load_many([str(p) for p in ex.symbols]), ex.base)
    api = dict(loaded.relocation_counts())
    assert api.get("R_X86_64_NONE", 0) > 0, "the example has R_X86_64_NONE entries: the test needs them"
    for ph in loaded.phases:
        by_type = sum(v for k, v in ph.counts.items() if k not in ("applied", "cleared"))
        assert by_type == ph.counts["applied"], ph.counts
    out = tmp_path / "r.json"
    p = subprocess.run(
        [sys.executable, "-m", "klpcore", "apply", "--example", "x86_64", "-q", "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert report["relocations"] == api
    assert [ph["counts"] for ph in report["phases"]] == [ph.counts for ph in loaded.phases]
