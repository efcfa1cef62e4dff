"""Fixtures of the trainer tests: a tiny synthetic ChestX-ray14 and a tiny configuration."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from examples.ccg_net.config import TrainConfig  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ccg_layers.datasets import generate_synthetic_chestxray14

    return generate_synthetic_chestxray14(
        tmp_path_factory.mktemp("cxr14"), 48, seed=3, image_size=64
    )


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
        tiny_widths=(4, 8, 8, 8),
        tiny_stride=8,
        head_channels=8,
        freeze_bn=False,
        test_upsample=2,
        num_patches=4,
        superpixel_size=16,
        code_bits=16,
        batch_size=4,
        epochs=2,
        lr=0.01,
        lr_step_epochs=1,
        num_workers=0,
        checkpoint_every=0,
        progress=False,
        deterministic=True,
        threads=1,
        num_figures=2,
    )
    return dataclasses.replace(cfg, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def make_config(tiny_root: Path, tmp_path: Path):
    def make(**overrides: object) -> TrainConfig:
        return tiny_config(tiny_root, tmp_path, **overrides)

    return make
