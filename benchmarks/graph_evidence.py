"""Do the trained relation graphs learn something about the images? (issue 10, point 6)

For each trained run (a run directory of the reference trainer), on its own test split: the C5
feature maps of the first ``--max-images`` test images, cut into chunks of ``--chunk`` images
(a batch each; memory stays small), and for each learned graph the weight it gives to the
partners that share a disease label with the anchor (any of the 14 labels in common, self-pairs
excluded) divided by the weight it gives to the partners that share none. The ratio is taken
within each chunk and averaged over the chunks; a chunk without a pair of either kind is left
out, and so is a last chunk of fewer than half ``--chunk`` images.

* L_IR: the sample graph, ``criterion.sample_graph.graph(features, use_memory=False)`` (``(n, n)``; the
  input-conditioned form only: the positional form's weights are about batch slots, not images).
* L_IK: the patch-hash graph, ``criterion.patch_graph.graph(features, superpixels,
  use_memory=False)``,
  hashing the C5 maps over the test images' SLIC superpixels as ``CCGLoss`` does in training.

A ratio above 1 means the graph gives more weight to partners with a finding in common. The
weight spread (SD / mean of a row's weights to its partners, 0 for the uniform graph) tells a
graph that stayed uniform from one that learned a preference unrelated to the labels. The
control is the same computation with a fresh, untrained loss on the same features: its graphs
are exactly uniform (``1/n``), so its ratio is 1.000. The mean over runs comes with a 95% CI
(Student t over the runs, e.g. the seeds of a study).

    python benchmarks/graph_evidence.py RUN_DIR [RUN_DIR ...]
    python benchmarks/graph_evidence.py --glob 'runs/study/a-ir+ik+kr-s*'
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from benchmarks.ablation_study import mean_ci  # noqa: E402
from examples.ccg_net import checkpoint as ckpt  # noqa: E402
from examples.ccg_net import load_model  # noqa: E402
from examples.ccg_net.config import TrainConfig  # noqa: E402
from examples.ccg_net.data import build_data, superpixel_labels  # noqa: E402
from examples.ccg_net.losses import CCGLoss  # noqa: E402

GRAPHS = ("ir", "ik")
TITLES = {"ir": "L_IR sample graph", "ik": "L_IK patch-hash graph"}


def share_ratio(graph: Tensor, labels: Tensor) -> float:
    """Mean weight of the pairs that share a label over that of the pairs that share none.

    ``graph`` ``(n, n)`` (row ``u``: the weights of anchor ``u``'s partners), ``labels``
    ``(n, K)`` multi-hot. Self-pairs are excluded. NaN when either kind of pair is missing.
    """
    n = graph.shape[0]
    shared = (labels.float() @ labels.float().T) > 0
    off = ~torch.eye(n, dtype=torch.bool, device=graph.device)
    same, other = graph[shared & off], graph[~shared & off]
    if same.numel() == 0 or other.numel() == 0:
        return math.nan
    return float(same.double().mean() / other.double().mean())


def row_spread(graph: Tensor) -> float:
    """How far a graph is from uniform: the coefficient of variation (SD / mean) of each row's
    weights to its partners (self-pairs excluded), averaged over the rows; 0 for the uniform 1/n.
    """
    n = graph.shape[0]
    off = graph.double()[~torch.eye(n, dtype=torch.bool, device=graph.device)].reshape(n, n - 1)
    return float((off.std(dim=1) / off.mean(dim=1)).mean())


def load_criterion(state: dict[str, Any], cfg: TrainConfig, channels: int, batch: int) -> CCGLoss:
    """The run's ``CCGLoss`` with its trained graphs, for batches of up to ``batch`` images
    (the input-conditioned graphs take any batch; the memory size comes from the state)."""
    sd = state["criterion"]
    memory = next((int(v.shape[0]) for k, v in sd.items() if k.endswith(".memory_features")), 0)
    if cfg.graph_form == "positional" and "ir.weight" in sd:
        batch = int(sd["ir.weight"].shape[0])  # the global batch of the run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the constant-graph warning is about training
        criterion = CCGLoss(dataclasses.replace(cfg, memory_size=memory), channels, batch)
    criterion.load_state_dict(sd)
    return criterion


def fresh_criterion(cfg: TrainConfig, channels: int, batch: int) -> CCGLoss:
    """The control: the run's loss as built at the start of training (uniform graphs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CCGLoss(dataclasses.replace(cfg, memory_size=0), channels, batch)


def graphs_of(criterion: CCGLoss, feats: Tensor, sp: Tensor | None) -> dict[str, Tensor]:
    """The learned ``(n, n)`` graphs of a chunk, without the memory."""
    out = {}
    ir, ik = criterion.sample_graph, criterion.patch_graph
    if ir is not None and ir.form == "conditioned":
        out["ir"] = ir.graph(feats, use_memory=False)
    if ik is not None and sp is not None:
        out["ik"] = ik.graph(feats, sp, use_memory=False)
    return out


@torch.no_grad()
def evaluate_run(
    run_dir: Path, *, max_images: int, chunk: int, device: torch.device
) -> dict[str, Any]:
    """The ratios of one run (and of the untrained control) on its test split."""
    path = run_dir / "checkpoints" / "last.pt"
    state = ckpt.load(path, map_location="cpu")
    model, cfg = load_model(path, device=device)
    channels = model.feature_channels
    # CCGLoss bounds the conditioned sample graph's batch by the training batch; a chunk is larger
    batch = max(chunk, cfg.batch_size)
    trained = load_criterion(state, cfg, channels, batch).to(device).eval()
    control = fresh_criterion(cfg, channels, batch).to(device).eval()
    data = build_data(dataclasses.replace(cfg, num_workers=0), device=device, with_train=False)
    test = data.test
    n = min(len(test), max_images) if max_images else len(test)
    labels = test.index.labels[test.rows[:n]]
    sp = None
    if trained.patch_graph is not None:
        sp = superpixel_labels(cfg, test.paths[:n]).long()
    ratios: dict[str, list[float]] = {}
    spread: list[float] = []  # mean Euclidean distance between two test images' C5 maps
    norms: list[float] = []  # mean norm of a test image's C5 map
    for idx in torch.arange(n).split(chunk):
        if len(idx) < max(2, chunk // 2):
            continue
        images = torch.stack([test[int(i)]["image"] for i in idx]).to(device)
        _, feats = model(images)
        sp_chunk = sp[idx].to(device) if sp is not None else None
        lab = labels[idx].to(device)
        flat = feats.float().flatten(1)
        d = torch.cdist(flat, flat)
        spread.append(float(d.sum() / (len(idx) * (len(idx) - 1))))
        norms.append(float(flat.norm(dim=1).mean()))
        for which, criterion in (("trained", trained), ("control", control)):
            for name, graph in graphs_of(criterion, feats.float(), sp_chunk).items():
                r = share_ratio(graph, lab)
                if not math.isnan(r):
                    ratios.setdefault(f"{which}_{name}", []).append(r)
                if which == "trained":
                    ratios.setdefault(f"spread_{name}", []).append(row_spread(graph))
    result: dict[str, Any] = {
        "run": str(run_dir),
        "images": n,
        "chunks": len(spread),
        "losses": list(cfg.losses),
        "graph_form": cfg.graph_form,
    }
    for key, values in ratios.items():
        result[key] = sum(values) / len(values)
    result["feature_distance"] = sum(spread) / len(spread) if spread else math.nan
    # (a baseline run has no graph: only these two, to compare its features with CCG's)
    result["feature_norm"] = sum(norms) / len(norms) if norms else math.nan
    return result


def _fmt(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def report(results: list[dict[str, Any]]) -> str:
    """The per-run table, the mean with its 95% CI over runs, and the control."""
    lines = [
        "Weight to partners sharing a disease label / weight to partners sharing none "
        "(test split, self-pairs excluded; 1.000 = no preference). Weight spread: SD / mean "
        "of a row's weights to its partners (0 = uniform, the untrained graph).",
        "",
        f"| run | images | {TITLES['ir']} | {TITLES['ik']} | control (untrained) | "
        "C5 distance between images | C5 norm | weight spread L_IR, L_IK |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        control = [r[f"control_{g}"] for g in GRAPHS if f"control_{g}" in r]
        lines.append(
            f"| {Path(r['run']).name} | {r['images']} | {_fmt(r.get('trained_ir'))} | "
            f"{_fmt(r.get('trained_ik'))} | {', '.join(_fmt(c) for c in control) or '-'} | "
            f"{_fmt(r.get('feature_distance'))} | {_fmt(r.get('feature_norm'))} | "
            f"{_fmt(r.get('spread_ir'))}, {_fmt(r.get('spread_ik'))} |"
        )
    cells = []
    for g in GRAPHS:
        values = [r[f"trained_{g}"] for r in results if f"trained_{g}" in r]
        if not values:
            cells.append("-")
            continue
        m, half = mean_ci(values)
        cells.append(f"{m:.3f}" + ("" if math.isnan(half) else f" ± {half:.3f}"))
    controls = [r[f"control_{g}"] for r in results for g in GRAPHS if f"control_{g}" in r]
    control = _fmt(sum(controls) / len(controls)) if controls else "-"
    lines.append(
        f"| mean ± 95% CI over {len(results)} run(s) | | {cells[0]} | {cells[1]} | {control} "
        "| | | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run directories of the trainer")
    p.add_argument("--glob", dest="pattern", help="run directories matching a glob pattern")
    p.add_argument("--max-images", type=int, default=512, help="test images per run (0: all)")
    p.add_argument("--chunk", type=int, default=64, help="images per graph (one batch)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the per-run results here")
    args = p.parse_args(argv)
    runs = list(args.runs)
    if args.pattern:
        runs += sorted(Path(r) for r in glob.glob(args.pattern))
    runs = [r for r in runs if (r / "checkpoints" / "last.pt").is_file()]
    if not runs:
        p.error("no run directory with checkpoints/last.pt given")
    if args.chunk < 2:
        p.error(f"--chunk must be >= 2, got {args.chunk}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    for run in runs:
        r = evaluate_run(run, max_images=args.max_images, chunk=args.chunk, device=device)
        print(
            f"{run}: {r['images']} test images, {r['chunks']} chunks: "
            + ", ".join(
                f"{k} {_fmt(r[k])}"
                for k in sorted(r)
                if k.startswith(("trained", "control", "feature"))
            )
        )
        results.append(r)
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
