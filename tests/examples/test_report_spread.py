"""The demo's summary reads its CCG − baseline gap against the study's seed-to-seed spread."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from examples.ccg_net.report import gap_against_seed_spread


def _res(m01: float, m03: float) -> SimpleNamespace:
    return SimpleNamespace(mean_at=lambda t: {0.1: m01, 0.3: m03}[t])


def _record(tmp_path, mean: float, sd: float, ci: float):
    diff = {"mean": mean, "sd": sd, "ci95": ci, "n": 5}
    data = {"settings": {"b": {"ir+ik+kr": {"minus_baseline": {"T=0.1": diff, "T=0.3": diff}}}}}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(data))
    return path


def test_gap_inside_the_spread_and_a_study_mean_within_noise(tmp_path):
    rec = _record(tmp_path, mean=0.01, sd=0.05, ci=0.06)
    text = gap_against_seed_spread(_res(0.60, 0.30), _res(0.55, 0.28), "b", rec)
    assert "CCG - Baseline at T(IoU)=0.1: +0.050" in text
    assert "inside the seed-to-seed spread" in text
    assert "within noise of zero" in text


def test_gap_outside_the_spread_and_a_study_mean_away_from_zero(tmp_path):
    rec = _record(tmp_path, mean=-0.5, sd=0.02, ci=0.03)
    text = gap_against_seed_spread(_res(0.60, 0.30), _res(0.55, 0.28), "b", rec)
    assert "outside the seed-to-seed spread" in text
    assert "is not zero" in text


def test_no_recorded_study_for_the_setting_is_said(tmp_path):
    rec = _record(tmp_path, mean=0.0, sd=0.1, ci=0.1)
    text = gap_against_seed_spread(_res(0.6, 0.3), _res(0.5, 0.2), "a", rec)
    assert "no study recorded for setting a" in text


def test_a_run_configured_unlike_the_study_is_not_read_against_it(tmp_path):
    rec = _record(tmp_path, mean=-0.5, sd=0.02, ci=0.03)
    text = gap_against_seed_spread(
        _res(0.60, 0.30), _res(0.55, 0.28), "b", rec, differs=["--image-size", "--epochs"]
    )
    assert "CCG - Baseline at T(IoU)=0.1: +0.050 (not read against the study" in text
    assert "differs in --image-size, --epochs" in text
    assert "spread" not in text


def test_differs_from_demo_names_what_changes_learning_and_ignores_run_options():
    from examples.ccg_net.cli import build_parser
    from examples.ccg_net.config import differs_from_demo, resolve_config

    def differs(*argv: str) -> list[str]:
        return differs_from_demo(resolve_config(build_parser().parse_args(["train", *argv])))

    assert differs("--preset", "demo") == []
    # another setting takes its own demo learning rate; seeds and threads change no learning
    assert differs("--preset", "demo", "--setting", "c", "--seed", "3", "--threads", "2") == []
    assert differs("--preset", "demo", "--lr", "1e-2") == ["--lr"]
    # the demo's recommended form is the contrast form on unit maps; the paper's differs
    changed = differs("--preset", "demo", "--relation-form", "pull", "--epochs", "2")
    assert sorted(changed) == ["--epochs", "--relation-form"]
    assert differs("--preset", "demo", "--ablation", "ik") == ["--losses"]
    assert differs() == ["--preset"]


def _decisive_record(tmp_path, per_seed: list[float]):
    n = len(per_seed)
    m = sum(per_seed) / n
    row = {
        "minus_baseline": {"T=0.1": [m, 0.02], "T=0.3": [m, 0.02], "auc": [0.001, 0.004]},
        "per_seed_minus_baseline": {"T=0.1": per_seed, "T=0.3": per_seed, "auc": [0.001] * n},
    }
    data = {"decisive": {"seeds": list(range(n)), "settings": {"b": {"random": {"unit": row}}}}}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(data))
    return path


def _cfg(**kw):
    from examples.ccg_net.config import PRESETS, TrainConfig

    return TrainConfig(preset="demo", **{**PRESETS["demo"], **kw})


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_a_missing_or_unreadable_study_record_is_no_study(tmp_path, content):
    from examples.ccg_net.report import demo_preamble

    rec = tmp_path / "study.json"
    if content is not None:
        rec.write_text(content)
    text = demo_preamble(_cfg(), 3000, rec)
    assert "No study of this configuration in setting (b) is recorded." in text
    text = gap_against_seed_spread(_res(0.6, 0.3), _res(0.5, 0.2), "b", rec)
    assert "no study recorded for setting b in study.json" in text


def test_the_demo_says_first_what_is_compared_on_which_data_and_what_the_study_measured(tmp_path):
    from examples.ccg_net.report import demo_preamble

    rec = _decisive_record(tmp_path, [0.01, -0.01, 0.0, 0.02, 0.0])
    text = demo_preamble(_cfg(relation_form="pull", relation_features="unit"), 3000, rec)
    first, second = text.strip().splitlines()
    assert "SYNTHETIC ChestX-ray14 twin (3000 generated 128-px images" in first
    assert "unit-normalised maps" in first
    assert "random initialisation" in first
    assert "CCG - baseline at T(IoU)=0.3 +0.004 ± 0.020" in second
    assert "no difference the study could tell from zero" in second
    # a configuration the study did not measure says so
    text = demo_preamble(_cfg(weights="none", relation_form="contrast"), 3000, rec)
    assert "No study of this configuration in setting (b) is recorded." in text


def test_the_gap_is_read_against_the_decisive_studys_seeds_when_it_has_the_variant(tmp_path):
    rec = _decisive_record(tmp_path, [0.01, -0.01, 0.0, 0.02, 0.0])
    text = gap_against_seed_spread(
        _res(0.60, 0.30), _res(0.55, 0.30), "b", rec, variant=("random", "unit")
    )
    assert "over 5 seeds the study measured +0.004 (95% CI ± 0.020" in text
    assert "within noise of zero" in text


@pytest.mark.parametrize(("setting", "empty"), [("b", True), ("a", False)])
def test_an_empty_prior_says_it_is_empty_by_construction(make_config, setting, empty):
    from examples.ccg_net.runs import train

    run = train(make_config(setting=setting, epochs=1, losses=("base",), num_figures=2)).run_dir
    text = (run / "results.md").read_text()
    assert ("Prior: empty by construction: no box in training" in text) == empty
    assert len(list((run / "figures").glob("*.png"))) == 2
