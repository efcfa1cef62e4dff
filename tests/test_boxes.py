"""Boxes: box targets in (boxes_to_grid, boxes_to_grid_targets), boxes out (maps_to_boxes), and the image frame."""

from __future__ import annotations

import re

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import example, given

from ccg_layers import set_value_checks
from ccg_layers.boxes import boxes_outside, check_boxes, rejected_boxes
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.functional import (
    boxes_to_grid,
    boxes_to_grid_targets,
    maps_to_boxes,
    xywh_to_xyxy,
)
from ccg_layers.metrics import localization_accuracy
from tests.host_sync import count_host_syncs

# --------------------------------------------------------------------------- references


def ref_cell_marked(box, r, c, image_size, grid_size):
    """Cell (r, c) overlaps the box with positive area (the rule of boxes_to_grid)."""
    (H, W), (h, w) = image_size, grid_size
    x1, y1, x2, y2 = box
    ox = min(x2, (c + 1) * W / w) - max(x1, c * W / w)
    oy = min(y2, (r + 1) * H / h) - max(y1, r * H / h)
    return ox > 0 and oy > 0


def ref_grid_targets(boxes, image_index, box_class, N, K, image_size, grid_size):
    """One box and one cell at a time: each image's class target is the union of its boxes."""
    h, w = grid_size
    grid = torch.zeros(N, K, h, w)
    for box, i, k in zip(boxes.tolist(), image_index.tolist(), box_class.tolist(), strict=True):
        for r in range(h):
            for c in range(w):
                if ref_cell_marked(box, r, c, image_size, grid_size):
                    grid[i, k, r, c] = 1.0
    return grid, grid.flatten(2).sum(-1) > 0


# --------------------------------------------------------------------------- strategies


@st.composite
def flat_boxes(draw):
    N = draw(st.integers(0, 3))
    K = draw(st.integers(1, 4))
    H = draw(st.integers(1, 64))
    W = draw(st.integers(1, 64))
    h = draw(st.integers(1, 8))
    w = draw(st.integers(1, 8))
    M = draw(st.integers(0, 6)) if N else 0
    coords = st.floats(0, 1, allow_nan=False)
    boxes = []
    for _ in range(M):
        xa, xb = sorted(draw(st.tuples(coords, coords)))
        ya, yb = sorted(draw(st.tuples(coords, coords)))
        if draw(st.booleans()):  # integer pixels: edges on cell borders
            boxes.append([round(xa * W), round(ya * H), round(xb * W), round(yb * H)])
        else:
            boxes.append([xa * W, ya * H, xb * W, yb * H])
    image_index = [draw(st.integers(0, N - 1)) for _ in range(M)]
    box_class = [draw(st.integers(0, K - 1)) for _ in range(M)]
    return (
        torch.tensor(boxes, dtype=torch.float32).reshape(M, 4),
        torch.tensor(image_index, dtype=torch.long),
        torch.tensor(box_class, dtype=torch.long),
        N,
        K,
        (H, W),
        (h, w),
    )


@st.composite
def separated_regions(draw):
    """Maps whose regions above 0.5 are grid-aligned boxes that do not touch, not even at a
    corner, with the boxes in cell units ordered as maps_to_boxes orders them."""
    N = draw(st.integers(1, 3))
    K = draw(st.integers(1, 3))
    h = draw(st.integers(1, 8))
    w = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(N, K, h, w, generator=g) * 0.5  # background in [0, 0.5]: never above
    expected = []
    for i in range(N):
        for k in range(K):
            placed: list[tuple[int, int, int, int]] = []
            for _ in range(draw(st.integers(0, 3))):
                r0 = draw(st.integers(0, h - 1))
                c0 = draw(st.integers(0, w - 1))
                r1 = draw(st.integers(r0, h - 1))
                c1 = draw(st.integers(c0, w - 1))
                # not touching: the box grown by one cell must miss every placed box
                if any(
                    r0 - 1 <= b1 and b0 <= r1 + 1 and c0 - 1 <= d1 and d0 <= c1 + 1
                    for b0, d0, b1, d1 in placed
                ):
                    continue
                placed.append((r0, c0, r1, c1))
                maps[i, k, r0 : r1 + 1, c0 : c1 + 1] = 0.5 + 0.5 * torch.rand(
                    r1 - r0 + 1, c1 - c0 + 1, generator=g
                ).clamp(min=1e-3)
            for r0, c0, r1, c1 in sorted(placed):  # raster order of the top-left cell
                expected.append((i, k, r0, c0, r1, c1))
    return maps, expected


