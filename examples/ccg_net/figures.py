"""Heatmap overlays like the paper's Figures 3-4: image, ground-truth box, predicted region."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ccg_layers.datasets import CLASS_NAMES, ChestXray14

from . import checkpoint as ckpt
from .data import test_boxes


def save_overlays(
    ds: ChestXray14,
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
            title = f"{name}: {CLASS_NAMES[k]}" + (f"\n({note})" if note else "")
            ax.set_title(title, fontsize=9 if not note else 7)
            ax.axis("off")
        fig.suptitle(f"{ds.image_names[i]}  (green: ground truth, red: p > 0.5)", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{Path(ds.image_names[i]).stem}_{CLASS_NAMES[k]}.png"
        ckpt.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=80))  # noqa: B023
        plt.close(fig)
        written.append(path)
    return written
