"""Repository-wide pytest hooks: every notebook run by nbmake counts as `slow`, so `pytest -m "not slow"` is the
fast unit subset and plain `pytest` runs everything."""
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(getattr(item, "path", item.fspath)).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