# --------------------------------------------------------------------------- boxes_to_grid_targets


def _targets_of(inputs):
    """``boxes_to_grid_targets`` of a :func:`flat_boxes` draw."""
    boxes, image_index, box_class, N, K, image_size, grid_size = inputs
    return boxes_to_grid_targets(
        boxes,
        image_index,
        box_class,
        num_images=N,
        num_classes=K,
        image_size=image_size,
        grid_size=grid_size,
    )


@example(  # a float32 edge within an ulp of a cell border (0.4f * 5 rounds to 2.0 in float32)
    (
        torch.tensor([[0.0, 0.0, 1.0, 0.4]]),
        torch.tensor([0]),
        torch.tensor([0]),
        1,
        1,
        (1, 1),
        (5, 1),
    )
)
@given(flat_boxes())
def test_grid_targets_match_the_union_of_boxes_reference(inputs):
    grid, box_mask = _targets_of(inputs)
    want_grid, want_mask = ref_grid_targets(*inputs)
    assert grid.dtype == torch.float32
    assert box_mask.dtype == torch.bool
    torch.testing.assert_close(grid, want_grid)
    torch.testing.assert_close(box_mask, want_mask)


@given(flat_boxes())
def test_grid_targets_agree_with_boxes_to_grid(inputs):
    boxes, image_index, box_class, _, _, image_size, grid_size = inputs
    grid, _ = _targets_of(inputs)
    cells = boxes_to_grid(boxes, image_size, grid_size)
    for m in range(len(boxes)):  # every box's cells are in its image's class target
        assert bool(grid[image_index[m], box_class[m]][cells[m]].eq(1).all())


def test_grid_targets_zero_area_box_sets_no_mask():
    grid, box_mask = boxes_to_grid_targets(
        torch.tensor([[10.0, 10.0, 10.0, 50.0], [0.0, 0.0, 8.0, 8.0]]),
        torch.tensor([0, 1]),
        torch.tensor([2, 2]),
        num_images=2,
        num_classes=3,
        image_size=64,
        grid_size=4,
    )
    assert grid[0].sum() == 0
    assert box_mask.tolist() == [[False, False, False], [False, False, True]]


def test_grid_targets_of_no_boxes_and_no_images():
    grid, box_mask = boxes_to_grid_targets(
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        num_images=2,
        num_classes=3,
        image_size=(32, 48),
        grid_size=(2, 3),
    )
    assert grid.shape == (2, 3, 2, 3)
    assert grid.sum() == 0
    assert not box_mask.any()
    grid, box_mask = boxes_to_grid_targets(
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        num_images=0,
        num_classes=3,
        image_size=32,
        grid_size=2,
    )
    assert grid.shape == (0, 3, 2, 2)
    assert box_mask.shape == (0, 3)


def _targets(**overrides):
    kwargs = {
        "boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]),
        "box_image_index": torch.tensor([0]),
        "box_class": torch.tensor([1]),
        "num_images": 2,
        "num_classes": 3,
        "image_size": 64,
        "grid_size": 4,
    }
    kwargs.update(overrides)
    return boxes_to_grid_targets(**kwargs)


