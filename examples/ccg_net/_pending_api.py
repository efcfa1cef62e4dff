"""Two library helpers that another branch adds to ``ccg_layers.functional``.

Until that branch is merged, these stand-ins with the same signatures are used; once
``ccg_layers.functional`` has them, the imports at the bottom take the library's versions and
this module is only a re-export (delete it then).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

import ccg_layers.functional as _F


def _boxes_to_grid_targets(
    boxes: Tensor,
    box_image_index: Tensor,
    box_class: Tensor,
    *,
    num_images: int,
    num_classes: int,
    image_size: tuple[int, int] | int,
    grid_size: tuple[int, int] | int,
) -> tuple[Tensor, Tensor]:
    """``(N, K, h, w)`` float union of each image's class-k boxes on the grid, and the
    ``(N, K)`` bool mask of the (image, class) pairs that have a box."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    grid_hw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    grid = torch.zeros(num_images, num_classes, *grid_hw)
    mask = torch.zeros(num_images, num_classes, dtype=torch.bool)
    if len(boxes):
        cells = _F.boxes_to_grid(boxes, size, grid_hw).float()
        grid.index_put_((box_image_index, box_class), cells, accumulate=True)
        mask[box_image_index, box_class] = True
    return grid.clamp_(max=1.0), mask


def _maps_to_boxes(
    maps: Tensor,
    *,
    threshold: float = 0.5,
    image_size: tuple[int, int] | int | None = None,
    min_area: float = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Boxes around the connected regions (8-connected) of ``maps > threshold``.

    Returns ``boxes`` (M, 4) xyxy (map cells, or pixels of ``image_size``), ``box_image_index``
    (M,), ``box_class`` (M,) and ``scores`` (M,) (each region's highest value).
    """
    from scipy import ndimage

    n, k, h, w = maps.shape
    if image_size is None:
        sy, sx = 1.0, 1.0
    else:
        ih, iw = (image_size, image_size) if isinstance(image_size, int) else image_size
        sy, sx = ih / h, iw / w
    values = maps.detach().float().cpu().numpy()
    out_boxes, out_img, out_cls, out_score = [], [], [], []
    structure = np.ones((3, 3), dtype=bool)
    for i in range(n):
        for c in range(k):
            labels, count = ndimage.label(values[i, c] > threshold, structure=structure)
            for j, sl in enumerate(ndimage.find_objects(labels), start=1):
                if sl is None:
                    continue
                y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
                box = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
                if (box[2] - box[0]) * (box[3] - box[1]) < min_area:
                    continue
                out_boxes.append(box)
                out_img.append(i)
                out_cls.append(c)
                out_score.append(float(values[i, c][labels == j].max()))
            del count
    return (
        torch.tensor(out_boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(out_img, dtype=torch.long),
        torch.tensor(out_cls, dtype=torch.long),
        torch.tensor(out_score, dtype=torch.float32),
    )


boxes_to_grid_targets = getattr(_F, "boxes_to_grid_targets", _boxes_to_grid_targets)
maps_to_boxes = getattr(_F, "maps_to_boxes", _maps_to_boxes)

__all__ = ["boxes_to_grid_targets", "maps_to_boxes"]
