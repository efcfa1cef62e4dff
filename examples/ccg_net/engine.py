"""The reference trainer, top to bottom: ``train_step`` -> ``train_one_epoch`` -> ``evaluate``
-> ``train`` (the run: data, model, resume, epochs, report) -> ``compare`` (the demo's
baseline-vs-CCG run).

The step never waits for the device: value checks run on the first step only, the loss terms
are summed on the device and read every ``--log-every`` steps (and at checkpoints), where a
non-finite loss, flagged on the device, stops every process together.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import inspect
import io
import json
import math
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import ccg_layers
from ccg_layers.datasets import save_split

from . import checkpoint as ckpt
from .config import LOSS_TERMS, TrainConfig, differs_from_demo, load_config, resume_config
from .data import Data, build_data, grid_size, reference_maps, to_device
from .losses import CCGLoss, warn_literal_form_without_boxes
from .model import CCGNet, build_model, resolve_weights
from .report import (
    AUC_NAMES,
    EvalResults,
    demo_preamble,
    gap_against_seed_spread,
    score_maps,
    study_variant,
    write_report,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class NonFiniteWeightsError(NonFiniteLossError):
    """A checkpoint about to be written held a NaN or infinite tensor (weights, buffers such as
    BatchNorm's running statistics, or optimiser state); it was not written."""


class RunDirError(ValueError):
    """``--run-name`` names a directory that already holds a run (its ``config.json``)."""


class SimulatedKillError(RuntimeError):
    """Raised by ``--stop-after-steps``: the run stops abruptly, as if killed (for tests)."""


class DeviceError(ValueError):
    """The requested device is not available."""


# --------------------------------------------------------------------------- process setup


@contextlib.contextmanager
def distributed_from_env() -> Iterator[tuple[int, int, int]]:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
        try:
            yield dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
        finally:
            dist.destroy_process_group()
    elif dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    else:
        yield 0, 1, 0


def select_device(cfg: TrainConfig, local_rank: int = 0, world: int = 1) -> torch.device:
    """The device of this process.

    ``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. Under ``torchrun``
    (``world > 1``) every process takes ``cuda:LOCAL_RANK`` whatever index ``--device`` names
    (``--device cuda:0`` must not put every process on GPU 0).

    Raises:
        DeviceError: CUDA asked for and not available, or an unknown device string.
    """
    if cfg.device == "auto":
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        dev = torch.device(cfg.device)
    except RuntimeError:
        raise DeviceError(
            f"--device {cfg.device}: not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {cfg.device}: no CUDA GPU is visible to PyTorch here; "
                "use --device cpu (or auto)"
            )
        if world > 1 or dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def amp_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """float16 autocast + GradScaler: ``auto`` turns it on for CUDA; ``on`` forces it anywhere.

    On a CPU it is slower than float32 and only there to run the very same code path in tests.
    """
    if cfg.amp == "off":
        return False
    return cfg.amp == "on" or device.type == "cuda"


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


def model_from_config(cfg: TrainConfig, weights: str) -> CCGNet:
    """The model a configuration describes, with backbone ``weights`` (a path, "imagenet",
    "none", or "twin": the file of :func:`.pretrain.twin_weights`, made beforehand by
    :func:`train` or :func:`compare`)."""
    if weights == "twin":
        from .pretrain import PRETRAIN_SEED, default_output

        weights = str(default_output(cfg, PRETRAIN_SEED))
    model = build_model(
        cfg.backbone,
        weights,
        num_classes=cfg.num_classes,
        head_channels=cfg.head_channels,
        test_upsample=cfg.test_upsample,
        freeze_bn=cfg.freeze_bn,
        tiny_widths=tuple(cfg.tiny_widths),
        tiny_stride=cfg.tiny_stride,
    )
    model.noisy_or_floor = cfg.noisy_or_floor
    return model


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
    if cfg.graph_lr_mult != 1.0:
        # --graph-lr-mult: the relation graphs' parameters in a group of their own
        criterion = getattr(module, "criterion", None)
        graphs = [getattr(criterion, k, None) for k in ("graphs", "ir", "ik", "kr_graph")]
        ids = {id(p) for g in graphs if g is not None for p in g.parameters() if p.requires_grad}
        params = [
            {"params": [p for p in params if id(p) not in ids]},
            {"params": [p for p in params if id(p) in ids], "lr": cfg.lr * cfg.graph_lr_mult},
        ]
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
    stop_after_steps: int = 0,
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
        due_stop = bool(stop_after_steps) and progress.global_step >= stop_after_steps
        if due_ckpt or due_stop or progress.global_step % cfg.log_every == 0:
            log_point()
        if due_ckpt and save_checkpoint is not None:
            save_checkpoint()
        if due_stop:
            raise SimulatedKillError(
                f"stopped after {progress.global_step} steps (--stop-after-steps)"
            )
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


def _raise_non_finite_weights(path: Path, progress: Progress, state: dict[str, Any]) -> NoReturn:
    """The checkpoint ``path`` would hold non-finite tensors (named here, read one by one only
    now that the run stops): it is not written, the last finite one is named."""
    bad = [
        f"{part}.{k}"
        for part in ("model", "criterion")
        for k, v in state[part].items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    optim = [
        t
        for t in ckpt.state_tensors(state["optimizer"]["state"])
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if optim:
        bad.append(f"{len(optim)} optimiser state tensors")
    last = progress.last_checkpoint
    keep = (
        f"the last finite checkpoint is {last}"
        if last is not None and last.is_file()
        else "no checkpoint had been written yet"
    )
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise NonFiniteWeightsError(
        f"non-finite weights after global step {progress.global_step} (epoch "
        f"{progress.epoch + (progress.step_in_epoch > 0)}): {shown or 'a tensor'} (the loss was "
        f"still finite; the update diverged). Training stopped without writing {path.name}; "
        f"{keep} (resume with --resume {progress.run_dir} --lr LOWER)."
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
    labels = {"base": "L_base", "ir": "L_IR", "ik": "L_IK", "kr": "L_KR"}
    terms = ", ".join(f"{labels[k]} {v:.4g}" for k, v in log.means.items() if k in labels)
    line = f"[{name}] epoch {epoch}/{epochs}: "
    if "loss" in log.means:
        line += f"loss {log.means['loss']:.4g} ({terms}), "
    else:  # resumed from a checkpoint at the epoch's very end
        line += "no step left (resumed at the epoch's end), "
    line += f"lr {lr:.3g}, {log.images_per_s:.1f} img/s"
    if results is None:
        return line + "; not evaluated this epoch (--eval-every)"
    aucs = results.auc_means()
    auc = ", ".join(
        f"{label} {'n/a' if aucs[k] is None else f'{aucs[k]:.3f}'}"
        for k, label in AUC_NAMES.items()
    )
    acc = results.mean_at(0.3)
    return f"{line}; test {auc}, mean accuracy at T(IoU)=0.3 {acc:.3f}"


def reference_results(data: Data, cfg: TrainConfig) -> dict[str, EvalResults]:
    """The reference maps of :func:`.data.reference_maps`, scored like a model."""
    return {
        k: score_maps(m, data.test) for k, m in reference_maps(data.index, data.split, cfg).items()
    }


# --------------------------------------------------------------------------- run directory


class MetricsLog:
    """Appends one row per epoch to ``metrics.csv`` and keeps ``metrics.json`` up to date (an
    epoch's row replaces an earlier one of the same epoch; both files written atomically)."""

    def __init__(self, run_dir: Path) -> None:
        self.csv = run_dir / "metrics.csv"
        self.json = run_dir / "metrics.json"
        self.data: dict[str, Any] = {"epochs": []}
        if self.json.is_file():
            self.data = json.loads(self.json.read_text())

    def add(self, row: dict[str, Any]) -> None:
        rows = [r for r in self.data["epochs"] if r["epoch"] != row["epoch"]] + [row]
        self.data["epochs"] = rows
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        # the CSV first: metrics.json is the record a resumed run reads (``has``)
        ckpt.write_text(self.csv, text.getvalue())
        ckpt.write_text(self.json, json.dumps(self.data, indent=2) + "\n")

    def has(self, epoch: int) -> bool:
        """Whether the row of ``epoch`` (1-based) is recorded."""
        return any(r["epoch"] == epoch for r in self.data["epochs"])

    def finish(self, final: dict[str, Any]) -> None:
        self.data["final"] = final
        ckpt.write_text(self.json, json.dumps(self.data, indent=2) + "\n")


def check_run_name(cfg: TrainConfig) -> None:
    """Refuse a ``--run-name`` whose directory already holds a run (its ``config.json``).

    Raises:
        RunDirError: naming the directory, ``--resume`` and another name as the ways out.
    """
    if cfg.run_name is not None and (Path(cfg.output_dir) / cfg.run_name / "config.json").exists():
        raise _name_in_use(cfg)


def _name_in_use(cfg: TrainConfig) -> RunDirError:
    path = Path(cfg.output_dir) / str(cfg.run_name)
    return RunDirError(
        f"--run-name {cfg.run_name}: {path} already holds a run; continue it with "
        f"--resume {path}, or choose another --run-name"
    )


def new_run_dir(cfg: TrainConfig) -> Path:
    """A new run directory, claimed by creating its ``config.json`` exclusively (of two runs
    started at once with one name, exactly one gets it).

    ``--run-name NAME`` must not hold a run yet (an empty folder, or one left by a run killed
    before it wrote its configuration, is fine); the default name ``<preset>-<losses>-<time>``
    takes the first free of NAME, NAME-2, NAME-3, ...

    Raises:
        RunDirError: ``cfg.run_name`` holds a run (see :func:`check_run_name`).
    """
    base = cfg.run_name or f"{cfg.preset}-{'+'.join(cfg.losses)}-{time.strftime('%Y%m%d-%H%M%S')}"
    text = (cfg.to_json() + "\n").encode()
    k = 1
    while True:
        path = Path(cfg.output_dir) / (base if k == 1 else f"{base}-{k}")
        path.mkdir(parents=True, exist_ok=True)
        try:
            ckpt.write_atomic(path / "config.json", lambda f: f.write(text), exclusive=True)
        except FileExistsError:
            if cfg.run_name is not None:
                raise _name_in_use(cfg) from None
            k += 1
            continue
        return path


def _broadcast_str(s: str | None, world: int) -> str:
    obj = [s]
    if world > 1:
        dist.broadcast_object_list(obj, src=0)
    assert obj[0] is not None
    return obj[0]


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The configuration with its folders made absolute, so that a run directory works from
    any working directory (``evaluate`` does not regenerate the synthetic data elsewhere)."""
    root = None if cfg.data_root is None else str(Path(cfg.data_root).resolve())
    return dataclasses.replace(
        cfg,
        data_root=root,
        cache_dir=str(Path(cfg.cache_dir).resolve()),
        output_dir=str(Path(cfg.output_dir).resolve()),
    )


# --------------------------------------------------------------------------- the run

# DDP's per-step buffer broadcast off (buffers still synced once at start); torch >= 2.12
# spells it forward_sync_buffers and deprecates broadcast_buffers.
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def restore(
    path: Path,
    trainee: Trainee,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: Progress,
    rank: int,
    world: int,
) -> dict[str, Any] | None:
    """Everything of a checkpoint back in place: weights, optimiser, scheduler, scaler, where
    the run was (with the epoch's running sums), and this process's RNG states.

    Returns the metrics row of the epoch an epoch-end checkpoint closed (``None`` mid-epoch):
    the run adds it (evaluating that epoch again) if ``metrics.json`` does not have it yet.
    """
    # read on the CPU: the RNG states must stay CPU ByteTensors; load_state_dict moves the rest
    saved = ckpt.load(path, map_location="cpu")
    ckpt.check_resumable(saved, path, trainee.model, trainee.criterion)  # one line if not
    trainee.model.load_state_dict(saved["model"])
    trainee.criterion.load_state_dict(saved["criterion"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    state.epoch, state.step_in_epoch = saved["epoch"], saved["step_in_epoch"]
    state.global_step = state.first_step = saved["global_step"]
    state.last_checkpoint = path
    # (a checkpoint from before the sums were saved: the means cover the steps after resuming)
    state.epoch_sums = dict(saved.get("epoch_sums", {}))
    state.epoch_steps = int(saved.get("epoch_steps", 0))
    rngs = saved["rng"]  # one per process; on another number of processes, rank 0's
    if isinstance(rngs, list):
        rngs = rngs[rank] if len(rngs) == world else rngs[0]
    ckpt.set_rng_state(rngs)
    row = saved.get("epoch_row")
    return row if state.step_in_epoch == 0 else None


def _set_lr(
    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, lr: float
) -> None:
    """``--lr`` changed on resume: every group's rate (and the scheduler's base rates) scaled by
    ``lr`` over the run's rate, so the decay so far and ``--graph-lr-mult`` are kept."""
    base_lrs = [float(b) for b in sched.base_lrs]
    factor = lr / base_lrs[0]
    if factor == 1.0:
        return
    for group in opt.param_groups:
        group["lr"] *= factor
        group["initial_lr"] *= factor
    sched.base_lrs = [b * factor for b in base_lrs]
    sched._last_lr = [group["lr"] for group in opt.param_groups]


@dataclass
class Run:
    """A finished run: its directory and (on the main process) its test results."""

    run_dir: Path
    results: EvalResults | None


def train(
    cfg: TrainConfig,
    *,
    resume_dir: str | Path | None = None,
    stop_after_steps: int | None = None,
    progress: bool | None = None,
    print_report: bool = True,
    bar_position: int = 0,
    changes: dict[str, Any] | None = None,
) -> Run:
    """Train (or resume) a run; see ``docs/training.md``.

    ``bar_position`` is the console line of the run's progress bars (runs side by side take
    one each). On resume (``resume_dir``) the run's ``config.json`` is its configuration;
    ``changes`` (option name to value, e.g. ``{"epochs": 12, "lr": 1e-4}``) may change the
    options of :data:`.config.RESUME_CHANGEABLE` (``ResumeOptionsError`` for any other), and
    ``cfg`` gives only ``progress``. A run directory in use by a live run is refused
    (:class:`.checkpoint.RunLockedError`), and so is a new run whose ``run_name`` holds a run
    (:class:`RunDirError`).
    """
    if resume_dir is not None:
        saved = resume_config(load_config(Path(resume_dir)), dict(changes or {}), resume_dir)
        saved.progress = cfg.progress if progress is None else progress
        cfg = saved
    if stop_after_steps is None:
        stop_after_steps = cfg.stop_after_steps
    if progress is not None:
        cfg = dataclasses.replace(cfg, progress=progress)
    with distributed_from_env() as (rank, world, local_rank), contextlib.ExitStack() as held:
        return _train(
            absolute_paths(cfg),
            rank,
            world,
            local_rank,
            resume_dir,
            stop_after_steps,
            print_report,
            bar_position,
            held=held,
        )


def _train(
    cfg: TrainConfig,
    rank: int,
    world: int,
    local_rank: int,
    resume_dir: str | Path | None,
    stop_after_steps: int,
    print_report: bool = True,
    bar_position: int = 0,
    *,
    held: contextlib.ExitStack,
) -> Run:
    """The run of :func:`train`; ``held`` keeps the run directory's lock until it returns."""
    is_main = rank == 0
    if resume_dir is not None and is_main:  # refused at once while a live run holds it
        held.enter_context(ckpt.run_lock(Path(resume_dir)))
    # a run killed before its first checkpoint starts over (from its saved configuration); a
    # last.pt that is there but no file is for the checkpoint checks to name
    resuming = resume_dir is not None and (Path(resume_dir) / "checkpoints" / "last.pt").exists()
    if not resuming and cfg.weights == "twin":
        # the pretrained file, made once (by the main process; the others wait and read it)
        if is_main:
            from .pretrain import twin_weights

            twin_weights(cfg)
        if world > 1:
            dist.barrier()
    elif not resuming:
        # fail at start-up, before any data work, when pretrained weights are asked for and absent
        resolve_weights(cfg.weights, cfg.backbone)
    device = select_device(cfg, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not cfg.deterministic  # one fixed input shape
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)

    # the model first, right after seeding: its initialisation does not depend on the data work
    # (a resumed run then takes every weight from its checkpoint)
    trainee = build_trainee(cfg, world, weights="none" if resuming else None).to(device)
    if cfg.channels_last:
        trainee.model.to(memory_format=torch.channels_last)
        trainee.model.channels_last = True
    barrier = (lambda: dist.barrier()) if world > 1 else None
    data = build_data(cfg, device=device, rank=rank, world=world, barrier=barrier)
    assert data.train_loader is not None
    assert data.sampler is not None

    # the run directory, once the data are there: the main process names it, the others follow
    if resume_dir is not None:
        run_dir = Path(resume_dir)
    else:
        run_dir = Path(_broadcast_str(str(new_run_dir(cfg)) if is_main else None, world))
        if is_main:
            held.enter_context(ckpt.run_lock(run_dir))
    ckpt_dir = run_dir / "checkpoints"
    if is_main:
        # what a run killed mid-write left (this run holds the directory's lock)
        ckpt.sweep_temp_files([run_dir, ckpt_dir, run_dir / "figures"])
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_text(run_dir / "config.json", cfg.to_json() + "\n")
        save_split(data.split, run_dir / "split", data.summary)
        s = data.summary
        print(
            f"[{run_dir}] split: train {s['train']} images ({s['train_annotated']} with boxes), "
            f"test {s['test']} ({s['test_annotated']} with boxes), "
            f"{s['train_sharing_patient_with_test']} training images share a patient with a "
            "test image"
        )

    if is_main:
        warn_literal_form_without_boxes(cfg, int(data.summary["train_annotated"]))
    if not resuming:
        init_head_bias(trainee.model, cfg, data)
    opt, sched = make_optimizer(cfg, trainee)
    use_amp = amp_enabled(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    state = Progress(run_dir=run_dir)
    last = ckpt_dir / "last.pt"
    pending: dict[str, Any] | None = None  # an epoch's row the checkpoint has, metrics maybe not
    if resuming:
        pending = restore(last, trainee, opt, sched, scaler, state, rank, world)
        _set_lr(opt, sched, cfg.lr)  # --lr changed on resume; the restored state kept otherwise
        if is_main:
            print(
                f"resumed {run_dir} at epoch {state.epoch} step {state.step_in_epoch} "
                f"(global {state.global_step})"
            )
    elif resume_dir is not None and is_main:
        print(f"{run_dir} has no checkpoint yet: starting it over from its configuration")

    net: nn.Module = trainee
    if world > 1:
        # the buffers are either frozen (FrozenBatchNorm) or per-process BatchNorm statistics
        # that only the main process's copy of is saved and evaluated: no broadcast per step
        net = DistributedDataParallel(
            trainee, device_ids=[device.index] if device.type == "cuda" else None, **_NO_BUFFER_SYNC
        )
    if cfg.compile:
        trainee.compile_parts(fullgraph_loss=world == 1)
    metrics = MetricsLog(run_dir) if is_main else None

    def save(name: str = "last.pt", epoch_row: dict[str, Any] | None = None) -> None:
        """Write a checkpoint, if every tensor it holds is finite (one fused check, one read).

        ``epoch_row``: at an epoch's end, its metrics row, until ``metrics.json`` has it.
        Under DDP the main process's verdict (written, non-finite, not written) is broadcast,
        so every process stops together.
        """
        rng = ckpt.rng_state()
        rngs: list[Any] = [rng]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng)
        path = ckpt_dir / name
        status, failure = 0, None  # 0 written, 1 non-finite, 2 not written (full disk, ...)
        payload: dict[str, Any] = {}
        if is_main:
            payload = {
                "model": trainee.model.state_dict(),
                "criterion": trainee.criterion.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch,
                "global_step": state.global_step,
                "epoch_sums": dict(state.epoch_sums),
                "epoch_steps": state.epoch_steps,
                "epoch_row": epoch_row,
                "rng": rngs,
                "config": json.loads(cfg.to_json()),
            }
            parts = (payload["model"], payload["criterion"], payload["optimizer"]["state"])
            if not bool(ckpt.all_finite(ckpt.state_tensors(parts))):
                status = 1
            else:
                try:
                    ckpt.save_atomic(payload, path)
                except ckpt.WriteError as err:
                    status, failure = 2, err
        if world > 1:
            verdict = torch.tensor([status], device=device)
            dist.broadcast(verdict, src=0)
            status = int(verdict.item())
        if status == 1:
            if is_main:
                _raise_non_finite_weights(path, state, payload)
            raise NonFiniteWeightsError(f"non-finite weights: {path} not written (main process)")
        if status == 2:
            raise failure or ckpt.WriteError(f"cannot write {path} (the main process failed)")
        state.last_checkpoint = path

    def close_epoch(row: dict[str, Any]) -> EvalResults | None:
        """The main process's end of an epoch: evaluate if due, then add its metrics row."""
        assert metrics is not None
        res = None
        if (cfg.eval_every and row["epoch"] % cfg.eval_every == 0) or row["epoch"] == cfg.epochs:
            res = evaluate(trainee.model, data.test_loader, device, data, **eval_bar)
            for t, m in zip((0.1, 0.3, 0.5, 0.7), res.mean.tolist(), strict=True):
                row[f"test_acc_T{t:g}_mean"] = None if math.isnan(m) else m
            row.update({f"test_{k}": v for k, v in res.auc_means().items()})
        metrics.add(row)
        return res

    results: EvalResults | None = None
    eval_bar: dict[str, Any] = (
        {"desc": f"{run_dir.name} eval", "position": bar_position} if cfg.progress else {}
    )
    if is_main and pending is not None:
        assert metrics is not None
        if not metrics.has(pending["epoch"]):  # stopped between its checkpoint and its row
            print(f"epoch {pending['epoch']} has no metrics row yet: evaluating it again")
            results = close_epoch(pending)
    if barrier is not None and pending is not None:
        barrier()
    trainee.train()
    while state.epoch < cfg.epochs:
        data.sampler.set_epoch(state.epoch, state.step_in_epoch)
        trainee.criterion.start_epoch(state.epoch)
        bar = None
        if is_main and cfg.progress:
            bar = progress_bar(
                data.sampler.steps,
                f"{run_dir.name} train e{state.epoch + 1}/{cfg.epochs}",
                bar_position,
                state.step_in_epoch,
            )
        try:
            log = train_one_epoch(
                net,
                opt,
                scaler,
                data.train_loader,
                device,
                cfg,
                state,
                world=world,
                use_amp=use_amp,
                save_checkpoint=save,
                stop_after_steps=stop_after_steps,
                bar=bar,
            )
        finally:
            if bar is not None:
                bar.close()
        lr = float(opt.param_groups[0]["lr"])  # the rate this epoch trained at
        sched.step()
        state.epoch += 1
        state.step_in_epoch = 0
        state.epoch_sums, state.epoch_steps = {}, 0
        row: dict[str, Any] = {
            "epoch": state.epoch,
            "global_step": state.global_step,
            "lr": opt.param_groups[0]["lr"] * 1.0,
            **{f"train_{k}": v for k, v in log.means.items()},
            "train_images_per_s": log.images_per_s,
        }
        # the row rides in the checkpoint: a run stopped before metrics.json has it adds it
        # (evaluating the epoch again) when resumed
        save(epoch_row=row)
        if state.epoch == cfg.epochs:
            save(name=f"epoch{state.epoch:03d}.pt", epoch_row=row)
        if is_main:
            evaluated = close_epoch(row)
            results = evaluated or results
            print(
                epoch_line(run_dir.name, state.epoch, cfg.epochs, log, lr, evaluated),
                flush=True,
            )
        if barrier is not None:
            barrier()

    if is_main:
        if results is None:  # resumed after the last epoch: evaluate what the checkpoint holds
            results = evaluate(trainee.model, data.test_loader, device, data, **eval_bar)
        assert metrics is not None
        metrics.finish({**results.summary(), "split": data.summary})
        if cfg.num_figures:
            from .figures import CURVES_PNG, save_training_curves

            save_training_curves({run_dir.name: run_dir / "metrics.csv"}, run_dir / CURVES_PNG)
        name = _model_name(cfg)
        text = write_report(
            run_dir,
            {name: results},
            reference_results(data, cfg),
            data.test,
            title=_title(cfg, data),
            num_figures=cfg.num_figures,
            extra={"split": data.summary},
        )
        if print_report:
            print(text)
            if cfg.num_figures:
                print(f"Training curves: {run_dir / CURVES_PNG}")
    return Run(run_dir, results)


def _model_name(cfg: TrainConfig) -> str:
    """The report's name of a run's model: CCG with any relation term, else the baseline."""
    return "CCG" if len(cfg.losses) > 1 else "Baseline"


def _title(cfg: TrainConfig, data: Data) -> str:
    return (
        f"Localization accuracy on the test split ({data.summary['test']} images, setting "
        f"{data.summary.get('setting', 'from files')}, fold {data.summary.get('fold', '-')}); "
        "T(IoU) thresholds, prediction = map > 0.5"
    )


def _timed_train(cfg: TrainConfig, bar_position: int = 0) -> tuple[EvalResults, float]:
    """One run of :func:`compare` (a top-level function: it may run in another process), its
    progress bars on console line ``bar_position``."""
    t0 = time.perf_counter()
    res = train(cfg, print_report=False, bar_position=bar_position).results
    assert res is not None
    return res, time.perf_counter() - t0


def compare(cfg: TrainConfig) -> Path:
    """Train the baseline and the CCG model with the same data and seed, then report them beside
    the reference maps; tables, JSON, predictions and figures go to one run directory."""
    t_start = time.perf_counter()
    if cfg.data_root is None:  # what is compared, on which data, what the study measured
        print(demo_preamble(cfg, cfg.synthetic_images), flush=True)
    cfg = absolute_paths(cfg)
    # every start-up error before the run directory exists
    if cfg.weights == "twin":  # made once here, read by both runs
        from .pretrain import twin_weights

        twin_weights(cfg)
    else:
        resolve_weights(cfg.weights, cfg.backbone)
    select_device(cfg)
    data = build_data(cfg, with_train=False)
    root = new_run_dir(dataclasses.replace(cfg, run_name=cfg.run_name or None))
    ccg_terms = cfg.losses if len(cfg.losses) > 1 else LOSS_TERMS
    runs = {
        "CCG": dataclasses.replace(cfg, losses=ccg_terms, output_dir=str(root), run_name="ccg"),
        "Baseline": dataclasses.replace(
            cfg, losses=("base",), output_dir=str(root), run_name="baseline"
        ),
    }
    ckpt.write_text(root / "config.json", cfg.to_json() + "\n")
    results: dict[str, EvalResults] = {}
    seconds: dict[str, float] = {}
    names = ("Baseline", "CCG")
    subs = {name: dataclasses.replace(runs[name], num_figures=0) for name in names}
    if cfg.parallel_runs > 1:
        # side by side, one process each (the demo: one thread each on a 2-core machine);
        # each run's progress bars keep a console line of their own
        print(
            f"\n=== training {' and '.join(names)} side by side "
            f"({', '.join(f'{n}: ' + '+'.join(subs[n].losses) for n in names)}) ===",
            flush=True,
        )
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(cfg.parallel_runs, 2), mp_context=ctx) as pool:
            futures = {
                name: pool.submit(_timed_train, subs[name], position)
                for position, name in enumerate(names)
            }
            for name in names:
                results[name], seconds[name] = futures[name].result()
    else:
        for name in names:
            print(f"\n=== training {name}: losses {'+'.join(subs[name].losses)} ===")
            results[name], seconds[name] = _timed_train(subs[name])
    text = write_report(
        root,
        {"CCG": results["CCG"], "Baseline": results["Baseline"]},
        reference_results(data, cfg),
        data.test,
        title=_title(cfg, data),
        num_figures=cfg.num_figures,
        extra={
            "split": data.summary,
            "seconds": {**seconds, "total": time.perf_counter() - t_start},
        },
    )
    text += gap_against_seed_spread(
        results["CCG"],
        results["Baseline"],
        cfg.setting,
        differs=differs_from_demo(cfg),
        variant=study_variant(cfg),
    )
    if cfg.num_figures:
        from .figures import CURVES_PNG, save_training_curves

        curves = {name: root / str(runs[name].run_name) / "metrics.csv" for name in names}
        text += f"Training curves: {save_training_curves(curves, root / CURVES_PNG)}\n"
    total = time.perf_counter() - t_start
    text += (
        f"Training time: baseline {seconds['Baseline']:.0f} s, CCG {seconds['CCG']:.0f} s; "
        f"total {total:.0f} s\n"
    )
    ckpt.write_text(root / "results.md", text)
    print("\n" + text)
    return root


def evaluate_checkpoint(
    path: str | Path, *, data_root: str | None = None, device: str = "auto", progress: bool = True
) -> tuple[EvalResults, str, Path]:
    """``evaluate CHECKPOINT``: the checkpoint's model on its configuration's test split (with
    a progress bar unless ``progress`` is false).

    Returns the results, the report's text and its folder (``RUN_DIR/evaluation-<name>/``).
    """
    path = ckpt.resolve(path)
    model, cfg = ckpt.load_model(path)
    if data_root is not None:
        cfg.data_root = data_root
    cfg.device = device
    dev = select_device(cfg)
    model.to(dev)
    data = build_data(cfg, device=dev, with_train=False)
    desc = f"{path.parent.parent.name} eval" if progress else None
    res = evaluate(model, data.test_loader, dev, data, desc=desc)
    out_dir = path.parent.parent / f"evaluation-{path.stem}"
    name = _model_name(cfg)
    text = write_report(
        out_dir,
        {name: res},
        reference_results(data, cfg),
        data.test,
        title=f"{path}: " + _title(cfg, data),
        num_figures=cfg.num_figures,
        extra={"checkpoint": str(path), "split": data.summary},
    )
    return res, text, out_dir
