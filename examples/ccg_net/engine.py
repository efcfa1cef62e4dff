"""The engine of the reference trainer, top to bottom: ``train_step`` -> ``train_one_epoch``
-> ``evaluate`` (as torchvision's ``references/classification/train.py``); the run around them
(``train``, ``compare``, ``reproduce``) is in :mod:`.runs`.

The step never waits for the device: value checks run on the first step only, the loss terms
are summed on the device and read every ``--log-every`` steps (and at checkpoints), where a
non-finite loss, flagged on the device, stops every process together.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import ccg_layers

from .config import LOSS_TERMS, TERM_LABELS, TrainConfig
from .data import Data, grid_size, reference_maps, to_device
from .losses import CCGLoss
from .model import CCGNet, model_from_config
from .report import EvalResults, score_maps


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class NonFiniteWeightsError(NonFiniteLossError):
    """A checkpoint about to be written held a NaN or infinite tensor (weights, buffers such as
    BatchNorm's running statistics, or optimiser state); it was not written."""


# --------------------------------------------------------------------------- model + loss


class Trainee(nn.Module):
    """Model and loss in one module, so that DDP syncs the graph parameters too.

    ``forward`` returns ``(terms, finite)``: the loss terms of :class:`CCGLoss` and a 0-d bool
    on the device, whether the logits, features and loss are all finite. Non-finite outputs are
    replaced by zeros before the loss (and the loss by NaN after it), so that a process whose
    batch went wrong still takes part in every collective of the relation terms and of DDP.
    """

    def __init__(self, model: CCGNet, criterion: CCGLoss) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self._compiled: tuple[Callable[..., Any], Callable[..., Any]] | None = None

    def compile_parts(self, *, fullgraph_loss: bool = True) -> None:
        """``torch.compile`` the model and the loss (the loss as one graph); the compiled
        versions run whenever value checks are off (every step but the first)."""
        model = torch.compile(self.model)
        criterion = torch.compile(self.criterion, fullgraph=fullgraph_loss)
        object.__setattr__(self, "_compiled", (model, criterion))  # not submodules

    def forward(
        self,
        images: Tensor,
        labels: Tensor,
        grid: Tensor,
        box_mask: Tensor,
        superpixels: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        model: Callable[..., Any] = self.model
        criterion: Callable[..., Any] = self.criterion
        if self._compiled is not None and not ccg_layers.value_checks_enabled():
            model, criterion = self._compiled
        logits, feats = model(images)
        finite = torch.isfinite(logits).all() & torch.isfinite(feats).all()
        logits = torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0)
        feats = torch.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
        sp = superpixels.long() if superpixels is not None else None
        terms = criterion(logits, feats, labels, grid, box_mask, sp)
        finite = finite & torch.isfinite(terms["loss"])
        terms["loss"] = torch.where(finite, terms["loss"], math.nan)
        return terms, finite


def build_trainee(cfg: TrainConfig, world: int, *, weights: str | None = None) -> Trainee:
    """CCG-Net and its loss; ``weights`` overrides ``cfg.weights`` (e.g. "none" on resume)."""
    model = model_from_config(cfg, cfg.weights if weights is None else weights)
    criterion = CCGLoss(cfg, model.feature_channels, cfg.batch_size * world)
    return Trainee(model, criterion)


def init_head_bias(model: CCGNet, cfg: TrainConfig, data: Data) -> None:
    """``--head-bias-init``: from the training split's class prevalence, or a constant."""
    if cfg.head_bias_init == "prior":
        rows = [data.index.position(n) for n in data.split["train"]]
        prior = data.index.labels[rows].float().mean(0)
        model.init_head_bias(prior, grid_size(cfg) ** 2, cfg.noisy_or_floor)
    else:
        nn.init.constant_(model.head[-1].bias, float(cfg.head_bias_init))  # type: ignore[arg-type]


def make_optimizer(
    cfg: TrainConfig, module: nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params: list[Any] = [p for p in module.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
    return opt, sched


# --------------------------------------------------------------------------- one step


def train_step(
    net: nn.Module,
    batch: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    use_amp: bool,
) -> tuple[dict[str, Tensor], Tensor]:
    """Forward, the losses, backward, the SGD update, on a batch already on the device.

    Returns the detached loss terms and the 0-d ``finite`` flag, both on the device: nothing
    here reads a value back to the host (with value checks off and AMP off; the gradient
    scaler's inf check reads one flag per step).
    """
    device_type = batch["image"].device.type
    with torch.autocast(device_type, dtype=torch.float16, enabled=use_amp):
        terms, finite = net(
            batch["image"],
            batch["labels"],
            batch["grid"],
            batch["box_mask"],
            batch.get("superpixels"),
        )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["loss"]).backward()
    ccg_layers.commit_memories(net)  # the partner memories enqueue the batch after the backward
    scaler.step(optimizer)
    scaler.update()
    return {k: v.detach() for k, v in terms.items()}, finite


# --------------------------------------------------------------------------- one epoch


@dataclass
class Progress:
    """Where a run is: epoch (0-based), step within it, global step; ``first_step`` is the
    global step this process started (or resumed) at, whose step runs with value checks."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    first_step: int = 0
    last_checkpoint: Path | None = None
    run_dir: Path | None = None
    # the epoch's running sums of the loss terms and its steps, saved in every checkpoint, so
    # that an epoch resumed mid-way reports the means over all of its steps
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_steps: int = 0


@dataclass
class EpochLog:
    """What an epoch reports: the mean of each loss term and the images per second."""

    means: dict[str, float] = field(default_factory=dict)
    images_per_s: float = 0.0


def train_one_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data_loader: Iterable[dict[str, Any]],
    device: torch.device,
    cfg: TrainConfig,
    progress: Progress,
    *,
    world: int = 1,
    use_amp: bool = False,
    save_checkpoint: Callable[[], None] | None = None,
    bar: Any = None,
) -> EpochLog:
    """One pass over ``data_loader`` (this process's batches, from ``progress.step_in_epoch``).

    Every ``cfg.log_every`` steps, at a checkpoint and at the end, the terms summed on the
    device are read once (the only host synchronisation), the non-finite flag is combined over
    the processes, the progress bar moves, and a due checkpoint is written.
    """
    names = (*LOSS_TERMS, "loss")
    checks_default = ccg_layers.value_checks_enabled()
    window = torch.zeros(len(names), device=device)
    first_bad = torch.full((), math.inf, device=device)
    recent: dict[int, tuple[int, list[str]]] = {}
    epoch_sums = progress.epoch_sums  # from the checkpoint when the epoch was resumed mid-way
    for k in names:
        epoch_sums.setdefault(k, 0.0)
    keys: list[str] = []
    count, since = 0, 0
    t0 = time.perf_counter()

    def log_point() -> None:
        """The one read-back of a window of steps."""
        nonlocal first_bad, since
        if world > 1:
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        values = torch.cat([window[: len(keys)], first_bad[None]]).tolist()
        if math.isfinite(values[-1]):
            _raise_non_finite(int(values[-1]), progress, recent)
        for k, v in zip(keys, values, strict=False):
            epoch_sums[k] += v
        if bar is not None:
            rate = count * cfg.batch_size * world / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{values[keys.index('loss')] / since:.4f}", img_s=f"{rate:.1f}")
            bar.update(since)
        window.zero_()
        recent.clear()
        since = 0

    for batch in data_loader:
        checks = checks_default and progress.global_step == progress.first_step
        with ccg_layers.set_value_checks(checks):
            terms, finite = train_step(
                net, to_device(batch, device), optimizer, scaler, use_amp=use_amp
            )
        progress.step_in_epoch += 1
        progress.global_step += 1
        progress.epoch_steps += 1
        keys = keys or [k for k in names if k in terms]
        window[: len(keys)] += torch.stack([terms[k].float() for k in keys])
        first_bad = torch.where(finite, first_bad, first_bad.clamp(max=progress.global_step))
        recent[progress.global_step] = (progress.step_in_epoch, list(batch["names"]))
        count += 1
        since += 1
        due_ckpt = bool(cfg.checkpoint_every) and progress.global_step % cfg.checkpoint_every == 0
        if due_ckpt or progress.global_step % cfg.log_every == 0:
            log_point()
        if due_ckpt and save_checkpoint is not None:
            save_checkpoint()
    if since:
        log_point()  # the end of the epoch
    elapsed = time.perf_counter() - t0
    return EpochLog(
        {k: epoch_sums[k] / max(progress.epoch_steps, 1) for k in keys},
        count * cfg.batch_size * world / max(elapsed, 1e-9),
    )


def _raise_non_finite(
    global_step: int, progress: Progress, recent: dict[int, tuple[int, list[str]]]
) -> None:
    step, names = recent.get(global_step, (-1, []))
    last = progress.last_checkpoint
    keep = (
        f"the last good checkpoint is {last}"
        if last is not None and last.is_file()
        else "no checkpoint had been written yet"
    )
    raise NonFiniteLossError(
        f"non-finite loss at epoch {progress.epoch + 1}, step {step} (global step "
        f"{global_step}). Training stopped without saving; {keep} (resume with --resume "
        f"{progress.run_dir} --lr LOWER, or check the data: images {names})."
    )


# --------------------------------------------------------------------------- evaluation


def progress_bar(total: int, desc: str, position: int = 0, initial: int = 0) -> Any:
    """A tqdm bar labelled ``desc`` (run name and phase) on line ``position``, so that runs side
    by side each keep their own line; it vanishes when closed (the per-epoch line stays)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        position=position,
        leave=False,
        dynamic_ncols=True,
    )


@torch.no_grad()
def evaluate(
    model: CCGNet,
    data_loader: Iterable[dict[str, Any]],
    device: torch.device,
    data: Data,
    *,
    desc: str | None = None,
    position: int = 0,
) -> EvalResults:
    """Probability maps (test-time upsampled) and image scores of the test set, scored:
    localization accuracy per class and T(IoU), AUC per class, with the image names.

    With ``desc``, a progress bar of that label (:func:`progress_bar`) counts the batches.
    """
    was_training = model.training
    model.eval()
    maps, scores = [], []
    total = len(data_loader) if hasattr(data_loader, "__len__") else 0
    bar = None if desc is None else progress_bar(total, desc, position)
    try:
        for batch in data_loader:
            logits, feats = model(batch["image"].to(device, non_blocking=True))
            maps.append(torch.sigmoid(logits.float()).cpu())
            scores.append(model.image_scores(feats).cpu())
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    model.train(was_training)
    return score_maps(torch.cat(maps), data.test, torch.cat(scores))


def epoch_line(
    name: str,
    epoch: int,
    epochs: int,
    log: EpochLog,
    lr: float,
    results: EvalResults | None,
) -> str:
    """The console's one line per epoch: the mean of each loss term, the learning rate, the
    throughput, and (in an evaluated epoch) both mean AUCs (:data:`.report.AUC_NAMES`) and
    the mean localization accuracy at T(IoU)=0.3 over the boxed classes."""
    terms = ", ".join(f"{TERM_LABELS[k]} {v:.4g}" for k, v in log.means.items() if k in TERM_LABELS)
    line = f"[{name}] epoch {epoch}/{epochs}: "
    if "loss" in log.means:
        line += f"loss {log.means['loss']:.4g} ({terms}), "
    else:  # resumed from a checkpoint at the epoch's very end
        line += "no step left (resumed at the epoch's end), "
    line += f"lr {lr:.3g}, {log.images_per_s:.1f} img/s"
    if results is None:
        return line + "; not evaluated this epoch (--eval-every)"
    acc = results.mean_at(0.3)
    return f"{line}; test {results.auc_means_text()}, mean accuracy at T(IoU)=0.3 {acc:.3f}"


def reference_results(data: Data, cfg: TrainConfig) -> dict[str, EvalResults]:
    """The reference maps of :func:`.data.reference_maps`, scored like a model."""
    return {
        k: score_maps(m, data.test) for k, m in reference_maps(data.index, data.split, cfg).items()
    }