def test_grid_targets_error_index_out_of_range():
    with pytest.raises(
        CCGValueRangeError, match=r"`box_image_index` must hold indices in \[0, 2\), got .*\[5, 5\]"
    ):
        _targets(box_image_index=torch.tensor([5]))
    with pytest.raises(
        CCGValueRangeError, match=r"`box_class` must hold indices in \[0, 3\), got .*\[-1, -1\]"
    ):
        _targets(box_class=torch.tensor([-1]))


def test_grid_targets_error_float_index():
    with pytest.raises(
        CCGDTypeError, match=r"`box_class` must have a int dtype, got torch.float32"
    ):
        _targets(box_class=torch.tensor([1.0]))


def test_grid_targets_error_mismatched_m():
    with pytest.raises(
        CCGShapeError,
        match=r"`box_class` must have shape \(M\) with M=1 as bound .* got shape \(2,\)",
    ):
        _targets(box_class=torch.tensor([1, 2]))


@pytest.mark.parametrize(
    ("name", "value"), [("num_images", -1), ("num_classes", 0), ("num_images", 2.0)]
)
def test_grid_targets_error_bad_counts(name, value):
    with pytest.raises(CCGValueRangeError, match=rf"`{name}` must be a .* int, got {value}"):
        _targets(**{name: value})


# --------------------------------------------------------------------------- the image frame


def test_box_in_the_1024_frame_given_a_512_image_is_an_error_with_a_hint():
    boxes = torch.tensor([[10.0, 10.0, 100.0, 100.0], [600.0, 600.0, 900.0, 900.0]])
    msg = (
        r"`boxes` must overlap the image of `image_size`=\(512, 512\) \(H, W\) \(boxes reaching "
        r"past it are clipped\), got box 1 \(600, 600, 900, 900\), which lies wholly outside it "
        r"\(1 such box\(es\)\)\. ChestX-ray14's boxes are in the 1024-pixel frame"
    )
    with pytest.raises(CCGValueRangeError, match=msg):
        boxes_to_grid(boxes, 512, 16)
    with pytest.raises(CCGValueRangeError, match=msg):
        _targets(
            boxes=boxes,
            box_image_index=torch.tensor([0, 0]),
            box_class=torch.tensor([0, 0]),
            image_size=(512, 512),
        )
    with pytest.raises(CCGValueRangeError, match=msg):
        localization_accuracy(
            torch.rand(1, 1, 4, 4),
            boxes,
            torch.tensor([0, 0]),
            torch.tensor([0, 0]),
            image_size=(512, 512),
        )


@pytest.mark.parametrize(
    "box",
    [[-20.0, 0.0, 0.0, 10.0], [0.0, 64.0, 10.0, 80.0], [64.0, 0.0, 70.0, 10.0], [0, -9, 5, -1]],
)
def test_box_wholly_outside_on_each_side_is_an_error(box):
    with pytest.raises(CCGValueRangeError, match=r"`boxes` must overlap the image of `image_size`"):
        boxes_to_grid(torch.tensor([box], dtype=torch.float32), 64, 4)


def test_box_partly_outside_is_clipped_to_the_image():
    inside = torch.tensor([[40.0, 40.0, 64.0, 64.0]])
    reaching = torch.tensor([[40.0, 40.0, 100.0, 300.0]])
    torch.testing.assert_close(boxes_to_grid(reaching, 64, 8), boxes_to_grid(inside, 64, 8))
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 5:, 5:] = 0.9
    acc = [
        localization_accuracy(maps, b, torch.tensor([0]), torch.tensor([0]), image_size=64)
        for b in (inside, reaching)
    ]
    torch.testing.assert_close(acc[0], acc[1])


def test_zero_area_box_on_the_border_is_not_outside():
    assert boxes_to_grid(torch.tensor([[64.0, 0.0, 64.0, 10.0]]), 64, 4).sum() == 0


