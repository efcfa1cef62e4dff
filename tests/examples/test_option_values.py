"""Every bad option value is one ``error: --<option> ...`` line, exit 2, before any work: no run
directory, no synthetic dataset, no superpixel cache (issue 19, point 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.ccg_net import cli
from examples.ccg_net.config import TrainConfig, load_config, validate_config

# (verb and options, the option the error line must name first); on the demo preset (the
# synthetic twin of 3000 images unless --synthetic-images says otherwise)
PROBES = [
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--num-patches", "100000"], "--num-patches"),
    (["train", "--num-patches", "0"], "--num-patches"),
    # 32x32 superpixel map: 1024 pixels, but uint8 labels: at most 256 patches
    (["train", "--num-patches", "257"], "--num-patches"),
    # an 8x8 superpixel map has 64 pixels: SLIC cannot make 65 segments
    (["train", "--superpixel-size", "8", "--num-patches", "65"], "--num-patches"),
    (["train", "--superpixel-size", "1000"], "--superpixel-size"),
    (["train", "--test-upsample", "1000"], "--test-upsample"),
    (["train", "--test-upsample", "9"], "--test-upsample"),  # the demo's stride is 8
    (["train", "--test-upsample", "0"], "--test-upsample"),
    (["train", "--synthetic-images", "3"], "--synthetic-images"),
    (["train", "--synthetic-images", "0"], "--synthetic-images"),
    (["train", "--synthetic-images", "60", "--batch-size", "100"], "--batch-size"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--num-classes", "15"], "--num-classes"),
    (["train", "--lr-step-epochs", "0"], "--lr-step-epochs"),
    (["train", "--threads", "-1"], "--threads"),
    (["train", "--head-channels", "0"], "--head-channels"),
    (["train", "--w-ir", "nan"], "--w-ir"),
    (["train", "--w-ik", "inf"], "--w-ik"),
    (["train", "--w-kr", "-0.5"], "--w-kr"),
    (["train", "--w-base", "-1"], "--w-base"),
    (["train", "--w-base", "0"], "--w-base"),
    (["train", "--box-weight", "nan"], "--box-weight"),
    (["train", "--momentum", "1"], "--momentum"),
    (["train", "--momentum", "0"], "--momentum"),  # with Nesterov
    (["train", "--weight-decay", "nan"], "--weight-decay"),
    (["train", "--lr-gamma", "inf"], "--lr-gamma"),
    (["train", "--superpixel-compactness", "nan"], "--superpixel-compactness"),
    (["train", "--kr-scale", "nan"], "--kr-scale"),
    (["train", "--noisy-or-floor", "nan"], "--noisy-or-floor"),
    (["train", "--head-bias-init", "nan"], "--head-bias-init"),
    (["train", "--contrast-margin", "inf"], "--contrast-margin"),
    (["train", "--max-test-images", "-1"], "--max-test-images"),
    (["train", "--checkpoint-every", "-1"], "--checkpoint-every"),
    (["train", "--eval-every", "-1"], "--eval-every"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--image-size", "0"], "--image-size"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--split-seed", "-1"], "--split-seed"),
    (["train", "--num-workers", "-2"], "--num-workers"),
    (["train", "--num-figures", "-1"], "--num-figures"),
    (["train", "--code-bits", "0"], "--code-bits"),
    (["train", "--train-split-file", "x.txt"], "--train-split-file"),
    (["reproduce", "--lr", "nan"], "--lr"),
    (["reproduce", "--synthetic-images", "3"], "--synthetic-images"),
    (["reproduce", "--synthetic-images", "60", "--batch-size", "100"], "--batch-size"),
    # setting (a) tests on one fifth of the boxed images: 20 images leave a fold without one
    (["reproduce", "--setting", "a", "--synthetic-images", "20"], "--synthetic-images"),
    (["pretrain", "--threads", "-1"], "--threads"),
]


@pytest.mark.parametrize(("argv", "option"), PROBES, ids=[" ".join(a) for a, _ in PROBES])
def test_a_bad_value_is_one_error_line_naming_the_option_before_any_work(
    argv, option, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    argv = [*argv, "--preset", "demo", "--output-dir", str(runs), "--cache-dir", str(cache)]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {option} "), lines[0]
    assert "Traceback" not in err
    assert not runs.exists()
    assert not cache.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("lr", float("nan"), "got nan"),
        ("lr", -1.0, "a finite number > 0"),
        ("w_base", -1.0, "a finite number > 0"),
        ("w_ir", float("inf"), "a finite number >= 0"),
        ("epochs", -1, "--epochs must be an integer >= 1, got -1"),
        ("batch_size", 0, "--batch-size must be an integer >= 1, got 0"),
        ("max_test_images", -1, "0 (all)"),
        ("num_classes", 15, "must be 14"),
    ],
)
def test_the_message_says_what_is_allowed(field, value, shown):
    with pytest.raises(ValueError, match=r"^--" + field.replace("_", "-")) as info:
        validate_config(TrainConfig(**{field: value}))
    assert shown in str(info.value)


def test_the_bounds_that_protect_memory_are_derived_from_the_geometry():
    # --test-upsample: at most the stride, where the map has one cell per input pixel
    validate_config(TrainConfig(test_upsample=32))  # ResNet-50: stride 32
    with pytest.raises(ValueError, match=r"--test-upsample must be in 1\.\.32, got 33"):
        validate_config(TrainConfig(test_upsample=33))
    validate_config(TrainConfig(backbone="tiny", tiny_stride=16, test_upsample=16))
    with pytest.raises(ValueError, match=r"--test-upsample must be in 1\.\.16, got 17"):
        validate_config(TrainConfig(backbone="tiny", tiny_stride=16, test_upsample=17))
    # --num-patches: at most the superpixel map's pixels (and 256, uint8 labels)
    validate_config(TrainConfig(superpixel_size=4, num_patches=16))
    with pytest.raises(ValueError, match=r"--num-patches must be in 1\.\.16, got 17"):
        validate_config(TrainConfig(superpixel_size=4, num_patches=17))
    validate_config(TrainConfig(num_patches=256))
    with pytest.raises(ValueError, match=r"--num-patches must be in 1\.\.256, got 257"):
        validate_config(TrainConfig(num_patches=257))


def test_both_presets_are_valid():
    from examples.ccg_net.config import PRESETS

    for name, values in PRESETS.items():
        validate_config(TrainConfig(preset=name, **values))


def test_no_verb_prints_the_help_and_starts_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m examples.ccg_net")
    assert "{train,evaluate,predict,reproduce,pretrain}" in out
    # options without a verb: one line naming the missing verb
    assert cli.main(["--preset", "demo", "--output-dir", str(tmp_path / "runs")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: a verb must come first"), lines
    assert list(tmp_path.iterdir()) == []


def test_the_two_entry_points_without_a_verb(tmp_path):
    """``python -m examples.ccg_net`` alone prints the help (exit 2); ``examples/train_ccg.py``
    (``make demo``) keeps "no verb: train", so its bad value is the train verb's error."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    bare = subprocess.run(
        [sys.executable, "-m", "examples.ccg_net"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bare.returncode == 2, bare.stderr
    assert bare.stdout.startswith("usage: python -m examples.ccg_net"), bare.stdout
    script = subprocess.run(
        [
            *(sys.executable, str(root / "examples" / "train_ccg.py"), "--preset", "demo"),
            *("--lr", "nan", "--output-dir", str(tmp_path / "runs")),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert script.returncode == 2, script.stderr
    assert script.stderr.startswith("error: --lr must be a finite number > 0, got nan")
    assert list(tmp_path.iterdir()) == []


def test_a_saved_configuration_with_a_removed_option_loads_at_its_off_value():
    # a run directory from before an option's removal (commit 4d6a716 is the last with them)
    saved = json.loads(TrainConfig().to_json())
    assert TrainConfig.from_dict({**saved, "stop_after_steps": 9}) == TrainConfig()
    assert "stop_after_steps" not in json.loads(TrainConfig().to_json())
    # the research knobs removed after 4d6a716: dropped at their default, refused otherwise
    off = {"relation_start_epoch": 0, "graph_lr_mult": 1.0}
    assert TrainConfig.from_dict({**saved, **off}) == TrainConfig()
    with pytest.raises(ValueError, match="--graph-lr-mult, an option removed after commit 4d6a716"):
        TrainConfig.from_dict({**saved, "graph_lr_mult": 100.0})
    with pytest.raises(ValueError, match="--relation-start-epoch, an option removed"):
        TrainConfig.from_dict({**saved, "relation_start_epoch": 3})
    for removed in ("--graph-lr-mult", "--relation-start-epoch", "--stop-after-steps"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["train", removed, "1"])
    with pytest.raises(ValueError, match="has 'a_second', 'no_such_option', unknown to this"):
        TrainConfig.from_dict({**saved, "no_such_option": 1, "a_second": 2})


def test_a_run_directory_whose_configuration_has_unknown_keys_is_refused_naming_the_file(tmp_path):
    saved = {**json.loads(TrainConfig().to_json()), "no_such_option": 1}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"config\.json: the configuration has 'no_such_option', "):
        load_config(tmp_path)
