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