def ref_outside(box, H, W):
    """Straight from the rule: no point of the box in the closed frame [0, W] x [0, H], or (a box
    of positive area) an overlap of zero area."""
    x1, y1, x2, y2 = box
    no_point = x1 > W or y1 > H or x2 < 0 or y2 < 0
    overlap = max(0.0, min(x2, W) - max(x1, 0.0)) * max(0.0, min(y2, H) - max(y1, 0.0))
    return no_point or (x2 > x1 and y2 > y1 and overlap == 0.0)


_coord = st.sampled_from([-20.0, -1.0, 0.0, 3.5, 16.0, 40.0, 64.0, 70.0])


@given(
    boxes=st.lists(st.tuples(_coord, _coord, _coord, _coord), min_size=1, max_size=12),
    frames=st.lists(st.sampled_from([16, 40, 64]), min_size=2, max_size=2),
)
def test_boxes_outside_matches_the_rule_box_by_box(boxes, frames):
    b = torch.tensor(boxes, dtype=torch.float64)
    b = torch.cat([b[:, :2].minimum(b[:, 2:]), b[:, :2].maximum(b[:, 2:])], 1)  # not inverted
    H, W = frames
    got = boxes_outside(b, H, W).tolist()
    assert got == [ref_outside(box, H, W) for box in b.tolist()]


@given(
    boxes=st.lists(st.tuples(_coord, _coord, _coord, _coord), min_size=1, max_size=12),
    data=st.data(),
)
def test_rejected_boxes_are_those_check_boxes_raises_on_each_in_its_own_frame(boxes, data):
    import ccg_layers

    b = torch.tensor(boxes, dtype=torch.float32)
    if len(boxes) > 1:
        b[0, data.draw(st.integers(0, 3))] = data.draw(st.sampled_from([float("nan"), 5.0]))
    sizes = torch.tensor(
        data.draw(st.lists(st.sampled_from([16, 40, 64]), min_size=2 * len(b), max_size=2 * len(b)))
    ).reshape(-1, 2)
    got = rejected_boxes(b, sizes[:, 0], sizes[:, 1]).tolist()
    expected = []
    with ccg_layers.set_value_checks(True):
        for box, (h, w) in zip(b, sizes.tolist(), strict=True):
            try:
                check_boxes(box[None], "boxes", (h, w))
                expected.append(False)
            except CCGValueRangeError:
                expected.append(True)
    assert got == expected


def test_boxes_outside_of_no_boxes_is_empty():
    assert boxes_outside(torch.zeros(0, 4), 64, 64).shape == (0,)


def test_frame_check_follows_the_value_check_switch():
    import ccg_layers

    with ccg_layers.set_value_checks(False):
        grid = boxes_to_grid(torch.tensor([[600.0, 600.0, 900.0, 900.0]]), 512, 4)
    assert grid.sum() == 0


def test_int_sizes_are_squares():
    boxes = torch.tensor([[0.0, 0.0, 30.0, 70.0]])
    torch.testing.assert_close(
        boxes_to_grid(boxes, 100, 4), boxes_to_grid(boxes, (100, 100), (4, 4))
    )


@pytest.mark.parametrize("size", [0, (8,), (8, 8, 8), 2.5, (8, True), "8"])
def test_bad_image_size(size):
    with pytest.raises(
        CCGValueRangeError, match=r"`image_size` must be a positive int or two positive ints"
    ):
        boxes_to_grid(torch.zeros(1, 4), size, 4)


# --------------------------------------------------------------------------- maps_to_boxes


@given(separated_regions(), st.integers(1, 4), st.integers(1, 4))
def test_maps_of_grid_aligned_boxes_give_those_boxes_back(inputs, sy, sx):
    maps, expected = inputs
    h, w = maps.shape[-2:]
    boxes, image_index, box_class, scores = maps_to_boxes(maps, image_size=(h * sy, w * sx))
    want = torch.tensor(
        [[c0 * sx, r0 * sy, (c1 + 1) * sx, (r1 + 1) * sy] for _, _, r0, c0, r1, c1 in expected],
        dtype=torch.float32,
    ).reshape(-1, 4)
    torch.testing.assert_close(boxes, want)
    assert image_index.tolist() == [e[0] for e in expected]
    assert box_class.tolist() == [e[1] for e in expected]
    want_scores = [
        float(maps[i, k, r0 : r1 + 1, c0 : c1 + 1].max()) for i, k, r0, c0, r1, c1 in expected
    ]
    torch.testing.assert_close(scores, torch.tensor(want_scores).reshape(-1))


