"""benchmarks/graph_evidence.py: the label-sharing ratio of the trained graphs, and its control."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import graph_evidence as ge
from examples.ccg_net.runs import train


def _ratio_by_loops(graph: torch.Tensor, labels: torch.Tensor) -> float:
    same, other = [], []
    n = graph.shape[0]
    for u in range(n):
        for v in range(n):
            if u == v:
                continue
            common = any(labels[u, k] > 0 and labels[v, k] > 0 for k in range(labels.shape[1]))
            (same if common else other).append(float(graph[u, v]))
    if not same or not other:
        return float("nan")
    return (sum(same) / len(same)) / (sum(other) / len(other))


@given(n=st.integers(2, 7), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_share_ratio_matches_a_loop_over_the_pairs(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    graph = torch.rand(n, n, generator=g, dtype=torch.float64) + 0.01
    labels = (torch.rand(n, k, generator=g) < 0.5).float()
    got, expected = ge.share_ratio(graph, labels), _ratio_by_loops(graph, labels)
    if expected != expected:  # one kind of pair missing
        assert got != got
    else:
        assert got == pytest.approx(expected, rel=1e-12)


def test_share_ratio_is_above_1_when_the_graph_prefers_partners_with_a_finding_in_common():
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]], dtype=torch.float32)
    shared = (labels @ labels.T) > 0
    graph = torch.where(shared, 3.0, 1.0)  # 3x the weight to partners sharing a label
    assert ge.share_ratio(graph, labels) == pytest.approx(3.0)
    assert ge.share_ratio(torch.full((5, 5), 0.2), labels) == 1.0  # uniform: no preference


def test_row_spread_is_0_for_the_uniform_graph_and_the_coefficient_of_variation_otherwise():
    assert ge.row_spread(torch.full((4, 4), 0.25)) == 0.0
    graph = torch.tensor([[9.0, 1.0, 3.0], [2.0, 9.0, 2.0], [1.0, 1.0, 9.0]])
    # rows' partners: (1, 3), (2, 2), (1, 1); CVs sqrt(2) / 2, 0, 0
    assert ge.row_spread(graph) == pytest.approx(2**0.5 / 2 / 3)


def test_graph_evidence_prints_the_ratios_of_a_trained_run_and_the_uniform_control(
    make_config, capsys, tmp_path
):
    # setting (b): every annotated image is a test image (13 of the tiny dataset's 48)
    cfg = make_config(run_name="ccg-evidence", setting="b", epochs=1, batch_size=2, num_figures=0)
    # the literal form without any box: the trainer warns it collapsed on the twin (expected)
    with pytest.warns(UserWarning, match="literal form"):
        run = train(cfg, print_report=False).run_dir
    capsys.readouterr()
    out_json = tmp_path / "evidence.json"
    assert ge.main([str(run), "--chunk", "6", "--max-images", "0", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    # one line per run, with both learned graphs and the control
    line = next(s for s in text.splitlines() if s.startswith(f"{run}:"))
    assert re.search(r"trained_ir \d+\.\d{3}", line), line
    assert re.search(r"trained_ik \d+\.\d{3}", line), line
    # the untrained graphs are exactly uniform: no preference at all
    assert "control_ir 1.000" in line
    assert "control_ik 1.000" in line
    (result,) = __import__("json").loads(out_json.read_text())
    assert result["control_ir"] == result["control_ik"] == 1.0
    assert (result["images"], result["chunks"]) == (13, 2)  # 6 + 6; the last 1 is left out
    # the trained graphs (weights learned from 0 at batch 2 with the memory) are not uniform
    assert result["trained_ir"] != 1.0
    assert result["trained_ik"] != 1.0
    row = next(s for s in text.splitlines() if s.startswith("| ccg-evidence |"))
    assert re.search(
        r"1\.000, 1\.000 \| \d+\.\d{3} \| \d+\.\d{3} \| \d+\.\d{3}, \d+\.\d{3} \|$", row
    ), row
    assert result["spread_ir"] > 0
    assert result["spread_ik"] > 0
    assert result["feature_distance"] > 0
    assert result["feature_norm"] > 0
    assert "| mean ± 95% CI over 1 run(s) |" in text
    # --glob finds the same run
    assert ge.main(["--glob", str(run.parent / "ccg-*"), "--chunk", "6", "--max-images", "0"]) == 0
    assert f"{run}:" in capsys.readouterr().out
