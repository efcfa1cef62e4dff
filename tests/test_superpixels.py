"""Tests of ccg_layers.superpixels: exact, ordered SLIC labels (paper Sec. 3.4)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from skimage.io import imread, imsave

from ccg_layers import superpixels, superpixels_from_files
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError

NIH = Path(__file__).parent / "data" / "nih"
RADIOGRAPHS = sorted(NIH.glob("*.png"))


def _check_exact_and_ordered(labels: torch.Tensor, m: int) -> None:
    """Every label 0..m-1 present; centroids in raster order of round(sqrt(m)) bands."""
    for lab in labels.numpy():
        assert sorted(np.unique(lab).tolist()) == list(range(m))
        H, W = lab.shape
        rr, cc = np.divmod(np.arange(H * W), W)
        area = np.bincount(lab.ravel(), minlength=m)
        cy = np.bincount(lab.ravel(), weights=rr, minlength=m) / area
        cx = np.bincount(lab.ravel(), weights=cc, minlength=m) / area
        bands = np.array_split(np.arange(m), max(1, round(math.sqrt(m))))
        for band in bands:  # left to right within a band
            assert bool(np.all(np.diff(cx[band]) >= 0))
        for upper, lower in itertools.pairwise(bands):  # bands top to bottom
            assert cy[upper].max() <= cy[lower].min() + 1e-9


def test_real_radiographs_give_exactly_n_segments_ordered_labels():
    assert len(RADIOGRAPHS) == 2
    images = np.stack([imread(p) for p in RADIOGRAPHS])  # (2, 512, 512) uint8
    for m in (16, 64):
        labels = superpixels(images, m)
        assert labels.shape == (2, 512, 512)
        assert labels.dtype == torch.int64
        _check_exact_and_ordered(labels, m)


def test_real_radiographs_patches_correspond_between_images():
    # aligned chest X-rays: patch l of one lies near patch l of the other
    images = np.stack([imread(p) for p in RADIOGRAPHS])
    labels = superpixels(images, 64).numpy()
    cents = []
    for lab in labels:
        rr, cc = np.divmod(np.arange(lab.size), lab.shape[1])
        area = np.bincount(lab.ravel(), minlength=64)
        cents.append(
            np.stack(
                [
                    np.bincount(lab.ravel(), weights=rr, minlength=64) / area,
                    np.bincount(lab.ravel(), weights=cc, minlength=64) / area,
                ],
                1,
            )
        )
    dist = np.linalg.norm(cents[0] - cents[1], axis=1)
    assert float(np.median(dist)) < 512 / 8  # less than one patch width apart


@settings(max_examples=15)
@given(
    st.integers(1, 40),
    st.integers(8, 48),
    st.integers(8, 48),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["random", "constant", "two_regions", "stripes"]),
)
def test_exact_count_and_raster_order_for_any_image(m, H, W, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "random":
        img = rng.random((H, W))
    elif kind == "constant":
        img = np.full((H, W), 0.7)
    elif kind == "two_regions":  # fewer distinct regions than n_segments
        img = np.zeros((H, W))
        img[:, : W // 2] = 1.0
    else:
        img = (np.arange(W)[None, :] % 4 < 2).astype(float).repeat(H, 0)
    m = min(m, H * W)
    labels = superpixels(img[None], m, work_size=None)
    _check_exact_and_ordered(labels, m)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, np.int64])
def test_any_numeric_dtype_and_scale_invariance(dtype):
    rng = np.random.default_rng(0)
    base = rng.random((2, 64, 64))
    scaled = (base * (200 if dtype in (np.uint8,) else 1000)).astype(dtype)
    want = superpixels((base * 200).astype(np.uint8).astype(np.float64), 16)
    got = superpixels(scaled, 16)
    _check_exact_and_ordered(got, 16)
    if dtype == np.uint8:
        assert torch.equal(got, want)


def test_tensor_input_with_channel_axis_equals_array_input():
    images = torch.rand(2, 1, 48, 48)
    got = superpixels(images, 12)
    assert got.shape == (2, 48, 48)
    assert torch.equal(got, superpixels(images[:, 0].numpy(), 12))


def test_threads_give_the_same_labels():
    images = torch.rand(4, 64, 64)
    assert torch.equal(superpixels(images, 16, num_workers=2), superpixels(images, 16))


def test_work_size_downsamples_and_upsamples_back():
    images = torch.rand(1, 256, 128)
    labels = superpixels(images, 16, work_size=64)
    assert labels.shape == (1, 256, 128)
    _check_exact_and_ordered(labels, 16)
    # nearest upsampling of a 64x32 map: constant on 4x4 blocks
    blocks = labels[0].reshape(64, 4, 32, 4)
    assert bool((blocks == blocks[:, :1, :, :1]).all())


def test_non_integer_downsampling_factor():
    images = torch.rand(2, 100, 75)
    labels = superpixels(images, 20, work_size=64)
    assert labels.shape == (2, 100, 75)
    _check_exact_and_ordered(labels, 20)


def test_empty_batch():
    assert superpixels(np.zeros((0, 8, 8)), 4).shape == (0, 8, 8)


def _write_pngs(root: Path, count: int, size: int = 256) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        img = (rng.random((size, size)) * 255).astype(np.uint8)
        path = root / f"img{i}.png"
        imsave(path, img, check_contrast=False)
        paths.append(path)
    return paths


def test_from_files_equals_in_memory_at_work_size(tmp_path):
    paths = _write_pngs(tmp_path, 3)
    got = superpixels_from_files(paths, 16, work_size=64, num_workers=2)
    assert got.shape == (3, 64, 64)
    images = np.stack([imread(p) for p in paths])
    small = images.reshape(3, 64, 4, 64, 4).mean((2, 4), dtype=np.float32)
    assert torch.equal(got, superpixels(small, 16, work_size=None))


def test_from_files_16_bit_and_rgb_and_non_integer_factor(tmp_path):
    rng = np.random.default_rng(2)
    gray16 = (rng.random((96, 96)) * 60000).astype(np.uint16)
    imsave(tmp_path / "g16.png", gray16, check_contrast=False)
    rgb = (rng.random((96, 96, 3)) * 255).astype(np.uint8)
    imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    got = superpixels_from_files([tmp_path / "g16.png"], 16, work_size=32)
    small = gray16.reshape(32, 3, 32, 3).mean((1, 3), dtype=np.float32)
    assert torch.equal(got, superpixels(small[None], 16, work_size=None))
    labels = superpixels_from_files([tmp_path / "rgb.png", tmp_path / "g16.png"], 16, work_size=40)
    assert labels.shape == (2, 40, 40)
    _check_exact_and_ordered(labels, 16)


def test_from_files_square_resizes_each_image_to_the_working_square(tmp_path):
    rng = np.random.default_rng(3)
    wide = (rng.random((64, 96)) * 255).astype(np.uint8)  # (H, W): not square
    imsave(tmp_path / "wide.png", wide, check_contrast=False)
    kept = superpixels_from_files([tmp_path / "wide.png"], 16, work_size=32)
    assert kept.shape == (1, 21, 32)  # the aspect ratio kept, the longer side 32
    got = superpixels_from_files([tmp_path / "wide.png"], 16, work_size=32, square=True)
    assert got.shape == (1, 32, 32)  # as a Dataset resizing it to S x S sees it
    small = wide.reshape(32, 2, 32, 3).mean((1, 3), dtype=np.float32)
    assert torch.equal(got, superpixels(small[None], 16, work_size=None))
    # square images: the same labels either way, and the two ways do not share a cache entry
    paths = _write_pngs(tmp_path, 2, size=64)
    cache = tmp_path / "cache"
    plain = superpixels_from_files(paths, 8, work_size=32, cache_dir=cache)
    assert torch.equal(superpixels_from_files(paths, 8, work_size=32, square=True), plain)
    superpixels_from_files(paths, 8, work_size=32, cache_dir=cache, square=True)
    assert len(list(cache.glob("*.npy"))) == 4


@pytest.mark.parametrize("square", [1, "no", None])
def test_error_square_not_a_bool(tmp_path, square):
    with pytest.raises(
        CCGValueRangeError, match=rf"`square` must be True or False, got {square!r}"
    ):
        superpixels_from_files([], 8, square=square)


def test_from_files_real_radiographs():
    labels = superpixels_from_files(RADIOGRAPHS, 64)
    assert labels.shape == (2, 128, 128)
    _check_exact_and_ordered(labels, 64)


def test_cache_is_written_read_back_and_keyed_by_parameters(tmp_path):
    paths = _write_pngs(tmp_path, 2, size=64)
    cache = tmp_path / "cache"
    first = superpixels_from_files(paths, 8, work_size=32, cache_dir=cache)
    entries = sorted(cache.glob("*.npy"))
    assert len(entries) == 2
    # overwrite an entry: a second call must return the cached labels, not recompute
    marker = np.full((32, 32), 7, dtype=np.uint8)
    for entry in entries:
        np.save(entry, marker)
    again = superpixels_from_files(paths, 8, work_size=32, cache_dir=cache)
    assert bool((again == 7).all())
    assert not bool((first == 7).all())
    # other parameters: other entries
    superpixels_from_files(paths, 9, work_size=32, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 4


def test_cache_ignores_leftovers_of_an_interrupted_run(tmp_path):
    paths = _write_pngs(tmp_path, 1, size=64)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "abc.tmp").write_bytes(b"partial")
    labels = superpixels_from_files(paths, 8, work_size=32, cache_dir=cache)
    _check_exact_and_ordered(labels, 8)


def test_cache_invalidated_when_the_file_changes(tmp_path):
    paths = _write_pngs(tmp_path, 1, size=64)
    cache = tmp_path / "cache"
    superpixels_from_files(paths, 8, work_size=32, cache_dir=cache)
    imsave(paths[0], np.zeros((64, 64), dtype=np.uint8), check_contrast=False)
    superpixels_from_files(paths, 8, work_size=32, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2


# --------------------------------------------------------------------------- bad input


def test_error_n_segments_zero():
    with pytest.raises(CCGValueRangeError, match=r"`n_segments` must be a positive int, got 0"):
        superpixels(np.zeros((1, 8, 8)), 0)


def test_error_compactness_not_positive():
    with pytest.raises(
        CCGValueRangeError, match=r"`compactness` must be a positive number, got -1"
    ):
        superpixels(np.zeros((1, 8, 8)), 4, compactness=-1)


@pytest.mark.parametrize("value", ["a", True, float("nan"), float("inf")])
def test_error_compactness_not_a_number(value):
    with pytest.raises(
        CCGValueRangeError, match=rf"`compactness` must be a positive number, got {value!r}"
    ):
        superpixels(np.zeros((1, 8, 8)), 4, compactness=value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("work_size", True, "None or a positive int"),
        ("max_num_iter", True, "a positive int"),
        ("num_workers", True, "a non-negative int"),
    ],
)
def test_error_int_parameter_bool_or_string(name, value, expected):
    with pytest.raises(CCGValueRangeError, match=rf"`{name}` must be {expected}, got {value!r}"):
        superpixels(np.zeros((1, 8, 8)), 4, **{name: value})


def test_bfloat16_tensor_is_read_as_float32():
    images = torch.rand(1, 32, 32).bfloat16()
    assert torch.equal(superpixels(images, 8), superpixels(images.float(), 8))


def test_work_size_may_be_a_numpy_int():
    images = torch.rand(1, 32, 32)
    assert torch.equal(
        superpixels(images, 8, work_size=np.int64(16)), superpixels(images, 8, work_size=16)
    )


@pytest.mark.parametrize("work_size", [0, -3, 16.0, "16"])
def test_error_work_size_not_none_or_positive_int(work_size):
    with pytest.raises(
        CCGValueRangeError, match=rf"`work_size` must be None or a positive int, got {work_size!r}"
    ):
        superpixels(np.zeros((1, 8, 8)), 4, work_size=work_size)


def test_error_work_size_bad():
    with pytest.raises(CCGValueRangeError, match=r"`work_size` must be None or a positive int"):
        superpixels(np.zeros((1, 8, 8)), 4, work_size=0)


def test_error_max_num_iter_zero():
    with pytest.raises(CCGValueRangeError, match=r"`max_num_iter` must be a positive int, got 0"):
        superpixels(np.zeros((1, 8, 8)), 4, max_num_iter=0)


def test_max_num_iter_is_passed_to_slic_and_keyed_in_the_cache(tmp_path):
    images = np.stack([imread(p) for p in RADIOGRAPHS])
    fast = superpixels(images, 64, max_num_iter=2)
    _check_exact_and_ordered(fast, 64)
    assert not torch.equal(fast, superpixels(images, 64))
    cache = tmp_path / "cache"
    superpixels_from_files(RADIOGRAPHS[:1], 16, cache_dir=cache)
    superpixels_from_files(RADIOGRAPHS[:1], 16, cache_dir=cache, max_num_iter=3)
    assert len(list(cache.glob("*.npy"))) == 2


def test_error_num_workers_negative():
    with pytest.raises(CCGValueRangeError, match=r"`num_workers` must be a non-negative int"):
        superpixels(np.zeros((1, 8, 8)), 4, num_workers=-1)


def test_error_more_segments_than_pixels():
    with pytest.raises(
        CCGValueRangeError, match=r"`n_segments` must be at most the number of pixels .* got 100"
    ):
        superpixels(np.zeros((1, 8, 8)), 100)


def test_error_wrong_rank():
    with pytest.raises(
        CCGShapeError,
        match=r"`images` must have shape \(N, H, W\) or \(N, 1, H, W\), got shape \(8, 8\)",
    ):
        superpixels(np.zeros((8, 8)), 4)


def test_error_rgb_channels():
    with pytest.raises(
        CCGShapeError,
        match=r"got shape \(1, 3, 8, 8\)\. These look like RGB\(A\) images: .* ChestXray14 "
        r"dataset's 3 channels are copies of the one gray radiograph .* pass `images\[:, 0\]`",
    ):
        superpixels(np.zeros((1, 3, 8, 8)), 4)


def test_error_bool_images():
    with pytest.raises(
        CCGDTypeError, match=r"`images` must have a real numeric dtype, got torch.bool"
    ):
        superpixels(torch.zeros(1, 8, 8, dtype=torch.bool), 4)


def test_error_not_an_array():
    with pytest.raises(
        CCGDTypeError, match=r"`images` must be a torch.Tensor or numpy.ndarray, got list"
    ):
        superpixels([[[0.0]]], 1)


def test_error_nan_image():
    img = np.zeros((1, 8, 8))
    img[0, 0, 0] = np.nan
    with pytest.raises(CCGValueRangeError, match=r"`images` must be finite"):
        superpixels(img, 4)


def test_error_files_of_different_shapes(tmp_path):
    imsave(tmp_path / "a.png", np.zeros((64, 64), dtype=np.uint8), check_contrast=False)
    imsave(tmp_path / "b.png", np.zeros((64, 32), dtype=np.uint8), check_contrast=False)
    with pytest.raises(CCGShapeError, match=r"`paths` must be images of one working shape"):
        superpixels_from_files([tmp_path / "a.png", tmp_path / "b.png"], 4, work_size=32)


@pytest.mark.parametrize("kind", [str, Path])
def test_error_from_files_single_path(tmp_path, kind):
    path = kind(_write_pngs(tmp_path, 1, size=32)[0])
    with pytest.raises(
        CCGDTypeError,
        match=r"`paths` must be a sequence of image paths, got a single path .*img0\.png.*: pass "
        r"\[path\] for one image",
    ):
        superpixels_from_files(path, 4)


def test_error_from_files_paths_not_iterable():
    with pytest.raises(CCGDTypeError, match=r"`paths` must be a sequence of image paths, got int"):
        superpixels_from_files(5, 4)


def test_error_from_files_entry_not_a_path():
    with pytest.raises(
        CCGDTypeError, match=r"`paths` must hold str or os.PathLike paths, got int at index 1"
    ):
        superpixels_from_files(["a.png", 5], 4)


def test_error_from_files_cache_dir_not_a_path():
    with pytest.raises(
        CCGDTypeError, match=r"`cache_dir` must be None, a str or an os.PathLike, got int"
    ):
        superpixels_from_files([], 4, cache_dir=5)


def test_error_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        superpixels_from_files([tmp_path / "missing.png"], 4)
