"""What ``reproduce`` reports: the published rows, and the folds' mean ± std beside them.

The paper's numbers are means over the folds of a setting (Sec. 4.2). ``reproduce``
(:func:`.runs.reproduce`) trains each fold in ``OUT/fold<k>/`` and, when the model has relation
terms, the baseline beside it in ``OUT/fold<k>-baseline/``; this module aggregates the
localization accuracy per class and T(IoU) over the folds (:func:`aggregate`) and writes the
paper-layout table with the published rows beside it (:func:`reproduce_report`). The
published rows are ChestX-ray14's; on another ``--dataset`` the table holds this run's folds
alone and says so.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ccg_layers.datasets import BOXED_CLASSES, NUM_FOLDS

from . import checkpoint as ckpt
from .config import DATASETS, TrainConfig
from .report import BOXED_COLUMNS, THRESHOLDS, boxed_mean


@dataclasses.dataclass(frozen=True)
class PublishedRow:
    """One published row of localization accuracy, recorded once with its table of origin.

    ``accuracy`` maps T(IoU) to the 8 boxed classes in :data:`BOXED_CLASSES` order, exactly as
    printed; ``mean`` maps T(IoU) to the printed mean over them, and is empty where the source
    prints none (the table then shows "—" rather than a mean computed here). ``table`` is the
    table of origin and ``label`` the row's label exactly as printed there; ``method`` is how
    the row is shown (the printed label, with a note where the paper's label is a misprint).
    """

    method: str
    source: str
    settings: tuple[str, ...]
    accuracy: dict[float, tuple[float, ...]]
    mean: dict[float, float] = dataclasses.field(default_factory=dict)
    table: str = ""
    label: str = ""


#: The CCG paper's Tables 1-4 (Cross-chest Graph for Disease Diagnosis with Structural
#: Relational Reasoning, arXiv:2101.08992), one line per printed row, copied verbatim from the
#: project's shared ccg-paper-tables.csv (tests/examples/test_cli.py compares them field by
#: field); read here, so the trainer needs nothing outside the checkout.
PAPER_TABLES_CSV = Path(__file__).with_name("paper_tables.csv")
CCG_PAPER = "CCG paper, arXiv:2101.08992"

#: Table 4's labels that are misprints, per (setting, printed label, occurrence): the text
#: names the six models Baseline, IK, IR, KR, IR+IK, IR+IK+KR, and "GR" and setting (b)'s
#: second "IK" stand where IR and KR should be.
_MISPRINTS = {
    ("b", "GR", 0): "as printed; most likely IR",
    ("b", "IK", 1): "as printed, Table 4's second IK row; most likely KR",
    ("c", "GR", 0): "as printed; most likely IR",
}


def read_paper_tables(path: Path = PAPER_TABLES_CSV) -> list[PublishedRow]:
    """The CCG paper's rows: one :class:`PublishedRow` per (table, setting, printed row), with
    the T(IoU) thresholds that table prints. Table 4 prints two rows "IK" in setting (b): the
    second is its own row (``_MISPRINTS``)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        lines = list(reader)
    rows: dict[tuple[str, str, str, int], dict[str, dict[float, Any]]] = {}
    for line in lines:
        table, setting, t = line["table"], line["setting"], float(line["t_iou"])
        label = line["model_as_printed"]
        # the k-th row of this label at this threshold of this table (Table 4 repeats "IK")
        k = 0
        while (table, setting, label, k) in rows and t in rows[table, setting, label, k]["acc"]:
            k += 1
        entry = rows.setdefault((table, setting, label, k), {"acc": {}, "mean": {}})
        entry["acc"][t] = tuple(float(line[c]) for c in BOXED_CLASSES)
        entry["mean"][t] = float(line["Mean"])
    out = []
    for (table, setting, label, k), entry in rows.items():
        note = _MISPRINTS.get((setting, label, k)) if table == "Table 4" else None
        out.append(
            PublishedRow(
                method=f"{label} ({note})" if note else label,
                source=f"{CCG_PAPER}, {table}",
                settings=(setting,),
                accuracy=entry["acc"],
                mean=entry["mean"],
                table=table,
                label=label,
            )
        )
    return out


def _repeated(row: PublishedRow, rows: list[PublishedRow]) -> bool:
    """Whether ``row`` (of Table 4) repeats, label and numbers, a row of Tables 1-3: Table 4
    prints the comparison rows of Tables 1-3 again at T(IoU) = 0.7; they are shown once."""
    return row.table == "Table 4" and any(
        r.table != "Table 4"
        and r.settings == row.settings
        and r.label == row.label
        and all(
            r.accuracy.get(t) == v and r.mean.get(t) == row.mean[t] for t, v in row.accuracy.items()
        )
        for r in rows
    )


def _ccg_paper_rows() -> tuple[PublishedRow, ...]:
    rows = read_paper_tables()
    return tuple(r for r in rows if not _repeated(r, rows))


#: Published rows shown beside ``reproduce``'s own, per setting whose protocol they follow:
#: Wang et al.'s own T(IoU) table (image-level labels only, tested on the annotated images: the
#: protocol of setting (b)), then the CCG paper's Tables 1-3 (each setting's comparison at the
#: thresholds it prints) and Table 4's ablation rows (T(IoU) = 0.7).
PUBLISHED_ROWS: tuple[PublishedRow, ...] = (
    PublishedRow(
        method="Wang et al. 2017",
        source="ChestX-ray8, CVPR 2017 (arXiv:1705.02315), supplementary Table 7",
        settings=("b",),
        accuracy={
            0.1: (0.6888, 0.9383, 0.6601, 0.7073, 0.4000, 0.1392, 0.6333, 0.3775),
            0.2: (0.4722, 0.6849, 0.4509, 0.4796, 0.2588, 0.0506, 0.3500, 0.2346),
            0.3: (0.2444, 0.4589, 0.3006, 0.2764, 0.1529, 0.0379, 0.1666, 0.1326),
            0.4: (0.0944, 0.2808, 0.2026, 0.1219, 0.0705, 0.0126, 0.0750, 0.0714),
            0.5: (0.0500, 0.1780, 0.1111, 0.0650, 0.0117, 0.0126, 0.0333, 0.0306),
            0.6: (0.0222, 0.0753, 0.0457, 0.0243, 0.0000, 0.0126, 0.0166, 0.0306),
            0.7: (0.0055, 0.0273, 0.0196, 0.0000, 0.0000, 0.0000, 0.0083, 0.0204),
        },
        table="supplementary Table 7",
        label="Wang et al. 2017",
    ),
    *_ccg_paper_rows(),
)


def published_rows(setting: str) -> list[PublishedRow]:
    """The published rows recorded for ``setting``'s protocol."""
    return [r for r in PUBLISHED_ROWS if setting in r.settings]


def default_folds(setting: str) -> tuple[int, ...]:
    """All folds; setting (b) tests on every annotated image, so it has one."""
    return (0,) if setting == "b" else tuple(range(NUM_FOLDS))


def model_first(methods: dict[str, Tensor]) -> dict[str, Tensor]:
    """The methods in the table's order: the model, the baseline, then the reference maps."""
    order = ["CCG", "Baseline"]
    return {
        **{k: methods[k] for k in order if k in methods},
        **{k: v for k, v in methods.items() if k not in order},
    }


def aggregate(
    per_fold: list[dict[str, Tensor]], columns: list[int] = BOXED_COLUMNS
) -> dict[str, dict[str, Tensor]]:
    """Per method: ``mean`` and ``std`` ``(T, B + 1)`` over the folds (the ``B`` boxed classes'
    ``columns``, default ChestX-ray14's 8, and their mean; a class with no test box in a fold
    is left out of that fold)."""
    out = {}
    for name in per_fold[0]:
        cols = torch.stack(
            [
                torch.cat([f[name][:, columns].double(), boxed_mean(f[name], columns)[:, None]], 1)
                for f in per_fold
            ]
        )  # (folds, T, B + 1)
        mean = cols.nanmean(0)
        valid = (~cols.isnan()).sum(0)
        var = ((cols - mean).nan_to_num() ** 2).sum(0) / (valid - 1).clamp(min=1)
        out[name] = {"mean": mean, "std": var.sqrt(), "folds": valid}
    return out


def paper_table(
    stats: dict[str, dict[str, Tensor]],
    setting: str,
    num_folds: int,
    boxed_classes: tuple[str, ...] = tuple(BOXED_CLASSES),
    published: list[PublishedRow] | None = None,
) -> str:
    """Rows T(IoU) x method: this run's mean ± std over the folds (the mean alone where a cell
    has one fold), then the ``published`` rows (default: those recorded for the setting, on
    ChestX-ray14) at that T(IoU), each named with its table of origin. The columns are
    ``boxed_classes`` (default ChestX-ray14's 8) and their mean."""
    head = ["T(IoU)", "method", *boxed_classes, "Mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    runs = "1 fold" if num_folds == 1 else f"{num_folds} folds"
    for t_i, t in enumerate(THRESHOLDS):
        for name, s in stats.items():
            means = s["mean"][t_i].tolist()
            stds = s["std"][t_i].tolist()
            folds = s["folds"][t_i].tolist() if "folds" in s else [num_folds] * len(means)
            cells = [
                "n/a" if math.isnan(m) else f"{m:.2f}" if n < 2 else f"{m:.2f} ± {sd:.2f}"
                for m, sd, n in zip(means, stds, folds, strict=True)
            ]
            lines.append(f"| {t:g} | {name} (this run, {runs}) | " + " | ".join(cells) + " |")
        for row in published_rows(setting) if published is None else published:
            if t in row.accuracy:
                cells = [f"{v:.2f}" for v in row.accuracy[t]]
                cells.append(f"{row.mean[t]:.2f}" if t in row.mean else "—")
                lines.append(f"| {t:g} | {row.method} ({row.source}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reproduce_report(
    cfg: TrainConfig,
    folds: tuple[int, ...],
    stats: dict[str, dict[str, Tensor]],
    root: Path,
    boxed_classes: tuple[str, ...] = tuple(BOXED_CLASSES),
) -> str:
    """``reproduce.md`` and ``reproduce.json`` in ``root``: the folds' ``stats``
    (:func:`aggregate`, columns ``boxed_classes``) beside the published rows of
    ``cfg.setting``, which are ChestX-ray14's: on another ``--dataset`` there are none, and the
    report says so; returns the text."""
    notes = []
    if cfg.dataset != "chestxray14":
        published: list[PublishedRow] = []
        notes.append(
            f"No published row: the CCG paper and Wang et al. report ChestX-ray14 only, and "
            f"these runs are on {DATASETS[cfg.dataset]} (--dataset {cfg.dataset}); the table "
            "holds this run's folds alone."
        )
    else:
        synthetic = cfg.data_root is None or (Path(cfg.data_root) / "synthetic.json").is_file()
        if synthetic:
            notes.append(
                "These runs are on the synthetic twin of ChestX-ray14; the published rows are for "
                "the real data and are not comparable."
            )
        published = published_rows(cfg.setting)
        if any(not r.mean for r in published):
            notes.append("—: the source prints no mean over the 8 classes.")
        notes.append(
            "The CCG paper's rows are fold means on the real ChestX-ray14 as printed: Tables 1-3 "
            'at the T(IoU) each prints ("Ours" is the best of Table 4\'s rows in that setting), '
            "Table 4's ablation rows at 0.7 (its repeats of Tables 1-3 are shown once). Where "
            'Table 4 prints a label that is not one of its six models ("GR", a second "IK"), '
            "the printed label is kept and the likely model named beside it."
        )
    spread = "one fold, no spread" if len(folds) == 1 else "mean ± std over the folds"
    text = (
        f"Localization accuracy, setting {cfg.setting}, folds {list(folds)}: {spread} "
        "(prediction = map > 0.5)\n\n"
        + paper_table(stats, cfg.setting, len(folds), boxed_classes, published)
        + "\n\n"
        + "\n".join(notes)
        + "\n"
    )
    ckpt.write_text(root / "reproduce.md", text)
    payload = {
        "dataset": cfg.dataset,
        "setting": cfg.setting,
        "folds": list(folds),
        "thresholds": list(THRESHOLDS),
        "columns": [*boxed_classes, "Mean"],
        "methods": {k: {s: v.tolist() for s, v in st.items()} for k, st in stats.items()},
        "published": [
            {
                "method": r.method,
                "source": r.source,
                "table": r.table,
                "label": r.label,
                "accuracy": {f"{t:g}": list(v) for t, v in r.accuracy.items()},
                "mean": {f"{t:g}": v for t, v in r.mean.items()},
            }
            for r in published
        ],
    }
    ckpt.write_text(root / "reproduce.json", json.dumps(payload, indent=2) + "\n")
    return text
