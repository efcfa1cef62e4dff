"""LearnableSampleGraph and PatchHashGraph under torch.distributed: 2 gloo processes (CPU).

The distributed loss (features gathered from both ranks with gradients) must equal the
single-process loss on the concatenated batch, also for uneven shards (the last batch).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ccg_layers import LearnableSampleGraph, PatchHashGraph

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data(sizes: tuple[int, ...]):
    g = torch.Generator().manual_seed(0)
    total = sum(sizes)
    features = torch.randn(total, 3, 4, 4, generator=g, dtype=torch.float64)
    logits = torch.randn(total, total, generator=g, dtype=torch.float64)
    return features, logits


def _labels(total: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 6, (total, 8, 8), generator=g)


def _patch_module(distributed: bool) -> PatchHashGraph:
    module = PatchHashGraph(6, 3, code_bits=16, distributed=distributed, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.linspace(-2, 2, 36, dtype=torch.float64).reshape(6, 6))
    return module


def _module(logits: torch.Tensor, distributed: bool) -> LearnableSampleGraph:
    module = LearnableSampleGraph(
        logits.shape[0], form="positional", distributed=distributed, dtype=torch.float64
    )
    with torch.no_grad():
        module.weight.copy_(logits)
    return module


CASES = {"even": (3, 3), "uneven-last-batch": (3, 2)}


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        for name, sizes in CASES.items():
            features, logits = _data(sizes)
            start = sum(sizes[:rank])
            local = features[start : start + sizes[rank]].clone().requires_grad_()
            module = _module(logits, distributed=True)
            loss = module(local)
            loss.backward()
            torch.save(
                {"loss": loss.detach(), "grad": local.grad, "weight_grad": module.weight.grad},
                Path(out) / f"{name}-rank{rank}.pt",
            )
            local_labels = _labels(sum(sizes))[start : start + sizes[rank]]
            patch = _patch_module(distributed=True)
            local.grad = None
            patch_loss = patch(local, local_labels)
            patch_loss.backward()
            torch.save(
                {"loss": patch_loss.detach(), "grad": local.grad, "weight_grad": patch.weight.grad},
                Path(out) / f"{name}-patch-rank{rank}.pt",
            )
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_loss_equals_single_process_loss_on_concatenated_batch(tmp_path):
    # one spawn for both cases: starting two interpreters with torch dominates the cost
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for case, sizes in CASES.items():
        features, logits = _data(sizes)
        _compare(tmp_path, case, sizes, _module(logits, distributed=False), (features,))
        _compare(
            tmp_path,
            f"{case}-patch",
            sizes,
            _patch_module(distributed=False),
            (features, _labels(sum(sizes))),
        )


def _compare(
    out: Path, case: str, sizes: tuple[int, ...], single: torch.nn.Module, args: tuple
) -> None:
    full = args[0].clone().requires_grad_()
    want = single(full, *args[1:])
    want.backward()
    for rank in range(WORLD):
        got = torch.load(out / f"{case}-rank{rank}.pt")
        torch.testing.assert_close(got["loss"], want.detach(), msg=case)
        torch.testing.assert_close(got["weight_grad"], single.weight.grad, msg=case)
        # every rank back-propagates the same global loss and all_gather's backward sums them:
        # the local gradient is WORLD x the global one, which DDP's averaging divides back out
        start = sum(sizes[:rank])
        want_grad = full.grad[start : start + sizes[rank]] * WORLD
        torch.testing.assert_close(got["grad"], want_grad, msg=case)
