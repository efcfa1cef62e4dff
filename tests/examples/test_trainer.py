"""The reference trainer (examples/ccg_net): run directory, exact resume, evaluation, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from examples.ccg_net import checkpoint as ckpt
from examples.ccg_net import cli
from examples.ccg_net.cli import build_parser
from examples.ccg_net.config import ABLATIONS, resolve_config
from examples.ccg_net.data import TrainSet, epoch_order, trivial_prior
from examples.ccg_net.engine import NonFiniteLossError, build_trainee
from examples.ccg_net.losses import kr_pairs
from examples.ccg_net.model import WeightsNotFoundError, build_model, resolve_weights
from examples.ccg_net.runs import compare, evaluate_checkpoint, train

from .trainer_helpers import SimulatedKillError, killed_after_steps


def _states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- run directory


def test_run_directory_holds_config_splits_metrics_checkpoints(make_config):
    cfg = make_config(run_name="full")
    run = train(cfg).run_dir
    assert json.loads((run / "config.json").read_text())["losses"] == ["base", "ir", "ik", "kr"]
    split = json.loads((run / "split" / "split.json").read_text())
    assert split["train"] > 0
    assert split["test"] == split["test_annotated"] > 0
    assert {"setting", "fold", "train_sharing_patient_with_test"} <= split.keys()
    train_names = (run / "split" / "train.txt").read_text().split()
    test_names = (run / "split" / "test.txt").read_text().split()
    assert (len(train_names), len(test_names)) == (split["train"], split["test"])
    predictions = torch.load(run / "predictions-ccg.pt", weights_only=True)
    assert predictions["names"] == test_names  # per-image maps with the image names
    assert predictions["maps"].shape[:2] == (len(test_names), 14)
    assert predictions["scores"].shape == (len(test_names), 14)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + cfg.epochs
    for term in ("train_base", "train_ir", "train_ik", "train_kr", "train_loss", "lr"):
        assert term in rows[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    # each row's rate is the one its epoch trained at: x lr_gamma after every epoch
    assert [r["lr"] for r in metrics["epochs"]] == pytest.approx([cfg.lr, cfg.lr * cfg.lr_gamma])
    assert "T=0.3" in metrics["final"]["localization"]
    report = (run / "results.md").read_text()
    assert "| T(IoU) | model | Atelectasis" in report
    for name in ("CCG", "Prior"):  # the model beside every reference map
        assert f"| 0.3 | {name} |" in report
    assert len(list((run / "figures").glob("*.png"))) == cfg.num_figures
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["epoch"] == cfg.epochs
    assert state["step_in_epoch"] == 0
    assert (run / "checkpoints" / f"epoch{cfg.epochs:03d}.pt").is_file()
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_every_table4_row_is_one_flag_away(tiny_root, tmp_path):
    parser = build_parser()
    for row, extra in ABLATIONS.items():
        cfg = resolve_config(parser.parse_args(["train", "--preset", "demo", "--ablation", row]))
        assert cfg.losses == ("base", *extra)
        trainee = build_trainee(cfg, world=1)
        assert trainee.criterion.terms == ("base", *[t for t in ("ir", "ik", "kr") if t in extra])


def test_cli_options_override_the_preset():
    args = build_parser().parse_args(
        [
            "train",
            "--preset",
            "demo",
            "--losses",
            "base,kr",
            "--lr",
            "0.5",
            "--tiny-widths",
            "8,8,8,8",
        ]
    )
    cfg = resolve_config(args)
    assert cfg.losses == ("base", "kr")
    assert cfg.lr == 0.5
    assert cfg.tiny_widths == (8, 8, 8, 8)
    assert cfg.backbone == "tiny"


def test_paper_preset_has_the_paper_defaults():
    cfg = resolve_config(build_parser().parse_args(["train"]))
    assert (cfg.backbone, cfg.image_size, cfg.batch_size, cfg.epochs) == ("resnet50", 512, 2, 9)
    assert (cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay) == (1e-3, 0.9, True, 1e-4)
    assert (cfg.lr_step_epochs, cfg.lr_gamma) == (4, 0.1)
    assert (cfg.w_base, cfg.w_ir, cfg.w_ik, cfg.w_kr) == (0.25,) * 4
    assert cfg.losses == ("base", "ir", "ik", "kr")
    assert cfg.weights == "imagenet"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--losses", "ir,ik"], "must include 'base'"),
        (["--losses", "base,xx"], "unknown terms"),
        (["--setting", "d"], "--setting must be a, b or c"),
        (["--fold", "5"], "--fold must be in 0..4"),
        (["--image-size", "500"], "multiple of 32"),
        (["--base-reduction", "max"], "--base-reduction must be sum or mean"),
        (["--kr-pairs", "some"], "--kr-pairs must be half or all"),
    ],
)
def test_bad_options_are_rejected_with_the_option_named(argv, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize(("setting", "fold"), [("a", 1), ("b", 0), ("c", 4)])
def test_the_paper_settings_and_folds_reach_the_run(make_config, setting, fold):
    from examples.ccg_net.data import load_split

    index, split, summary = load_split(make_config(setting=setting, fold=fold))
    assert (summary["setting"], summary["fold"]) == (setting, fold)
    assert summary["test"] == summary["test_annotated"] == len(split["test"]) > 0
    if setting == "b":
        assert summary["train_annotated"] == 0
        assert summary["test"] == int(index.annotated.sum())


def test_kr_pairs_of_a_batch():
    u, v = kr_pairs(2, "half")
    assert (u.tolist(), v.tolist()) == ([0], [1])  # the paper's batch of 2: its one pair
    u, v = kr_pairs(8, "half")
    assert (u.tolist(), v.tolist()) == ([0, 1, 2, 3], [4, 5, 6, 7])
    u, v = kr_pairs(4, "all")
    assert sorted(zip(u.tolist(), v.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
    ]


def test_base_term_is_eq3_sum_by_default_and_mean_on_request(make_config):
    torch.manual_seed(0)
    logits, feats = torch.randn(4, 14, 8, 8), torch.randn(4, 8, 8, 8)
    labels = (torch.rand(4, 14) < 0.3).float()
    grid, box_mask = torch.zeros(4, 14, 8, 8), torch.zeros(4, 14, dtype=torch.bool)
    summed = build_trainee(make_config(losses=("base",)), 1).criterion
    mean = build_trainee(make_config(losses=("base",), base_reduction="mean"), 1).criterion
    s = summed(logits, feats, labels, grid, box_mask)["base"]
    m = mean(logits, feats, labels, grid, box_mask)["base"]
    torch.testing.assert_close(s, m * 4 * 14)


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_ends_with_the_same_weights(make_config):
    # 27 training images, batch 4: 7 steps an epoch. Checkpoints every 4 steps and at epoch
    # ends; killed after step 9 (epoch 2, step 2), so the resumed run restarts from global step
    # 8 (epoch 2, step 1), mid-epoch, and replays step 9.
    full = train(make_config(run_name="uninterrupted", checkpoint_every=4)).run_dir
    cfg = make_config(run_name="killed", checkpoint_every=4)
    with pytest.raises(SimulatedKillError), killed_after_steps(9):
        train(cfg)
    state = ckpt.load(Path(cfg.output_dir) / "killed" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 8)
    resumed = train(cfg, resume_dir=Path(cfg.output_dir) / "killed").run_dir
    a = ckpt.load(full / "checkpoints" / "last.pt")
    b = ckpt.load(resumed / "checkpoints" / "last.pt")
    assert b["global_step"] == a["global_step"] == 14
    _states_equal(a["model"], b["model"])
    _states_equal(a["criterion"], b["criterion"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    # the graph parameters were trained, not left at their initial values
    assert b["criterion"]["graphs.sample_graph.weight"].abs().sum() > 0


def test_resume_at_the_papers_batch_of_2_restores_the_partner_memory_exactly(make_config):
    # the paper's batch of 2: the memory is on (auto, 8 partners) and non-empty at the kill.
    # 27 training images, batch 2: 14 steps an epoch; checkpoints every 4 steps; killed after
    # step 7, so the resumed run restarts from global step 4 with the memory of step 4 and
    # replays steps 5-7 (their enqueues included)
    overrides = {"batch_size": 2, "epochs": 1, "checkpoint_every": 4, "num_figures": 0}
    full = train(make_config(run_name="uninterrupted", **overrides)).run_dir
    cfg = make_config(run_name="killed", **overrides)
    with pytest.raises(SimulatedKillError), killed_after_steps(7):
        train(cfg)
    killed = ckpt.load(Path(cfg.output_dir) / "killed" / "checkpoints" / "last.pt")
    assert killed["global_step"] == 4
    # the checkpoint holds the filled memories (4 steps x 2 maps each): L_IR and L_IK's one
    # memory (module "graphs") and L_KR's
    for module in ("graphs", "kr_graph"):
        assert killed["criterion"][f"{module}.memory_count"] == 8, module
        assert killed["criterion"][f"{module}.memory_features"].shape[0] == 8, module
    assert killed["criterion"]["graphs.memory_pointer"] == 0  # wrapped around once
    resumed = train(cfg, resume_dir=Path(cfg.output_dir) / "killed").run_dir
    a = ckpt.load(full / "checkpoints" / "last.pt")
    b = ckpt.load(resumed / "checkpoints" / "last.pt")
    assert b["global_step"] == a["global_step"] == 14
    _states_equal(a["model"], b["model"])  # bit for bit
    _states_equal(a["criterion"], b["criterion"])  # graph weights and memory buffers
    memory = [k for k in b["criterion"] if ".memory_" in k]
    # maps, descriptors, codes, pointer, count of the shared one; maps, codes, pointer, count
    assert len(memory) == 5 + 4
    assert b["criterion"]["graphs.memory_pointer"] == 28 % 8  # 14 steps x 2 images, wrapped
    # the memory held real maps and the graph weights learned from them at batch 2
    assert b["criterion"]["graphs.memory_features"].abs().sum() > 0
    for name in ("graphs.sample_graph", "graphs.patch_graph", "kr_graph"):
        assert b["criterion"][f"{name}.weight"].abs().sum() > 0, name


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002
    random.seed(3)
    ckpt.save_atomic({"model": {}, "rng": ckpt.rng_state()}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(9)
    np.random.seed(9)  # noqa: NPY002
    random.seed(9)
    ckpt.set_rng_state(ckpt.load(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])  # noqa: NPY002
    assert random.random() == expected[2]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_atomic({"model": {"w": torch.ones(2)}}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_atomic({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_load_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.ones(1)}, tmp_path / "x.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"not a checkpoint of train_ccg\.py"):
        ckpt.load(tmp_path / "x.pt")
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load(tmp_path / "missing.pt")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint of the CCG-Net trainer"):
        ckpt.load(tmp_path / "config.json")
    with pytest.raises(ckpt.CheckpointError, match="is a directory"):
        ckpt.load(tmp_path)


def test_epoch_order_is_a_padded_permutation_fixed_by_seed_and_epoch():
    a = epoch_order(10, 0, 0, 4)
    assert len(a) == 12
    assert sorted(a[:10].tolist()) == list(range(10))
    assert torch.equal(a[10:], a[:2])
    assert torch.equal(a, epoch_order(10, 0, 0, 4))
    assert not torch.equal(a, epoch_order(10, 1, 0, 4))


# --------------------------------------------------------------------------- failures


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(
    make_config, monkeypatch
):
    original = TrainSet.__getitem__
    calls = {"n": 0}

    def corrupt_after_three_batches(self, i):
        sample = original(self, i)
        calls["n"] += 1
        if (
            calls["n"] > 3 * 4
        ):  # batch 4: step 4 gets NaN pixels (a float image, already normalised)
            sample["image"] = torch.full((3, 64, 64), math.nan)
        return sample

    monkeypatch.setattr(TrainSet, "__getitem__", corrupt_after_three_batches)
    cfg = make_config(run_name="nan", checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step 4") as err:
        train(cfg)
    last = Path(cfg.output_dir) / "nan" / "checkpoints" / "last.pt"
    assert str(last) in str(err.value)
    assert "resume with --resume" in str(err.value)
    state = ckpt.load(last)
    assert state["global_step"] == 2  # step 3 was finite but not checkpointed; step 4 not saved
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_cli_reports_non_finite_loss_with_exit_code_3(make_config, monkeypatch, capsys):
    original = TrainSet.__getitem__

    def nan_sample(self, i):
        sample = original(self, i)
        sample["image"] = torch.full((3, 64, 64), math.nan)
        return sample

    monkeypatch.setattr(TrainSet, "__getitem__", nan_sample)
    cfg = make_config()
    argv = [
        "train",
        "--preset",
        "demo",
        "--data-root",
        cfg.data_root,
        "--cache-dir",
        cfg.cache_dir,
        "--output-dir",
        cfg.output_dir,
        "--image-size",
        "64",
        "--tiny-stride",
        "8",
        "--losses",
        "base",
        "--progress",
        "false",
        "--cache-images",
        "false",
        "--parallel-runs",
        "1",  # in this process: the monkeypatched dataset does not reach spawned ones
        "--compare-baseline",
    ]
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 1, step 1" in err
    assert "no checkpoint had been written yet" in err


def test_missing_imagenet_weights_fail_at_start_up_with_instructions(
    make_config, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(WeightsNotFoundError, match="not in its cache") as err:
        resolve_weights("imagenet", "resnet50")
    message = str(err.value)
    assert "resnet50-0676ba61.pth" in message
    assert "--weights /path/to/resnet50.pth" in message
    assert "--weights none" in message
    # the trainer stops before touching the data (the data root here does not even exist)
    cfg = make_config(backbone="resnet50", weights="imagenet", data_root=str(tmp_path / "nope"))
    with pytest.raises(WeightsNotFoundError, match="will not silently start from random"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()


def test_missing_weights_file_is_an_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        resolve_weights(str(tmp_path / "resnet50.pth"), "resnet50")
    with pytest.raises(WeightsNotFoundError, match="no ImageNet weights for the 'tiny'"):
        resolve_weights("imagenet", "tiny")


def test_cli_exits_2_when_weights_are_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert cli.main(["train", "--preset", "paper", "--data-root", str(tmp_path)]) == 2
    assert "--weights none" in capsys.readouterr().err


@pytest.mark.slow
def test_weights_from_a_torchvision_state_dict_file_are_loaded(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    state = resnet50(weights=None).state_dict()
    torch.save(state, tmp_path / "r50.pth")
    # torchvision's cache is used when it has the file
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet50-0676ba61.pth").write_bytes((tmp_path / "r50.pth").read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert resolve_weights("imagenet", "resnet50") == cache / "resnet50-0676ba61.pth"
    model = build_model("resnet50", str(tmp_path / "r50.pth"), head_channels=8)
    assert torch.equal(model.backbone[0].weight, state["conv1.weight"])
    assert torch.equal(model.backbone[7][2].conv3.weight, state["layer4.2.conv3.weight"])
    torch.save({"conv1.weight": state["conv1.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision ResNet-50 state dict"):
        build_model("resnet50", str(tmp_path / "bad.pth"))


# --------------------------------------------------------------------------- model, evaluation


def test_model_upsamples_the_feature_map_at_test_time_only():
    model = build_model("tiny", "none", head_channels=8, test_upsample=2, tiny_stride=8)
    x = torch.randn(2, 3, 64, 64)
    logits, feats = model(x)
    assert logits.shape == (2, 14, 8, 8)
    assert feats.shape == (2, 128, 8, 8)
    model.eval()
    logits, _ = model(x)
    assert logits.shape == (2, 14, 16, 16)


def test_evaluate_only_reproduces_the_final_metrics_of_the_run(
    make_config, capsys, monkeypatch, tmp_path
):
    # the synthetic twin with relative folders, trained in one working directory ...
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    cfg = make_config(run_name="evalme", epochs=1, losses=("base",), data_root=None)
    cfg.synthetic_images, cfg.synthetic_seed = 48, 3
    cfg.cache_dir, cfg.output_dir = "cache", "runs"
    run = train(cfg).run_dir
    assert run == tmp_path / "a" / "runs" / "evalme"
    # ... evaluated from another: the old spelling (--evaluate) and the verb
    monkeypatch.chdir(tmp_path / "b")
    capsys.readouterr()
    # (--evaluate is examples/train_ccg.py's, which calls main with default_verb="train")
    assert cli.main(["--evaluate", str(run / "checkpoints" / "last.pt")], default_verb="train") == 0
    assert cli.main(["evaluate", str(run)]) == 0  # a run directory means its last.pt
    out = capsys.readouterr().out
    assert "generated the synthetic" not in out  # the run's dataset, not a new one here
    assert not any((tmp_path / "b").iterdir())
    assert "| T(IoU) | model | Atelectasis" in out
    written = json.loads((run / "evaluation-last" / "results.json").read_text())
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert written["methods"]["Baseline"]["localization"] == final["localization"]
    assert set(written["methods"]) == {"Baseline", "Prior", "Whole image"}
    res, _, _ = evaluate_checkpoint(run / "checkpoints" / "last.pt")
    torch.testing.assert_close(
        res.accuracy,
        torch.tensor(final["accuracy_matrix"], dtype=res.accuracy.dtype),
        rtol=0,
        atol=0,
        equal_nan=True,
    )


def test_trivial_prior_is_the_mean_box_mask_per_class():
    from ccg_layers.datasets import ChestXray14Index

    index = ChestXray14Index(
        images=["00000001_000.png", "00000002_000.png", "00000003_000.png"],
        labels=torch.zeros(3, 14),
        patient_ids=torch.tensor([1, 2, 3]),
        follow_ups=torch.zeros(3, dtype=torch.long),
        view_positions=["PA"] * 3,
        boxes=torch.tensor(
            [[0.0, 0.0, 512.0, 512.0], [0.0, 0.0, 1024.0, 512.0], [0, 0, 1024, 1024]]
        ),
        box_image_index=torch.tensor([0, 1, 2]),
        box_class=torch.tensor([0, 0, 1]),
    )
    prior = trivial_prior(index, ["00000001_000.png", "00000002_000.png"], 512, grid=4)
    expected = torch.tensor(
        [[1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.5, 0.5], [0, 0, 0, 0], [0, 0, 0, 0]]
    )
    assert torch.equal(prior[0], expected)
    assert torch.equal(prior[1], torch.zeros(4, 4))  # image 3 is not in training


@pytest.mark.slow
def test_comparison_prints_both_tables_and_the_prior_and_writes_figures(make_config, capsys):
    cfg = make_config(run_name="cmp", epochs=1)
    root = compare(cfg)
    out = capsys.readouterr().out
    for name in ("CCG", "Baseline", "Prior"):
        for t in ("0.1", "0.3", "0.5", "0.7"):
            assert f"| {t} | {name} |" in out
    assert "Mean at T(IoU)=0.3" in out
    pngs = sorted((root / "figures").glob("*.png"))
    assert len(pngs) == cfg.num_figures
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((root / "results.json").read_text())
    assert set(results["mean_T0.3"]) == {"CCG", "Baseline", "Prior", "Whole image"}
    assert (root / "baseline" / "checkpoints" / "last.pt").is_file()
    assert (root / "ccg" / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_comparison_side_by_side_equals_one_after_the_other(make_config):
    one = json.loads((compare(make_config(run_name="seq", epochs=1)) / "results.json").read_text())
    cfg = make_config(run_name="par", epochs=1, parallel_runs=2)
    two = json.loads((compare(cfg) / "results.json").read_text())
    assert one["methods"] == two["methods"]


def test_progress_bar_shows_loss_and_throughput(make_config, capsys):
    train(make_config(run_name="bar", epochs=1, losses=("base",), progress=True))
    err = capsys.readouterr().err
    assert "bar train e1/1" in err
    assert "loss=" in err
    assert "img_s=" in err


def test_amp_path_trains_resumes_and_checkpoints_the_scaler(make_config):
    # The CUDA AMP path (float16 autocast + GradScaler), forced on the CPU: the same code runs,
    # and a run killed mid-epoch resumes with the scaler's state to the same weights.
    full = train(make_config(run_name="amp", amp="on", checkpoint_every=4)).run_dir
    a = ckpt.load(full / "checkpoints" / "last.pt")
    assert a["scaler"]["scale"] > 0  # an enabled scaler's state (a disabled one is empty)
    last = json.loads((full / "metrics.json").read_text())["epochs"][-1]
    assert all(math.isfinite(v) for k, v in last.items() if k.startswith("train_"))
    cfg = make_config(run_name="amp-killed", amp="on", checkpoint_every=4)
    with pytest.raises(SimulatedKillError), killed_after_steps(9):
        train(cfg)
    b = ckpt.load(
        train(cfg, resume_dir=Path(cfg.output_dir) / "amp-killed").run_dir
        / "checkpoints"
        / "last.pt"
    )
    assert a["scaler"] == b["scaler"]
    _states_equal(a["model"], b["model"])


def test_amp_auto_is_off_on_cpu(make_config):
    run_dir = train(make_config(run_name="noamp", epochs=1, losses=("base",))).run_dir
    assert ckpt.load(run_dir / "checkpoints" / "last.pt")["scaler"] == {}


@pytest.mark.slow
def test_paper_model_trains_end_to_end_at_a_tiny_input(make_config):
    # ResNet-50 C5 (2048 channels, frozen BatchNorm) with all four losses, 64x64 -> 2x2 grid
    cfg = make_config(
        run_name="r50",
        backbone="resnet50",
        weights="none",
        freeze_bn=True,
        head_channels=8,
        epochs=1,
        batch_size=8,
    )
    run = train(cfg).run_dir
    state = ckpt.load(run / "checkpoints" / "last.pt")
    assert state["criterion"]["kr_attention.weight"].shape[-1] == 2048
    assert not any(k.endswith("num_batches_tracked") for k in state["model"] if "backbone" in k)
    assert json.loads((run / "metrics.json").read_text())["final"]["localization"]


def test_superpixels_are_computed_once_per_image_and_cached(make_config, monkeypatch):
    import importlib

    from examples.ccg_net.data import build_data

    sp_module = importlib.import_module("ccg_layers.superpixels")
    cfg = make_config()
    calls = []
    real = sp_module._segment

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sp_module, "_segment", counting)
    first = build_data(cfg)
    assert sum(calls) == len(first.train)  # every training image once
    labels = first.train.superpixels
    assert labels.dtype == torch.uint8
    assert labels.shape == (len(first.train), cfg.superpixel_size, cfg.superpixel_size)
    assert [len(torch.unique(x)) for x in labels] == [cfg.num_patches] * len(labels)

    def fail(*args, **kwargs):
        raise AssertionError("superpixels recomputed")

    monkeypatch.setattr(sp_module, "_segment", fail)
    second = build_data(cfg)  # a later run (or a resumed one) reads the cache
    assert torch.equal(second.train.superpixels, labels)
    sample = second.train[0]
    assert torch.equal(sample["superpixels"], labels[0])
