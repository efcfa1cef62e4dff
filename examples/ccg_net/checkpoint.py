"""Checkpoints: written atomically, read with ``weights_only=True``, carrying every RNG state."""

from __future__ import annotations

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
    """A path that is not a trainer checkpoint (missing, a folder, another kind of file)."""


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
        CheckpointError: ``path`` is missing, a folder without ``checkpoints/last.pt``, or not
            a checkpoint of the trainer.
    """
    path = resolve(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle, zip or weights_only errors: not our file
        raise CheckpointError(
            f"{path} is not a checkpoint of the CCG-Net trainer (torch.load failed: "
            f"{type(err).__name__}); pass RUN_DIR/checkpoints/last.pt"
        ) from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not a checkpoint of train_ccg.py (no 'model' entry)")
    return obj


def load_model(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[CCGNet, TrainConfig]:
    """A trainer checkpoint as a ready :class:`CCGNet` (eval mode, on ``device``) and its
    :class:`TrainConfig`.

    ``path`` is a checkpoint file (``RUN_DIR/checkpoints/last.pt``) or a run directory. The
    model takes ``(N, 1, S, S)`` uint8 radiographs at ``config.image_size`` (or normalised
    3-channel float images) and returns ``(logits, features)``; ``torch.sigmoid(logits)`` is
    the class-wise probability map.
    """
    from .engine import model_from_config

    state = load(path)
    cfg = TrainConfig.from_dict(state["config"])
    model = model_from_config(cfg, "none")  # the checkpoint carries every weight
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
