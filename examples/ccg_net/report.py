"""Evaluation results and the one report path: tables, JSON, per-image predictions, figures.

Every table shows the models beside the fixed reference maps of :func:`.data.reference_maps`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ccg_layers.datasets import BOXED_CLASSES, CLASS_NAMES, RadiographDataset
from ccg_layers.metrics import classification_auc, localization_accuracy

from . import checkpoint as ckpt
from .config import TrainConfig
from .data import test_boxes

#: The T(IoU) thresholds of the paper's tables.
THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


def boxed_columns(class_names: tuple[str, ...], boxed_classes: tuple[str, ...]) -> list[int]:
    """The columns of the boxed classes in the order of ``class_names`` (the tables' order)."""
    return [class_names.index(c) for c in boxed_classes]


#: Columns of ChestX-ray14's 8 boxed classes in its 14-class order.
BOXED_COLUMNS = boxed_columns(tuple(CLASS_NAMES), tuple(BOXED_CLASSES))


def auc_names(num_boxed: int, num_classes: int) -> dict[str, str]:
    """The two mean AUCs and how every output names them: the key in ``results.json`` and
    ``metrics.json`` (``metrics.csv`` prefixes ``test_``) -> the label on the console and in
    ``results.md``, which counts the dataset's classes. The keys are ChestX-ray14's and the
    same for every dataset (``auc_boxed8`` is the mean over the boxed classes, ``auc_all14``
    over all of them), so that the files of every run have one layout. A class whose test
    images are all negative (or all positive) has no AUC and is left out of the mean;
    :meth:`EvalResults.auc_undefined` names it.
    """
    return {"auc_boxed8": f"AUC ({num_boxed} boxed)", "auc_all14": f"AUC (all {num_classes})"}


def class_file_name(name: str) -> str:
    """A class name as it goes into a file name: a character no file name may hold (``/`` of
    VinDr-CXR's ``Nodule/Mass``, ``\\ : * ? " < > |``) becomes ``-``.

    Example:
        >>> class_file_name("Nodule/Mass"), class_file_name("Pleural_Thickening")
        ('Nodule-Mass', 'Pleural_Thickening')
    """
    return re.sub(r'[\\/:*?"<>|]', "-", name)


#: :func:`auc_names` of ChestX-ray14.
AUC_NAMES = auc_names(len(BOXED_CLASSES), len(CLASS_NAMES))


def boxed_mean(accuracy: Tensor, columns: list[int] = BOXED_COLUMNS) -> Tensor:
    """``(T,)``: the mean of ``accuracy`` ``(T, K)`` over the boxed classes' ``columns``
    (default ChestX-ray14's; NaN ignored)."""
    return accuracy[:, columns].double().nanmean(dim=1)


@dataclass
class EvalResults:
    """One model's (or reference map's) evaluation on the test split.

    ``names`` the test images; ``maps`` ``(N, K, h, w)`` probabilities; ``scores`` ``(N, K)``
    image-level probabilities (``None`` for a reference map); ``accuracy`` ``(T, K)``
    localization accuracy at :data:`THRESHOLDS` (NaN where a class has no test box); ``auc``
    ``(K,)`` (``None`` for a reference map); ``mean`` ``(T,)`` over the boxed classes;
    ``class_names`` and ``boxed_classes`` the dataset's (``index.class_names``,
    ``index.boxed_classes``; default ChestX-ray14's).
    """

    names: list[str]
    maps: Tensor
    scores: Tensor | None
    accuracy: Tensor
    auc: Tensor | None
    mean: Tensor
    class_names: tuple[str, ...] = tuple(CLASS_NAMES)
    boxed_classes: tuple[str, ...] = tuple(BOXED_CLASSES)

    @property
    def boxed_columns(self) -> list[int]:
        """The columns of :attr:`boxed_classes` in ``accuracy`` and ``auc``."""
        return boxed_columns(self.class_names, self.boxed_classes)

    @property
    def auc_names(self) -> dict[str, str]:
        """:func:`auc_names` of this dataset's classes."""
        return auc_names(len(self.boxed_classes), len(self.class_names))

    def mean_at(self, t: float) -> float:
        """The boxed-class mean at T(IoU) = ``t``."""
        return float(self.mean[THRESHOLDS.index(t)])

    def auc_means(self) -> dict[str, float | None]:
        """The mean AUC over the boxed classes (``auc_boxed8``) and over all classes
        (``auc_all14``), each leaving out the classes without an AUC (:func:`auc_names`);
        ``None`` where no class has one (a reference map has no image score)."""
        if self.auc is None:
            return dict.fromkeys(AUC_NAMES)
        auc = self.auc.double()
        return {
            "auc_boxed8": _num(float(auc[self.boxed_columns].nanmean())),
            "auc_all14": _num(float(auc.nanmean())),
        }

    def auc_undefined(self) -> list[str]:
        """The classes without an AUC: every test image negative (or every one positive)."""
        if self.auc is None:
            return []
        pairs = zip(self.class_names, self.auc.tolist(), strict=True)
        return [c for c, v in pairs if math.isnan(v)]

    def auc_means_text(self) -> str:
        """``AUC (8 boxed) 0.880, AUC (all 14) 0.832`` (``n/a`` for a mean without a value)."""
        means = self.auc_means()
        return ", ".join(
            f"{label} {'n/a' if means[k] is None else f'{means[k]:.3f}'}"
            for k, label in self.auc_names.items()
        )

    def auc_text(self) -> str:
        """:meth:`auc_means_text` and which classes have no AUC."""
        text = self.auc_means_text()
        missing = self.auc_undefined()
        if missing:
            known, total = len(self.class_names) - len(missing), len(self.class_names)
            text += (
                f" ({known} of {total} classes have an AUC: no positive or no negative test "
                f"image for {', '.join(missing)})"
            )
        return text

    def summary(self) -> dict[str, Any]:
        """JSON-ready: per threshold the boxed classes and their mean; AUC per class, its two
        means (:data:`AUC_NAMES`) and the classes without an AUC."""
        out: dict[str, Any] = {}
        for t, row, mean in zip(
            THRESHOLDS, self.accuracy.tolist(), self.mean.tolist(), strict=True
        ):
            out[f"T={t:g}"] = {
                **{c: _num(row[self.class_names.index(c)]) for c in self.boxed_classes},
                "Mean": _num(mean),
            }
        return {
            "localization": out,
            "accuracy_matrix": self.accuracy.tolist(),
            "auc": None
            if self.auc is None
            else dict(zip(self.class_names, map(_num, self.auc.tolist()), strict=True)),
            **self.auc_means(),
            "auc_undefined": self.auc_undefined(),
        }


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v


def score_maps(maps: Tensor, test: RadiographDataset, scores: Tensor | None = None) -> EvalResults:
    """Evaluate probability maps ``(N, K, h, w)`` of the test images (and image scores), over
    the classes of ``test.index``."""
    boxes, img, cls = test_boxes(test)
    acc = localization_accuracy(
        maps,
        boxes,
        img,
        cls,
        image_size=(test.image_size, test.image_size),
        thresholds=THRESHOLDS,
    )
    auc = None
    if scores is not None:
        auc = classification_auc(scores, test.index.labels[test.rows])
    names, boxed = tuple(test.index.class_names), tuple(test.index.boxed_classes)
    mean = boxed_mean(acc, boxed_columns(names, boxed))
    return EvalResults(list(test.image_names), maps, scores, acc, auc, mean, names, boxed)


def format_table(results: dict[str, EvalResults]) -> str:
    """Rows T(IoU) x method, columns the boxed classes (ChestX-ray14's 8 diseases) and their
    mean (Markdown); the methods are scored on one dataset."""
    first = next(iter(results.values()))
    head = ["T(IoU)", "model", *first.boxed_classes, "Mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t_i, t in enumerate(THRESHOLDS):
        for name, res in results.items():
            values = [*res.accuracy[t_i, res.boxed_columns].tolist(), float(res.mean[t_i])]
            cells = ["n/a" if math.isnan(v) else f"{v:.2f}" for v in values]
            lines.append("| " + " | ".join([f"{t:g}", name, *cells]) + " |")
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    models: dict[str, EvalResults],
    references: dict[str, EvalResults],
    test: RadiographDataset,
    *,
    title: str,
    num_figures: int = 0,
    extra: dict[str, Any] | None = None,
) -> str:
    """The report of one or more models beside the reference maps, in ``out_dir``.

    Writes ``results.md`` (the table), ``results.json`` (per method the summary, plus
    ``extra``), ``predictions-<model>.pt`` (per test image its name, probability maps and image
    scores) and ``num_figures`` overlays in ``figures/``, each file written atomically
    (:func:`.checkpoint.write_atomic`). Returns the text of ``results.md``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    every = {**models, **references}
    lines = [title, "", format_table(every), ""]
    means = ", ".join(f"{name} {res.mean_at(0.3):.3f}" for name, res in every.items())
    lines.append(f"Mean at T(IoU)=0.3: {means}")
    for name, res in models.items():
        lines.append(f"{name}: {res.auc_text()}")
    for name, res in models.items():
        for ref_name, ref in references.items():
            margin = res.mean_at(0.3) - ref.mean_at(0.3)
            lines.append(f"{name} - {ref_name} at T(IoU)=0.3: {margin:+.3f}")
        ckpt.save_atomic(
            {"names": res.names, "maps": res.maps.half(), "scores": res.scores},
            out_dir / f"predictions-{name.lower()}.pt",
        )
    # a reference map that is empty by construction says so (the prior needs training boxes)
    notes = {
        name: "empty by construction: no box in training"
        for name, ref in references.items()
        if name == "Prior" and not bool(ref.maps.any())
    }
    for name, note in notes.items():
        lines.append(f"{name}: {note} (it is the training boxes' mean mask).")
    if num_figures:
        from .figures import save_overlays

        figs = save_overlays(
            test,
            {k: v.maps for k, v in every.items()},
            out_dir / "figures",
            num_figures,
            notes=notes,
        )
        lines.append(f"Figures: {len(figs)} PNGs in {out_dir / 'figures'}")
    text = "\n".join(lines) + "\n"
    ckpt.write_text(out_dir / "results.md", text)
    payload = {
        "methods": {k: v.summary() for k, v in every.items()},
        "mean_T0.3": {k: v.mean_at(0.3) for k, v in every.items()},
        "thresholds": list(THRESHOLDS),
        "dataset": test.index.dataset_name,
        "class_names": list(test.index.class_names),
        "boxed_classes": list(test.index.boxed_classes),
        "test_images": list(test.image_names),
        **(extra or {}),
    }
    ckpt.write_text(out_dir / "results.json", json.dumps(payload, indent=2) + "\n")
    return text


#: The Table 4 study's recorded summary (``benchmarks/ablation_study.py``'s ``study.json``,
#: docs/results.md): the seed-to-seed spread a single comparison is read against.
STUDY_RECORD = Path(__file__).resolve().parents[2] / "docs" / "ablation-study.json"


def read_study(record: Path = STUDY_RECORD) -> dict[str, Any]:
    """The study record (``docs/ablation-study.json``); ``{}`` when it is missing or unreadable
    (the messages that quote it then say that no study is recorded)."""
    try:
        study = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return study if isinstance(study, dict) else {}


FORM_NAMES = {
    "paper": "the paper's literal form (pull only, raw C5 maps)",
    "unit": "pull only on unit-normalised maps (--relation-features unit)",
    "contrast": "the contrast-constrained form on unit-normalised maps "
    "(--relation-form contrast --relation-features unit)",
}
INIT_NAMES = {
    "random": "random initialisation",
    "pretrained": "the backbone pretrained on an independent twin (pretrain)",
}


def study_variant(cfg: TrainConfig) -> tuple[str, str]:
    """``(init, form)`` of the decisive study (docs/results.md) that ``cfg`` runs."""
    if cfg.relation_form == "contrast":
        form = "contrast"
    else:
        form = "unit" if cfg.relation_features == "unit" else "paper"
    return ("random" if cfg.weights == "none" else "pretrained"), form


def _interval(d: list[float] | tuple[float, float]) -> str:
    return f"{d[0]:+.3f} ± {d[1]:.3f}"


def _verdict(d: list[float] | tuple[float, float]) -> str:
    lo, hi = d[0] - d[1], d[0] + d[1]
    if lo > 0:
        return "a gain"
    if hi < 0:
        return "a loss"
    return "no difference the study could tell from zero"


def demo_preamble(cfg: TrainConfig, images: int, record: Path = STUDY_RECORD) -> str:
    """The first lines ``make demo`` prints: what is compared, on which data, and what the
    study measured for this configuration (its paired gap with the 95% CI over seeds)."""
    init, form = study_variant(cfg)
    lines = [
        f"make demo: the baseline (L_base alone) against CCG-Net (L_base + L_IR + L_IK + L_KR, "
        f"{FORM_NAMES[form]}), both from {INIT_NAMES[init]}, on the SYNTHETIC ChestX-ray14 twin "
        f"({images} generated {cfg.image_size}-px images, not radiographs), setting "
        f"({cfg.setting}), one seed.",
    ]
    study = read_study(record)
    entry = study.get("decisive", {}).get("settings", {}).get(cfg.setting, {}).get(init, {})
    row = entry.get(form)
    if row is None:
        lines.append(f"No study of this configuration in setting ({cfg.setting}) is recorded.")
        return "\n".join(lines) + "\n"
    d = row["minus_baseline"]
    n = len(study["decisive"]["seeds"])
    lines.append(
        f"Measured over {n} seeds on an independent test set (docs/results.md): CCG - baseline "
        f"at T(IoU)=0.3 {_interval(d['T=0.3'])}, AUC {_interval(d['auc'])} (95% CIs): "
        f"{_verdict(d['T=0.3'])}. This run is one more seed; read its gap against that."
    )
    return "\n".join(lines) + "\n"


def gap_against_seed_spread(
    ccg: EvalResults,
    baseline: EvalResults,
    setting: str,
    record: Path = STUDY_RECORD,
    differs: list[str] | None = None,
    variant: tuple[str, str] | None = None,
) -> str:
    """This run's CCG − baseline gap at T(IoU) 0.1 and 0.3, read against the paired
    differences the study measured over seeds in the same setting (when it was recorded, and
    only when the run's configuration is the study's: ``differs`` lists the options in which
    it is not). With ``variant`` ``(init, form)`` recorded by the decisive study, its
    differences (on the independent test set) are used; else Table 4's full-model row."""
    if differs:
        return "".join(
            f"CCG - Baseline at T(IoU)={t:g}: {ccg.mean_at(t) - baseline.mean_at(t):+.3f} (not "
            f"read against the study in {record.name}: it was measured with --preset demo's "
            f"defaults, and this run differs in {', '.join(differs)})\n"
            for t in (0.1, 0.3)
        )
    lines = []
    study = read_study(record)
    row = study.get("settings", {}).get(setting, {}).get("ir+ik+kr", {})
    decisive = study.get("decisive", {}).get("settings", {}).get(setting, {})
    if variant is not None and variant[1] in decisive.get(variant[0], {}):
        per_seed = decisive[variant[0]][variant[1]]["per_seed_minus_baseline"]
        row = {"minus_baseline": {}}
        for key, values in per_seed.items():
            n = len(values)
            m = sum(values) / n
            sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
            ci = decisive[variant[0]][variant[1]]["minus_baseline"][key][1]
            row["minus_baseline"][key] = {"mean": m, "sd": sd, "ci95": ci, "n": n}
    for t in (0.1, 0.3):
        gap = ccg.mean_at(t) - baseline.mean_at(t)
        line = f"CCG - Baseline at T(IoU)={t:g}: {gap:+.3f}"
        diff = row.get("minus_baseline", {}).get(f"T={t:g}")
        if diff and diff["n"] > 1:
            inside = abs(gap - diff["mean"]) <= 2 * diff["sd"]
            line += (
                f"; over {diff['n']} seeds the study measured {diff['mean']:+.3f} "
                f"(95% CI ± {diff['ci95']:.3f}, seed-to-seed SD {diff['sd']:.3f}): this gap is "
                + ("inside" if inside else "outside")
                + " the seed-to-seed spread (mean ± 2 SD)"
            )
            if diff["mean"] - diff["ci95"] > 0 or diff["mean"] + diff["ci95"] < 0:
                line += ", and the study's mean difference is not zero"
            else:
                line += ", and the study's mean difference is within noise of zero"
        else:
            line += f" (no study recorded for setting {setting} in {record.name})"
        lines.append(line)
    return "\n".join(lines) + "\n"
