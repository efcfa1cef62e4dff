"""Checkpoints: written atomically, read with ``weights_only=True``, carrying every RNG state."""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .config import TrainConfig
from .model import CCGNet


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


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A process killed while writing leaves the previous file intact (the rename is atomic on
    POSIX and Windows file systems). The file gets the permissions of an ordinary new file
    (``0666`` less the umask), not ``mkstemp``'s ``0600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through :func:`write_atomic`: a killed run keeps its last checkpoint."""
    write_atomic(path, lambda f: torch.save(obj, f))


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
_SHOWN = 3  # names listed in a message before "..."


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
            f"checkpoint {path} lacks {_names(missing, quote=True)} (a checkpoint of the "
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
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise CheckpointError(
            f"checkpoint {path}: its configuration has {_names(unknown, quote=True)}, "
            f"unknown to this trainer (written by another version of it, or edited)"
        )
    return TrainConfig.from_dict(saved)


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
            parts.append(f"{len(missing)} missing ({_names(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model ({_names(unexpected)})")
        raise CheckpointError(
            f"checkpoint {path}: its {entry} weights do not fit the model of {of or 'this run'}"
            f": {'; '.join(parts)}. They are another configuration's weights"
        )
    bad = [k for k, v in saved.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite values (NaN or inf) in {len(bad)} {entry} "
            f"tensor(s): {_names(bad)}; the run diverged before it was saved: use an earlier "
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


def _names(items: list[str], *, quote: bool = False) -> str:
    shown = [repr(k) if quote else k for k in items[:_SHOWN]]
    return ", ".join(shown) + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


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
    from .engine import model_from_config

    path = resolve(path)
    state = load(path)
    require(state, path, MODEL_KEYS)
    cfg = checkpoint_config(state, path)
    model = model_from_config(cfg, "none")  # the checkpoint carries every weight
    check_weights(model, state["model"], path, of=f"its configuration ({_describe(cfg)})")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
