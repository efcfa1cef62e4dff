"""Distributed helpers: gather a batch from every rank of a process group, with gradients."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor

from ccg_layers.validation import check_tensor

__all__ = ["all_gather_batch"]


def all_gather_batch(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate the ``(n_r, ...)`` batches of all ranks in rank order, keeping gradients.

    Uses :func:`torch.distributed.nn.functional.all_gather` (its backward sums every rank's
    gradient for this rank's slice back onto it); batches of different sizes (the last batch of
    a sharded epoch) are padded for the collective and trimmed after it. Without an initialised
    process group, returns ``x``.

    Example:
        >>> import torch
        >>> all_gather_batch(torch.ones(2, 3)).shape  # not distributed: unchanged
        torch.Size([2, 3])
    """
    check_tensor(x, "x")
    if not (dist.is_available() and dist.is_initialized()):
        return x
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size(group)
    if world == 1:
        return x
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = x
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        padded = torch.cat([x, pad], dim=0)
    with warnings.catch_warnings():
        # torch >= 2.10 marks it deprecated in favour of a private API; it still works (and is
        # what gloo supports): keep the documented public function and silence the notice.
        warnings.filterwarnings(
            "ignore", message=".*all_gather is deprecated", category=FutureWarning
        )
        parts = all_gather(padded, group=group)  # type: ignore[no-untyped-call]
    return torch.cat([part[:c] for part, c in zip(parts, counts, strict=True)], dim=0)
