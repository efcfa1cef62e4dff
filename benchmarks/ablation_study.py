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
import functools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ccg_layers.datasets import BOXED_CLASSES as BOXED  # noqa: E402
from examples.ccg_net.runs import side_by_side  # noqa: E402

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
AnyJob = TypeVar("AnyJob", bound=tuple[Any, ...])  # a Job, or a DJob of the decisive study


def one_thread_env() -> dict[str, str]:
    """The environment of a run's own process: one thread, this checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def first_then_side_by_side(
    fn: Callable[..., dict[str, Any]],
    jobs: list[AnyJob],
    workers: int,
    verb: str | None = None,
) -> dict[AnyJob, dict[str, Any]]:
    """``fn(*job)`` for every job: the first alone (it makes the synthetic data and caches the
    others read), then the rest ``workers`` at a time; with ``verb``, each job is reported with
    its wall time as it finishes."""
    rest = jobs[1:]

    def done(i: int, result: dict[str, Any]) -> None:
        if verb is not None:
            print(f"{verb} {rest[i]} ({result['wall_seconds']:.0f} s)", flush=True)

    results = {jobs[0]: fn(*jobs[0])}
    # threads: each job's run is a process of its own (run_one, holdout_one)
    later = side_by_side(
        [functools.partial(fn, *j) for j in rest], workers, threads=True, done=done
    )
    results.update(zip(rest, later, strict=True))
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
    from examples.ccg_net.engine import evaluate, reference_results
    from examples.ccg_net.runs import model_name

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
            model_name(cfg): res.summary(),
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


# --------------------------------------------------------------------------- decisive study
# Issue 20's study: baseline vs the full model (ir+ik+kr) in settings (b) and (c), for three
# forms of the relation terms x two initialisations, 5 seeds each, on the independent test set.

#: The forms of the relation terms and the trainer options that select them; each form's runs
#: live in ``<out>/<init>-<dir>`` (the baseline in ``<init>-raw``).
#: Every option of a form is given explicitly: the runs use ``--preset demo``, whose own
#: defaults (since the study, the contrast form) must not fill in an option a form leaves out.
FORMS: dict[str, tuple[str, list[str]]] = {
    "paper": ("raw", ["--relation-form", "pull", "--relation-features", "raw"]),
    "unit": ("unit", ["--relation-form", "pull", "--relation-features", "unit"]),
    "contrast": ("contrast", ["--relation-form", "contrast", "--relation-features", "unit"]),
}
INITS = ("random", "pretrained")
#: The learning rates tried for the pretrained baseline, per setting: the random-init demo's
#: rate (DEMO_LR_BY_SETTING), a third of it and three times it.
TUNE_LRS = {"a": (1e-4, 3e-4, 1e-3), "b": (1e-3, 3e-3, 1e-2), "c": (1e-4, 3e-4, 1e-3)}
#: The primary endpoint, named before the study ran: mean accuracy at T(IoU)=0.3 over the 8
#: boxed classes on the independent test set, full model minus baseline, paired by seed.
PRIMARY_T = 0.3

DJob = tuple[str, str, str, int]  # (run folder, setting, row, seed)


def paired_p(diffs: list[float]) -> float:
    """Two-sided p of a paired t-test (H0: mean difference 0); for differences equal in every
    seed (to rounding), 1.0 if they are 0 and 0.0 otherwise."""
    from scipy import stats

    m = sum(diffs) / len(diffs)
    if max(abs(d - m) for d in diffs) <= 1e-12 * max(1.0, abs(m)):
        return 1.0 if abs(m) <= 1e-12 else 0.0
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def holm(pvalues: dict[str, float], alpha: float = 0.05) -> dict[str, tuple[float, bool]]:
    """Holm's step-down adjustment: per name, the adjusted p and whether it rejects at alpha."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m = len(order)
    out: dict[str, tuple[float, bool]] = {}
    running = 0.0
    rejecting = True
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        rejecting = rejecting and pvalues[k] <= alpha / (m - i)
        out[k] = (running, rejecting)
    return out