@given(separated_regions(), st.integers(1, 40), st.integers(1, 40))
def test_boxes_are_the_region_the_metric_evaluates(inputs, H_img, W_img):
    """In any frame, even one the grid does not divide: the metric scores each box IoU 1."""
    maps, expected = inputs
    h, w = maps.shape[-2:]
    H_img, W_img = max(H_img, h), max(W_img, w)  # every cell covers at least one pixel
    boxes, image_index, box_class, _ = maps_to_boxes(maps, image_size=(H_img, W_img))
    for m in range(len(boxes)):
        one = maps[image_index[m] : image_index[m] + 1].clone()
        # only this region of the map is kept: the metric compares it with the one box
        r0, c0, r1, c1 = expected[m][2:]
        keep = torch.zeros_like(one[0, 0], dtype=torch.bool)
        keep[r0 : r1 + 1, c0 : c1 + 1] = True
        one[0, box_class[m]] = torch.where(keep, one[0, box_class[m]], 0.0)
        acc = localization_accuracy(
            one,
            boxes[m : m + 1],
            torch.tensor([0]),
            box_class[m : m + 1],
            image_size=(H_img, W_img),
            thresholds=0.999,
        )
        assert float(acc[0, box_class[m]]) == 1.0


def test_boxes_follow_the_metrics_floating_point_cell_mapping():
    # 6 cells over 37 pixels: (18 + 1/2) * 6 / 37 is exactly 3, but the metric's nearest-exact
    # interpolation computes it in float32 and gives pixel 18 to cell 2; the box must agree
    maps = torch.tensor([0.745, 0.948, 0.728, 0.066, 0.154, 0.317]).reshape(1, 1, 6, 1)
    boxes, image_index, box_class, _ = maps_to_boxes(maps, image_size=(37, 1))
    assert boxes.tolist() == [[0.0, 0.0, 1.0, 19.0]]
    acc = localization_accuracy(
        maps, boxes, image_index, box_class, image_size=(37, 1), thresholds=0.999
    )
    assert float(acc[0, 0]) == 1.0


@given(separated_regions())
def test_boxes_back_to_grid_targets_round_trip(inputs):
    maps, _ = inputs
    N, K, h, w = maps.shape
    boxes, image_index, box_class, _ = maps_to_boxes(maps, image_size=(4 * h, 4 * w))
    grid, box_mask = boxes_to_grid_targets(
        boxes,
        image_index,
        box_class,
        num_images=N,
        num_classes=K,
        image_size=(4 * h, 4 * w),
        grid_size=(h, w),
    )
    torch.testing.assert_close(grid, (maps > 0.5).float())
    torch.testing.assert_close(box_mask, (maps > 0.5).flatten(2).any(-1))


def test_l_shaped_and_diagonal_regions_are_one_box():
    maps = torch.zeros(1, 1, 5, 5)
    maps[0, 0, 0, 0:3] = 0.8  # an L ...
    maps[0, 0, 1:3, 0] = 0.8
    maps[0, 0, 3, 1] = 0.95  # ... joined diagonally (8-connectivity) to one more cell
    boxes, _, _, scores = maps_to_boxes(maps)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 3.0, 4.0]]))
    torch.testing.assert_close(scores, torch.tensor([0.95]))


