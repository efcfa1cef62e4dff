"""Doctests that need pydicom carry the ``extras`` marker, so ``make test-min`` deselects them."""

from __future__ import annotations

import pytest
from _pytest.doctest import DoctestItem


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        examples = item.dtest.examples if isinstance(item, DoctestItem) and item.dtest else []
        if any("pydicom" in example.source for example in examples):
            item.add_marker(pytest.mark.extras)
