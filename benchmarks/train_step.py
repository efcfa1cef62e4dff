"""Time per training step of CCG-Net with all four losses (Eq. 11) against the baseline
(L_base only), at the demo preset and at the paper's configuration, and peak memory.

A step is the trainer's own ``examples.ccg_net.engine.train_step`` (forward, the losses,
backward, the SGD update; float16 autocast and the gradient scaler on CUDA) with value checks
off, as the trainer runs every step but the first; the batch is a fixed random one in the
loader's form (1-channel uint8 images, uint8 superpixel labels), already on the device, so data
loading is not timed (see ``benchmarks/data_loading.py``). The host synchronisations of one step
are counted (``tests/host_sync.py``) and shown next to the times. Both models run in the same process, their steps interleaved
(baseline, CCG, baseline, CCG, ...), so the ratio is measured in one run under the same
conditions; the table shows medians. The three relation terms are also timed alone (forward
and backward from fixed C5 feature maps), which resolves their cost below the noise of the
ratio. The floating-point operations of one step of each model are counted as well
(``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions, forward and
backward), which gives the relation terms' share of the step independently of the machine and
its load: the floor any implementation of the same arithmetic reaches where the step is
compute-bound. Peak memory is measured for each model in a fresh
subprocess (CUDA: ``torch.cuda.max_memory_allocated`` during the steps; CPU: the peak resident
set size of the whole process, ``ru_maxrss``, which includes torch itself, the model and the
optimiser state).

    python benchmarks/train_step.py                 # demo, paper and paper-qk256
    python benchmarks/train_step.py --settings demo --steps 20

``paper-qk256`` is the paper configuration with ``--kr-qk-channels 256`` (a rank-256
``W_P = W_u^T W_v`` instead of the paper's full 2048 x 2048 matrix).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import ccg_layers  # noqa: E402
from examples.ccg_net.config import LOSS_TERMS, PRESETS, TrainConfig  # noqa: E402
from examples.ccg_net.data import grid_size  # noqa: E402
from examples.ccg_net.engine import (  # noqa: E402
    Trainee,
    build_trainee,
    make_optimizer,
    train_step,
)
from tests.host_sync import count_host_syncs  # noqa: E402

SETTINGS = ("demo", "paper", "paper-qk256")


def setting(name: str) -> TrainConfig:
    if name == "demo":
        return TrainConfig(preset="demo", **PRESETS["demo"])
    # the paper: ResNet-50 C5, 512x512, batch 2 (random weights: the timing does not care)
    cfg = TrainConfig(preset="paper", weights="none")
    if name == "paper-qk256":
        cfg = dataclasses.replace(cfg, kr_qk_channels=256)
    elif name != "paper":
        raise ValueError(f"--settings: each must be one of {SETTINGS}, got {name!r}")
    return cfg


def make_batch(cfg: TrainConfig, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n, s, k, gs = cfg.batch_size, cfg.image_size, cfg.num_classes, grid_size(cfg)
    images = torch.randint(0, 256, (n, 1, s, s), generator=g, dtype=torch.uint8)
    labels = (torch.rand(n, k, generator=g) < 0.3).float()
    box_mask = torch.zeros(n, k, dtype=torch.bool)
    box_mask[0, 0] = True
    labels[0, 0] = 1.0
    grid = torch.zeros(n, k, gs, gs)
    grid[0, 0, : gs // 4, : gs // 4] = 1.0
    sp_size = cfg.superpixel_size
    superpixels = torch.randint(
        0, cfg.num_patches, (n, sp_size, sp_size), generator=g, dtype=torch.uint8
    )
    batch = {
        "image": images,
        "labels": labels,
        "grid": grid,
        "box_mask": box_mask,
        "superpixels": superpixels,
    }
    return {k: v.to(device) for k, v in batch.items()}


Model = tuple[Trainee, torch.optim.Optimizer, torch.amp.GradScaler]


def build(cfg: TrainConfig, terms: tuple[str, ...], device: torch.device) -> Model:
    torch.manual_seed(0)
    trainee = build_trainee(dataclasses.replace(cfg, losses=terms), 1).to(device)
    trainee.train()
    opt, _ = make_optimizer(cfg, trainee)
    return trainee, opt, torch.amp.GradScaler(device.type, enabled=device.type == "cuda")


def step(model: Model, batch: dict[str, torch.Tensor], device: torch.device) -> float:
    """One ``train_step`` of the trainer (value checks off, as after its first step), timed."""
    trainee, opt, scaler = model
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with ccg_layers.set_value_checks(False):
        train_step(trainee, batch, opt, scaler, use_amp=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def syncs_per_step(model: Model, batch: dict[str, torch.Tensor], device: torch.device) -> int:
    """Host synchronisations of one step (Tensor.item, __bool__, ..., tolist, nonzero)."""
    with count_host_syncs() as counts:
        step(model, batch, device)
    return sum(counts.values())


def time_pair(cfg: TrainConfig, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    batch = make_batch(cfg, device)
    models = {"baseline": build(cfg, ("base",), device), "ccg": build(cfg, LOSS_TERMS, device)}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(warmup + steps):
        for name, model in models.items():
            t = step(model, batch, device)
            if i >= warmup:
                times[name].append(t)
    out = {k: statistics.median(v) for k, v in times.items()}
    # after the timed steps: the memory holds partners, as in training
    for name, model in models.items():
        out[f"{name}_syncs"] = syncs_per_step(model, batch, device)
        out[f"{name}_flops"] = step_flops(model, batch, device)
    return out


def step_flops(model: Model, batch: dict[str, torch.Tensor], device: torch.device) -> float:
    """Floating-point operations of one step (matmuls and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step(model, batch, device)
    return float(counter.get_total_flops())


def time_relation_terms(cfg: TrainConfig, steps: int, device: torch.device) -> float:
    """Median time of the three relation terms alone (forward + backward, from fixed C5 maps)."""
    batch = make_batch(cfg, device)
    labels, grid, box_mask = batch["labels"], batch["grid"], batch["box_mask"]
    superpixels = batch["superpixels"].long()
    trainee, _, _ = build(cfg, LOSS_TERMS, device)
    with torch.no_grad():
        logits, feats = trainee.model(batch["image"])
    crit = trainee.criterion
    times = []
    for i in range(steps + 2):
        crit.zero_grad(set_to_none=True)  # as train_step does before its forward
        f = feats.detach().requires_grad_()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ccg_layers.set_value_checks(False):
            terms = crit(logits.detach(), f, labels, grid, box_mask, superpixels)
            (terms["loss"] - crit.weights["base"] * terms["base"]).backward()
            ccg_layers.commit_memories(crit)  # as train_step does after its backward
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory(cfg_name: str, model: str, steps: int, device: torch.device) -> float:
    """Peak memory (MiB) of ``steps`` training steps of one model, in this (fresh) process."""
    cfg = setting(cfg_name)
    terms = ("base",) if model == "baseline" else LOSS_TERMS
    batch = make_batch(cfg, device)
    model = build(cfg, terms, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step(model, batch, device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    for _ in range(steps):
        step(model, batch, device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--steps", type=int, default=0, help="timed steps per model (0: per setting)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--_memory", nargs=2, metavar=("SETTING", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args._memory:
        print(json.dumps(peak_memory(args._memory[0], args._memory[1], 3, device)))
        return

    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", torch {torch.__version__}"
    )
    rows = []
    for name in args.settings.split(","):
        cfg = setting(name)
        steps = args.steps or (20 if name == "demo" else 5)
        t = time_pair(cfg, steps, warmup=2, device=device)
        t["relation"] = time_relation_terms(cfg, steps, device)
        mem = {}
        for model in ("baseline", "ccg"):
            cmd = [sys.executable, __file__, "--device", str(device), "--_memory", name, model]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            mem[model] = float(out.strip().splitlines()[-1])
        desc = (
            f"{cfg.backbone} {cfg.image_size}px, batch {cfg.batch_size}, "
            f"{grid_size(cfg)}x{grid_size(cfg)} grid, m={cfg.num_patches}"
        )
        if cfg.kr_qk_channels:
            desc += f", W_P rank {cfg.kr_qk_channels}"
        rows.append((name, desc, steps, t, mem))
    print()
    print(
        "| setting | model, input | steps | baseline s/step | CCG s/step | CCG / baseline "
        "| L_IR+L_IK+L_KR alone s (share of baseline step) | host syncs/step baseline, CCG "
        "| peak mem baseline (MiB) | peak mem CCG (MiB) | CCG - baseline (MiB) "
        "| GFLOP/step baseline | L_IR+L_IK+L_KR GFLOP (share of baseline) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, desc, steps, t, mem in rows:
        relation_flops = t["ccg_flops"] - t["baseline_flops"]
        print(
            f"| {name} | {desc} | {steps} | {t['baseline']:.4f} | {t['ccg']:.4f} | "
            f"{t['ccg'] / t['baseline']:.3f} | "
            f"{t['relation']:.4f} ({100 * t['relation'] / t['baseline']:.1f}%) | "
            f"{t['baseline_syncs']:.0f}, {t['ccg_syncs']:.0f} | "
            f"{mem['baseline']:.0f} | {mem['ccg']:.0f} | "
            f"{mem['ccg'] - mem['baseline']:+.0f} | "
            f"{t['baseline_flops'] / 1e9:.1f} | "
            f"{relation_flops / 1e9:.2f} ({100 * relation_flops / t['baseline_flops']:.2f}%) |"
        )


if __name__ == "__main__":
    main()
