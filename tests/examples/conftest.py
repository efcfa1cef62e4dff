"""Fixtures of the trainer tests: a tiny synthetic ChestX-ray14 and a tiny configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from .trainer_helpers import tiny_config


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ccg_layers.datasets import generate_synthetic_chestxray14

    return generate_synthetic_chestxray14(
        tmp_path_factory.mktemp("cxr14"), 48, seed=3, image_size=64
    )


@pytest.fixture
def make_config(tiny_root: Path, tmp_path: Path):
    def make(**overrides: object):
        return tiny_config(tiny_root, tmp_path, **overrides)

    return make


@pytest.fixture(scope="module")
def finished_tiny_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch tiny run (L_base only, no figures), one per test module."""
    from examples.ccg_net.runs import train

    out = tmp_path_factory.mktemp("finished")
    cfg = tiny_config(tiny_root, out, run_name="good", epochs=1, losses=("base",), num_figures=0)
    return train(cfg, print_report=False).run_dir
