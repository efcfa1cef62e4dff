"""``ccg_layers.transforms``: ``normalize_radiographs`` against a float64 reference written from
its definition, its limit cases and one test per bad input."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from ccg_layers.errors import CCGDTypeError, CCGShapeError
from ccg_layers.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_radiographs


def ref_normalize(images: torch.Tensor) -> torch.Tensor:
    """Pixel by pixel in float64: channel ``c`` of the output is ``(v / 255 - mean_c) / std_c``."""
    *lead, _, h, w = images.shape
    flat = images.reshape(-1, h, w).tolist()
    out = torch.empty(len(flat), 3, h, w, dtype=torch.float64)
    for i, image in enumerate(flat):
        for c in range(3):
            for r in range(h):
                for q in range(w):
                    out[i, c, r, q] = (image[r][q] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    return out.reshape(*lead, 3, h, w)


@st.composite
def radiographs(draw):
    lead = draw(st.lists(st.integers(0, 3), max_size=2))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*lead, 1, h, w), generator=g, dtype=torch.uint8)


@given(radiographs())
def test_matches_the_float64_reference(images):
    out = normalize_radiographs(images, dtype=torch.float64)
    assert out.shape == (*images.shape[:-3], 3, *images.shape[-2:])
    torch.testing.assert_close(out, ref_normalize(images), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float32, 1e-6), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)]
)
@given(images=radiographs())
def test_lower_precision_dtypes_round_the_reference(dtype, atol, images):
    out = normalize_radiographs(images, dtype=dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_normalize(images), rtol=0, atol=atol)


def test_black_and_white_are_the_ends_of_each_channel():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    out = normalize_radiographs(images)
    for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)):
        assert out[0, c].item() == pytest.approx(-m / s)
        assert out[1, c].item() == pytest.approx((1 - m) / s)


def test_a_single_image_without_batch_axis_and_an_empty_batch():
    single = normalize_radiographs(torch.full((1, 2, 3), 128, dtype=torch.uint8))
    assert single.shape == (3, 2, 3)
    assert normalize_radiographs(torch.zeros(0, 1, 4, 4, dtype=torch.uint8)).shape == (0, 3, 4, 4)


def test_runs_on_the_images_device():
    out = normalize_radiographs(torch.zeros(2, 1, 3, 3, dtype=torch.uint8, device="meta"))
    assert out.device.type == "meta"
    assert out.shape == (2, 3, 3, 3)


def test_compiles_without_graph_breaks():
    images = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    compiled = torch.compile(normalize_radiographs, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(images), normalize_radiographs(images))


def test_float_images_are_rejected():
    with pytest.raises(
        CCGDTypeError, match=r"`images` must be uint8 luminance .* got torch.float32"
    ):
        normalize_radiographs(torch.rand(1, 1, 4, 4))


def test_images_that_are_not_a_tensor_are_rejected():
    with pytest.raises(CCGDTypeError, match=r"`images` must be a torch.Tensor, got list"):
        normalize_radiographs([[0, 255]])  # type: ignore[arg-type]


def test_three_channel_images_are_rejected():
    with pytest.raises(
        CCGShapeError,
        match=r"`images` must have shape \(\.\.\., 1, H, W\) with 1 .* \(1, 3, 4, 4\)",
    ):
        normalize_radiographs(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_images_without_a_channel_axis_are_rejected():
    with pytest.raises(
        CCGShapeError, match=r"at least 3 dimensions \(\.\.\., 1, H, W\), got shape \(4, 4\)"
    ):
        normalize_radiographs(torch.zeros(4, 4, dtype=torch.uint8))


def test_an_integer_result_dtype_is_rejected():
    with pytest.raises(
        CCGDTypeError, match=r"`dtype` must be a floating torch.dtype, got torch.int32"
    ):
        normalize_radiographs(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), dtype=torch.int32)
