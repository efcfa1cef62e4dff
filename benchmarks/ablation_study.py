"""Table 4 on the synthetic twin: the baseline and the relation rows, over seeds, with CIs.

Every (setting, row, seed) is one run of the reference trainer (``--preset demo``, the same
settings for every row: they were tuned for the baseline, docs/results.md), trained in its own
process on one thread, several side by side (``--jobs``). A finished run is not trained again,
so a killed study continues where it stopped. For each setting and T(IoU) the study prints the
mean localization accuracy over the 8 boxed classes with its 95% CI over seeds (Student t),
and the paired difference to the baseline (same seed: same data order and initialisation of
the shared parts) with its 95% CI.

    python benchmarks/ablation_study.py                       # the full study
    python benchmarks/ablation_study.py --quick               # one seed, tiny: a smoke test
    python benchmarks/ablation_study.py --settings b c --rows baseline ir+ik+kr --seeds 0 1 2
    python benchmarks/ablation_study.py --holdout-seed 1      # + an independent test set

``--holdout-seed S`` also evaluates every finished run on the same independent test set: every
annotated image of a twin generated with synthetic seed ``S`` (887 images for ``S = 1`` at the
demo's size, at least 79 boxes per class, so one image moves a class's entry by < 0.02 in
every setting; (a)'s own test fold has 186 images).

The synthetic generator is fixed for the study; nothing here changes the data per method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ccg_layers.datasets import BOXED_CLASSES as BOXED  # noqa: E402

ROWS = ("baseline", "ik", "ir", "kr", "ir+ik", "ir+ik+kr")
THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% CI (Student t; NaN half-width for one value)."""
    from scipy import stats  # scikit-image's dependency

    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


Job = tuple[str, str, int]  # (setting, row, seed)


