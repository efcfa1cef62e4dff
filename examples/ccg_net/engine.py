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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import ccg_layers
from ccg_layers.datasets import save_split

from . import checkpoint as ckpt
from .config import LOSS_TERMS, TrainConfig, differs_from_demo, load_config
from .data import Data, build_data, grid_size, reference_maps, to_device
from .losses import CCGLoss, warn_literal_form_without_boxes
from .model import CCGNet, build_model, resolve_weights
from .report import (
    EvalResults,
    demo_preamble,
    gap_against_seed_spread,
    score_maps,
    study_variant,
    write_report,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


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
        graphs = [getattr(criterion, k, None) for k in ("ir", "ik", "kr_graph")]
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
    epoch_sums = dict.fromkeys(names, 0.0)
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
        {k: epoch_sums[k] / max(count, 1) for k in keys},
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
        f"{progress.run_dir} after lowering --lr or checking the data: images {names})."
    )


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: CCGNet, data_loader: Iterable[dict[str, Any]], device: torch.device, data: Data
) -> EvalResults:
    """Probability maps (test-time upsampled) and image scores of the test set, scored:
    localization accuracy per class and T(IoU), AUC per class, with the image names."""
    was_training = model.training
    model.eval()
    maps, scores = [], []
    for batch in data_loader:
        logits, feats = model(batch["image"].to(device, non_blocking=True))
        maps.append(torch.sigmoid(logits.float()).cpu())
        scores.append(model.image_scores(feats).cpu())
    model.train(was_training)
    return score_maps(torch.cat(maps), data.test, torch.cat(scores))


def reference_results(data: Data, cfg: TrainConfig) -> dict[str, EvalResults]:
    """The reference maps of :func:`.data.reference_maps`, scored like a model."""
    return {
        k: score_maps(m, data.test) for k, m in reference_maps(data.index, data.split, cfg).items()
    }


# --------------------------------------------------------------------------- run directory


class MetricsLog:
    """Appends one row per epoch to ``metrics.csv`` and keeps ``metrics.json`` up to date."""

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
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        self.json.write_text(json.dumps(self.data, indent=2) + "\n")

    def finish(self, final: dict[str, Any]) -> None:
        self.data["final"] = final
        self.json.write_text(json.dumps(self.data, indent=2) + "\n")


def new_run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run_name or (f"{cfg.preset}-{'+'.join(cfg.losses)}-{time.strftime('%Y%m%d-%H%M%S')}")
    path = Path(cfg.output_dir) / name
    path.mkdir(parents=True, exist_ok=cfg.run_name is not None)
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
) -> None:
    """Everything of a checkpoint back in place: weights, optimiser, scheduler, scaler, where
    the run was, and this process's RNG states."""
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
    rngs = saved["rng"]  # one per process; on another number of processes, rank 0's
    if isinstance(rngs, list):
        rngs = rngs[rank] if len(rngs) == world else rngs[0]
    ckpt.set_rng_state(rngs)


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
) -> Run:
    """Train (or resume) a run; see ``docs/training.md``."""
    if resume_dir is not None:
        saved = load_config(Path(resume_dir))
        saved.progress = cfg.progress if progress is None else progress
        cfg = saved
    if stop_after_steps is None:
        stop_after_steps = cfg.stop_after_steps
    if progress is not None:
        cfg = dataclasses.replace(cfg, progress=progress)
    with distributed_from_env() as (rank, world, local_rank):
        return _train(
            absolute_paths(cfg), rank, world, local_rank, resume_dir, stop_after_steps, print_report
        )


