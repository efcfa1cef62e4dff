"""The runs of the reference trainer: ``train`` (one run: data, model, resume, epochs,
report), ``compare`` (the demo's baseline-vs-CCG), ``evaluate_checkpoint`` and ``reproduce``
(every fold of a setting), around :mod:`.engine`'s step, epoch and evaluation; the command
line's ``main`` is in :mod:`.cli`, the run directory's files in :mod:`.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import inspect
import json
import math
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ccg_layers.datasets import BOXED_CLASSES, CLASS_NAMES, save_split
from ccg_layers.datasets.image_files import name_list

from . import checkpoint as ckpt
from .config import LOSS_TERMS, TrainConfig, differs_from_demo, load_config, resume_config
from .data import Data, build_data, dataset_root
from .engine import (
    NonFiniteWeightsError,
    Progress,
    build_trainee,
    epoch_line,
    evaluate,
    init_head_bias,
    make_optimizer,
    progress_bar,
    reference_results,
    train_one_epoch,
)
from .losses import warn_literal_form_without_boxes
from .model import resolve_weights
from .report import (
    THRESHOLDS,
    EvalResults,
    boxed_columns,
    demo_preamble,
    gap_against_seed_spread,
    study_variant,
    write_report,
)
from .reproduce import aggregate, default_folds, model_first, reproduce_report


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


# --------------------------------------------------------------------------- side by side

T = TypeVar("T")


def side_by_side(
    jobs: Sequence[Callable[[], T]],
    workers: int,
    *,
    threads: bool = False,
    done: Callable[[int, T], None] | None = None,
) -> list[T]:
    """Run ``jobs`` ``workers`` at a time; their results in the jobs' order.

    Each job runs in a process of its own (``spawn``: a job must pickle, e.g. a
    ``functools.partial`` of a top-level function), or with ``threads`` in a thread of this
    process (for jobs that start a process themselves). With one worker or one job they run
    here, one after the other. ``done(i, result)`` is called for each job in order as its
    result is collected (a job's exception is raised there, after the jobs before it).
    """
    with contextlib.ExitStack() as stack:
        outcomes: Iterator[T]
        if workers <= 1 or len(jobs) <= 1:
            outcomes = (job() for job in jobs)  # each run as it is collected
        else:
            pool: Executor = stack.enter_context(
                ThreadPoolExecutor(workers)
                if threads
                else ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            )
            futures = [pool.submit(job) for job in jobs]
            outcomes = (future.result() for future in futures)
        results = []
        for i, result in enumerate(outcomes):
            results.append(result)
            if done is not None:
                done(i, result)
        return results


# --------------------------------------------------------------------------- the run

# DDP's per-step buffer broadcast off (buffers still synced once at start); torch >= 2.12
# spells it forward_sync_buffers and deprecates broadcast_buffers.
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def _raise_non_finite_weights(path: Path, progress: Progress, state: dict[str, Any]) -> NoReturn:
    """The checkpoint ``path`` would hold non-finite tensors (named here, read one by one only
    now that the run stops): it is not written, the last finite one is named."""
    bad = [f"{part}.{k}" for part in ("model", "criterion") for k in ckpt.non_finite(state[part])]
    tensors = ckpt.state_tensors(state["optimizer"]["state"])
    optim = ckpt.non_finite({str(i): t for i, t in enumerate(tensors)})
    if optim:
        bad.append(f"{len(optim)} optimiser state tensors")
    last = progress.last_checkpoint
    keep = (
        f"the last finite checkpoint is {last}"
        if last is not None and last.is_file()
        else "no checkpoint had been written yet"
    )
    shown = name_list(bad)
    raise NonFiniteWeightsError(
        f"non-finite weights after global step {progress.global_step} (epoch "
        f"{progress.epoch + (progress.step_in_epoch > 0)}): {shown or 'a tensor'} (the loss was "
        f"still finite; the update diverged). Training stopped without writing {path.name}; "
        f"{keep} (resume with --resume {progress.run_dir} --lr LOWER)."
    )


def _broadcast_str(s: str | None, world: int) -> str:
    obj = [s]
    if world > 1:
        dist.broadcast_object_list(obj, src=0)
    assert obj[0] is not None
    return obj[0]


def _set_lr(
    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, lr: float
) -> None:
    """``--lr`` changed on resume: every group's rate (and the scheduler's base rates) scaled by
    ``lr`` over the run's rate, so the decay so far is kept."""
    base_lrs = [float(b) for b in sched.base_lrs]
    factor = lr / base_lrs[0]
    if factor == 1.0:
        return
    for group in opt.param_groups:
        group["lr"] *= factor
        group["initial_lr"] *= factor
    sched.base_lrs = [b * factor for b in base_lrs]
    sched._last_lr = [group["lr"] for group in opt.param_groups]


