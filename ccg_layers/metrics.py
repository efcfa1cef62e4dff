"""Evaluation metrics of the paper: localization accuracy at IoU thresholds, per-class AUC."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ccg_layers.boxes import check_boxes
from ccg_layers.datasets.chestxray14 import BOXED_CLASSES, CLASS_NAMES
from ccg_layers.errors import CCGValueRangeError
from ccg_layers.validation import (
    check_binary,
    check_choice,
    check_dtype,
    check_finite,
    check_grid,
    check_index,
    check_probabilities,
    check_shape,
    check_size2,
    check_tensor,
    positive_int,
    real_number,
)

__all__ = ["classification_auc", "format_localization_table", "localization_accuracy"]

Metric = Literal["iou", "iobb"]
Interpolation = Literal["nearest", "bilinear"]

_CHUNK_PIXELS = 1 << 24  # pixels of the (pairs, H, W) masks built at once


def localization_accuracy(
    prob_maps: Tensor,
    boxes: Tensor,
    box_image_index: Tensor,
    box_class: Tensor,
    *,
    image_size: int | tuple[int, int],
    thresholds: float | Sequence[float] = (0.1, 0.3, 0.5, 0.7),
    prob_threshold: float = 0.5,
    metric: Metric = "iou",
    interpolation: Interpolation = "nearest",
) -> Tensor:
    """Localization accuracy of class-wise probability maps (paper Sec. 4.2, Tables 1-3).

    For every class ``k`` and every image ``i`` with at least one box of class ``k``:

    * the predicted region is the set of pixels of the ``H x W`` image whose value of the map
      ``prob_maps[i, k]``, mapped onto the image, is ``> prob_threshold``. ``"nearest"``
      gives each pixel its grid cell (pixel centre; exact cell blocks when ``h`` divides
      ``H``); ``"bilinear"`` interpolates the map (``align_corners=False``) first;
    * the ground truth is the union of the image's class-``k`` boxes; pixel ``(r, c)``, with
      centre ``(c + 0.5, r + 0.5)``, is in box ``(x1, y1, x2, y2)`` when
      ``x1 <= c + 0.5 < x2`` and ``y1 <= r + 0.5 < y2``;
    * the score is IoU = |pred ∩ gt| / |pred ∪ gt|, or with ``metric="iobb"``
      |pred ∩ gt| / |pred| (an empty prediction scores 0 with both);
    * the image is correct at threshold ``T`` when its score is **strictly** greater than
      ``T``.

    Entry ``[t, k]`` is the fraction of correct images of class ``k`` at ``thresholds[t]``,
    NaN for a class without boxes. Fully vectorised; pixel masks are built for chunks of
    (image, class) pairs to bound memory.

    Args:
        prob_maps: ``(N, K, h, w)`` probabilities in ``[0, 1]``.
        boxes: ``(M, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels of an image of ``image_size``.
        box_image_index: ``(M,)`` long, the image of each box in ``[0, N)``.
        box_class: ``(M,)`` long, the class of each box in ``[0, K)``.
        image_size: ``(H, W)`` of the image the boxes live in (an int for a square). A box
            reaching past it is clipped to it; one wholly outside it is an error.
        thresholds: The thresholds ``T``, each finite and in ``[0, 1)`` (``T = 0``: any
            overlap counts; no score exceeds 1), a single number for one row.
        prob_threshold: The map threshold (paper: 0.5), in ``[0, 1]``.
        metric: ``"iou"`` or ``"iobb"``.
        interpolation: ``"nearest"`` or ``"bilinear"``.

    Returns:
        ``(len(thresholds), K)`` float64.

    Raises:
        CCGShapeError: Wrong ranks, mismatched ``M``, an empty map grid (``h`` or ``w`` zero).
        CCGDTypeError: Non-float ``prob_maps``, non-integer indices.
        CCGValueRangeError: Bad values, naming the argument: ``thresholds`` empty, not numbers
            or outside ``[0, 1)``; ``prob_threshold`` outside ``[0, 1]``; ``metric``,
            ``interpolation``, ``image_size``; with the value checks on, ``prob_maps`` not
            finite probabilities, indices out of range, bad boxes.

    Example:
        >>> import torch
        >>> maps = torch.zeros(1, 2, 4, 4)
        >>> maps[0, 0, :2, :2] = 0.9  # predicts the top-left quarter for class 0
        >>> boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # exactly those cells
        >>> localization_accuracy(maps, boxes, torch.tensor([0]), torch.tensor([0]),
        ...                       image_size=(128, 128), thresholds=(0.5, 0.99))
        tensor([[1., nan],
                [1., nan]], dtype=torch.float64)
    """
    check_tensor(prob_maps, "prob_maps")
    check_tensor(boxes, "boxes")
    check_tensor(box_image_index, "box_image_index")
    check_tensor(box_class, "box_class")
    check_dtype(prob_maps, "prob_maps", ("float",))
    check_dtype(boxes, "boxes", ("float", "int"))
    dims = check_shape(prob_maps, "prob_maps", ("N", "K", "h", "w"))
    check_grid(prob_maps, "prob_maps", "h, w")
    check_shape(boxes, "boxes", ("M", 4), dims)
    check_shape(box_image_index, "box_image_index", ("M",), dims)
    check_shape(box_class, "box_class", ("M",), dims)
    check_index(box_image_index, "box_image_index", dims["N"])
    check_index(box_class, "box_class", dims["K"])
    size = check_size2(image_size, "image_size")
    thresholds = _as_thresholds(thresholds)
    check_choice(metric, "metric", Metric)
    check_choice(interpolation, "interpolation", Interpolation)
    prob_threshold = real_number(prob_threshold, "prob_threshold", low=0.0, high=1.0)
    check_probabilities(prob_maps, "prob_maps")
    check_boxes(boxes, "boxes", size)

    K = dims["K"]
    H, W = size
    device = prob_maps.device
    out = torch.full((len(thresholds), K), math.nan, dtype=torch.float64, device=device)
    if boxes.shape[0] == 0:
        return out
    pair_key = box_image_index.to(device).long() * K + box_class.to(device).long()
    pairs, inverse = torch.unique(pair_key, return_inverse=True)  # (P,), (M,)
    P = len(pairs)
    scores = torch.empty(P, dtype=torch.float64, device=device)
    b = boxes.to(device=device, dtype=torch.float64)
    centres_x = torch.arange(W, device=device, dtype=torch.float64) + 0.5
    centres_y = torch.arange(H, device=device, dtype=torch.float64) + 0.5
    step = max(1, _CHUNK_PIXELS // (H * W))
    for start in range(0, P, step):  # chunks of pairs bound memory; no loop over pixels
        stop = min(P, start + step)
        chunk = pairs[start:stop]
        maps = prob_maps.flatten(0, 1)[chunk].unsqueeze(1).float()  # (p, 1, h, w)
        mode = "nearest-exact" if interpolation == "nearest" else "bilinear"
        kwargs = {} if mode == "nearest-exact" else {"align_corners": False}
        up = F.interpolate(maps, size=(H, W), mode=mode, **kwargs)[:, 0]
        pred = up > prob_threshold  # (p, H, W)
        sel = (inverse >= start) & (inverse < stop)
        bb = b[sel]
        in_x = (centres_x >= bb[:, 0:1]) & (centres_x < bb[:, 2:3])  # (m, W)
        in_y = (centres_y >= bb[:, 1:2]) & (centres_y < bb[:, 3:4])  # (m, H)
        box_masks = (in_y[:, :, None] & in_x[:, None, :]).to(torch.int32)
        gt = torch.zeros(stop - start, H, W, dtype=torch.int32, device=device)
        gt.index_add_(0, inverse[sel] - start, box_masks)
        gt_b = gt > 0
        inter = (pred & gt_b).flatten(1).sum(1).double()
        denom = (pred | gt_b) if metric == "iou" else pred
        area = denom.flatten(1).sum(1).double()
        scores[start:stop] = torch.where(area > 0, inter / area.clamp(min=1), 0.0)
    pair_class = pairs % K
    t = torch.tensor(thresholds, dtype=torch.float64, device=device)
    correct = (scores[None, :] > t[:, None]).double()  # (T, P)
    hits = torch.zeros(len(thresholds), K, dtype=torch.float64, device=device)
    hits.index_add_(1, pair_class, correct)
    counts = torch.bincount(pair_class, minlength=K).double()
    return torch.where(counts > 0, hits / counts.clamp(min=1), out)


def _as_thresholds(thresholds: object) -> tuple[float, ...]:
    """``thresholds`` as a non-empty tuple of floats in ``[0, 1)``; a number is one threshold.

    A score (IoU or IoBB) is at most 1 and counts when strictly greater than ``T``: a ``T``
    of 1 or more (or NaN) would give a row of zeros, a negative one a row of ones.
    """
    if isinstance(thresholds, Tensor):  # its numbers (a tensor is not a number)
        thresholds = thresholds.tolist()
    single = isinstance(thresholds, numbers.Real) and not isinstance(thresholds, bool)
    items = (thresholds,) if single else thresholds
    if isinstance(items, str | bytes):
        items = None
    try:
        values = list(items)  # type: ignore[call-overload]
    except TypeError:
        values = None
    if values is None or any(isinstance(t, bool | str | bytes) for t in values):
        raise CCGValueRangeError(
            f"`thresholds` must be a float or a sequence of floats, got {thresholds!r}."
        )
    if not values:
        raise CCGValueRangeError("`thresholds` must hold at least one threshold, got none.")
    out = []
    for t in values:
        try:
            out.append(real_number(t, "thresholds", low=0.0, high=1.0, high_open=True))
        except CCGValueRangeError:  # named with the whole sequence
            raise CCGValueRangeError(
                "`thresholds` must hold finite numbers in [0, 1) (a score counts when it is "
                f"greater than T, and no score exceeds 1), got {t!r}"
                + ("." if single else f" in {thresholds!r}.")
            ) from None
    return tuple(out)


def classification_auc(scores: Tensor, labels: Tensor) -> Tensor:
    """Per-class ROC AUC of image-level scores (the Mann-Whitney statistic, ties count 1/2).

    Args:
        scores: ``(N, K)`` scores (any monotone scale: logits or probabilities).
        labels: ``(N, K)`` labels in ``{0, 1}``.

    Returns:
        ``(K,)`` float64; NaN for a class whose labels are all 0 or all 1.

    Raises:
        CCGShapeError: Not ``(N, K)``, or mismatched shapes.
        CCGDTypeError: Non-float ``scores``.
        CCGValueRangeError: With the value checks on, ``labels`` other than 0 and 1 or
            non-finite ``scores``.

    Example:
        >>> import torch
        >>> classification_auc(torch.tensor([[0.1], [0.4], [0.35], [0.8]]),
        ...                    torch.tensor([[0], [0], [1], [1]]))
        tensor([0.7500], dtype=torch.float64)
    """
    check_tensor(scores, "scores")
    check_tensor(labels, "labels")
    check_dtype(scores, "scores", ("float",))
    dims = check_shape(scores, "scores", ("N", "K"))
    check_shape(labels, "labels", ("N", "K"), dims)
    check_binary(labels, "labels")
    check_finite(scores, "scores")
    s = scores.double().T.contiguous()  # (K, N)
    pos = labels.T.bool()
    neg_sorted = torch.where(pos, math.inf, s).sort(dim=1).values.contiguous()  # negatives first
    less = torch.searchsorted(neg_sorted, s, side="left").double()
    leq = torch.searchsorted(neg_sorted, s, side="right").double()
    n_pos = pos.sum(1).double()
    n_neg = (~pos).sum(1).double()
    wins = torch.where(pos, less + 0.5 * (leq - less), 0.0).sum(1)
    valid = (n_pos > 0) & (n_neg > 0)
    return torch.where(valid, wins / (n_pos * n_neg).clamp(min=1), math.nan)


def format_localization_table(
    accuracy: Tensor,
    thresholds: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
    *,
    class_names: Sequence[str] = CLASS_NAMES,
    columns: Sequence[str] = BOXED_CLASSES,
    metric: Metric = "iou",
    digits: int = 2,
) -> str:
    """Format localization accuracy in the layout of the paper's tables.

    Rows ``T(IoU)=0.1`` ..., columns the 8 boxed diseases (``columns``) and their ``Mean``
    (of the non-NaN entries), as a Markdown table.

    Args:
        accuracy: ``(len(thresholds), len(class_names))`` from :func:`localization_accuracy`.
        thresholds: The thresholds of the rows.
        class_names: The class of each column of ``accuracy``.
        columns: The classes to show, in order.
        metric: ``"iou"`` or ``"iobb"``, for the row labels.
        digits: Decimals, a non-negative int.

    Returns:
        The Markdown table, one line per row.

    Raises:
        CCGShapeError: ``accuracy`` not ``(len(thresholds), len(class_names))``.
        CCGValueRangeError: ``thresholds`` as in :func:`localization_accuracy`, unknown
            ``columns``, bad ``metric`` or ``digits``.

    Example:
        >>> import torch
        >>> acc = torch.full((1, 14), 0.5, dtype=torch.float64)
        >>> print(format_localization_table(acc, (0.1,)))  # doctest: +NORMALIZE_WHITESPACE
        | T(IoU) | Atelectasis | Cardiomegaly | Effusion | Infiltration | Mass | Nodule | Pneumonia | Pneumothorax | Mean |
        |---|---|---|---|---|---|---|---|---|---|
        | 0.1 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 |
    """
    check_tensor(accuracy, "accuracy")
    thresholds = _as_thresholds(thresholds)
    check_shape(accuracy, "accuracy", (len(thresholds), len(class_names)))
    check_choice(metric, "metric", Metric)
    digits = positive_int(digits, "digits", allow_zero=True)
    missing = [c for c in columns if c not in class_names]
    if missing:
        raise CCGValueRangeError(f"`columns` must be among `class_names`, got unknown {missing}.")
    cols = [list(class_names).index(c) for c in columns]
    label = "T(IoU)" if metric == "iou" else "T(IoBB)"
    lines = [
        "| " + " | ".join([label, *columns, "Mean"]) + " |",
        "|" + "---|" * (len(columns) + 2),
    ]
    acc = accuracy.double()[:, cols]
    for t, row in zip(thresholds, acc, strict=True):
        valid = row[~torch.isnan(row)]
        mean = float(valid.mean()) if len(valid) else math.nan
        cells = ["n/a" if math.isnan(v) else f"{v:.{digits}f}" for v in [*row.tolist(), mean]]
        lines.append("| " + " | ".join([f"{t:g}", *cells]) + " |")
    return "\n".join(lines)
