"""Helpers shared by the trainer tests (importable by spawned DDP workers)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from examples.ccg_net.config import TrainConfig  # noqa: E402


def tiny_config(root: Path, out: Path, **overrides: object) -> TrainConfig:
    """All four losses, a 2-epoch run on 64x64 images with a tiny backbone (8x8 grid)."""
    cfg = TrainConfig(
        preset="test",
        data_root=str(root),
        cache_dir=str(out / "cache"),
        output_dir=str(out / "runs"),
        image_size=64,
        backbone="tiny",
        weights="none",
        tiny_widths=(8, 8, 8, 8),
        tiny_stride=8,
        head_channels=8,
        freeze_bn=False,
        test_upsample=2,
        num_patches=4,
        superpixel_size=16,
        code_bits=16,
        batch_size=4,
        epochs=2,
        lr=1e-3,
        lr_step_epochs=1,
        num_workers=0,
        checkpoint_every=0,
        progress=False,
        deterministic=True,
        threads=1,
        num_figures=2,
    )
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


def one_error_line(err: str, code: int, *matches: str) -> str:
    """The stderr ``err`` of a command that ended with ``code``: exit 2, exactly one line, an
    ``error:`` line holding every one of ``matches`` and no traceback; returns the line."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for match in matches:
        assert match in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


class SimulatedKillError(RuntimeError):
    """Raised by :func:`killed_after_steps`: the run stops abruptly, as if killed."""


@contextlib.contextmanager
def killed_after_steps(steps: int) -> Iterator[None]:
    """Within the block, a run of this process stops abruptly after its ``steps``-th step, as if
    killed: the trainer's ``train_step`` raises :class:`SimulatedKillError` when asked for the
    next one, so the step's log point and a checkpoint due at it are done, nothing after it.

    The runs it stops start from step 0 (a fresh run), so the count is the run's global step.
    """
    from examples.ccg_net import engine

    real = engine.train_step
    done = 0

    def train_step(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        if done >= steps:
            raise SimulatedKillError(f"stopped after {done} steps (killed_after_steps)")
        done += 1
        return real(*args, **kwargs)

    engine.train_step = train_step  # type: ignore[assignment]
    try:
        yield
    finally:
        engine.train_step = real  # type: ignore[assignment]