@dataclasses.dataclass
class Run:
    """A finished run: its directory and (on the main process) its test results."""

    run_dir: Path
    results: EvalResults | None


def train(
    cfg: TrainConfig,
    *,
    resume_dir: str | Path | None = None,
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
    (:class:`.checkpoint.RunDirError`).
    """
    if resume_dir is not None:
        saved = resume_config(load_config(Path(resume_dir)), dict(changes or {}), resume_dir)
        saved.progress = cfg.progress if progress is None else progress
        cfg = saved
    if progress is not None:
        cfg = dataclasses.replace(cfg, progress=progress)
    with distributed_from_env() as (rank, world, local_rank), contextlib.ExitStack() as held:
        return _train(
            ckpt.absolute_paths(cfg),
            rank,
            world,
            local_rank,
            resume_dir,
            print_report,
            bar_position,
            held=held,
        )


def prepare_weights(cfg: TrainConfig) -> None:
    """The weights ``--weights`` names, before any data work: ``twin`` is made (or found in its
    cache, :func:`.pretrain.twin_weights`); any other file must exist
    (:func:`.model.resolve_weights` raises naming it)."""
    if cfg.weights == "twin":
        from .pretrain import twin_weights

        twin_weights(cfg)
    else:
        resolve_weights(cfg.weights, cfg.backbone)


def _train(
    cfg: TrainConfig,
    rank: int,
    world: int,
    local_rank: int,
    resume_dir: str | Path | None,
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
    if not resuming:
        # the twin file is made by the main process, the others wait and read it
        if is_main or cfg.weights != "twin":
            prepare_weights(cfg)
        if cfg.weights == "twin" and world > 1:
            dist.barrier()
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
        run_dir = Path(_broadcast_str(str(ckpt.new_run_dir(cfg)) if is_main else None, world))
        if is_main:
            held.enter_context(ckpt.run_lock(run_dir))
    ckpt_dir = run_dir / "checkpoints"
    if is_main:
        # what a run killed mid-write left (this run holds the directory's lock)
        ckpt.sweep_temp_files([run_dir, ckpt_dir, run_dir / "figures"])
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume_dir is not None:  # a new run's was written by new_run_dir, claiming it
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
        pending = ckpt.restore(last, trainee, opt, sched, scaler, state, rank, world)
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
    metrics = ckpt.MetricsLog(run_dir) if is_main else None

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
            for t, m in zip(THRESHOLDS, res.mean.tolist(), strict=True):
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
            "lr": lr,  # the rate the epoch trained at (the console's per-epoch line too)
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

            save_training_curves(
                {run_dir.name: run_dir / "metrics.csv"}, run_dir / CURVES_PNG, results.auc_names
            )
        text = _report(run_dir, {model_name(cfg): results}, data, cfg)
        if print_report:
            print(text)
            if cfg.num_figures:
                print(f"Training curves: {run_dir / CURVES_PNG}")
    return Run(run_dir, results)


def model_name(cfg: TrainConfig) -> str:
    """The report's name of a run's model: CCG with any relation term, else the baseline."""
    return "CCG" if len(cfg.losses) > 1 else "Baseline"


def _report(
    out_dir: Path,
    models: dict[str, EvalResults],
    data: Data,
    cfg: TrainConfig,
    *,
    title_prefix: str = "",
    extra: dict[str, Any] | None = None,
) -> str:
    """:func:`.report.write_report` of ``models`` on ``data``'s test split, beside its
    reference maps, titled with the split and recording it (plus ``extra``) in results.json."""
    title = (
        f"{title_prefix}Localization accuracy on the {data.index.dataset_name} test split "
        f"({data.summary['test']} images, setting "
        f"{data.summary.get('setting', 'from files')}, fold {data.summary.get('fold', '-')}); "
        "T(IoU) thresholds, prediction = map > 0.5"
    )
    return write_report(
        out_dir,
        models,
        reference_results(data, cfg),
        data.test,
        title=title,
        num_figures=cfg.num_figures,
        extra={"split": data.summary, **(extra or {})},
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
    cfg = ckpt.absolute_paths(cfg)
    # every start-up error before the run directory exists; a twin file made once, for both runs
    prepare_weights(cfg)
    select_device(cfg)
    data = build_data(cfg, with_train=False)
    root = ckpt.new_run_dir(dataclasses.replace(cfg, run_name=cfg.run_name or None))
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
        timed = side_by_side(
            [
                functools.partial(_timed_train, subs[name], position)
                for position, name in enumerate(names)
            ],
            min(cfg.parallel_runs, 2),
        )
        for name, (res, secs) in zip(names, timed, strict=True):
            results[name], seconds[name] = res, secs
    else:
        for name in names:
            print(f"\n=== training {name}: losses {'+'.join(subs[name].losses)} ===")
            results[name], seconds[name] = _timed_train(subs[name])
    text = _report(
        root,
        {"CCG": results["CCG"], "Baseline": results["Baseline"]},
        data,
        cfg,
        extra={"seconds": {**seconds, "total": time.perf_counter() - t_start}},
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
        png = save_training_curves(curves, root / CURVES_PNG, results["CCG"].auc_names)
        text += f"Training curves: {png}\n"
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
    text = _report(
        out_dir,
        {model_name(cfg): res},
        data,
        cfg,
        title_prefix=f"{path}: ",
        extra={"checkpoint": str(path)},
    )
    return res, text, out_dir


# --------------------------------------------------------------------------- reproduce


def run_fold(
    cfg: TrainConfig, root: Path, fold: int, baseline: bool = False, bar_position: int = 0
) -> dict[str, Tensor]:
    """The accuracy matrices ``(T, K)`` per method of one fold: read back if the fold finished,
    resumed if it was interrupted (from its last checkpoint, or from the start before its
    first), trained otherwise. With ``baseline``, the fold's baseline run (``fold<k>-baseline``:
    ``cfg`` with L_base alone), its model only."""
    name = f"fold{fold}-baseline" if baseline else f"fold{fold}"
    label = f"fold {fold}, baseline" if baseline else f"fold {fold}"
    fold_dir = root / name
    report = fold_dir / "results.json"
    if not report.is_file():
        if (fold_dir / "config.json").is_file():  # (one killed before a checkpoint starts over)
            print(f"\n=== {label}: resuming {fold_dir} ===")
            train(
                cfg,
                resume_dir=fold_dir,
                bar_position=bar_position,
            )
        else:
            print(f"\n=== {label} ===")
            run_cfg = dataclasses.replace(cfg, fold=fold, output_dir=str(root), run_name=name)
            if baseline:
                run_cfg.losses = ("base",)
            train(run_cfg, bar_position=bar_position)
    methods = json.loads(report.read_text())["methods"]
    if baseline:
        methods = {"Baseline": methods["Baseline"]}
    return {
        name: torch.tensor(
            [[math.nan if v is None else v for v in row] for row in m["accuracy_matrix"]]
        )
        for name, m in methods.items()
    }


def reproduce(cfg: TrainConfig, folds: tuple[int, ...] | None = None) -> Path:
    """Train every fold of ``cfg.setting`` (or ``folds``) and write the aggregated table."""
    cfg = ckpt.absolute_paths(cfg)
    folds = folds if folds is not None else default_folds(cfg.setting)
    name = cfg.run_name or f"reproduce-{cfg.preset}-setting-{cfg.setting}"
    root = Path(cfg.output_dir) / name
    # per fold the model and, unless it is the baseline, the baseline beside it
    jobs = [(k, b) for k in folds for b in ((False, True) if len(cfg.losses) > 1 else (False,))]
    workers = 1
    if cfg.parallel_runs > 1 and len(jobs) > 1:
        # runs side by side, one process each (the demo preset: two on a 2-core machine), each
        # with its bars on a console line of its own; the dataset (and a twin file) made once, here
        dataset_root(cfg)
        prepare_weights(cfg)
        workers = min(cfg.parallel_runs, len(jobs))
    done = side_by_side(
        [
            functools.partial(run_fold, cfg, root, k, b, i % workers)
            for i, (k, b) in enumerate(jobs)
        ],
        workers,
    )
    by_job = dict(zip(jobs, done, strict=True))
    per_fold = [model_first({**by_job[k, False], **by_job.get((k, True), {})}) for k in folds]
    # the dataset's classes as the folds' reports name them (ChestX-ray14's in a report from
    # before they did)
    report = json.loads((root / f"fold{folds[0]}" / "results.json").read_text())
    names = tuple(report.get("class_names", CLASS_NAMES))
    boxed = tuple(report.get("boxed_classes", BOXED_CLASSES))
    stats = aggregate(per_fold, boxed_columns(names, boxed))
    text = reproduce_report(cfg, folds, stats, root, boxed)
    print("\n" + text)
    return root