def pretrained_weights(out: Path) -> Path:
    """``python -m examples.ccg_net pretrain --preset demo`` into ``out`` (cached there)."""
    path = out / "pretrained" / "demo-twin-s7.pt"
    cmd = [
        sys.executable,
        "-m",
        "examples.ccg_net",
        "pretrain",
        "--preset",
        "demo",
        "--out",
        str(path),
        "--output-dir",
        str(out / "pretrain-runs"),
        "--progress",
        "false",
    ]
    subprocess.run(cmd, cwd=REPO, check=True, env=one_thread_env())
    return path


def tune_pretrained_lr(
    out: Path, weights: Path, settings: list[str], validation_seed: int, jobs: int
) -> dict[str, Any]:
    """The pretrained baseline's learning rate per setting: seed 0 at each of ``TUNE_LRS``,
    scored on a validation twin (synthetic seed ``validation_seed``, never the test set) by the
    primary endpoint's quantity (mean accuracy at T(IoU)=0.3), ties broken by AUC. While the
    best rate is at an end of the grid, the grid grows by a factor of 3 beyond it (at most
    twice per setting)."""

    def one(s: str, lr: float) -> dict[str, float]:
        folder = out / f"tune-lr{lr:g}"
        folder.mkdir(parents=True, exist_ok=True)
        run_one(s, "baseline", 0, folder, ["--weights", str(weights), "--lr", f"{lr:g}"])
        entry = model_entry(holdout_one(s, "baseline", 0, folder, validation_seed))
        return {"T=0.3": boxed_means(entry)[PRIMARY_T], "auc": boxed_auc(entry)}

    grids = {s: sorted(TUNE_LRS[s]) for s in settings}
    scores: dict[tuple[str, float], dict[str, float]] = {}
    pending = [(s, lr) for s in settings for lr in grids[s]]
    for _ in range(3):  # the grid, then up to two extensions
        done = side_by_side([functools.partial(one, *g) for g in pending], jobs, threads=True)
        scores.update(zip(pending, done, strict=True))
        pending = []
        for s in settings:
            grid = grids[s]
            best = max(grid, key=lambda lr: (scores[(s, lr)]["T=0.3"], scores[(s, lr)]["auc"]))
            grown = len(grid) - len(TUNE_LRS[s])
            if best == grid[-1] and grown < 2:
                pending.append((s, float(f"{grid[-1] * 3:.3g}")))
            elif best == grid[0] and grown < 2:
                pending.append((s, float(f"{grid[0] / 3:.3g}")))
        for s, lr in pending:
            grids[s] = sorted([*grids[s], lr])
        if not pending:
            break
    chosen: dict[str, Any] = {}
    for s in settings:
        table = {f"{lr:g}": scores[(s, lr)] for lr in grids[s] if (s, lr) in scores}
        best = max(table, key=lambda k: (table[k]["T=0.3"], table[k]["auc"]))
        chosen[s] = {"lr": float(best), "validation": table}
    return chosen


def decisive_jobs(
    settings: list[str],
    inits: list[str],
    forms: list[str],
    seeds: list[int],
    skip: tuple[str, ...] = (),
) -> list[DJob]:
    """Every run of the study; ``skip`` names cells ``init/form`` left out."""
    jobs: list[DJob] = []
    for k in seeds:
        for s in settings:
            for init in inits:
                jobs.append((f"{init}-raw", s, "baseline", k))
                for form in forms:
                    if f"{init}/{form}" not in skip:
                        jobs.append((f"{init}-{FORMS[form][0]}", s, "ir+ik+kr", k))
    return jobs


def decisive_extra(
    folder: str, setting: str, weights: Path | None, lrs: dict[str, float]
) -> list[str]:
    init, form_dir = folder.split("-", 1)
    extra = next(opts for d, opts in FORMS.values() if d == form_dir)
    if init == "pretrained":
        assert weights is not None
        extra = [*extra, "--weights", str(weights), "--lr", f"{lrs[setting]:g}"]
    return list(extra)


def check_trained_form(run_dir: Path, options: list[str]) -> None:
    """Refuse a run (fresh or reused) whose ``config.json`` has another relation form than the
    one its folder stands for (``options``: a form's trainer options, see :data:`FORMS`)."""
    saved = json.loads((run_dir / "config.json").read_text())
    given = dict(zip(options[::2], options[1::2], strict=True))
    for flag, default in (("--relation-form", "pull"), ("--relation-features", "raw")):
        # a run of a trainer older than the option ran what is now its default
        got = saved.get(flag[2:].replace("-", "_"), default)
        if flag in given and got != given[flag]:
            raise RuntimeError(
                f"{run_dir} was trained with {flag} {got}, its folder stands for "
                f"{flag} {given[flag]}; move it away and run the study again"
            )


