"""The training loop: run directory, checkpoints, exact resume, evaluation, DDP, AMP."""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from ccg_layers.datasets import CLASS_NAMES, ChestXray14
from ccg_layers.functional import log_noisy_or
from ccg_layers.metrics import (
    classification_auc,
    format_localization_table,
    localization_accuracy,
)

from . import checkpoint as ckpt
from .config import TrainConfig, load_config
from .data import build_data, collate, epoch_order, grid_targets, test_boxes
from .losses import CCGLoss
from .model import CCGNet, build_model, resolve_weights

THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class SimulatedKillError(RuntimeError):
    """Raised by ``--stop-after-steps``: the run stops abruptly, as if killed (for tests)."""


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


def select_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and dev.index is None:
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
    """Model and loss in one module, so that DDP syncs the graph parameters too."""

    def __init__(self, model: CCGNet, criterion: CCGLoss) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(
        self,
        images: Tensor,
        labels: Tensor,
        grid: Tensor,
        box_mask: Tensor,
        superpixels: Tensor | None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        logits, feats = self.model(images)
        if not bool(torch.isfinite(logits).all()):
            # MILGridLoss rejects non-finite logits; report it as a non-finite loss instead.
            return {"loss": logits.float().sum() * math.nan, "logits": logits.float().sum()}, logits
        terms = self.criterion(logits, feats, labels, grid, box_mask, superpixels)
        return terms, logits


def model_from_config(cfg: TrainConfig, weights: str) -> CCGNet:
    """The model a configuration describes, with backbone ``weights`` (a path, "imagenet", "none")."""
    return build_model(
        cfg.backbone,
        weights,
        num_classes=cfg.num_classes,
        head_channels=cfg.head_channels,
        test_upsample=cfg.test_upsample,
        freeze_bn=cfg.freeze_bn,
        tiny_widths=tuple(cfg.tiny_widths),
        tiny_stride=cfg.tiny_stride,
    )


def build_trainee(cfg: TrainConfig, world: int, *, weights: str | None = None) -> Trainee:
    """CCG-Net and its loss; ``weights`` overrides ``cfg.weights`` (e.g. "none" on resume)."""
    model = model_from_config(cfg, cfg.weights if weights is None else weights)
    criterion = CCGLoss(cfg, model.feature_channels, cfg.batch_size * world)
    return Trainee(model, criterion)


def grid_size(cfg: TrainConfig) -> int:
    return cfg.image_size // (cfg.tiny_stride if cfg.backbone == "tiny" else 32)


def make_optimizer(
    cfg: TrainConfig, module: nn.Module
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
    return opt, sched


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(
    model: CCGNet, ds: Dataset[Any], device: torch.device, batch_size: int, num_workers: int
) -> tuple[Tensor, Tensor]:
    """Probability maps ``(N, K, h, w)`` (test-time upsampled) and image scores ``(N, K)``."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        shuffle=False,
        generator=torch.Generator(),  # leaves the global RNG alone
    )
    maps, scores = [], []
    for batch in loader:
        logits, _ = model(batch["image"].to(device))
        logits = logits.float()
        maps.append(torch.sigmoid(logits).cpu())
        scores.append(log_noisy_or(logits)[0].exp().cpu())
    model.train(was_training)
    return torch.cat(maps), torch.cat(scores)


def localization(maps: Tensor, ds: ChestXray14) -> Tensor:
    boxes, img, cls = test_boxes(ds)
    return localization_accuracy(
        maps, boxes, img, cls, image_size=(ds.image_size, ds.image_size), thresholds=THRESHOLDS
    )


def evaluate(
    model: CCGNet, ds: ChestXray14, device: torch.device, cfg: TrainConfig
) -> dict[str, Any]:
    maps, scores = predict(model, ds, device, max(cfg.batch_size, 8), cfg.num_workers)
    acc = localization(maps, ds)
    labels = ds.index.labels[ds.rows]
    auc = classification_auc(scores, labels)
    return {"accuracy": acc, "auc": auc, "maps": maps}


def accuracy_summary(acc: Tensor) -> dict[str, Any]:
    """The table as nested lists plus the mean over the boxed classes per threshold."""
    from ccg_layers.datasets import BOXED_CLASSES

    cols = [CLASS_NAMES.index(c) for c in BOXED_CLASSES]
    out: dict[str, Any] = {"thresholds": list(THRESHOLDS)}
    for t, row in zip(THRESHOLDS, acc[:, cols].double(), strict=True):
        valid = row[~torch.isnan(row)]
        out[f"T={t:g}"] = {
            **{
                c: (None if math.isnan(v) else v)
                for c, v in zip(BOXED_CLASSES, row.tolist(), strict=True)
            },
            "Mean": float(valid.mean()) if len(valid) else None,
        }
    return out


# --------------------------------------------------------------------------- run directory


def new_run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run_name or (f"{cfg.preset}-{'+'.join(cfg.losses)}-{time.strftime('%Y%m%d-%H%M%S')}")
    path = Path(cfg.output_dir) / name
    path.mkdir(parents=True, exist_ok=cfg.run_name is not None)
    return path


def _broadcast_str(s: str | None, rank: int, world: int) -> str:
    if world == 1:
        assert s is not None
        return s
    obj = [s]
    dist.broadcast_object_list(obj, src=0)
    assert obj[0] is not None
    return obj[0]


class MetricsLog:
    """Appends one row per epoch to ``metrics.csv`` and keeps ``metrics.json`` up to date."""

    def __init__(self, run_dir: Path) -> None:
        self.csv = run_dir / "metrics.csv"
        self.json = run_dir / "metrics.json"
        self.rows: list[dict[str, Any]] = []
        if self.json.is_file():
            self.rows = json.loads(self.json.read_text()).get("epochs", [])

    def add(self, row: dict[str, Any], final: dict[str, Any] | None = None) -> None:
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        self._write(final)

    def finish(self, final: dict[str, Any]) -> None:
        self._write(final)

    def _write(self, final: dict[str, Any] | None) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        data: dict[str, Any] = {"epochs": self.rows}
        if self.json.is_file():
            old = json.loads(self.json.read_text())
            if "final" in old:
                data["final"] = old["final"]
        if final is not None:
            data["final"] = final
        self.json.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- training


def _checkpoint_state(
    trainee: Trainee,
    opt: torch.optim.Optimizer,
    sched: Any,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    epoch: int,
    step_in_epoch: int,
    global_step: int,
) -> dict[str, Any]:
    return {
        "model": trainee.model.state_dict(),
        "criterion": trainee.criterion.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": global_step,
        "rng": ckpt.rng_state(),
        "config": json.loads(cfg.to_json()),
    }


def train(
    cfg: TrainConfig,
    *,
    resume_dir: str | Path | None = None,
    stop_after_steps: int | None = None,
    progress: bool | None = None,
) -> Path:
    """Train (or resume) a run; returns its directory. See ``docs/training.md``."""
    if resume_dir is not None:
        saved = load_config(Path(resume_dir))
        saved.progress = cfg.progress if progress is None else progress
        cfg = saved
    if stop_after_steps is None:
        stop_after_steps = cfg.stop_after_steps
    show_progress = cfg.progress if progress is None else progress
    with distributed_from_env() as (rank, world, local_rank):
        return _train(cfg, rank, world, local_rank, resume_dir, stop_after_steps, show_progress)


def _train(
    cfg: TrainConfig,
    rank: int,
    world: int,
    local_rank: int,
    resume_dir: str | Path | None,
    stop_after_steps: int,
    show_progress: bool,
) -> Path:
    is_main = rank == 0
    if resume_dir is None:
        # fail at start-up, before any data work, when pretrained weights are asked for and absent
        resolve_weights(cfg.weights, cfg.backbone)
    device = select_device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    seed_everything(cfg.seed)

    # run directory: the main process names it, the others follow
    if resume_dir is not None:
        run_dir = Path(resume_dir)
    else:
        run_dir = Path(_broadcast_str(str(new_run_dir(cfg)) if is_main else None, rank, world))
    ckpt_dir = run_dir / "checkpoints"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json() + "\n")

    # the model first, right after seeding: its initialisation does not depend on the data work
    # (a resumed run then takes every weight from its checkpoint)
    trainee = build_trainee(cfg, world, weights="none" if resume_dir else None).to(device)
    barrier = (lambda: dist.barrier()) if world > 1 else None
    data = build_data(cfg, is_main=is_main, barrier=barrier)
    if is_main:
        (run_dir / "splits.json").write_text(json.dumps(data.summary, indent=2) + "\n")
        s = data.summary
        print(
            f"[{run_dir}] split: train {s['train']} images ({s['train_annotated']} with boxes), "
            f"test {s['test']} ({s['test_annotated']} with boxes), "
            f"{s['train_sharing_patient_with_test']} training images share a patient with a "
            "test image"
        )

    opt, sched = make_optimizer(cfg, trainee)
    use_amp = amp_enabled(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    epoch, step_in_epoch, global_step = 0, 0, 0
    last = ckpt_dir / "last.pt"
    if resume_dir is not None:
        state = ckpt.load(last, map_location=device)
        trainee.model.load_state_dict(state["model"])
        trainee.criterion.load_state_dict(state["criterion"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        epoch, step_in_epoch, global_step = (
            state["epoch"],
            state["step_in_epoch"],
            state["global_step"],
        )
        ckpt.set_rng_state(state["rng"])
        if is_main:
            print(f"resumed {run_dir} at epoch {epoch} step {step_in_epoch} (global {global_step})")

    net: nn.Module = trainee
    if world > 1:
        net = DistributedDataParallel(
            trainee, device_ids=[device.index] if device.type == "cuda" else None
        )
    metrics = MetricsLog(run_dir) if is_main else None
    g = grid_size(cfg)
    global_batch = cfg.batch_size * world
    n_train = len(data.train)
    steps_per_epoch = math.ceil(n_train / global_batch)

    def save(ep: int, st: int, name: str = "last.pt") -> None:
        if is_main:
            state = _checkpoint_state(trainee, opt, sched, scaler, cfg, ep, st, global_step)
            ckpt.save_atomic(state, ckpt_dir / name)

    last_eval: tuple[int, dict[str, Any]] | None = None
    trainee.train()
    while epoch < cfg.epochs:
        order = epoch_order(n_train, epoch, cfg.seed, global_batch)
        # this process's share of each global batch, from the step we are at
        batches = order.view(steps_per_epoch, world, cfg.batch_size)[step_in_epoch:, rank]
        loader = DataLoader(
            Subset(data.train, batches.flatten().tolist()),
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=cfg.num_workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            # its own generator: creating the loader must not draw from the global RNG
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
        )
        bar = None
        if is_main and show_progress:
            from tqdm import tqdm

            bar = tqdm(
                total=steps_per_epoch,
                initial=step_in_epoch,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                dynamic_ncols=True,
                leave=True,
            )
        sums: dict[str, float] = {}
        count = 0
        t0 = time.perf_counter()
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["labels"].to(device)
            box_mask = batch["has_box"].to(device)
            grid = grid_targets(batch, cfg.num_classes, cfg.image_size, g).to(device)
            sp = batch.get("superpixels")
            sp = sp.to(device) if sp is not None else None
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                terms, _ = net(images, labels, grid, box_mask, sp)
            values = {k: float(v.detach()) for k, v in terms.items()}
            finite = all(math.isfinite(v) for v in values.values())
            if world > 1:
                # every process stops together (one rank's NaN must not leave the others
                # waiting in the next collective)
                flag = torch.tensor([float(finite)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                finite = bool(flag.item() > 0)
            if not finite:
                bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
                where = (
                    f"epoch {epoch + 1}, step {step_in_epoch + 1} (global step {global_step + 1})"
                )
                keep = (
                    f"the last good checkpoint is {last}"
                    if last.is_file()
                    else "no checkpoint had been written yet"
                )
                raise NonFiniteLossError(
                    f"non-finite loss at {where}: {bad}. Training stopped without saving; "
                    f"{keep} (resume with --resume {run_dir} after lowering --lr or checking "
                    f"the data: images {batch['names']})."
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            step_in_epoch += 1
            global_step += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if bar is not None:
                rate = count * global_batch / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.1f}")
                bar.update(1)
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                save(epoch, step_in_epoch)
            if stop_after_steps and global_step >= stop_after_steps:
                if bar is not None:
                    bar.close()
                raise SimulatedKillError(f"stopped after {global_step} steps (--stop-after-steps)")
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        sched.step()
        epoch += 1
        step_in_epoch = 0
        save(epoch, 0)
        if is_main:
            save(epoch, 0, name=f"epoch{epoch:03d}.pt") if epoch == cfg.epochs else None
            row: dict[str, Any] = {
                "epoch": epoch,
                "global_step": global_step,
                "lr": opt.param_groups[0]["lr"] * 1.0,
                **{f"train_{k}": v / max(count, 1) for k, v in sums.items()},
                "train_images_per_s": count * global_batch / max(elapsed, 1e-9),
            }
            if (cfg.eval_every and epoch % cfg.eval_every == 0) or epoch == cfg.epochs:
                res = evaluate(trainee.model, data.test, device, cfg)
                last_eval = (epoch, res)
                summ = accuracy_summary(res["accuracy"])
                for t in THRESHOLDS:
                    row[f"test_acc_T{t:g}_mean"] = summ[f"T={t:g}"]["Mean"]
                auc = res["auc"][~torch.isnan(res["auc"])]
                row["test_auc_mean"] = float(auc.mean()) if len(auc) else None
            assert metrics is not None
            metrics.add(row)
        if barrier is not None:
            barrier()

    if is_main:
        if last_eval is None or last_eval[0] != epoch:
            last_eval = (epoch, evaluate(trainee.model, data.test, device, cfg))
        res = last_eval[1]
        final = {
            "localization": accuracy_summary(res["accuracy"]),
            "accuracy_matrix": res["accuracy"].tolist(),
            "auc": dict(zip(CLASS_NAMES, res["auc"].tolist(), strict=True)),
            "split": data.summary,
        }
        assert metrics is not None
        metrics.finish(final)
        table = format_localization_table(res["accuracy"], THRESHOLDS)
        (run_dir / "localization.md").write_text(table + "\n")
        torch.save(res["maps"].half(), run_dir / "test_maps.pt")
    return run_dir


def evaluate_checkpoint(
    path: str | Path, *, data_root: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """``--evaluate CHECKPOINT``: rebuild the model from the checkpoint's config and evaluate."""
    path = Path(path)
    state = ckpt.load(path)
    cfg = TrainConfig.from_dict(state["config"])
    if data_root is not None:
        cfg.data_root = data_root
    cfg.device = device
    dev = select_device(cfg, 0)
    model = model_from_config(cfg, "none").to(dev)  # the checkpoint carries every weight
    model.load_state_dict(state["model"])
    cfg.losses = ("base",)  # no superpixels needed to evaluate
    cfg.cache_images = False  # nor the training images
    data = build_data(cfg)
    res = evaluate(model, data.test, dev, cfg)
    out = {
        "checkpoint": str(path),
        "localization": accuracy_summary(res["accuracy"]),
        "accuracy_matrix": res["accuracy"].tolist(),
        "auc": dict(zip(CLASS_NAMES, res["auc"].tolist(), strict=True)),
        "split": data.summary,
        "table": format_localization_table(res["accuracy"], THRESHOLDS),
    }
    target = path.parent.parent / f"evaluation-{path.stem}.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    out["written_to"] = str(target)
    return out
