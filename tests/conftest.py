"""Suite-wide pytest configuration.

Tests marked ``@pytest.mark.slow`` (declared in pyproject.toml: "long tests, run only with
-m slow") are skipped unless the ``-m`` expression names ``slow``: ``pytest -m slow`` runs only
them, ``pytest -m "slow or not slow"`` runs everything.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr", default="") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