def decisive_summary(
    held: dict[DJob, dict[str, Any]],
    settings: list[str],
    inits: list[str],
    forms: list[str],
    seeds: list[int],
    skip: tuple[str, ...] = (),
) -> tuple[str, dict[str, Any]]:
    """Tables (Markdown) and JSON of the decisive study on the independent test set: per
    setting and initialisation, each row's mean ± 95% CI, and each form's paired Δ to the
    baseline with its 95% CI; the primary endpoint's p-values with Holm's adjustment over every
    (setting, init, form) comparison; how many of all the Δ intervals exclude 0."""
    metrics = ["auc", *[f"T={t:g}" for t in THRESHOLDS]]

    def values(folder: str, s: str, row: str) -> dict[str, list[float]]:
        entries = [model_entry(held[(folder, s, row, k)]) for k in seeds]
        v = {"auc": [boxed_auc(e) for e in entries]}
        for t in THRESHOLDS:
            v[f"T={t:g}"] = [boxed_means(e)[t] for e in entries]
        return v

    lines: list[str] = []
    summary: dict[str, Any] = {"seeds": seeds, "settings": {}}
    primary: dict[str, float] = {}
    intervals = excluding = 0
    for s in settings:
        summary["settings"][s] = {}
        for init in inits:
            base = values(f"{init}-raw", s, "baseline")
            lines.append(f"\n### Setting ({s}), {init} initialisation, {len(seeds)} seeds")
            lines.append("")
            head = ["row", *metrics, *[f"Δ {m}" for m in metrics]]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            block: dict[str, Any] = {"baseline": {m: mean_ci(base[m]) for m in metrics}}
            lines.append(
                "| baseline | "
                + " | ".join(_fmt(mean_ci(base[m])) for m in metrics)
                + " |"
                + " — |" * len(metrics)
            )
            for form in forms:
                if f"{init}/{form}" in skip:
                    lines.append(f"| {form} | not run in this study (--skip) |" + " |" * 9)
                    continue
                v = values(f"{init}-{FORMS[form][0]}", s, "ir+ik+kr")
                diffs = {m: [a - b for a, b in zip(v[m], base[m], strict=True)] for m in metrics}
                cis = {m: mean_ci(diffs[m]) for m in metrics}
                for m in metrics:
                    intervals += 1
                    lo, hi = cis[m][0] - cis[m][1], cis[m][0] + cis[m][1]
                    excluding += int(lo > 0 or hi < 0)
                key = f"{s}/{init}/{form}"
                primary[key] = paired_p(diffs[f"T={PRIMARY_T:g}"])
                block[form] = {
                    "mean": {m: mean_ci(v[m]) for m in metrics},
                    "minus_baseline": cis,
                    "per_seed_minus_baseline": diffs,
                }
                lines.append(
                    f"| {form} | "
                    + " | ".join(_fmt(mean_ci(v[m])) for m in metrics)
                    + " | "
                    + " | ".join(_fmt(cis[m], signed=True) for m in metrics)
                    + " |"
                )
            summary["settings"][s][init] = block
        if "random" in inits and "pretrained" in inits:
            r, p = values("random-raw", s, "baseline"), values("pretrained-raw", s, "baseline")
            d = {m: mean_ci([a - b for a, b in zip(p[m], r[m], strict=True)]) for m in metrics}
            summary["settings"][s]["pretrained_minus_random_baseline"] = d
            lines.append(
                f"\nPretrained minus random-init baseline in ({s}): "
                + ", ".join(f"{m} {_fmt(d[m], signed=True)}" for m in metrics)
            )
    adjusted = holm(primary)
    lines.append(
        f"\n### Primary endpoint: Δ mean accuracy at T(IoU)={PRIMARY_T:g}, "
        f"{len(primary)} comparisons, Holm-adjusted (paired t over {len(seeds)} seeds)\n"
    )
    lines.append("| setting / init / form | Δ | p | Holm p | significant at 0.05 |")
    lines.append("|---|---|---|---|---|")
    for key, p in primary.items():
        s, init, form = key.split("/")
        delta = summary["settings"][s][init][form]["minus_baseline"][f"T={PRIMARY_T:g}"]
        adj, rejects = adjusted[key]
        lines.append(
            f"| {key} | {_fmt(delta, signed=True)} | {p:.3g} | {adj:.3g} | "
            f"{'yes' if rejects else 'no'} |"
        )
    lines.append(
        f"\nAll paired Δ intervals computed: {intervals} ({len(primary)} comparisons x "
        f"{len(metrics)} metrics); unadjusted 95% intervals excluding 0: {excluding}."
    )
    summary["primary"] = {
        k: {"p": primary[k], "holm_p": adjusted[k][0], "significant": adjusted[k][1]}
        for k in primary
    }
    summary["intervals"] = {"computed": intervals, "excluding_zero": excluding}
    return "\n".join(lines), summary


