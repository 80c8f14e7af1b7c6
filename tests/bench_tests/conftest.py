"""Tests of the benchmark package ``bench/`` at the repository root.

``bench`` is not installed (it is run as ``python -m bench`` from the root), so the root is put
on ``sys.path`` here. (This package is not called ``tests/bench``: with no ``tests/__init__.py``
that name would itself be the top-level module ``bench`` and shadow the real one, for pytest
and for mypy alike.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def require_binary(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """tests/conftest.py's ``require_binary`` (skips locally, fails under CI=true)."""
    shared = request.config.pluginmanager.get_plugin(str(ROOT / "tests" / "conftest.py"))
    assert shared is not None, "tests/conftest.py is not loaded"
    found: Callable[[str], str] = shared.require_binary
    return found