def _train(
    cfg: TrainConfig,
    rank: int,
    world: int,
    local_rank: int,
    resume_dir: str | Path | None,
    stop_after_steps: int,
    print_report: bool = True,
) -> Run:
    is_main = rank == 0
    if resume_dir is None and cfg.weights == "twin":
        # the pretrained file, made once (by the main process; the others wait and read it)
        if is_main:
            from .pretrain import twin_weights

            twin_weights(cfg)
        if world > 1:
            dist.barrier()
    elif resume_dir is None:
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
    trainee = build_trainee(cfg, world, weights="none" if resume_dir else None).to(device)
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
    ckpt_dir = run_dir / "checkpoints"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json() + "\n")
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
    if resume_dir is None:
        init_head_bias(trainee.model, cfg, data)
    opt, sched = make_optimizer(cfg, trainee)
    use_amp = amp_enabled(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    state = Progress(run_dir=run_dir)
    last = ckpt_dir / "last.pt"
    if resume_dir is not None:
        restore(last, trainee, opt, sched, scaler, state, rank, world)
        if is_main:
            print(
                f"resumed {run_dir} at epoch {state.epoch} step {state.step_in_epoch} "
                f"(global {state.global_step})"
            )

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

    def save(name: str = "last.pt") -> None:
        rng = ckpt.rng_state()
        rngs: list[Any] = [rng]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng)
        if is_main:
            ckpt.save_atomic(
                {
                    "model": trainee.model.state_dict(),
                    "criterion": trainee.criterion.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": state.epoch,
                    "step_in_epoch": state.step_in_epoch,
                    "global_step": state.global_step,
                    "rng": rngs,
                    "config": json.loads(cfg.to_json()),
                },
                ckpt_dir / name,
            )
        state.last_checkpoint = ckpt_dir / name

    results: EvalResults | None = None
    trainee.train()
    while state.epoch < cfg.epochs:
        data.sampler.set_epoch(state.epoch, state.step_in_epoch)
        trainee.criterion.start_epoch(state.epoch)
        bar = None
        if is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=data.sampler.steps,
                initial=state.step_in_epoch,
                desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
                dynamic_ncols=True,
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
        sched.step()
        state.epoch += 1
        state.step_in_epoch = 0
        save()
        if state.epoch == cfg.epochs:
            save(name=f"epoch{state.epoch:03d}.pt")
        if is_main:
            assert metrics is not None
            row: dict[str, Any] = {
                "epoch": state.epoch,
                "global_step": state.global_step,
                "lr": opt.param_groups[0]["lr"] * 1.0,
                **{f"train_{k}": v for k, v in log.means.items()},
                "train_images_per_s": log.images_per_s,
            }
            if (cfg.eval_every and state.epoch % cfg.eval_every == 0) or state.epoch == cfg.epochs:
                results = evaluate(trainee.model, data.test_loader, device, data)
                for t, m in zip((0.1, 0.3, 0.5, 0.7), results.mean.tolist(), strict=True):
                    row[f"test_acc_T{t:g}_mean"] = None if math.isnan(m) else m
                assert results.auc is not None
                row["test_auc_mean"] = float(results.auc.nanmean())
            metrics.add(row)
        if barrier is not None:
            barrier()

    if is_main:
        if results is None:  # resumed after the last epoch: evaluate what the checkpoint holds
            results = evaluate(trainee.model, data.test_loader, device, data)
        assert metrics is not None
        metrics.finish({**results.summary(), "split": data.summary})
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


def _timed_train(cfg: TrainConfig) -> tuple[EvalResults, float]:
    """One run of :func:`compare` (a top-level function: it may run in another process)."""
    t0 = time.perf_counter()
    res = train(cfg, print_report=False).results
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
    (root / "config.json").write_text(cfg.to_json() + "\n")
    results: dict[str, EvalResults] = {}
    seconds: dict[str, float] = {}
    names = ("Baseline", "CCG")
    subs = {name: dataclasses.replace(runs[name], num_figures=0) for name in names}
    if cfg.parallel_runs > 1:
        # side by side, one process each (the demo: one thread each on a 2-core machine);
        # only the CCG run shows a progress bar
        print(
            f"\n=== training {' and '.join(names)} side by side "
            f"({', '.join(f'{n}: ' + '+'.join(subs[n].losses) for n in names)}) ==="
        )
        subs["Baseline"].progress = False
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(cfg.parallel_runs, 2), mp_context=ctx) as pool:
            futures = {name: pool.submit(_timed_train, subs[name]) for name in names}
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
    total = time.perf_counter() - t_start
    text += (
        f"Training time: baseline {seconds['Baseline']:.0f} s, CCG {seconds['CCG']:.0f} s; "
        f"total {total:.0f} s\n"
    )
    (root / "results.md").write_text(text)
    print("\n" + text)
    return root


def evaluate_checkpoint(
    path: str | Path, *, data_root: str | None = None, device: str = "auto"
) -> tuple[EvalResults, str, Path]:
    """``evaluate CHECKPOINT``: the checkpoint's model on its configuration's test split.

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
    res = evaluate(model, data.test_loader, dev, data)
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
