"""The run directory's files: checkpoints written atomically, read with ``weights_only=True``,
carrying every RNG state, and restored into a run (:func:`restore`); the directory itself
(:func:`new_run_dir`), its ``metrics.csv``/``metrics.json`` (:class:`MetricsLog`), its other
files written atomically too, its temporary files swept, its lock."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import io
import json
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from ccg_layers.datasets.image_files import name_list

from .config import PATH_FIELDS, TrainConfig
from .model import CCGNet, model_from_config

if TYPE_CHECKING:
    from .engine import Progress, Trainee


def rng_state() -> dict[str, Any]:
    """This process's torch (CPU, and CUDA of its current device), numpy and Python RNG states,
    in weights_only-loadable types. Under DDP the trainer saves one per rank."""
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what libraries use)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *[float(v) for v in np_state[2:]]],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (tensors loaded to any device are read on the CPU:
    ``torch.set_rng_state`` takes only a CPU ByteTensor)."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), cached)
    )
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


class WriteError(OSError):
    """A file could not be written (a full disk, a read-only folder): the message names the file
    and the reason; the previous version of the file, if any, is intact and no temporary file is
    left (``errno`` is the operating system's, where there is one)."""


def _os_error(err: BaseException) -> OSError | None:
    """The operating system's error behind ``err``: ``err`` itself, or the ``OSError`` a library
    turned into another exception (``torch.save`` reports a failed write of its file object as
    ``RuntimeError: ... unexpected pos``, the ``OSError`` in its context)."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen and isinstance(cur, Exception):
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def write_atomic(
    path: Path, write: Callable[[BinaryIO], object], *, exclusive: bool = False
) -> None:
    """``write(f)`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A process killed while writing leaves the previous file intact (the rename is atomic on
    POSIX and Windows file systems); the temporary file it leaves (``.NAME.XXXXXXXX.tmp``) is
    removed by :func:`sweep_temp_files` at the run's next start. The file gets the permissions
    of an ordinary new file (``0666`` less the umask), not ``mkstemp``'s ``0600``.
    ``exclusive``: create ``path`` only if it does not exist (a hard link instead of the
    rename: of two processes creating it at once, exactly one succeeds).

    Raises:
        WriteError: the folder or the file could not be written (disk full, quota, read-only,
            ...): the temporary file is removed and the previous ``path`` left as it was.
        FileExistsError: ``exclusive`` and ``path`` exists (it is left as it was).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            Path(tmp).unlink()
        else:
            os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _os_error(err)
        if cause is None or isinstance(err, WriteError | FileExistsError):
            raise
        reason = cause.strerror or str(cause) or type(cause).__name__
        failed = WriteError(f"cannot write {path}: {reason} (the previous file, if any, is intact)")
        failed.errno = cause.errno
        raise failed from err


def write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8) to ``path`` through :func:`write_atomic`."""
    data = text.encode()
    write_atomic(path, lambda f: f.write(data))


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through :func:`write_atomic`: a killed run keeps its last checkpoint."""
    write_atomic(path, lambda f: torch.save(obj, f))


#: What :func:`write_atomic`'s temporary files are called: ``.NAME.`` + mkstemp's 8 characters.
_TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def sweep_temp_files(folders: Iterable[Path]) -> list[Path]:
    """Remove the temporary files a killed :func:`write_atomic` left in ``folders`` (not their
    subfolders); returns the files removed. Only a run that holds the folder's lock
    (:func:`run_lock`) may sweep it: another live writer's temporary file would go too."""
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for p in Path(folder).iterdir():
            if _TEMP_FILE.fullmatch(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool on the tensors' (first) device: whether every floating-point element of
    ``tensors`` is finite. One fused reduction (the largest absolute value, foreach per device
    and dtype; NaN and infinity propagate), so reading it costs one host synchronisation."""
    floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.nn.utils.get_total_norm(floats, math.inf))


def state_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) state dict, list or tuple."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from state_tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from state_tensors(v)


#: The lock file of a run directory (see :func:`run_lock`).
LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """A run directory is in use by a live run (its lock is held)."""


def _lock_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    pid = os.read(fd, 64).decode(errors="replace").strip()
    return f"process {pid}" if pid else "another process"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the block: ``RUN_DIR/.lock``, an exclusive ``fcntl.flock``
    with this process's pid in it, removed at the end.

    The kernel releases a ``flock`` when its process dies, however it dies, so a lock file left
    by a crashed run (a dead pid) is simply taken over by the next one.

    Raises:
        RunLockedError: a live process holds the lock (named by the pid in the file).
    """
    import fcntl  # POSIX (Linux, macOS); imported here so that load_model needs no fcntl

    path = Path(run_dir) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{run_dir} is in use by a live run ({holder} holds {path}); wait for it to end "
                "or stop it (a crashed run's lock is taken over by itself)"
            ) from None
        # the holder may have removed the file between our open and flock: lock the new one
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # still locked: no one else can hold this file now
        os.close(fd)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with what is wrong: missing, a folder, another kind of
    file, damaged, lacking an entry, holding another configuration's or non-finite weights."""


#: The entries :func:`load_model` needs (``predict``, ``evaluate``).
MODEL_KEYS = ("model", "config")
#: The entries ``--resume`` needs: everything the trainer saves.
RESUME_KEYS = (
    "model",
    "criterion",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "step_in_epoch",
    "global_step",
    "rng",
    "config",
)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file from ``path``: the file itself, or a run directory's
    ``checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if last.is_file():
            return last
        raise CheckpointError(
            f"{path} is a directory, not a checkpoint; pass a checkpoint file such as "
            "RUN_DIR/checkpoints/last.pt (or a run directory that has one)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    return path


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs on load).

    Raises:
        CheckpointError: ``path`` is missing, a folder without ``checkpoints/last.pt``, a
            damaged (e.g. truncated) checkpoint, or not a checkpoint of the trainer (another
            kind of file, or another object than the trainer's dict).
    """
    path = resolve(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle, zip or weights_only errors: not our file, or damaged
        with open(path, "rb") as f:
            archive = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        if archive:
            raise CheckpointError(
                f"checkpoint {path} is damaged ({path.stat().st_size} bytes; truncated or "
                f"overwritten: torch.load failed: {_first_line(err)}); use another checkpoint "
                "of the run, such as RUN_DIR/checkpoints/epochNNN.pt"
            ) from None
        raise CheckpointError(
            f"{path} is not a checkpoint of the CCG-Net trainer (torch.load failed: "
            f"{type(err).__name__}); pass RUN_DIR/checkpoints/last.pt"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} is not a checkpoint of train_ccg.py: it holds a {type(obj).__name__}, "
            "not the trainer's dict of model, config, optimizer, ..."
        )
    if "model" not in obj:
        raise CheckpointError(f"{path} is not a checkpoint of train_ccg.py (no 'model' entry)")
    return obj


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def require(state: dict[str, Any], path: Path, keys: tuple[str, ...]) -> None:
    """Raise :class:`CheckpointError` naming the entries of ``keys`` that ``state`` lacks."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {name_list(missing, quote=True)} (a checkpoint of the "
            f"trainer holds {', '.join(RESUME_KEYS)}); it was not written by this trainer "
            "or was edited"
        )


def checkpoint_config(state: dict[str, Any], path: Path) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint was trained with.

    Raises:
        CheckpointError: No ``config`` entry, or one this trainer cannot read (an unknown key:
            written by another version of the trainer, or edited).
    """
    require(state, path, ("config",))
    saved = state["config"]
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"checkpoint {path}: its 'config' entry is a {type(saved).__name__}, not a dict"
        )
    try:
        return TrainConfig.from_dict(saved)
    except ValueError as err:  # an unknown key, or a removed option at a value that trained
        raise CheckpointError(f"checkpoint {path}: {err}") from None


def check_weights(
    module: torch.nn.Module, saved: Any, path: Path, *, entry: str = "model", of: str = ""
) -> None:
    """Raise :class:`CheckpointError` unless ``saved`` (the checkpoint's ``entry``) loads into
    ``module``: the same names, each of the same shape (but where ``module`` holds an empty,
    lazily allocated buffer, such as a partner memory's queue), every value finite.

    Args:
        module: The module the weights are for.
        saved: The checkpoint's state dict for it.
        path: The checkpoint (named in the message).
        entry: The checkpoint's entry (``"model"``, ``"criterion"``).
        of: What ``module`` was built from, for the message (e.g. "its configuration").
    """
    if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise CheckpointError(f"checkpoint {path}: its '{entry}' entry is not a state dict")
    expected = module.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    reshaped = [  # (an empty tensor is a lazily allocated buffer: it adopts the saved shape)
        f"{k} {tuple(saved[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in saved and saved[k].shape != v.shape and v.numel() > 0
    ]
    if missing or unexpected or reshaped:
        parts = []
        if reshaped:
            parts.append(f"{len(reshaped)} of another shape (the first: {reshaped[0]})")
        if missing:
            parts.append(f"{len(missing)} missing ({name_list(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model ({name_list(unexpected)})")
        raise CheckpointError(
            f"checkpoint {path}: its {entry} weights do not fit the model of {of or 'this run'}"
            f": {'; '.join(parts)}. They are another configuration's weights"
        )
    bad = non_finite(saved)
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite values (NaN or inf) in {len(bad)} {entry} "
            f"tensor(s): {name_list(bad)}; the run diverged before it was saved: use an earlier "
            "checkpoint (RUN_DIR/checkpoints/epochNNN.pt)"
        )


def _describe(cfg: TrainConfig) -> str:
    """The architecture a configuration builds, for messages."""
    arch = f"backbone {cfg.backbone}"
    if cfg.backbone == "tiny":
        arch += f" {'-'.join(map(str, cfg.tiny_widths))}"
    return f"{arch}, head {cfg.head_channels} channels, {cfg.image_size} px, preset {cfg.preset}"


def check_resumable(
    state: dict[str, Any], path: Path, model: torch.nn.Module, criterion: torch.nn.Module
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` can resume a run whose model and loss are
    ``model`` and ``criterion``: every entry the trainer saves, a readable configuration, and
    weights of the same names and shapes, all finite."""
    require(state, path, RESUME_KEYS)
    saved_cfg = checkpoint_config(state, path)
    of = f"this run (the checkpoint's own configuration: {_describe(saved_cfg)})"
    check_weights(model, state["model"], path, of=of)
    check_weights(criterion, state["criterion"], path, entry="criterion", of=of)


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point ``tensors`` that hold NaN or inf (reads each one)."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]


def load_model(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[CCGNet, TrainConfig]:
    """A trainer checkpoint as a ready :class:`CCGNet` (eval mode, on ``device``) and its
    :class:`TrainConfig`.

    ``path`` is a checkpoint file (``RUN_DIR/checkpoints/last.pt``) or a run directory. The
    model takes ``(N, 1, S, S)`` uint8 radiographs at ``config.image_size`` (or normalised
    3-channel float images) and returns ``(logits, features)``; ``torch.sigmoid(logits)`` is
    the class-wise probability map.

    Raises:
        CheckpointError: One line saying what is wrong: see :func:`load`, and an entry
            missing, a configuration this trainer cannot read, weights that do not fit the
            model of the checkpoint's configuration, or non-finite weights.
    """
    path = resolve(path)
    state = load(path)
    require(state, path, MODEL_KEYS)
    cfg = checkpoint_config(state, path)
    model = model_from_config(cfg, "none")  # the checkpoint carries every weight
    check_weights(model, state["model"], path, of=f"its configuration ({_describe(cfg)})")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


# --------------------------------------------------------------------------- run directory


class RunDirError(ValueError):
    """``--run-name`` names a directory that already holds a run (its ``config.json``)."""


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
        write_text(self.csv, text.getvalue())
        write_text(self.json, json.dumps(self.data, indent=2) + "\n")

    def has(self, epoch: int) -> bool:
        """Whether the row of ``epoch`` (1-based) is recorded."""
        return any(r["epoch"] == epoch for r in self.data["epochs"])

    def finish(self, final: dict[str, Any]) -> None:
        self.data["final"] = final
        write_text(self.json, json.dumps(self.data, indent=2) + "\n")


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
            write_atomic(path / "config.json", lambda f: f.write(text), exclusive=True)
        except FileExistsError:
            if cfg.run_name is not None:
                raise _name_in_use(cfg) from None
            k += 1
            continue
        return path


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The configuration with its folders made absolute, so that a run directory works from
    any working directory (``evaluate`` does not regenerate the synthetic data elsewhere)."""
    paths = {name: getattr(cfg, name) for name in PATH_FIELDS}
    return dataclasses.replace(
        cfg, **{name: str(Path(p).resolve()) for name, p in paths.items() if p is not None}
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
    saved = load(path, map_location="cpu")
    check_resumable(saved, path, trainee.model, trainee.criterion)  # one line if not
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
    set_rng_state(rngs)
    row = saved.get("epoch_row")
    return row if state.step_in_epoch == 0 else None
