"""benchmarks/ablation_study.py: the Table 4 study's runner and statistics."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _study():
    spec = importlib.util.spec_from_file_location(
        "ablation_study", ROOT / "benchmarks" / "ablation_study.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mean_ci_is_the_student_t_interval():
    study = _study()
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
    study = _study()
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
