"""benchmarks/train_step.py: the FLOP count of a step (machine-independent, so testable)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from benchmarks import train_step

from .trainer_helpers import tiny_config


def _tiny(tmp_path: Path, **overrides: object):
    cfg = tiny_config(tmp_path, tmp_path)
    return dataclasses.replace(cfg, batch_size=2, **overrides)  # type: ignore[arg-type]


def _flops(cfg) -> dict[str, float]:
    """The FLOPs of one step of each model as ``time_pair`` counts them, and their difference."""
    t = train_step.time_pair(cfg, steps=1, warmup=1, device=torch.device("cpu"))
    return {
        "baseline": t["baseline_flops"],
        "relation": t["ccg_flops"] - t["baseline_flops"],
    }


def test_step_flops_counts_what_the_relation_terms_add(tmp_path):
    full = _flops(_tiny(tmp_path))
    assert full["baseline"] > 0
    assert full["relation"] > 0
    # a rank-2 W_P costs fewer FLOPs than the full C x C matrix; the baseline is the same
    low = _flops(_tiny(tmp_path, kr_qk_channels=2))
    assert low["baseline"] == full["baseline"]
    assert low["relation"] < full["relation"]


def test_settings_are_named():
    assert train_step.setting("paper-qk256").kr_qk_channels == 256
    assert train_step.setting("paper").kr_qk_channels == 0
    with pytest.raises(ValueError, match="--settings"):
        train_step.setting("papr")
