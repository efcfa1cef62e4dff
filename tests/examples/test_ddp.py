"""Two CPU processes (gloo on 127.0.0.1): the graph losses span the global batch under DDP."""

from __future__ import annotations

import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import ccg_layers
from examples.ccg_net import checkpoint as ckpt
from examples.ccg_net import engine, runs
from examples.ccg_net.engine import build_trainee
from examples.ccg_net.runs import train

from .trainer_helpers import tiny_config

WORLD = 2
PER_RANK = 2


def _global_batch(n: int, m: int):
    g = torch.Generator().manual_seed(7)
    images = torch.randn(n, 3, 64, 64, generator=g)
    labels = (torch.rand(n, 14, generator=g) < 0.3).float()
    box_mask = torch.zeros(n, 14, dtype=torch.bool)
    box_mask[0, 2] = box_mask[3, 5] = True
    labels[box_mask] = 1.0
    grid = torch.zeros(n, 14, 8, 8)
    grid[0, 2, 1:3, 2:5] = 1.0
    grid[3, 5, 4:7, 0:2] = 1.0
    superpixels = torch.randint(0, m, (n, 16, 16), generator=g)
    return images, labels, grid, box_mask, superpixels


def _freeze_bn(module: nn.Module) -> None:
    # BatchNorm's batch statistics are per process by design (no SyncBatchNorm here); compare
    # the losses with the running statistics so the only cross-process coupling is the graphs.
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _join_gloo(rank: int, out: str, **kwargs: Any) -> None:
    """Join the 2-process gloo group, with the environment torchrun would describe.

    The processes meet through a file in the test's folder (a ``FileStore``), not a TCP port
    picked free beforehand, which another test running beside this one could take first.
    """
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    store = f"file://{(Path(out) / 'store').absolute()}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=WORLD, **kwargs)


