"""Every hook is documented where it is declared and in the plugin guide."""

from __future__ import annotations

import inspect
from pathlib import Path

from klpcore import hookspecs

GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "plugin-guide.md").read_text()


def hooks():
    return [
        (name, fn)
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("klp_") and hasattr(fn, "klpcore_spec")
    ]


def test_there_are_hooks() -> None:
    names = {n for n, _ in hooks()}
    assert {"klp_arch_identify", "klp_arch_reloc_types", "klp_arch_apply_section", "klp_arch_write_method"} <= names


def test_each_hook_documents_each_parameter() -> None:
    for name, fn in hooks():
        doc = inspect.getdoc(fn) or ""
        assert len(doc.splitlines()) >= 2, f"{name} has no real docstring"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc or f"``{param}``" in doc or param in doc.split("\n")[0], (
                f"{name}: parameter {param} is not documented"
            )


def test_each_hook_is_in_the_plugin_guide() -> None:
    missing = [name for name, _ in hooks() if name not in GUIDE]
    assert not missing, f"docs/plugin-guide.md does not mention {missing}"
