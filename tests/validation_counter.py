"""Count how often each input is validated: a helper for the "validated once" tests.

Every check of ccg-layers starts with :func:`ccg_layers.validation.check_tensor` on the
argument it names, and the value checks (which read values, i.e. synchronise with the device)
are :func:`~ccg_layers.validation.check_finite`, ``check_index``, ``check_binary`` and the
finiteness rule of the distances. :func:`count_checks` wraps all of them, wherever a file of
``ccg_layers`` imported them, and counts the calls per ``(check, argument name)``::

    with count_checks() as calls:
        graph(features)
    assert calls[("check_tensor", "features")] == 1
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ccg_layers import distance, validation

CHECKS: dict[str, Callable[..., Any]] = {
    "check_tensor": validation.check_tensor,
    "check_finite": validation.check_finite,
    "check_index": validation.check_index,
    "check_binary": validation.check_binary,
    "check_finite_through_distances": distance.check_finite_through_distances,
}


def _counting(check: str, fn: Callable[..., Any], calls: Counter[tuple[str, str]]) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        name = args[1] if len(args) > 1 else kwargs.get("name", "?")
        if check == "check_finite_through_distances":
            name = "distances"
        calls[(check, str(name))] += 1
        return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def count_checks() -> Iterator[Counter[tuple[str, str]]]:
    """Count the checks run inside the block, per ``(check, argument name)``; undone after."""
    calls: Counter[tuple[str, str]] = Counter()
    with pytest.MonkeyPatch.context() as monkeypatch:
        _patch(monkeypatch, calls)
        yield calls


def _patch(monkeypatch: pytest.MonkeyPatch, calls: Counter[tuple[str, str]]) -> None:
    for module_name, module in list(sys.modules.items()):
        if module is None or not (
            module_name == "ccg_layers" or module_name.startswith("ccg_layers.")
        ):
            continue
        for check, fn in CHECKS.items():
            if getattr(module, check, None) is fn:
                monkeypatch.setattr(module, check, _counting(check, fn, calls))


def repeated(calls: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The ``(check, argument)`` pairs that ran more than once."""
    return {key: count for key, count in calls.items() if count > 1}