def _worker(rank: int, root: str, out: str) -> None:
    _join_gloo(rank, out)
    try:
        cfg = tiny_config(Path(root), Path(out), batch_size=PER_RANK)
        torch.manual_seed(0)
        trainee = build_trainee(cfg, WORLD)
        _freeze_bn(trainee)
        net = DistributedDataParallel(trainee)
        batch = _global_batch(WORLD * PER_RANK, cfg.num_patches)
        mine = [t[rank * PER_RANK : (rank + 1) * PER_RANK] for t in batch]
        terms, _ = net(*mine)
        terms["loss"].backward()
        # what a process alone would compute on its shard (no gathering): must differ
        with torch.no_grad():
            _, feats = trainee.model(mine[0])
            local_ir, _ = trainee.criterion.graphs(feats, mine[4])
        torch.save(
            {
                "terms": {k: v.detach() for k, v in terms.items()},
                "local_ir": local_ir,
                "grads": {n: p.grad.clone() for n, p in trainee.named_parameters()},
            },
            Path(out) / f"step-rank{rank}.pt",
        )
        # and the whole trainer under DDP: sharded data, shared run directory, synced replicas
        run = train(tiny_config(Path(root), Path(out), batch_size=PER_RANK, run_name="ddp"))
        torch.save({"run": str(run.run_dir)}, Path(out) / f"run-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_graph_losses_span_the_global_batch_under_two_process_ddp(tiny_root, tmp_path):
    mp.spawn(_worker, args=(str(tiny_root), str(tmp_path)), nprocs=WORLD)

    # the single-process reference on the concatenated batch of 4
    cfg = tiny_config(tiny_root, tmp_path, batch_size=WORLD * PER_RANK)
    torch.manual_seed(0)
    trainee = build_trainee(cfg, 1)
    _freeze_bn(trainee)
    batch = _global_batch(WORLD * PER_RANK, cfg.num_patches)
    terms, _ = trainee(*batch)
    terms["loss"].backward()

    ranks = [torch.load(tmp_path / f"step-rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for r in ranks:
        for k in ("ir", "ik", "kr"):
            # every process computes the relation terms of the whole global batch
            torch.testing.assert_close(r["terms"][k], terms[k].detach(), rtol=1e-5, atol=1e-6)
        # ... which a process alone, on its shard, would not
        assert not torch.allclose(r["local_ir"], terms["ir"].detach(), rtol=1e-3)
    # L_base is per-shard; DDP averages it into the global mean
    mean_base = sum(r["terms"]["base"] for r in ranks) / WORLD
    torch.testing.assert_close(mean_base, terms["base"].detach(), rtol=1e-5, atol=1e-6)
    # after DDP's all-reduce every parameter gradient equals the single-process gradient
    for name, p in trainee.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)

    # the trainer ran under DDP on both ranks and wrote one run directory
    runs = [torch.load(tmp_path / f"run-rank{r}.pt", weights_only=True)["run"] for r in range(2)]
    assert runs[0] == runs[1]
    state = ckpt.load(Path(runs[0]) / "checkpoints" / "last.pt")
    assert state["epoch"] == cfg.epochs
    # 27 training images, global batch 4: 7 steps an epoch on each process
    assert state["global_step"] == 7 * cfg.epochs
    assert len(state["rng"]) == WORLD  # each process's RNG states, restored per rank
    # a global batch of 4 leaves no graph constant: no memory (auto), the graph weights learned
    assert not any(".memory_" in k for k in state["criterion"])
    for name in ("graphs.sample_graph", "graphs.patch_graph", "kr_graph"):
        assert state["criterion"][f"{name}.weight"].abs().sum() > 0, name


MEMORY_STEPS = 6


def _memory_batches(m: int):
    """Global batches of 2 (the paper's), a different pair each step, with one box."""
    g = torch.Generator().manual_seed(11)
    for _ in range(MEMORY_STEPS):
        images = torch.randn(2, 3, 64, 64, generator=g)
        labels = (torch.rand(2, 14, generator=g) < 0.3).float()
        box_mask = torch.zeros(2, 14, dtype=torch.bool)
        box_mask[1, 4] = True
        labels[box_mask] = 1.0
        grid = torch.zeros(2, 14, 8, 8)
        grid[1, 4, 2:5, 3:6] = 1.0
        superpixels = torch.randint(0, m, (2, 16, 16), generator=g)
        yield images, labels, grid, box_mask, superpixels


def _memory_state(trainee: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainee.criterion.state_dict().items() if ".memory_" in k}


def _train_steps(net: nn.Module, trainee: nn.Module, shard) -> None:
    opt = torch.optim.SGD(trainee.parameters(), lr=0.05)
    for batch in _memory_batches(trainee.criterion.graphs.patch_graph.num_patches):
        opt.zero_grad()
        terms, _ = net(*shard(batch))
        terms["loss"].backward()
        ccg_layers.commit_memories(net)  # as train_step does after the backward
        opt.step()


def _memory_worker(rank: int, root: str, out: str) -> None:
    _join_gloo(rank, out)
    try:
        # batch 1 per process: the paper's global batch of 2, so the memory is on (auto)
        cfg = tiny_config(Path(root), Path(out), batch_size=1)
        torch.manual_seed(0)
        trainee = build_trainee(cfg, WORLD)
        _freeze_bn(trainee)
        net = DistributedDataParallel(trainee)
        _train_steps(net, trainee, lambda b: [t[rank : rank + 1] for t in b])
        torch.save(
            {
                "memory_size": trainee.criterion.memory_size,
                "memory": _memory_state(trainee),
                "criterion": {
                    k: v.detach().clone() for k, v in trainee.criterion.named_parameters()
                },
            },
            Path(out) / f"memory-rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_partner_memory_holds_the_global_batch_on_every_rank_under_two_process_ddp(
    tiny_root, tmp_path
):
    mp.spawn(_memory_worker, args=(str(tiny_root), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"memory-rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # the single-process reference: the same steps on the concatenated batches of 2
    cfg = tiny_config(tiny_root, tmp_path, batch_size=WORLD)
    torch.manual_seed(0)
    trainee = build_trainee(cfg, 1)
    _freeze_bn(trainee)
    _train_steps(trainee, trainee, lambda b: list(b))
    reference = _memory_state(trainee)

    assert trainee.criterion.memory_size == 8
    assert [r["memory_size"] for r in ranks] == [8, 8]
    # L_IR and L_IK's one memory ("graphs") and L_KR's
    assert sorted(reference) == sorted(
        f"{t}.memory_{q}"
        for t, qs in (
            ("graphs", ("features", "embeddings", "codes")),
            ("kr_graph", ("features", "codes")),
        )
        for q in (*qs, "pointer", "count")
    )
    # 6 steps x 2 images (x 2 attended maps of the one pair for L_KR) into queues of 8
    assert reference["graphs.memory_count"] == reference["kr_graph.memory_count"] == 8
    assert reference["graphs.memory_pointer"] == 12 % 8
    assert reference["kr_graph.memory_pointer"] == 12 % 8
    for key, ref in reference.items():
        # identical on both processes, bit for bit ...
        assert torch.equal(ranks[0]["memory"][key], ranks[1]["memory"][key]), key
        # ... and the single-process run's memory on the concatenated batches
        if ref.is_floating_point():
            torch.testing.assert_close(ranks[0]["memory"][key], ref, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(ranks[0]["memory"][key], ref), key
    # with the memory the graph weights (initialised at 0: the uniform graph) learn at the
    # global batch of 2, the same on every rank
    for name in ("graphs.sample_graph.weight", "graphs.patch_graph.weight", "kr_graph.weight"):
        assert trainee.criterion.get_parameter(name).abs().sum() > 0, name
    for name, p in trainee.criterion.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["criterion"][name], p.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_torchrun_runs_the_trainer_on_two_cpu_processes(tiny_root, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(root / "examples" / "train_ccg.py"),
        *("--preset", "demo", "--setting", "a", "--ablation", "ir+ik+kr"),
        *("--data-root", str(tiny_root)),
        *("--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "runs")),
        *("--run-name", "torchrun", "--image-size", "64", "--tiny-stride", "8"),
        *("--tiny-widths", "8,8,8,8", "--head-channels", "8", "--num-patches", "4"),
        *("--superpixel-size", "16", "--code-bits", "16", "--batch-size", "2"),
        *("--epochs", "1", "--progress", "false", "--cache-images", "false"),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "torchrun"
    state = ckpt.load(run / "checkpoints" / "last.pt")
    # 27 training images, 2 processes x batch 2: 7 global steps; the graph spans 4 images
    assert state["global_step"] == 7
    # the input-conditioned sample graph (its weight is d x d whatever the batch), no memory at
    # a global batch of 4
    assert state["criterion"]["graphs.sample_graph.weight"].shape == (64, 64)
    assert not any(".memory_" in k for k in state["criterion"])
    assert "| T(IoU) | model | Atelectasis" in out.stdout


def _nan_worker(rank: int, root: str, out: str) -> None:
    # rank 1's model outputs NaN from its third step on; both ranks must stop with the
    # non-finite error at the next log point (not hang in mismatched collectives)
    _join_gloo(rank, out, timeout=timedelta(seconds=60))
    seen = {}
    real_ddp = runs.DistributedDataParallel

    def recording_ddp(*args, **kwargs):
        seen["buffer_sync"] = kwargs.get("forward_sync_buffers", kwargs.get("broadcast_buffers"))
        return real_ddp(*args, **kwargs)

    runs.DistributedDataParallel = recording_ddp
    from examples.ccg_net.model import CCGNet

    real_forward = CCGNet.forward
    calls = {"n": 0}

    def nan_on_rank1(self, x):
        logits, feats = real_forward(self, x)
        if self.training:
            calls["n"] += 1
            if rank == 1 and calls["n"] >= 3:
                logits = logits * math.nan
        return logits, feats

    CCGNet.forward = nan_on_rank1
    try:
        cfg = tiny_config(Path(root), Path(out), batch_size=PER_RANK, run_name="nan", log_every=2)
        try:
            train(cfg)
            result = "finished"
        except engine.NonFiniteLossError as err:
            result = str(err)
        torch.save(
            {"result": result, "buffer_sync": seen["buffer_sync"]},
            Path(out) / f"nan-rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_with_the_non_finite_error(tiny_root, tmp_path):
    mp.spawn(_nan_worker, args=(str(tiny_root), str(tmp_path)), nprocs=WORLD)
    for r in range(WORLD):
        got = torch.load(tmp_path / f"nan-rank{r}.pt", weights_only=True)
        assert got["result"].startswith("non-finite loss at epoch 1, step 3 "), got["result"]
        assert got["buffer_sync"] is False  # no buffer broadcast every step
