"""benchmarks/ablation_study.py: the Table 4 study's runner and statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import ablation_study as study


def test_mean_ci_is_the_student_t_interval():
    m, h = study.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5), t(0.975, 4) = 2.776445
    assert m == 3.0
    assert h == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    # twelve values: t(0.975, 11) = 2.200985, not the normal 1.96
    values = [float(v % 2) for v in range(12)]  # six 0s and six 1s: sd = sqrt(12 / 44)
    m, h = study.mean_ci(values)
    assert h == pytest.approx(2.200985 * math.sqrt(12 / 44) / math.sqrt(12), rel=1e-6)
    m, h = study.mean_ci([0.5])
    assert m == 0.5
    assert math.isnan(h)


@pytest.mark.slow
def test_quick_study_runs_every_job_and_reports_paired_differences(tmp_path, capsys):
    out = tmp_path / "study"
    assert study.main(["--quick", "--out", str(out), "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    for setting in ("b", "c"):
        assert f"### Setting ({setting})" in text
    assert "| ir+ik+kr |" in text
    assert "| Whole image (reference) |" in text
    summary = json.loads((out / "study.json").read_text())
    row = summary["settings"]["b"]["ir+ik+kr"]
    base = summary["settings"]["b"]["baseline"]
    diff = row["minus_baseline"]["T=0.1"]["mean"]
    assert diff == pytest.approx(row["T=0.1"]["mean"] - base["T=0.1"]["mean"])
    # a finished run is reused, not trained again
    before = (out / "b-baseline-s0" / "results.json").stat().st_mtime_ns
    assert study.main(["--quick", "--out", str(out), "--jobs", "1"]) == 0
    assert (out / "b-baseline-s0" / "results.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_holdout_evaluates_every_run_on_an_independent_twin(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--quick", "--out", str(out), "--jobs", "2", "--holdout-seed", "7"]
    assert study.main(argv) == 0
    text = capsys.readouterr().out
    assert "independent test set" in text
    summary = json.loads((out / "study.json").read_text())
    assert summary["holdout"]["synthetic_seed"] == 7
    for setting in ("b", "c"):
        for row in ("baseline", "ir+ik+kr"):
            run = out / f"{setting}-{row}-s0"
            held = json.loads((run / "holdout-s7.json").read_text())
            cache = Path(json.loads((run / "config.json").read_text())["cache_dir"])
            # every annotated image of the twin generated with seed 7 (the runs trained on
            # seed 0's), whatever the run's own test split
            assert held["holdout_seed"] == 7
            assert len(held["test_images"]) > 0
            assert (cache / "synthetic-chestxray14-n160-s7-64px").is_dir()
            assert set(held["methods"]) == {
                "Baseline" if row == "baseline" else "CCG",
                "Whole image",
            }
        assert summary["holdout"]["settings"][setting]["ir+ik+kr"]["T=0.1"]["n"] == 1
    # the same images for every run
    names = {
        tuple(json.loads((out / f"{s}-{r}-s0" / "holdout-s7.json").read_text())["test_images"])
        for s in ("b", "c")
        for r in ("baseline", "ir+ik+kr")
    }
    assert len(names) == 1


# ----------------------------------------------------------------- the decisive study (issue 20)


def test_holm_adjusts_step_down_and_stops_at_the_first_non_rejection():
    adjusted = study.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    # sorted: d 0.005 (x4), a 0.01 (x3), c 0.03 (x2), b 0.04 (x1), running maximum
    assert adjusted["d"] == (pytest.approx(0.02), True)
    assert adjusted["a"] == (pytest.approx(0.03), True)
    assert adjusted["c"] == (pytest.approx(0.06), False)  # 0.03 > 0.05 / 2
    assert adjusted["b"] == (pytest.approx(0.06), False)  # after a non-rejection: none
    assert study.holm({"x": 0.9}) == {"x": (pytest.approx(0.9), False)}


def test_paired_p_is_the_paired_t_test():
    from scipy import stats

    a, b = [0.31, 0.35, 0.30, 0.33, 0.36], [0.30, 0.31, 0.29, 0.30, 0.33]
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    assert study.paired_p(diffs) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert study.paired_p([0.0] * 5) == 1.0


def _result(t03: float, auc: float) -> dict:
    loc = {f"T={t:g}": {"Mean": t03 + (0.3 - t)} for t in study.THRESHOLDS}
    entry = {"localization": loc, "auc": dict.fromkeys(study.BOXED, auc)}
    return {"methods": {"CCG": entry, "Whole image": entry}}


def test_decisive_summary_pairs_by_seed_and_counts_the_comparisons():
    seeds = [0, 1, 2]
    held = {}
    for s in ("b", "c"):
        for k in seeds:
            held[("random-raw", s, "baseline", k)] = _result(0.30 + 0.01 * k, 0.88)
            held[("random-raw", s, "ir+ik+kr", k)] = _result(0.10 + 0.01 * k, 0.50)  # -0.2
            held[("random-unit", s, "ir+ik+kr", k)] = _result(0.30 + 0.01 * k + 0.001 * k, 0.88)
    text, summary = study.decisive_summary(held, ["b", "c"], ["random"], ["paper", "unit"], seeds)
    paper = summary["settings"]["b"]["random"]["paper"]
    m, h = paper["minus_baseline"]["T=0.3"]
    assert m == pytest.approx(-0.2)
    assert h == pytest.approx(0.0, abs=1e-9)  # the same difference in every seed
    assert paper["per_seed_minus_baseline"]["auc"] == pytest.approx([-0.38] * 3)
    unit = summary["settings"]["c"]["random"]["unit"]["minus_baseline"]["T=0.3"]
    assert unit[0] == pytest.approx(0.001)
    # 2 settings x 1 init x 2 forms = 4 primary comparisons, x 5 metrics = 20 intervals
    assert set(summary["primary"]) == {
        "b/random/paper",
        "b/random/unit",
        "c/random/paper",
        "c/random/unit",
    }
    assert summary["intervals"]["computed"] == 20
    assert summary["primary"]["b/random/paper"]["significant"]  # p = 0 for a constant -0.2
    assert "4 comparisons, Holm-adjusted" in text
    assert "| b/random/paper | -0.200 ± 0.000 |" in text


def test_decisive_jobs_put_each_form_in_its_folder_and_share_the_baseline():
    jobs = study.decisive_jobs(["b"], ["random", "pretrained"], ["paper", "contrast"], [0])
    assert jobs == [
        ("random-raw", "b", "baseline", 0),
        ("random-raw", "b", "ir+ik+kr", 0),
        ("random-contrast", "b", "ir+ik+kr", 0),
        ("pretrained-raw", "b", "baseline", 0),
        ("pretrained-raw", "b", "ir+ik+kr", 0),
        ("pretrained-contrast", "b", "ir+ik+kr", 0),
    ]
    w = Path("w.pt")
    # every option of a form is explicit: --preset demo's own defaults never fill one in
    assert study.decisive_extra("random-raw", "b", None, {}) == [
        "--relation-form",
        "pull",
        "--relation-features",
        "raw",
    ]
    assert study.decisive_extra("random-unit", "b", None, {}) == [
        "--relation-form",
        "pull",
        "--relation-features",
        "unit",
    ]
    assert study.decisive_extra("pretrained-contrast", "c", w, {"c": 3e-4}) == [
        "--relation-form",
        "contrast",
        "--relation-features",
        "unit",
        "--weights",
        "w.pt",
        "--lr",
        "0.0003",
    ]


def test_tuning_grows_the_grid_past_an_end_while_the_best_rate_is_there(tmp_path, monkeypatch):
    peak = {"b": 0.03, "c": 3e-4}  # (b) beyond the grid's top, (c) inside it

    def fake_holdout(setting, row, seed, folder, holdout):
        lr = float(folder.name.removeprefix("tune-lr"))
        assert holdout == 2  # the validation twin, never the test set
        return _result(1.0 - abs(math.log(lr / peak[setting])), 0.9)

    monkeypatch.setattr(study, "run_one", lambda *a, **k: {})
    monkeypatch.setattr(study, "holdout_one", fake_holdout)
    chosen = study.tune_pretrained_lr(tmp_path, Path("w.pt"), ["b", "c"], 2, 1)
    assert chosen["b"]["lr"] == pytest.approx(0.03)
    assert set(chosen["b"]["validation"]) == {"0.001", "0.003", "0.01", "0.03", "0.09"}
    assert chosen["c"]["lr"] == pytest.approx(3e-4)
    assert set(chosen["c"]["validation"]) == {"0.0001", "0.0003", "0.001"}


def test_a_skipped_cell_is_neither_run_nor_summarised():
    jobs = study.decisive_jobs(["b"], ["random"], ["paper", "unit"], [0], skip=("random/unit",))
    assert jobs == [("random-raw", "b", "baseline", 0), ("random-raw", "b", "ir+ik+kr", 0)]
    held = {j: _result(0.3, 0.9) for j in jobs}
    text, summary = study.decisive_summary(
        held, ["b"], ["random"], ["paper", "unit"], [0], skip=("random/unit",)
    )
    assert "| unit | not run in this study (--skip) |" in text
    assert set(summary["primary"]) == {"b/random/paper"}


def test_a_run_trained_in_another_form_than_its_folder_is_refused(tmp_path):
    # the demo preset's defaults became the contrast form: a run of the "unit" folder that
    # trained without --relation-form pull ran the contrast form, and must not be counted
    run = tmp_path / "b-ir+ik+kr-s0"
    run.mkdir()
    unit = study.FORMS["unit"][1]
    (run / "config.json").write_text('{"relation_form": "contrast", "relation_features": "unit"}')
    with pytest.raises(RuntimeError, match="--relation-form contrast, its folder stands for"):
        study.check_trained_form(run, unit)
    (run / "config.json").write_text('{"relation_form": "pull", "relation_features": "unit"}')
    study.check_trained_form(run, unit)
    # a run of a trainer older than the options ran the paper's form (their defaults then)
    (run / "config.json").write_text("{}")
    study.check_trained_form(run, study.FORMS["paper"][1])
    with pytest.raises(RuntimeError, match="--relation-features raw, its folder stands for"):
        study.check_trained_form(run, unit)
