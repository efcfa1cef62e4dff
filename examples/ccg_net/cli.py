"""Command line of the CCG-Net trainer (``python examples/train_ccg.py`` / ``python -m
examples.ccg_net``)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from ccg_layers.datasets import BOXED_CLASSES, CLASS_NAMES, ChestXray14

from .config import LOSS_TERMS, TrainConfig, build_parser, resolve_config
from .data import load_split, trivial_prior
from .engine import (
    THRESHOLDS,
    NonFiniteLossError,
    evaluate_checkpoint,
    localization,
    new_run_dir,
    train,
)
from .figures import save_overlays
from .model import WeightsNotFoundError


def comparison_table(results: dict[str, torch.Tensor]) -> str:
    """Rows T(IoU) x method, columns the 8 boxed diseases and their mean (Markdown)."""
    cols = [CLASS_NAMES.index(c) for c in BOXED_CLASSES]
    head = ["T(IoU)", "model", *BOXED_CLASSES, "Mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t_i, t in enumerate(THRESHOLDS):
        for name, acc in results.items():
            row = acc[t_i, cols].double()
            valid = row[~torch.isnan(row)]
            mean = float(valid.mean()) if len(valid) else math.nan
            cells = ["n/a" if math.isnan(v) else f"{v:.2f}" for v in [*row.tolist(), mean]]
            lines.append("| " + " | ".join([f"{t:g}", name, *cells]) + " |")
    return "\n".join(lines)


def mean_at(acc: torch.Tensor, t: float) -> float:
    cols = [CLASS_NAMES.index(c) for c in BOXED_CLASSES]
    row = acc[THRESHOLDS.index(t), cols].double()
    return float(row[~torch.isnan(row)].mean())


def run_comparison(cfg: TrainConfig) -> Path:
    """Train the baseline and the CCG model with the same data and seed, then compare them with
    each other and with the trivial prior; tables, JSON and figures go to one run directory."""
    t_start = time.perf_counter()
    root = new_run_dir(dataclasses.replace(cfg, run_name=cfg.run_name or None))
    ccg_terms = cfg.losses if len(cfg.losses) > 1 else LOSS_TERMS
    runs = {
        "Baseline": dataclasses.replace(
            cfg, losses=("base",), output_dir=str(root), run_name="baseline"
        ),
        "CCG": dataclasses.replace(cfg, losses=ccg_terms, output_dir=str(root), run_name="ccg"),
    }
    (root / "config.json").write_text(cfg.to_json() + "\n")
    timings = {}
    for name, sub in runs.items():
        print(f"\n=== training {name}: losses {'+'.join(sub.losses)} ===")
        t0 = time.perf_counter()
        train(sub)
        timings[name] = time.perf_counter() - t0

    index, split, summary = load_split(cfg)
    test = ChestXray14(index, split["test"], image_size=cfg.image_size)
    maps = {
        name: torch.load(root / sub.run_name / "test_maps.pt", weights_only=True).float()  # type: ignore[operator]
        for name, sub in runs.items()
    }
    prior = trivial_prior(index, split["train"], cfg.image_size)
    maps["Prior"] = prior[None].expand(len(test), -1, -1, -1)
    results = {name: localization(m, test) for name, m in maps.items()}
    ordered = {k: results[k] for k in ("CCG", "Baseline", "Prior")}
    table = comparison_table(ordered)
    margin = mean_at(results["CCG"], 0.3) - mean_at(results["Prior"], 0.3)
    total = time.perf_counter() - t_start
    text = (
        f"Localization accuracy on the test split ({summary['test']} images, "
        f"setting {cfg.setting}, fold {cfg.fold}); T(IoU) thresholds, "
        "prediction = map > 0.5\n\n"
        f"{table}\n\n"
        f"Mean at T(IoU)=0.3: CCG {mean_at(results['CCG'], 0.3):.3f}, "
        f"baseline {mean_at(results['Baseline'], 0.3):.3f}, "
        f"trivial prior {mean_at(results['Prior'], 0.3):.3f} "
        f"(CCG - prior = {margin:+.3f})\n"
        f"Training time: baseline {timings['Baseline']:.0f} s, CCG {timings['CCG']:.0f} s; "
        f"total {total:.0f} s\n"
    )
    figs = save_overlays(
        test,
        {k: maps[k] for k in ("CCG", "Baseline", "Prior")},
        root / "figures",
        cfg.num_figures,
    )
    text += f"Figures: {len(figs)} PNGs in {root / 'figures'}\n"
    (root / "results.md").write_text(text)
    (root / "results.json").write_text(
        json.dumps(
            {
                "accuracy": {k: v.tolist() for k, v in ordered.items()},
                "class_names": list(CLASS_NAMES),
                "thresholds": list(THRESHOLDS),
                "mean_T0.3": {k: mean_at(v, 0.3) for k, v in ordered.items()},
                "split": summary,
                "seconds": {**timings, "total": total},
            },
            indent=2,
        )
        + "\n"
    )
    print("\n" + text)
    return root


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.evaluate:
            out = evaluate_checkpoint(
                args.evaluate,
                data_root=args.data_root,
                device=args.device or "auto",
            )
            print(out["table"])
            print(f"written to {out['written_to']}")
            return 0
        cfg = resolve_config(args)
        if args.resume:
            run_dir = train(
                cfg,
                resume_dir=args.resume,
                stop_after_steps=args.stop_after_steps,
                progress=args.progress,
            )
        elif args.compare_baseline or (cfg.preset == "demo" and args.ablation is None):
            run_dir = run_comparison(cfg)
        else:
            run_dir = train(cfg)
            print((run_dir / "localization.md").read_text())
        print(f"run directory: {run_dir}")
        return 0
    except WeightsNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