def test_threshold_is_strict_and_min_area_drops_small_regions():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 0, 0] = 0.5  # not above 0.5
    maps[0, 0, 2:, 2:] = 0.7
    maps[0, 0, 0, 3] = 0.6
    boxes, *_ = maps_to_boxes(maps)
    assert boxes.tolist() == [[3.0, 0.0, 4.0, 1.0], [2.0, 2.0, 4.0, 4.0]]
    boxes, *_ = maps_to_boxes(maps, min_area=2)
    assert boxes.tolist() == [[2.0, 2.0, 4.0, 4.0]]
    boxes, *_ = maps_to_boxes(maps, threshold=0.45)
    assert len(boxes) == 3


def test_regions_never_join_across_images_or_classes():
    maps = torch.ones(2, 2, 3, 3)  # every map one full region
    boxes, image_index, box_class, _ = maps_to_boxes(maps)
    assert boxes.tolist() == [[0.0, 0.0, 3.0, 3.0]] * 4
    assert image_index.tolist() == [0, 0, 1, 1]
    assert box_class.tolist() == [0, 1, 0, 1]


def test_no_region_gives_empty_outputs_on_the_maps_device_and_dtypes():
    maps = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    boxes, image_index, box_class, scores = maps_to_boxes(maps, image_size=1024)
    assert boxes.shape == (0, 4)
    assert boxes.dtype == torch.float32
    assert image_index.dtype == box_class.dtype == torch.long
    assert scores.dtype == torch.float64
    assert {t.device for t in (boxes, image_index, box_class, scores)} == {maps.device}
    assert maps_to_boxes(torch.zeros(0, 3, 4, 4))[0].shape == (0, 4)


def test_maps_to_boxes_errors():
    with pytest.raises(CCGShapeError, match=r"`maps` must have 4 dimensions \(N, K, H, W\)"):
        maps_to_boxes(torch.zeros(3, 4, 4))
    with pytest.raises(CCGDTypeError, match=r"`maps` must have a float dtype, got torch.int64"):
        maps_to_boxes(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(CCGValueRangeError, match=r"`maps` must be finite"):
        maps_to_boxes(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(
        CCGValueRangeError, match=r"`threshold` must be a probability in \[0, 1\), got nan"
    ):
        maps_to_boxes(torch.zeros(1, 1, 2, 2), threshold=float("nan"))
    with pytest.raises(CCGValueRangeError, match=r"`min_area` must be a non-negative int, got -1"):
        maps_to_boxes(torch.zeros(1, 1, 2, 2), min_area=-1)
    with pytest.raises(CCGValueRangeError, match=r"`image_size` must be a positive int or two"):
        maps_to_boxes(torch.zeros(1, 1, 2, 2), image_size=(0, 4))


def test_maps_to_boxes_error_threshold_above_one():
    with pytest.raises(
        CCGValueRangeError, match=r"`threshold` must be a probability in \[0, 1\), got 2.0"
    ):
        maps_to_boxes(torch.full((1, 1, 2, 2), 0.9), threshold=2.0)


def test_maps_to_boxes_error_threshold_of_one():
    with pytest.raises(
        CCGValueRangeError, match=r"`threshold` must be a probability in \[0, 1\), got 1"
    ):
        maps_to_boxes(torch.full((1, 1, 2, 2), 0.9), threshold=1)


def test_maps_to_boxes_error_negative_threshold():
    with pytest.raises(
        CCGValueRangeError, match=r"`threshold` must be a probability in \[0, 1\), got -0.5"
    ):
        maps_to_boxes(torch.full((1, 1, 2, 2), 0.9), threshold=-0.5)


def test_maps_to_boxes_error_threshold_string():
    with pytest.raises(
        CCGValueRangeError, match=r"`threshold` must be a probability in \[0, 1\), got '0.5'"
    ):
        maps_to_boxes(torch.full((1, 1, 2, 2), 0.9), threshold="0.5")


def test_maps_to_boxes_error_float_min_area():
    with pytest.raises(CCGValueRangeError, match=r"`min_area` must be a non-negative int, got 2.0"):
        maps_to_boxes(torch.zeros(1, 1, 2, 2), min_area=2.0)


def test_maps_to_boxes_accepts_numpy_scalars_and_threshold_zero():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, :2, :2] = 0.7
    maps[0, 0, 3, 3] = 0.2
    want = maps_to_boxes(maps, threshold=0.5, min_area=2)
    got = maps_to_boxes(maps, threshold=np.float32(0.5), min_area=np.int64(2))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert len(maps_to_boxes(maps, threshold=0.0)[0]) == 2


def test_grid_targets_accept_numpy_counts():
    want = _targets()
    got = _targets(num_images=np.int64(2), num_classes=np.int32(3))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(1, 2, 0, 4), (1, 2, 4, 0)])