def run_decisive(args: argparse.Namespace) -> int:
    """The decisive study: tune the pretrained baseline, train every run, evaluate on the
    independent test set, summarise (``decisive.md``, ``decisive.json`` in ``--out``)."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    weights = pretrained_weights(out) if "pretrained" in args.inits else None
    tuned: dict[str, Any] = {}
    if weights is not None:
        tuned = tune_pretrained_lr(out, weights, args.settings, args.validation_seed, args.jobs)
        print(f"pretrained baseline's learning rates: {json.dumps(tuned)}", flush=True)
    lrs = {s: float(v["lr"]) for s, v in tuned.items()}
    skip = tuple(args.skip)
    jobs = decisive_jobs(args.settings, args.inits, args.forms, args.seeds, skip)
    print(f"{len(jobs)} runs, {args.jobs} side by side, in {out}", flush=True)

    def train_job(folder: str, s: str, row: str, k: int) -> dict[str, Any]:
        (out / folder).mkdir(parents=True, exist_ok=True)
        extra = decisive_extra(folder, s, weights, lrs)
        res = run_one(s, row, k, out / folder, extra)
        if row != "baseline":
            check_trained_form(out / folder / f"{s}-{row}-s{k}", extra)
        return res

    def held_job(folder: str, s: str, row: str, k: int) -> dict[str, Any]:
        return holdout_one(s, row, k, out / folder, args.holdout_seed)

    first_then_side_by_side(train_job, jobs, args.jobs, "done")
    held = first_then_side_by_side(held_job, jobs, args.jobs)
    text, summary = decisive_summary(held, args.settings, args.inits, args.forms, args.seeds, skip)
    wall = time.perf_counter() - t0
    header = (
        f"Decisive study: {len(jobs)} runs, evaluated on every annotated image of the twin with "
        f"synthetic seed {args.holdout_seed}; pretrained baseline's learning rate chosen on "
        f"seed {args.validation_seed}: {json.dumps(lrs)}. Wall time of this invocation "
        f"{wall / 60:.1f} min ({args.jobs} jobs; runs already finished are reused).\n"
    )
    summary.update({"tuning": tuned, "holdout_seed": args.holdout_seed, "forms": FORMS})
    (out / "decisive.md").write_text(header + text + "\n")
    (out / "decisive.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(header + text)
    return 0


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
    p.add_argument(
        "--decisive",
        action="store_true",
        help="issue 20's study instead of Table 4: baseline vs ir+ik+kr in --settings (default "
        "b c) for --forms x --inits, every run evaluated on --holdout-seed (default 1); the "
        "pretrained baseline's learning rate is chosen on --validation-seed",
    )
    p.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    p.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS))
    p.add_argument("--validation-seed", type=int, default=2)
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        metavar="INIT/FORM",
        help="cells of the decisive study not to run (e.g. random/unit)",
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
    if args.decisive:
        if args.settings == ["a", "b", "c"]:
            args.settings = ["b", "c"]
        if args.holdout_seed is None:
            args.holdout_seed = 1
        if args.out == REPO / "runs" / "ablation-study":
            args.out = REPO / "runs" / "decisive-study"
        return run_decisive(args)
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