def one_thread_env() -> dict[str, str]:
    """The environment of a run's own process: one thread, this checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def first_then_side_by_side(
    fn: Callable[[str, str, int], dict[str, Any]],
    jobs: list[Job],
    workers: int,
    verb: str | None = None,
) -> dict[Job, dict[str, Any]]:
    """``fn(*job)`` for every job: the first alone (it makes the synthetic data and caches the
    others read), then the rest ``workers`` at a time; with ``verb``, each job is reported with
    its wall time as it finishes."""
    results = {jobs[0]: fn(*jobs[0])}
    with ThreadPoolExecutor(workers) as pool:
        futures = {j: pool.submit(fn, *j) for j in jobs[1:]}
        for j, f in futures.items():
            results[j] = f.result()
            if verb is not None:
                print(f"{verb} {j} ({results[j]['wall_seconds']:.0f} s)", flush=True)
    return results


def run_one(setting: str, row: str, seed: int, out: Path, extra: list[str]) -> dict[str, Any]:
    """Train (or reuse) one run; returns its results.json plus the wall time."""
    name = f"{setting}-{row}-s{seed}"
    run_dir = out / name
    done = run_dir / "results.json"
    if not done.is_file():
        if run_dir.exists():  # a killed run: start it again from scratch, same seed
            import shutil

            shutil.rmtree(run_dir)
        cmd = [
            sys.executable,
            "-m",
            "examples.ccg_net",
            "train",
            "--preset",
            "demo",
            "--setting",
            setting,
            "--ablation",
            row,
            "--seed",
            str(seed),
            "--threads",
            "1",
            "--progress",
            "false",
            "--eval-every",
            "0",
            "--output-dir",
            str(out),
            "--run-name",
            name,
            *extra,
        ]
        t0 = time.perf_counter()
        log = out / f"{name}.log"
        with open(log, "w") as f:
            proc = subprocess.run(
                cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=one_thread_env()
            )
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {proc.returncode}); see {log}")
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    res = json.loads(done.read_text())
    wall = run_dir / "wall_seconds.txt"
    res["wall_seconds"] = float(wall.read_text()) if wall.is_file() else math.nan
    return res


def holdout_name(seed: int) -> str:
    return f"holdout-s{seed}.json"


def evaluate_holdout(run_dir: Path, seed: int) -> dict[str, Any]:
    """The run's final model on an independent test set: every annotated image of a twin
    generated with synthetic seed ``seed`` (setting (b)'s test split of that dataset: 887
    images for seed 1 at the demo's size, disjoint from every training set). Cached in the run folder;
    returns a results.json-like dict (``test_images``, ``methods``)."""
    out = run_dir / holdout_name(seed)
    if out.is_file():
        return json.loads(out.read_text())  # type: ignore[no-any-return]
    import dataclasses

    import torch

    from examples.ccg_net.checkpoint import load_model
    from examples.ccg_net.data import build_data
    from examples.ccg_net.engine import _model_name, evaluate, reference_results

    model, cfg = load_model(run_dir / "checkpoints" / "last.pt")
    if cfg.data_root is not None:
        raise ValueError(f"--holdout-seed needs runs on the synthetic twin; {run_dir} is not")
    cfg = dataclasses.replace(cfg, setting="b", fold=0, synthetic_seed=seed, num_workers=0)
    data = build_data(cfg, with_train=False)
    res = evaluate(model, data.test_loader, torch.device("cpu"), data)
    payload = {
        "holdout_seed": seed,
        "test_images": list(data.test.image_names),
        "methods": {
            _model_name(cfg): res.summary(),
            "Whole image": reference_results(data, cfg)["Whole image"].summary(),
        },
    }
    out.write_text(json.dumps(payload) + "\n")
    return payload


def holdout_one(setting: str, row: str, seed: int, out: Path, holdout: int) -> dict[str, Any]:
    """:func:`evaluate_holdout` of one finished run, in its own one-thread process."""
    run_dir = out / f"{setting}-{row}-s{seed}"
    if not (run_dir / holdout_name(holdout)).is_file():
        cmd = [sys.executable, __file__, "--_holdout", str(run_dir), str(holdout)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=one_thread_env())
        if proc.returncode != 0:
            raise RuntimeError(f"holdout evaluation of {run_dir} failed:\n{proc.stderr[-2000:]}")
    return json.loads((run_dir / holdout_name(holdout)).read_text())  # type: ignore[no-any-return]


def model_entry(res: dict[str, Any]) -> dict[str, Any]:
    """The trained model's entry of a results.json (its one non-reference method)."""
    refs = {"Prior", "Whole image"}
    (name,) = [k for k in res["methods"] if k not in refs]
    return res["methods"][name]  # type: ignore[no-any-return]


def boxed_means(entry: dict[str, Any]) -> dict[float, float]:
    loc = entry["localization"]
    return {t: float(loc[f"T={t:g}"]["Mean"]) for t in THRESHOLDS}


def boxed_auc(entry: dict[str, Any]) -> float:
    vals = [entry["auc"][c] for c in BOXED if entry["auc"][c] == entry["auc"][c]]
    return sum(vals) / len(vals)


def summarize(
    results: dict[Job, dict[str, Any]],
    settings: list[str],
    rows: list[str],
    seeds: list[int],
) -> str:
    """The study's tables (Markdown)."""
    lines = []
    for s in settings:
        lines.append(f"\n### Setting ({s}), {len(seeds)} seeds: mean over the 8 boxed classes")
        first = results[(s, rows[0], seeds[0])]
        lines.append(
            f"test images: {len(first['test_images'])}; 95% CIs over seeds (Student t); "
            "Δ = row − baseline, paired by seed"
        )
        lines.append("")
        head = ["row", "AUC"] + [f"T={t:g}" for t in THRESHOLDS]
        if "baseline" in rows:
            head += [f"Δ T={t:g}" for t in (0.1, 0.3, 0.5, 0.7)]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in rows:
            entries = [model_entry(results[(s, r, k)]) for k in seeds]
            auc = mean_ci([boxed_auc(e) for e in entries])
            per_t = {t: mean_ci([boxed_means(e)[t] for e in entries]) for t in THRESHOLDS}
            cells = [r, _fmt(auc)]
            cells += [_fmt(per_t[t]) for t in THRESHOLDS]
            if "baseline" in rows:
                base = [model_entry(results[(s, "baseline", k)]) for k in seeds]
                for t in (0.1, 0.3, 0.5, 0.7):
                    diffs = [
                        boxed_means(e)[t] - boxed_means(b)[t]
                        for e, b in zip(entries, base, strict=True)
                    ]
                    cells.append("—" if r == "baseline" else _fmt(mean_ci(diffs), signed=True))
            lines.append("| " + " | ".join(cells) + " |")
        ref = results[(s, rows[0], seeds[0])]["methods"]
        for name in ("Prior", "Whole image"):
            if name in ref:
                m = {t: ref[name]["localization"][f"T={t:g}"]["Mean"] for t in THRESHOLDS}
                lines.append(
                    f"| {name} (reference) | — | "
                    + " | ".join(f"{m[t]:.3f}" for t in THRESHOLDS)
                    + " |"
                    + (" — |" * 4 if "baseline" in rows else "")
                )
    return "\n".join(lines)


def summary_json(
    results: dict[Job, dict[str, Any]],
    settings: list[str],
    rows: list[str],
    seeds: list[int],
) -> dict[str, Any]:
    """Per setting and row: mean, 95% CI half-width and SD over seeds of the boxed-class mean
    at each T(IoU) and of the AUC, and the same for the paired difference to the baseline."""

    def stats(values: list[float]) -> dict[str, float]:
        m, h = mean_ci(values)
        sd = (
            math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
            if len(values) > 1
            else math.nan
        )
        return {"mean": m, "ci95": h, "sd": sd, "n": len(values)}

    out: dict[str, Any] = {"seeds": seeds, "settings": {}}
    for s in settings:
        per_row: dict[str, Any] = {}
        for r in rows:
            entries = [model_entry(results[(s, r, k)]) for k in seeds]
            row: dict[str, Any] = {"auc": stats([boxed_auc(e) for e in entries])}
            for t in THRESHOLDS:
                row[f"T={t:g}"] = stats([boxed_means(e)[t] for e in entries])
            if "baseline" in rows and r != "baseline":
                base = [model_entry(results[(s, "baseline", k)]) for k in seeds]
                row["minus_baseline"] = {
                    f"T={t:g}": stats(
                        [
                            boxed_means(e)[t] - boxed_means(b)[t]
                            for e, b in zip(entries, base, strict=True)
                        ]
                    )
                    for t in THRESHOLDS
                }
            per_row[r] = row
        out["settings"][s] = per_row
    return out


def _fmt(mc: tuple[float, float], signed: bool = False) -> str:
    m, h = mc
    body = f"{m:+.3f}" if signed else f"{m:.3f}"
    return body if math.isnan(h) else f"{body} ± {h:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, default=REPO / "runs" / "ablation-study")
    p.add_argument(
        "--quick",
        action="store_true",
        help="one seed, 160 images at 64 px, 1 epoch, settings b and c, baseline and "
        "ir+ik+kr (a smoke test of the whole pipeline, under a minute)",
    )
    p.add_argument(
        "--holdout-seed",
        type=int,
        default=None,
        help="also evaluate every run on an independent test set: the annotated images of a "
        "twin generated with this synthetic seed (887 for seed 1 at the demo's size), for every "
        "setting",
    )
    p.add_argument("--_holdout", nargs=2, metavar=("RUN_DIR", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more trainer options")
    args = p.parse_args(argv)
    if args._holdout:
        import torch

        torch.set_num_threads(1)
        evaluate_holdout(Path(args._holdout[0]), int(args._holdout[1]))
        return 0
    extra = [a for a in args.extra if a != "--"]
    if args.quick:
        args.settings, args.rows, args.seeds = ["b", "c"], ["baseline", "ir+ik+kr"], [0]
        extra = [
            "--synthetic-images",
            "160",
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--num-figures",
            "0",
            *extra,
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, r, k) for k in args.seeds for s in args.settings for r in args.rows]
    t0 = time.perf_counter()
    print(
        f"{len(jobs)} runs ({len(args.settings)} settings x {len(args.rows)} rows x "
        f"{len(args.seeds)} seeds), {args.jobs} side by side, in {args.out}",
        flush=True,
    )
    results = first_then_side_by_side(
        lambda s, r, k: run_one(s, r, k, args.out, extra), jobs, args.jobs, "done"
    )
    text = summarize(results, args.settings, args.rows, args.seeds)
    summary = summary_json(results, args.settings, args.rows, args.seeds)
    if args.holdout_seed is not None:
        seed = args.holdout_seed
        held = first_then_side_by_side(
            lambda s, r, k: holdout_one(s, r, k, args.out, seed), jobs, args.jobs
        )
        text += (
            f"\n\n## The same runs on an independent test set (every annotated image of the "
            f"twin with synthetic seed {args.holdout_seed})\n"
            + summarize(held, args.settings, args.rows, args.seeds)
        )
        summary["holdout"] = {
            "synthetic_seed": args.holdout_seed,
            **summary_json(held, args.settings, args.rows, args.seeds),
        }
    wall = time.perf_counter() - t0
    text += f"\n\nWall time {wall / 60:.1f} min for {len(jobs)} runs ({args.jobs} jobs).\n"
    (args.out / "study.md").write_text(text)
    (args.out / "study.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
