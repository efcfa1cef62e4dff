"""Localization accuracy, AUC and the table formatter against loop-based references."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given

import ccg_layers.metrics as metrics_module
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.metrics import classification_auc, format_localization_table, localization_accuracy

# --------------------------------------------------------------------------- references


def ref_upsample(grid, H, W, mode):
    """The map on the H x W image, pixel by pixel (pixel centres, align_corners=False)."""
    h, w = grid.shape
    out = [[0.0] * W for _ in range(H)]
    for r in range(H):
        for c in range(W):
            if mode == "nearest":
                out[r][c] = float(
                    grid[min(h - 1, int((r + 0.5) * h / H)), min(w - 1, int((c + 0.5) * w / W))]
                )
            else:
                y = max((r + 0.5) * h / H - 0.5, 0.0)
                x = max((c + 0.5) * w / W - 0.5, 0.0)
                y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
                y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
                fy, fx = y - y0, x - x0
                out[r][c] = float(
                    (1 - fy) * ((1 - fx) * grid[y0, x0] + fx * grid[y0, x1])
                    + fy * ((1 - fx) * grid[y1, x0] + fx * grid[y1, x1])
                )
    return out


def ref_localization_accuracy(
    maps,
    boxes,
    img_idx,
    cls,
    image_size,
    thresholds,
    prob_threshold=0.5,
    metric="iou",
    mode="nearest",
):
    K = maps.shape[1]
    H, W = image_size
    m64 = maps.double()
    out = torch.full((len(thresholds), K), math.nan, dtype=torch.float64)
    for k in range(K):
        images = sorted({int(i) for i, c in zip(img_idx, cls, strict=True) if int(c) == k})
        if not images:
            continue
        correct = [0] * len(thresholds)
        for i in images:
            own = [
                boxes[m].tolist()
                for m in range(len(boxes))
                if int(img_idx[m]) == i and int(cls[m]) == k
            ]
            up = ref_upsample(m64[i, k], H, W, mode)
            inter = union = pred_area = 0
            for r in range(H):
                for c in range(W):
                    p = up[r][c] > prob_threshold
                    g = any(b[0] <= c + 0.5 < b[2] and b[1] <= r + 0.5 < b[3] for b in own)
                    inter += p and g
                    union += p or g
                    pred_area += p
            denom = union if metric == "iou" else pred_area
            score = inter / denom if pred_area > 0 and denom > 0 else 0.0
            for t, T in enumerate(thresholds):
                correct[t] += score > T
        for t in range(len(thresholds)):
            out[t, k] = correct[t] / len(images)
    return out


def ref_auc(scores, labels):
    K = scores.shape[1]
    out = torch.full((K,), math.nan, dtype=torch.float64)
    for k in range(K):
        pos = [float(s) for s, y in zip(scores[:, k], labels[:, k], strict=True) if y == 1]
        neg = [float(s) for s, y in zip(scores[:, k], labels[:, k], strict=True) if y == 0]
        if pos and neg:
            wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
            out[k] = wins / (len(pos) * len(neg))
    return out


# --------------------------------------------------------------------------- strategies


@st.composite
def loc_inputs(draw):
    N = draw(st.integers(1, 3))
    K = draw(st.integers(1, 3))
    h = draw(st.integers(1, 4))
    w = draw(st.integers(1, 4))
    H = draw(st.integers(h, 12))
    W = draw(st.integers(w, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    # quantised probabilities so that values exactly at the map threshold occur
    maps = torch.randint(0, 5, (N, K, h, w), generator=g).float() / 4
    M = draw(st.integers(0, 6))
    xy1 = torch.rand(M, 2, generator=g) * torch.tensor([W, H])
    wh = torch.rand(M, 2, generator=g) * torch.tensor([W, H]) * 0.8
    boxes = torch.cat([xy1, (xy1 + wh).minimum(torch.tensor([W, H]).float())], 1)
    if draw(st.booleans()):
        boxes = boxes.round()  # integer boxes land exactly on pixel and cell borders
    img_idx = torch.randint(0, N, (M,), generator=g)
    cls = torch.randint(0, K, (M,), generator=g)
    return maps, boxes, img_idx, cls, (H, W)


# --------------------------------------------------------------------------- localization


@given(loc_inputs(), st.sampled_from(["iou", "iobb"]), st.sampled_from(["nearest", "bilinear"]))
def test_localization_accuracy_matches_loop_reference(inputs, metric, mode):
    maps, boxes, img_idx, cls, size = inputs
    thresholds = (0.0, 0.1, 0.25, 0.5, 0.7)
    if mode == "bilinear":
        # An interpolated value that is exactly 0.5 in real arithmetic lands on either side of
        # the map threshold depending on the order of float operations, so the bilinear case
        # moves the quantised values off the lattice (ties at 0.5 then have probability 0).
        # Exact ties at the map threshold are covered by the nearest case and the hand cases.
        jitter = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
        maps = (maps + 1e-3 * jitter).clamp(max=1.0)
    got = localization_accuracy(
        maps,
        boxes,
        img_idx,
        cls,
        image_size=size,
        thresholds=thresholds,
        metric=metric,
        interpolation=mode,
    )
    want = ref_localization_accuracy(
        maps, boxes, img_idx, cls, size, thresholds, metric=metric, mode=mode
    )
    torch.testing.assert_close(got, want, equal_nan=True)


def test_box_exactly_on_grid_cells_scores_one():
    maps = torch.zeros(1, 1, 16, 16)
    maps[0, 0, 2:5, 3:9] = 0.8
    box = torch.tensor([[3 * 32.0, 2 * 32.0, 9 * 32.0, 5 * 32.0]])  # the same cells in 512 px
    acc = localization_accuracy(
        maps,
        box,
        torch.tensor([0]),
        torch.tensor([0]),
        image_size=(512, 512),
        thresholds=(0.1, 0.5, 0.7, 0.99),
    )
    assert acc.tolist() == [[1.0], [1.0], [1.0], [1.0]]


def test_empty_prediction_scores_zero_even_at_threshold_zero():
    maps = torch.full((1, 1, 4, 4), 0.5)  # 0.5 is not > 0.5: nothing predicted
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    for metric in ("iou", "iobb"):
        acc = localization_accuracy(
            maps,
            box,
            torch.tensor([0]),
            torch.tensor([0]),
            image_size=(128, 128),
            thresholds=(0.0, 0.1),
            metric=metric,
        )
        assert acc.tolist() == [[0.0], [0.0]]


def test_strictly_greater_at_the_threshold():
    maps = torch.zeros(1, 1, 2, 2)
    maps[0, 0, 0, :] = 1.0  # predicts the top half
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])  # top-left quarter: IoU = 0.5 exactly
    acc = localization_accuracy(
        maps,
        box,
        torch.tensor([0]),
        torch.tensor([0]),
        image_size=(16, 16),
        thresholds=(0.49, 0.5, 0.51),
    )
    assert acc[:, 0].tolist() == [1.0, 0.0, 0.0]


def test_prob_threshold_is_strict_and_configurable():
    maps = torch.full((1, 1, 2, 2), 0.3)
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    args = (box, torch.tensor([0]), torch.tensor([0]))
    assert localization_accuracy(maps, *args, image_size=(8, 8), thresholds=(0.5,))[0, 0] == 1.0 * 0
    assert (
        localization_accuracy(
            maps, *args, image_size=(8, 8), thresholds=(0.5,), prob_threshold=0.2
        )[0, 0]
        == 1.0
    )
    assert (
        localization_accuracy(
            maps, *args, image_size=(8, 8), thresholds=(0.5,), prob_threshold=0.3
        )[0, 0]
        == 0.0
    )


def test_iobb_ignores_the_part_of_the_box_not_predicted():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 0, 0] = 1.0  # one cell inside a large box
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    args = (maps, box, torch.tensor([0]), torch.tensor([0]))
    assert (
        localization_accuracy(*args, image_size=(32, 32), thresholds=(0.5,), metric="iobb").item()
        == 1.0
    )
    assert (
        localization_accuracy(*args, image_size=(32, 32), thresholds=(0.5,), metric="iou").item()
        == 0.0
    )  # IoU 1/16


def test_ground_truth_is_the_union_of_the_class_boxes():
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0, 0, :] = 1.0  # top half for class 0
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0], [0.0, 8.0, 16.0, 16.0]])
    acc = localization_accuracy(
        maps,
        boxes,
        torch.tensor([0, 0, 0]),
        torch.tensor([0, 0, 1]),
        image_size=(16, 16),
        thresholds=(0.99,),
    )
    assert acc[0, 0] == 1.0  # the two class-0 boxes together are the top half
    assert acc[0, 1] == 0.0  # class 1's map is empty


def test_fraction_over_images_and_nan_for_classes_without_boxes():
    maps = torch.zeros(4, 3, 2, 2)
    maps[:2, 1, 0, 0] = 1.0  # images 0 and 1 find their class-1 box, 2 and 3 do not
    box = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(4, 1)
    acc = localization_accuracy(
        maps,
        box,
        torch.arange(4),
        torch.ones(4, dtype=torch.long),
        image_size=(8, 8),
        thresholds=(0.5,),
    )
    assert acc[0, 1] == 0.5
    assert math.isnan(acc[0, 0])
    assert math.isnan(acc[0, 2])
    assert acc.shape == (1, 3)
    assert acc.dtype == torch.float64


def test_no_boxes_gives_all_nan():
    acc = localization_accuracy(
        torch.zeros(2, 3, 4, 4),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        image_size=(8, 8),
    )
    assert acc.shape == (4, 3)
    assert torch.isnan(acc).all()


def test_chunking_does_not_change_the_result(monkeypatch):
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(6, 4, 8, 8, generator=g)
    xy = torch.rand(20, 2, generator=g) * 48
    boxes = torch.cat([xy, xy + 16], 1)
    args = (
        maps,
        boxes,
        torch.randint(0, 6, (20,), generator=g),
        torch.randint(0, 4, (20,), generator=g),
    )
    whole = localization_accuracy(*args, image_size=(64, 64))
    monkeypatch.setattr(metrics_module, "_CHUNK_PIXELS", 64 * 64 * 2)  # two pairs per chunk
    torch.testing.assert_close(
        localization_accuracy(*args, image_size=(64, 64)), whole, equal_nan=True
    )


def test_paper_shapes_and_default_thresholds():
    maps = torch.rand(3, 14, 16, 16)
    boxes = torch.tensor([[100.0, 120.0, 300.0, 260.0], [10.0, 10.0, 60.0, 60.0]])
    acc = localization_accuracy(
        maps, boxes, torch.tensor([0, 2]), torch.tensor([1, 9]), image_size=(512, 512)
    )
    assert acc.shape == (4, 14)


# --------------------------------------------------------------------------- bad input

GOOD = dict(
    prob_maps=torch.zeros(2, 3, 4, 4),
    boxes=torch.tensor([[0.0, 0.0, 4.0, 4.0]]),
    box_image_index=torch.tensor([0]),
    box_class=torch.tensor([0]),
)


def call(**over):
    kwargs = {**GOOD, **over}
    image_size = kwargs.pop("image_size", (8, 8))
    return localization_accuracy(**kwargs, image_size=image_size)


def test_bad_prob_maps_type():
    with pytest.raises(CCGDTypeError, match=r"`prob_maps` must be a torch.Tensor, got list"):
        call(prob_maps=[[0.0]])


def test_bad_prob_maps_rank():
    with pytest.raises(
        CCGShapeError,
        match=r"`prob_maps` must have 4 dimensions \(N, K, h, w\), got shape \(3, 4, 4\)",
    ):
        call(prob_maps=torch.zeros(3, 4, 4))


def test_bad_prob_maps_dtype():
    with pytest.raises(
        CCGDTypeError, match=r"`prob_maps` must have a float dtype, got torch.int64"
    ):
        call(prob_maps=torch.zeros(2, 3, 4, 4, dtype=torch.long))


def test_prob_maps_outside_unit_interval():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`prob_maps` must hold probabilities in \[0, 1\] .*got values in \[0, 2\]",
    ):
        call(prob_maps=torch.zeros(2, 3, 4, 4).index_fill_(0, torch.tensor([1]), 2.0))


def test_prob_maps_nan():
    with pytest.raises(CCGValueRangeError, match=r"`prob_maps` must be finite"):
        call(prob_maps=torch.full((2, 3, 4, 4), math.nan))


def test_bad_boxes_shape():
    with pytest.raises(
        CCGShapeError,
        match=r"`boxes` must have shape \(M, 4\) with 4 in that position, got shape \(1, 5\)",
    ):
        call(boxes=torch.zeros(1, 5))


def test_inverted_box():
    with pytest.raises(
        CCGValueRangeError, match=r"`boxes` must be \(x1, y1, x2, y2\) with x1 <= x2"
    ):
        call(boxes=torch.tensor([[4.0, 0.0, 0.0, 4.0]]))


def test_box_image_index_length_mismatch():
    with pytest.raises(
        CCGShapeError,
        match=r"`box_image_index` must have shape \(M\) with M=1 as bound by the other arguments, got shape \(2,\)",
    ):
        call(box_image_index=torch.tensor([0, 1]))


def test_box_image_index_out_of_range():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`box_image_index` must hold indices in \[0, 2\), got values in \[2, 2\]",
    ):
        call(box_image_index=torch.tensor([2]))


def test_box_image_index_float():
    with pytest.raises(
        CCGDTypeError, match=r"`box_image_index` must have a int dtype, got torch.float32"
    ):
        call(box_image_index=torch.tensor([0.0]))


def test_box_class_out_of_range():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`box_class` must hold indices in \[0, 3\), got values in \[-1, -1\]",
    ):
        call(box_class=torch.tensor([-1]))


def test_bad_image_size():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`image_size` must be a positive int or two positive ints \(H, W\), got \(8, 0\)",
    ):
        call(image_size=(8, 0))


def test_int_image_size_is_a_square():
    torch.testing.assert_close(call(image_size=8), call(image_size=(8, 8)), equal_nan=True)


def test_single_float_threshold_is_one_row():
    one = call(thresholds=0.5)
    assert one.shape[0] == 1
    torch.testing.assert_close(one, call(thresholds=(0.5,)), equal_nan=True)


def test_bad_thresholds():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`thresholds` must be a float or a sequence of floats, got 'high'",
    ):
        call(thresholds="high")


def test_empty_thresholds():
    with pytest.raises(CCGValueRangeError, match=r"`thresholds` must hold at least one threshold"):
        call(thresholds=())


def test_bad_metric():
    with pytest.raises(
        CCGValueRangeError, match=r"`metric` must be one of 'iou', 'iobb', got 'dice'"
    ):
        call(metric="dice")


def test_bad_interpolation():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`interpolation` must be one of 'nearest', 'bilinear', got 'bicubic'",
    ):
        call(interpolation="bicubic")


@pytest.mark.parametrize(("value", "shown"), [(1.5, "1.5"), ("0.5", "'0.5'")])
def test_bad_prob_threshold(value, shown):  # out of [0, 1], or not a number
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`prob_threshold` must be a finite number in \[0, 1\], got {shown}",
    ):
        call(prob_threshold=value)


def test_thresholds_of_one_or_more():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`thresholds` must hold finite numbers in \[0, 1\) .*, got 1.5\.$",
    ):
        call(thresholds=1.5)


def test_thresholds_of_exactly_one():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`thresholds` must hold finite numbers in \[0, 1\) .*, got 1.0 in \(0.5, 1.0\)",
    ):
        call(thresholds=(0.5, 1.0))


def test_negative_thresholds():
    with pytest.raises(
        CCGValueRangeError, match=r"`thresholds` must hold finite numbers in \[0, 1\) .*, got -0.1"
    ):
        call(thresholds=[-0.1])


def test_nan_thresholds():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`thresholds` must hold finite numbers in \[0, 1\) .*, got nan in \[nan\]",
    ):
        call(thresholds=[math.nan])


def test_thresholds_of_strings():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`thresholds` must be a float or a sequence of floats, got \['0.5'\]",
    ):
        call(thresholds=["0.5"])


def test_a_tensor_of_thresholds_is_its_numbers():
    torch.testing.assert_close(
        call(thresholds=torch.tensor([0.1, 0.5])), call(thresholds=(0.1, 0.5)), equal_nan=True
    )


@pytest.mark.parametrize("bad", [None, [0.5, None], [0.5, complex(0.5, 0)]])
def test_thresholds_holding_non_numbers(bad):
    with pytest.raises(CCGValueRangeError, match=r"`thresholds` must "):
        call(thresholds=bad)


def test_threshold_zero_and_numpy_thresholds_are_valid():
    assert call(thresholds=0.0).shape == (1, 3)
    torch.testing.assert_close(
        call(thresholds=np.float32(0.5)), call(thresholds=0.5), equal_nan=True
    )
    torch.testing.assert_close(
        call(thresholds=np.array([0.1, 0.5])), call(thresholds=(0.1, 0.5)), equal_nan=True
    )
    torch.testing.assert_close(
        call(prob_threshold=np.float32(0.5)), call(prob_threshold=0.5), equal_nan=True
    )


@pytest.mark.parametrize("grid", [(4, 0), (0, 4)])
def test_empty_map_grid(grid):
    with pytest.raises(
        CCGShapeError,
        match=r"`prob_maps` must have at least one cell \(h, w >= 1\), got "
        rf"shape \(2, 3, {grid[0]}, {grid[1]}\)",
    ):
        call(prob_maps=torch.zeros(2, 3, *grid))


# --------------------------------------------------------------------------- AUC


@given(st.integers(1, 30), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_auc_matches_pairwise_reference(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (n, k), generator=g).float() / 5  # with ties
    labels = torch.randint(0, 2, (n, k), generator=g)
    torch.testing.assert_close(
        classification_auc(scores, labels), ref_auc(scores, labels), equal_nan=True
    )


def test_auc_limit_cases():
    scores = torch.tensor([[0.1, 0.2, 0.5], [0.9, 0.3, 0.5], [0.5, 0.4, 0.5]])
    labels = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    auc = classification_auc(scores, labels)
    assert auc[0] == 1.0  # perfect ranking
    assert math.isnan(auc[1])  # one label value only
    assert auc[2] == 0.5  # all tied


def test_auc_bad_labels():
    with pytest.raises(
        CCGValueRangeError, match=r"`labels` must hold only 0 and 1, got 1 other value\(s\), e.g. 2"
    ):
        classification_auc(torch.zeros(2, 1), torch.tensor([[0], [2]]))


def test_auc_shape_mismatch():
    with pytest.raises(CCGShapeError, match=r"`labels` must have shape \(N, K\) with N=2"):
        classification_auc(torch.zeros(2, 1), torch.zeros(3, 1))


def test_auc_non_finite_scores():
    with pytest.raises(CCGValueRangeError, match=r"`scores` must be finite"):
        classification_auc(torch.tensor([[math.inf], [0.0]]), torch.tensor([[0], [1]]))


# --------------------------------------------------------------------------- the table


def test_table_layout_of_the_paper():
    acc = torch.full((2, 14), math.nan, dtype=torch.float64)
    boxed = [0, 1, 4, 8, 9, 10, 12, 13]
    acc[:, boxed] = torch.tensor([[0.8] * 8, [0.4] * 7 + [math.nan]], dtype=torch.float64)
    text = format_localization_table(acc, (0.1, 0.7))
    lines = text.splitlines()
    assert (
        lines[0]
        == "| T(IoU) | Atelectasis | Cardiomegaly | Effusion | Infiltration | Mass | Nodule | Pneumonia | Pneumothorax | Mean |"
    )
    assert lines[2] == "| 0.1 | 0.80 | 0.80 | 0.80 | 0.80 | 0.80 | 0.80 | 0.80 | 0.80 | 0.80 |"
    assert lines[3] == "| 0.7 | 0.40 | 0.40 | 0.40 | 0.40 | 0.40 | 0.40 | 0.40 | n/a | 0.40 |"
    assert len(lines) == 4


def test_table_iobb_rows_and_digits():
    acc = torch.full((1, 14), 0.123456, dtype=torch.float64)
    text = format_localization_table(acc, (0.5,), metric="iobb", digits=3)
    assert text.splitlines()[0].startswith("| T(IoBB) |")
    assert text.splitlines()[2].startswith("| 0.5 | 0.123 |")


def test_table_from_eight_columns():
    from ccg_layers.datasets import BOXED_CLASSES

    acc = torch.arange(8, dtype=torch.float64)[None] / 10
    text = format_localization_table(acc, (0.3,), class_names=BOXED_CLASSES)
    assert (
        text.splitlines()[2]
        == "| 0.3 | 0.00 | 0.10 | 0.20 | 0.30 | 0.40 | 0.50 | 0.60 | 0.70 | 0.35 |"
    )


def test_table_shape_mismatch():
    with pytest.raises(
        CCGShapeError,
        match=r"`accuracy` must have shape \(4, 14\) with 4 in that position, got shape \(2, 14\)",
    ):
        format_localization_table(torch.zeros(2, 14))


def test_table_unknown_column():
    with pytest.raises(
        CCGValueRangeError, match=r"`columns` must be among `class_names`, got unknown \['Flu'\]"
    ):
        format_localization_table(torch.zeros(4, 14), columns=["Flu"])


def test_table_thresholds_not_numbers():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`thresholds` must be a float or a sequence of floats, got \('low', 'high'\)",
    ):
        format_localization_table(torch.zeros(2, 14), ("low", "high"))


def test_table_thresholds_out_of_range():
    with pytest.raises(
        CCGValueRangeError, match=r"`thresholds` must hold finite numbers in \[0, 1\) .*, got 7"
    ):
        format_localization_table(torch.zeros(1, 14), (7,))


def test_table_single_threshold_is_one_row():
    acc = torch.full((1, 14), 0.5, dtype=torch.float64)
    assert format_localization_table(acc, 0.1) == format_localization_table(acc, (0.1,))


def test_table_bad_metric():
    with pytest.raises(
        CCGValueRangeError, match=r"`metric` must be one of 'iou', 'iobb', got 'dice'"
    ):
        format_localization_table(torch.zeros(4, 14), metric="dice")


def test_table_bad_digits():
    with pytest.raises(CCGValueRangeError, match=r"`digits` must be a non-negative int, got -1"):
        format_localization_table(torch.zeros(4, 14), digits=-1)


def test_table_numpy_digits():
    acc = torch.full((1, 14), 0.123456, dtype=torch.float64)
    assert format_localization_table(acc, (0.5,), digits=np.int64(3)) == format_localization_table(
        acc, (0.5,), digits=3
    )