def test_maps_to_boxes_error_empty_map(shape):
    with pytest.raises(
        CCGShapeError,
        match=r"`maps` must have at least one cell \(H, W >= 1\), got shape "
        + re.escape(str(shape)),
    ):
        maps_to_boxes(torch.zeros(shape))


# --------------------------------------------------------------------------- xywh_to_xyxy


@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.bool, torch.complex64]
)
def test_xywh_error_dtype(dtype):
    with pytest.raises(
        CCGDTypeError,
        match=rf"`boxes` must have a float, int32 or int64 dtype .*, got {dtype}",
    ):
        xywh_to_xyxy(torch.tensor([[200, 200, 100, 100]]).to(dtype))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float16, torch.float64])
def test_xywh_accepts_float_and_wide_int_dtypes(dtype):
    out = xywh_to_xyxy(torch.tensor([[200, 200, 100, 100]]).to(dtype))
    assert out.dtype == dtype
    assert out.tolist() == [[200, 200, 300, 300]]


@pytest.mark.parametrize("col", [0, 1, 2, 3])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_xywh_error_non_finite_only_with_value_checks(col, bad):
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    boxes[0, col] = bad
    with pytest.raises(CCGValueRangeError, match=r"`boxes` must be finite, got NaN or infinite"):
        xywh_to_xyxy(boxes)
    with set_value_checks(False):
        xywh_to_xyxy(boxes)  # a value check: skipped when value checks are off


def test_xywh_error_not_a_tensor():
    with pytest.raises(CCGDTypeError, match=r"`boxes` must be a torch.Tensor, got list"):
        xywh_to_xyxy([[0.0, 0.0, 1.0, 1.0]])


def test_xywh_negative_width_is_an_error():
    with pytest.raises(
        CCGValueRangeError,
        match=r"`boxes` must be \(x, y, width, height\) with width >= 0 and height >= 0, "
        r"got box 1 \(1, 2, -5, 4\)",
    ):
        xywh_to_xyxy(torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 2.0, -5.0, 4.0]]))


@pytest.mark.parametrize(
    ("maps", "values"),
    [
        (torch.full((1, 1, 2, 2), 2.0), r"\[2, 2\]"),
        (torch.full((1, 1, 2, 2), -0.5), r"\[-0.5, -0.5\]"),
    ],
)
def test_maps_to_boxes_error_values_outside_zero_one(maps, values):
    # logits passed by mistake: thresholded at 0.5 they would give plausible boxes
    with pytest.raises(
        CCGValueRangeError,
        match=rf"`maps` must hold probabilities in \[0, 1\] \(e.g. logits.sigmoid\(\)\), got values in {values}",
    ):
        maps_to_boxes(maps)
    with set_value_checks(False):  # a value check: skipped with the checks off
        maps_to_boxes(maps)


def test_maps_to_boxes_reads_valid_maps_once_to_check_them():
    # finite and in [0, 1] are one reduction (check_probabilities): the value checks add
    # one read back of valid maps, not one per check
    maps = torch.rand(2, 3, 8, 8)
    reads = []
    for checks in (False, True):
        with set_value_checks(checks), count_host_syncs() as syncs:
            maps_to_boxes(maps)
        reads.append(sum(syncs.values()))
    assert reads[1] - reads[0] == 1, reads
