"""Distributed helpers (all_gather_batch), and LearnableSampleGraph and PatchHashGraph under
torch.distributed: 2 gloo processes (CPU).

The distributed loss (features gathered from both ranks with gradients) must equal the
single-process loss on the concatenated batch, also for uneven shards (the last batch). With a
memory of partners, the queues hold the gathered global batch: identical on both ranks and
equal to the single-process run on the concatenated batches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ccg_layers import LearnableSampleGraph, PatchHashGraph, all_gather_batch

WORLD = 2


def _store(folder: Path) -> str:
    """The rendezvous of a process group through a file in ``folder`` (a ``FileStore``).

    A TCP store on a port picked free beforehand can collide with another group picking the
    same port at the same moment (pytest-xdist runs two tests at once; this module's one-rank
    group and its 2-process fixture may run side by side), the likely cause of a SIGABRT seen
    twice in the 2-process fixture's gloo. A file is this group's alone.
    """
    return f"file://{(folder / 'store').absolute()}"


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
MEMORY_STEPS = ((2, 2), (1, 1), (2, 1))  # per-rank batch sizes of 3 steps; the queue wraps


def _memory_modules(distributed: bool, contrast: bool = False) -> dict[str, torch.nn.Module]:
    kw = {"distributed": distributed, "dtype": torch.float64}
    if contrast:  # beyond the paper: the contrast form, its memory also queues the labels
        kw["contrast_margin"] = 12.0  # above most distances: pushes
    return {
        "ir": LearnableSampleGraph(in_channels=3, embed_dim=4, memory_size=5, **kw),
        "ik": PatchHashGraph(6, 3, code_bits=16, memory_size=5, **kw),
        "kr": PatchHashGraph(6, 3, code_bits=16, memory_size=7, **kw),
    }


def _memory_batch(step: int, total: int):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(total, 3, 4, 4, generator=g, dtype=torch.float64)
    xb = torch.randn(total, 3, 4, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (2, total, 8, 8), generator=g)
    return x, xb, labels


def _findings(step: int, total: int) -> torch.Tensor:
    """``(2, total, 4)`` bool multi-hot image labels (of x and of xb), some "No finding" rows."""
    g = torch.Generator().manual_seed(200 + step)
    return torch.rand(2, total, 4, generator=g) < 0.3


def _memory_step(modules, x, xb, labels, optimisers, y=None) -> dict[str, torch.Tensor]:
    if y is None:
        losses = {
            "ir": modules["ir"](x),
            "ik": modules["ik"](x, labels[0]),
            "kr": modules["kr"](x, labels[0], xb, labels[1]),
        }
    else:
        losses = {
            "ir": modules["ir"](x, image_labels=y[0]),
            "ik": modules["ik"](x, labels[0], image_labels=y[0]),
            "kr": modules["kr"](
                x, labels[0], xb, labels[1], image_labels=y[0], image_labels_b=y[1]
            ),
        }
    for opt in optimisers:
        opt.zero_grad()
    sum(losses.values()).backward()
    for opt in optimisers:
        opt.step()
    return {k: v.detach() for k, v in losses.items()}


def _memory_worker(rank: int, out: str, contrast: bool = False) -> None:
    modules = _memory_modules(distributed=True, contrast=contrast)
    opts = [torch.optim.SGD(m.parameters(), lr=1.0) for m in modules.values()]
    losses = []
    for step, sizes in enumerate(MEMORY_STEPS):
        x, xb, labels = _memory_batch(step, sum(sizes))
        start = sum(sizes[:rank])
        part = slice(start, start + sizes[rank])
        y = _findings(step, sum(sizes))[:, part] if contrast else None
        losses.append(_memory_step(modules, x[part], xb[part], labels[:, part], opts, y))
    torch.save(
        {"losses": losses, "state": {k: m.state_dict() for k, m in modules.items()}},
        Path(out) / f"memory{'-contrast' if contrast else ''}-rank{rank}.pt",
    )


def _worker(rank: int, init_method: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
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
        _memory_worker(rank, out)
        _memory_worker(rank, out, contrast=True)
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    """One 2-process run for every case: starting two interpreters with torch dominates."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_store(out), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.slow
def test_distributed_loss_equals_single_process_loss_on_concatenated_batch(spawned):
    tmp_path = spawned
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


@pytest.mark.slow
@pytest.mark.parametrize("contrast", [False, True], ids=["pull", "contrast"])
def test_distributed_memory_is_the_global_batch_on_every_rank(spawned, contrast):
    tag = "-contrast" if contrast else ""
    ranks = [torch.load(spawned / f"memory{tag}-rank{r}.pt") for r in range(WORLD)]
    single = _memory_modules(distributed=False, contrast=contrast)
    opts = [torch.optim.SGD(m.parameters(), lr=1.0) for m in single.values()]
    for step, sizes in enumerate(MEMORY_STEPS):
        x, xb, labels = _memory_batch(step, sum(sizes))
        y = _findings(step, sum(sizes)) if contrast else None
        want = _memory_step(single, x, xb, labels, opts, y)
        for rank in ranks:
            for term in ("ir", "ik"):  # all-pairs forms: the global loss on every rank
                torch.testing.assert_close(rank["losses"][step][term], want[term], msg=term)
    for term, module in single.items():
        assert int(module.memory_count) == module.memory_size  # it wrapped around
        for key, value in module.state_dict().items():
            for rank in ranks:
                # the queues (and for ir/ik the graph parameters) match the single process;
                # kr's pair loss is local, so only its memory is global
                if term == "kr" and key == "weight":
                    continue
                torch.testing.assert_close(rank["state"][term][key], value, msg=f"{term}.{key}")
        if contrast:
            assert "memory_image_labels" in module.state_dict()
        for key in ("memory_features", "memory_codes", "memory_embeddings", "memory_image_labels"):
            if key in module.state_dict():
                assert torch.equal(ranks[0]["state"][term][key], ranks[1]["state"][term][key])


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


def test_all_gather_batch_without_process_group_is_identity():
    x = torch.randn(3, 2)
    assert all_gather_batch(x) is x


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of this process alone (world size 1), destroyed afterwards."""
    dist.init_process_group("gloo", init_method=_store(tmp_path), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_with_a_process_group_of_one_the_distributed_modules_equal_the_local_ones(
    one_process_group,
):
    # world size 1: every gather is the identity, so `distributed=True` changes nothing; the
    # modules' gathering paths (features, labels, hash input, image labels) still run
    from ccg_layers import RelationGraphs

    assert dist.is_initialized()
    assert dist.get_world_size() == 1
    x = torch.randn(3, 2, device="cpu")
    assert all_gather_batch(x) is x
    features, _ = _data((4,))
    labels = _labels(4)
    hash_input = features.flip(0)
    image_labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    kw = {"code_bits": 16, "contrast_margin": 0.5, "dtype": torch.float64}
    got, want = (PatchHashGraph(6, 3, distributed=d, **kw) for d in (True, False))
    torch.testing.assert_close(
        got(features, labels, hash_input=hash_input, image_labels=image_labels),
        want(features, labels, hash_input=hash_input, image_labels=image_labels),
        rtol=0,
        atol=0,
    )
    got_rg, want_rg = (
        RelationGraphs(3, 6, memory_size=2, distributed=d, **kw) for d in (True, False)
    )
    for _ in range(2):  # the second call reads the memory the first filled
        a = got_rg(features, labels, image_labels=image_labels)
        b = want_rg(features, labels, image_labels=image_labels)
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
    assert int(got_rg.memory_count) == 2
