"""Figures: heatmap overlays like the paper's Figures 3-4 (image, ground-truth box, predicted
region) and a run's training curves from its ``metrics.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import Tensor

from ccg_layers.datasets import RadiographDataset

from .checkpoint import write_atomic
from .config import TERM_LABELS
from .data import test_boxes
from .report import AUC_NAMES, THRESHOLDS, class_file_name

#: The training curves' file name in a run directory (and in a comparison's).
CURVES_PNG = "training-curves.png"


def save_overlays(
    ds: RadiographDataset,
    maps: dict[str, Tensor],
    out_dir: Path,
    count: int = 8,
    prob_threshold: float = 0.5,
    notes: dict[str, str] | None = None,
) -> list[Path]:
    """One PNG per (test image, boxed class), for the first ``count`` such pairs.

    Each PNG has one panel per method in ``maps`` (e.g. CCG, baseline, prior; each ``(N, K, h,
    w)`` probabilities on the test images): the radiograph, the class's probability map as a
    translucent heatmap, the predicted region (probability > ``prob_threshold``) outlined in
    red and the ground-truth box in green. ``notes`` maps a method to a line shown under its
    panel's title (e.g. why a reference map is empty).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out_dir.mkdir(parents=True, exist_ok=True)
    boxes, img_idx, cls_idx = test_boxes(ds)
    # spread the figures over classes: first box of each class, then the rest
    order: list[int] = []
    seen: set[int] = set()
    for j, c in enumerate(cls_idx.tolist()):
        if c not in seen:
            seen.add(c)
            order.append(j)
    order += [j for j in range(len(boxes)) if j not in order]
    size = ds.image_size
    class_names = ds.index.class_names
    written = []
    for j in order[:count]:
        i, k = int(img_idx[j]), int(cls_idx[j])
        gray = ds.load_image(i)[0].float()
        gray = (gray - gray.min()) / (gray.max() - gray.min() + 1e-8)
        fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.4), squeeze=False)
        for ax, (name, m) in zip(axes[0], maps.items(), strict=True):
            prob = m[i, k].float()[None, None]
            up = torch.nn.functional.interpolate(prob, size=(size, size), mode="nearest")[0, 0]
            ax.imshow(gray.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.imshow(up.numpy(), cmap="jet", alpha=0.35, vmin=0, vmax=1)
            if bool((up > prob_threshold).any()):
                ax.contour(
                    (up > prob_threshold).numpy().astype(float),
                    levels=[0.5],
                    colors="red",
                    linewidths=1.5,
                )
            for b, bi, bc in zip(boxes, img_idx, cls_idx, strict=True):
                if int(bi) == i and int(bc) == k:
                    x1, y1, x2, y2 = b.tolist()
                    ax.add_patch(
                        Rectangle(
                            (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.5
                        )
                    )
            note = (notes or {}).get(name)
            title = f"{name}: {class_names[k]}" + (f"\n({note})" if note else "")
            ax.set_title(title, fontsize=9 if not note else 7)
            ax.axis("off")
        fig.suptitle(f"{ds.image_names[i]}  (green: ground truth, red: p > 0.5)", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{Path(ds.image_names[i]).stem}_{class_file_name(class_names[k])}.png"
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=80))  # noqa: B023
        plt.close(fig)
        written.append(path)
    return written


def _read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv`` as numbers (an empty cell, e.g. an epoch that was not
    evaluated, is NaN)."""
    with open(path, newline="") as f:
        return [
            {k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def save_training_curves(
    runs: dict[str, Path], out: Path, auc_labels: dict[str, str] | None = None
) -> Path:
    """One PNG of the training curves of one or more runs, from their ``metrics.csv``.

    Three panels over the epochs: the mean of each training loss term (log scale), the test
    AUCs (``auc_labels``, default :data:`.report.AUC_NAMES`: over the boxed classes and over
    all classes; :attr:`.report.EvalResults.auc_names` of the run's dataset) and the test
    mean localization accuracy over the boxed classes at each T(IoU). ``runs`` maps a label
    (the run's name; "Baseline" and "CCG" in a comparison) to its ``metrics.csv``; each run
    has its own line style. Written atomically (:func:`.checkpoint.write_atomic`).

    Returns:
        ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [
        ("training loss (epoch mean)", [("train_loss", "loss (Eq. 11)")], True),
        (
            "test AUC",
            [(f"test_{k}", label) for k, label in (auc_labels or AUC_NAMES).items()],
            False,
        ),
        (
            "test mean accuracy (boxed classes)",
            [(f"test_acc_T{t:g}_mean", f"T(IoU)={t:g}") for t in THRESHOLDS],
            False,
        ),
    ]
    terms = {f"train_{k}": label for k, label in TERM_LABELS.items()}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    for r, (name, path) in enumerate(runs.items()):
        rows = _read_metrics(path)
        epochs = [row["epoch"] for row in rows]
        present = [k for k in terms if any(k in row for row in rows)]
        for ax, (title, columns, log_scale) in zip(axes[0], panels, strict=True):
            if log_scale:
                columns = columns + [(k, terms[k]) for k in present]
            for c, (key, label) in enumerate(columns):
                values = [row.get(key, math.nan) for row in rows]
                if all(math.isnan(v) for v in values):
                    continue
                ax.plot(
                    epochs,
                    values,
                    styles[r % len(styles)],
                    marker="o",
                    markersize=3,
                    color=f"C{c}",
                    label=f"{name}: {label}" if len(runs) > 1 else label,
                )
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if log_scale:
                ax.set_yscale("log")
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(", ".join(runs), fontsize=10)
    fig.tight_layout()
    write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return out
