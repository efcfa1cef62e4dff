"""``reproduce``: every fold of a setting, resumable per fold, mean ± std beside the paper.

The paper's numbers are means over the folds of a setting (Sec. 4.2). ``reproduce`` trains
each fold in ``OUT/fold<k>/`` (a fold whose report exists is read back; a fold that was killed
resumes from its last checkpoint), then aggregates the localization accuracy per class and
T(IoU) over the folds and prints the paper-layout table with the published rows beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ccg_layers.datasets import BOXED_CLASSES, NUM_FOLDS

from .config import TrainConfig
from .data import dataset_root
from .engine import absolute_paths, train
from .report import BOXED_COLUMNS, THRESHOLDS, boxed_mean

#: Published rows of the paper's Tables 1-3, recorded once with their table of origin:
#: ``{setting: {"table": "Table N", "rows": {method: {T(IoU): [8 boxed classes..., mean]}}}}``.
#: No row is recorded yet: the paper's numbers could not be read where this was written (no
#: internet, and no copy of the paper in the project); add them here from the paper itself.
PAPER_ROWS: dict[str, dict[str, Any]] = {}


def default_folds(setting: str) -> tuple[int, ...]:
    """All folds; setting (b) tests on every annotated image, so it has one."""
    return (0,) if setting == "b" else tuple(range(NUM_FOLDS))


def run_fold(cfg: TrainConfig, root: Path, fold: int) -> dict[str, Tensor]:
    """The accuracy matrices ``(T, K)`` per method of one fold: read back if the fold finished,
    resumed if it was interrupted after a checkpoint, trained otherwise."""
    fold_dir = root / f"fold{fold}"
    report = fold_dir / "results.json"
    if not report.is_file():
        if (fold_dir / "checkpoints" / "last.pt").is_file():
            print(f"\n=== fold {fold}: resuming {fold_dir} ===")
            train(cfg, resume_dir=fold_dir, stop_after_steps=cfg.stop_after_steps)
        else:
            print(f"\n=== fold {fold} ===")
            train(dataclasses.replace(cfg, fold=fold, output_dir=str(root), run_name=f"fold{fold}"))
    methods = json.loads(report.read_text())["methods"]
    return {
        name: torch.tensor(
            [[math.nan if v is None else v for v in row] for row in m["accuracy_matrix"]]
        )
        for name, m in methods.items()
    }


def aggregate(per_fold: list[dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    """Per method: ``mean`` and ``std`` ``(T, 9)`` over the folds (8 boxed classes and their
    mean; a class with no test box in a fold is left out of that fold)."""
    out = {}
    for name in per_fold[0]:
        cols = torch.stack(
            [
                torch.cat([f[name][:, BOXED_COLUMNS].double(), boxed_mean(f[name])[:, None]], 1)
                for f in per_fold
            ]
        )  # (folds, T, 9)
        mean = cols.nanmean(0)
        valid = (~cols.isnan()).sum(0)
        var = ((cols - mean).nan_to_num() ** 2).sum(0) / (valid - 1).clamp(min=1)
        out[name] = {"mean": mean, "std": var.sqrt(), "folds": valid}
    return out


def paper_table(stats: dict[str, dict[str, Tensor]], setting: str, num_folds: int) -> str:
    """Rows T(IoU) x method (this run's mean ± std over the folds, then the paper's rows)."""
    head = ["T(IoU)", "method", *BOXED_CLASSES, "Mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    paper = PAPER_ROWS.get(setting, {})
    for t_i, t in enumerate(THRESHOLDS):
        for name, s in stats.items():
            cells = [
                "n/a" if math.isnan(m) else f"{m:.2f} ± {sd:.2f}"
                for m, sd in zip(s["mean"][t_i].tolist(), s["std"][t_i].tolist(), strict=True)
            ]
            lines.append(
                f"| {t:g} | {name} (this run, {num_folds} folds) | " + " | ".join(cells) + " |"
            )
        for method, rows in paper.get("rows", {}).items():
            if t in rows:
                cells = [f"{v:.2f}" for v in rows[t]]
                lines.append(f"| {t:g} | {method} ({paper['table']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reproduce(cfg: TrainConfig, folds: tuple[int, ...] | None = None) -> Path:
    """Train every fold of ``cfg.setting`` (or ``folds``) and write the aggregated table."""
    cfg = absolute_paths(cfg)
    folds = folds if folds is not None else default_folds(cfg.setting)
    name = cfg.run_name or f"reproduce-{cfg.preset}-setting-{cfg.setting}"
    root = Path(cfg.output_dir) / name
    if cfg.parallel_runs > 1 and len(folds) > 1:
        # folds side by side, one process each (the demo preset: two on a 2-core machine);
        # the dataset is made once, here, before they start
        dataset_root(cfg)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(cfg.parallel_runs, len(folds)), mp_context=ctx) as pool:
            futures = [pool.submit(run_fold, cfg, root, k) for k in folds]
            per_fold = [f.result() for f in futures]
    else:
        per_fold = [run_fold(cfg, root, k) for k in folds]
    stats = aggregate(per_fold)
    synthetic = cfg.data_root is None or (Path(cfg.data_root) / "synthetic.json").is_file()
    notes = []
    if synthetic:
        notes.append(
            "These runs are on the synthetic twin of ChestX-ray14; the paper's rows are for the "
            "real data and are not comparable."
        )
    if cfg.setting not in PAPER_ROWS:
        notes.append(
            "The paper's published rows are not recorded in examples/ccg_net/reproduce.py "
            "(PAPER_ROWS), so none are shown."
        )
    text = (
        f"Localization accuracy, setting {cfg.setting}, folds {list(folds)}: mean ± std over "
        "the folds (prediction = map > 0.5)\n\n"
        + paper_table(stats, cfg.setting, len(folds))
        + "\n\n"
        + "\n".join(notes)
        + "\n"
    )
    (root / "reproduce.md").write_text(text)
    payload = {
        "setting": cfg.setting,
        "folds": list(folds),
        "thresholds": list(THRESHOLDS),
        "columns": [*BOXED_CLASSES, "Mean"],
        "methods": {k: {s: v.tolist() for s, v in st.items()} for k, st in stats.items()},
        "paper": PAPER_ROWS.get(cfg.setting),
    }
    (root / "reproduce.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n" + text)
    return root
