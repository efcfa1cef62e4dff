"""Count host-device synchronisations: a helper for tests that assert a sync-free step.

A synchronisation is any call that reads a tensor value back to Python. The methods through
which a library can do that are patched for the duration of a ``with`` block::

    from tests.host_sync import count_host_syncs

    with count_host_syncs() as syncs:
        loss_fn(logits, labels).backward()
    assert sum(syncs.values()) == 0, syncs

The counts are per method name (``Counter``), so a failing assertion shows which ones ran.
Calls made inside PyTorch's C++ code are not seen; on the CPU those are no synchronisation.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: Tensor methods that copy a value to the host (the list of issue 13).
SYNC_METHODS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "nonzero")


def _counting(name: str, fn: Callable[..., Any], counts: Counter[str]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def count_host_syncs() -> Iterator[Counter[str]]:
    """Patch ``torch.Tensor``'s reading methods and ``torch.nonzero`` to count their calls."""
    counts: Counter[str] = Counter()
    own = {name: torch.Tensor.__dict__.get(name) for name in SYNC_METHODS}
    nonzero = torch.nonzero
    try:
        for name in SYNC_METHODS:
            setattr(torch.Tensor, name, _counting(name, getattr(torch.Tensor, name), counts))
        torch.nonzero = _counting("torch.nonzero", nonzero, counts)  # type: ignore[assignment]
        yield counts
    finally:
        torch.nonzero = nonzero  # type: ignore[assignment]
        for name, fn in own.items():
            if fn is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, fn)
