"""``pretrain``: a backbone trained on an independent twin's image-level labels, as a file that
``--weights`` accepts (issue 20, point 1)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from examples.ccg_net import runs
from examples.ccg_net.cli import main
from examples.ccg_net.model import build_model
from examples.ccg_net.pretrain import cached, pretrain, pretrain_config


def test_pretrain_trains_the_baseline_on_another_twin_in_setting_b(make_config):
    cfg = make_config(synthetic_seed=0, synthetic_images=48)
    p = pretrain_config(cfg, seed=5)
    assert (p.data_root, p.synthetic_seed, p.setting, p.losses, p.weights) == (
        None,
        5,
        "b",
        ("base",),
        "none",
    )
    assert (p.tiny_widths, p.image_size, p.lr) == (cfg.tiny_widths, cfg.image_size, cfg.lr)


@pytest.mark.slow
def test_pretrained_file_loads_as_weights_and_is_reused(make_config, tmp_path, monkeypatch):
    cfg = make_config(synthetic_images=48, epochs=1)
    out = tmp_path / "w" / "tiny.pt"
    assert pretrain(cfg, out, seed=5) == out
    state = torch.load(out, weights_only=True)
    model = build_model(
        "tiny", str(out), tiny_widths=cfg.tiny_widths, tiny_stride=cfg.tiny_stride, head_channels=8
    )
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["synthetic_seed"] == 5
    assert "auc" in next(iter(meta["results"].values()))
    assert not list(out.parent.glob("*.tmp"))  # written atomically
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600
    # the same configuration again: the file is reused, nothing is trained
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("trained again"))
    assert cached(out, pretrain_config(cfg, seed=5))
    assert pretrain(cfg, out, seed=5) == out
    # an option added to the trainer later, at its default, keeps the file; a changed one not
    recorded = json.loads(out.with_suffix(".json").read_text())
    del recorded["config"]["box_weight"]
    out.with_suffix(".json").write_text(json.dumps(recorded))
    assert cached(out, pretrain_config(cfg, seed=5))
    assert not cached(out, pretrain_config(make_config(synthetic_images=48, box_weight=2.0), 5))
    # another learning configuration is not the cached one
    assert not cached(out, pretrain_config(make_config(synthetic_images=48, epochs=2), seed=5))


def test_pretraining_on_the_runs_own_twin_is_refused(make_config, tmp_path):
    with pytest.raises(ValueError, match="--pretrain-seed must differ from --synthetic-seed"):
        pretrain(make_config(data_root=None, synthetic_seed=3), tmp_path / "w.pt", seed=3)


def test_pretrain_cli_error_is_one_line_before_any_work(tmp_path, capsys):
    argv = ["pretrain", "--preset", "demo", "--pretrain-seed", "0"]
    argv += ["--output-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: --pretrain-seed must differ from --synthetic-seed (0)")
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_weights_twin_pretrains_once_and_starts_the_run_from_that_file(make_config, monkeypatch):
    from examples.ccg_net import pretrain as pre
    from examples.ccg_net.model import model_from_config
    from examples.ccg_net.runs import train

    calls = []
    real = pre.pretrain
    monkeypatch.setattr(pre, "pretrain", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = make_config(
        data_root=None, synthetic_images=48, epochs=1, weights="twin", seed=3, run_name="s3"
    )
    train(cfg)
    path = pre.default_output(cfg)
    assert path.is_file()
    # the run's seed does not change the pretraining: one file for every seed of a study
    assert json.loads(path.with_suffix(".json").read_text())["config"]["seed"] == 0
    state = torch.load(path, weights_only=True)
    model = model_from_config(cfg, "twin")
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k
    # another seed of the same study reuses the file
    before = path.stat().st_mtime_ns
    train(
        make_config(
            data_root=None, synthetic_images=48, epochs=1, weights="twin", seed=4, run_name="s4"
        )
    )
    assert len(calls) == 2  # asked twice ...
    assert path.stat().st_mtime_ns == before  # ... written once


def test_weights_twin_with_real_data_is_refused(make_config):
    from examples.ccg_net.config import validate_config

    with pytest.raises(ValueError, match="--weights twin pretrains on the synthetic twin"):
        validate_config(make_config(weights="twin"))
