from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import toyarch

from klpcore import Loader, get_plugin_manager


@pytest.fixture
def toy_pm():
    """A plugin manager with only the toy architecture (no installed plugins)."""
    return get_plugin_manager(autoload=False, plugins=[toyarch])


@pytest.fixture
def toy_loader(toy_pm):
    return Loader(toy_pm)
