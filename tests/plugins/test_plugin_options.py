"""Every ``-O`` key an installed plugin reads is one it declares.

The command line refuses ``-O`` keys that neither the core
(``klpcore.kernel.CORE_OPTIONS``) nor the module's plugin
(``ArchSpec.options``) declares, so a key a plugin reads but does not declare
can never be given: the option silently does not exist.  The plugins read
their options in a few spellings (``kernel.options.get("k")``,
``kernel.options["k"]``, ``"k" in kernel.options`` and their own lookup
helpers ``fact(kernel, "k")`` / ``option(kernel, "k")``); this test finds
those in each plugin's source and checks them against its declaration.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from klpcore.kernel import CORE_OPTIONS
from klpcore.plugins import get_plugin_manager, list_arch_plugins

_READS = re.compile(
    r"""options\.get\(\s*"(\w+)"      # kernel.options.get("k")
      | options\[\s*"(\w+)"\s*\]      # kernel.options["k"]
      | "(\w+)"\s+in\s+[\w.]*options  # "k" in kernel.options
      | \b(?:fact|option)\(\s*[\w.]+\s*,\s*"(\w+)"  # the plugins' lookup helpers
    """,
    re.X,
)


def option_reads(source: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _READS.finditer(source)}


def test_the_scanner_finds_every_spelling() -> None:
    text = """
    a = kernel.options.get("one")
    b = ctx.kernel.options["two"]
    if "three" in kernel.options: pass
    c = fact(kernel, "four") + option(ctx.kernel, "five")
    d = options.get(name)  # not a literal: not counted
    """
    assert option_reads(text) == {"one", "two", "three", "four", "five"}


def _plugins() -> list[tuple[str, str, dict[str, str]]]:
    pm = get_plugin_manager()
    out = []
    for info in list_arch_plugins(pm):
        module = getattr(pm.get_plugin(info.name), "__name__", "")
        for arch in info.archs:
            out.append((arch.name, module, dict(arch.options)))
    return out


def test_every_plugin_is_installed() -> None:
    assert {arch for arch, _, _ in _plugins()} >= {"x86_64", "ppc64le", "arm64", "s390x"}


@pytest.mark.parametrize(("arch", "module", "declared"), _plugins())
def test_every_option_a_plugin_reads_is_declared(arch: str, module: str, declared: dict[str, str]) -> None:
    package = Path(importlib.import_module(module).__file__ or "").parent
    read: set[str] = set()
    for path in package.rglob("*.py"):
        read |= option_reads(path.read_text())
    missing = read - set(declared) - set(CORE_OPTIONS)
    assert not missing, f"{arch}: reads -O {sorted(missing)} but does not declare them in ArchSpec.options"
