"""A pytest plugin for ``tests/core/test_boundaries.py``: while a named boundary test runs, the kernel rule it
guards answers the opposite (``KernelTarget.has`` inverted for that one behaviour), so the test must fail.

``KLPCORE_INVERT`` holds a JSON object: test node id prefix (``path::function``) -> behaviour name."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from klpcore import KernelTarget

_INVERT: dict[str, str] = json.loads(os.environ.get("KLPCORE_INVERT", "{}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    name = next((n for prefix, n in _INVERT.items() if item.nodeid.split("[")[0] == prefix), None)
    if name is None:
        yield
        return
    real = KernelTarget.has

    def inverted(self: KernelTarget, behaviour: Any) -> bool:
        asked = behaviour if isinstance(behaviour, str) else getattr(behaviour, "name", behaviour)
        return (not real(self, behaviour)) if asked == name else real(self, behaviour)

    KernelTarget.has = inverted  # type: ignore[method-assign]
    try:
        yield
    finally:
        KernelTarget.has = real  # type: ignore[method-assign]
