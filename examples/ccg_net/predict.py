"""``predict``: heatmaps, image-level probabilities and boxes for one's own radiographs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ccg_layers.datasets import CLASS_NAMES, read_radiograph
from ccg_layers.functional import maps_to_boxes

from .model import CCGNet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files among ``inputs`` (files, and the PNG/JPEG files of folders, sorted).

    Raises:
        FileNotFoundError: An input does not exist, or a folder holds no image.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{item}: no PNG or JPEG images in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image file or folder")
    return files


@torch.no_grad()
def predict(
    model: CCGNet,
    image_size: int,
    paths: list[Path],
    out_dir: Path,
    *,
    threshold: float = 0.5,
    batch_size: int = 8,
    overlays: bool = True,
) -> list[dict[str, Any]]:
    """Run ``model`` on the radiographs ``paths`` and write, per image, ``<stem>.json`` and an
    overlay ``<stem>_<class>.png`` per positive class.

    The JSON holds every class's image-level probability (the noisy-OR of its map) and, for
    each class above ``threshold``, its boxes (connected regions of the map above
    ``threshold``, from :func:`ccg_layers.functional.maps_to_boxes`) with scores, in the
    pixel frame of the file itself.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    model.eval()
    written = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = torch.stack([read_radiograph(p, image_size) for p in chunk])
        logits, feats = model(images.to(device))
        probs = torch.sigmoid(logits.float()).cpu()
        scores = model.image_scores(feats).cpu()
        boxes, img, cls, box_scores = maps_to_boxes(
            probs, threshold=threshold, image_size=image_size
        )
        for j, path in enumerate(chunk):
            written.append(
                _write_one(
                    path,
                    images[j, 0],
                    probs[j],
                    scores[j],
                    boxes[img == j],
                    cls[img == j],
                    box_scores[img == j],
                    image_size,
                    threshold,
                    out_dir,
                    overlays,
                )
            )
    return written


def _original_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size  # (width, height)


def _write_one(
    path: Path,
    image: Tensor,
    probs: Tensor,
    scores: Tensor,
    boxes: Tensor,
    cls: Tensor,
    box_scores: Tensor,
    image_size: int,
    threshold: float,
    out_dir: Path,
    overlays: bool,
) -> dict[str, Any]:
    width, height = _original_size(path)
    scale = torch.tensor([width, height, width, height]) / image_size
    boxes = boxes * scale  # into the file's own pixel frame
    findings = []
    figures = []
    for k, name in enumerate(CLASS_NAMES):
        p = float(scores[k])
        if p <= threshold:
            continue
        mine = cls == k
        findings.append(
            {
                "class": name,
                "probability": p,
                "boxes": [
                    {"xyxy": [round(v, 1) for v in b.tolist()], "score": float(s)}
                    for b, s in zip(boxes[mine], box_scores[mine], strict=True)
                ],
            }
        )
        if overlays:
            figures.append(
                _overlay(image, probs[k], boxes[mine], name, p, (width, height), path, out_dir)
            )
    record = {
        "image": str(path),
        "width": width,
        "height": height,
        "threshold": threshold,
        "probabilities": {name: float(v) for name, v in zip(CLASS_NAMES, scores, strict=True)},
        "findings": findings,
        "overlays": [str(f) for f in figures],
    }
    (out_dir / f"{path.stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _overlay(
    image: Tensor,
    prob: Tensor,
    boxes: Tensor,
    name: str,
    p: float,
    size: tuple[int, int],
    path: Path,
    out_dir: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    width, height = size
    extent = (0, width, height, 0)
    fig, ax = plt.subplots(figsize=(4, 4 * height / width))
    ax.imshow(image.numpy(), cmap="gray", extent=extent)
    ax.imshow(prob.numpy(), cmap="jet", alpha=0.35, vmin=0, vmax=1, extent=extent)
    for x1, y1, x2, y2 in boxes.tolist():
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", lw=1.5))
    ax.set_title(f"{path.name}: {name} p={p:.2f}", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    target = out_dir / f"{path.stem}_{name}.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
