from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import toyarch

from klpcore import Loader, get_plugin_manager

_CACHE = tempfile.mkdtemp(prefix="klpcore-test-cache-")


def pytest_configure(config):
    # check's target-read cache (klpcore.check.readcache) goes to a directory of this run, never ~/.cache
    os.environ.setdefault("KLPCORE_CACHE_DIR", _CACHE)


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def toy_pm():
    """A plugin manager with only the toy architecture (no installed plugins)."""
    return get_plugin_manager(autoload=False, plugins=[toyarch])


@pytest.fixture
def toy_loader(toy_pm):
    return Loader(toy_pm)
