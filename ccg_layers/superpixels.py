"""SLIC superpixels with a fixed, ordered number of segments per image (paper Sec. 3.4).

The patch graphs of the CCG framework compare patch ``l`` of one chest X-ray with patch ``l``
of another, so every image needs exactly ``n_segments`` patches numbered consistently. SLIC
(scikit-image) gives roughly ``n_segments`` segments; :func:`superpixels` merges the smallest
or splits the largest until there are exactly ``n_segments`` and numbers them in raster order
of their centroids. SLIC runs at a reduced working size (the labels end up pooled onto a 16x16
feature map anyway), which is ~15x faster than at 512x512 on a real radiograph.

:func:`superpixels_from_files` computes the labels of image files (decode included) with a
thread pool and an optional on-disk cache, once per dataset.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.validation import check_flag, check_positive, optional_positive_int, positive_int

__all__ = ["superpixels", "superpixels_from_files"]

_CACHE_VERSION = 1

FloatArray = NDArray[np.float32]
LabelArray = NDArray[np.int64]


def _check_params(
    n_segments: int, compactness: float, work_size: int | None, workers: int, max_num_iter: int
) -> None:
    positive_int(n_segments, "n_segments")
    check_positive(compactness, "compactness")
    optional_positive_int(work_size, "work_size")
    positive_int(max_num_iter, "max_num_iter")
    positive_int(workers, "num_workers", allow_zero=True)


def _work_shape(shape: tuple[int, int], work_size: int | None) -> tuple[int, int]:
    """Shape with the longer side reduced to ``work_size`` (never enlarged)."""
    H, W = shape
    if work_size is None or max(H, W) <= work_size:
        return H, W
    scale = work_size / max(H, W)
    return max(1, round(H * scale)), max(1, round(W * scale))


def _to_unit(image: NDArray[Any]) -> FloatArray:
    """Min-max scale one image to ``[0, 1]`` float32 (a constant image becomes zeros)."""
    img = image.astype(np.float32, copy=False)
    lo, hi = float(img.min()), float(img.max())
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise CCGValueRangeError("`images` must be finite, got NaN or infinite values.")
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.float32)
    return ((img - lo) * (1.0 / (hi - lo))).astype(np.float32, copy=False)


def _resize(img: NDArray[Any], shape: tuple[int, int]) -> FloatArray:
    """Area-downsample to ``shape`` in float32 (exact block mean when the factors are integers).

    Runs on the raw pixels before any scaling: one pass over the full-size image.
    """
    H, W = img.shape
    h, w = shape
    if (h, w) == (H, W):
        return img.astype(np.float32, copy=False)
    if H % h == 0 and W % w == 0:
        blocks: FloatArray = img.reshape(h, H // h, w, W // w).mean(axis=(1, 3), dtype=np.float32)
        return blocks
    from skimage.transform import resize

    small = img.astype(np.float32)
    out = np.asarray(resize(small, shape, order=1, anti_aliasing=True, preserve_range=True))  # type: ignore[no-untyped-call]
    return out.astype(np.float32, copy=False)


def _consecutive(labels: NDArray[Any]) -> tuple[LabelArray, int]:
    uniq, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int64), len(uniq)


def _merge_smallest(labels: LabelArray, k: int, img: FloatArray) -> int:
    """Merge the smallest segment into its adjacent segment of closest mean intensity."""
    flat = labels.ravel()
    area = np.bincount(flat, minlength=k)
    mean = np.bincount(flat, weights=img.ravel(), minlength=k) / np.maximum(area, 1)
    small = int(np.argmin(area))
    pairs = [
        (labels[:, :-1], labels[:, 1:]),
        (labels[:, 1:], labels[:, :-1]),
        (labels[:-1, :], labels[1:, :]),
        (labels[1:, :], labels[:-1, :]),
    ]
    neighbours = np.unique(np.concatenate([b[(a == small) & (b != small)] for a, b in pairs]))
    if len(neighbours) == 0:  # cannot happen for k >= 2 on a connected grid; be safe
        neighbours = np.array([i for i in range(k) if i != small])
    target = int(neighbours[np.argmin(np.abs(mean[neighbours] - mean[small]))])
    labels[labels == small] = target
    if small != k - 1:  # keep the labels consecutive: the last one takes the freed number
        labels[labels == k - 1] = small
    return k - 1


def _split_largest(labels: LabelArray, k: int) -> int:
    """Split the largest segment in two halves along its longer extent."""
    flat = labels.ravel()
    big = int(np.argmax(np.bincount(flat, minlength=k)))
    rows, cols = np.nonzero(labels == big)
    along_rows = np.ptp(rows) >= np.ptp(cols)
    order = np.lexsort((cols, rows) if along_rows else (rows, cols))
    half = order[len(order) // 2 :]
    labels[rows[half], cols[half]] = k
    return k + 1


def _raster_order(labels: LabelArray, k: int) -> LabelArray:
    """Renumber segments by centroid: ~sqrt(k) bands top to bottom, left to right in a band."""
    H, W = labels.shape
    flat = labels.ravel()
    area = np.maximum(np.bincount(flat, minlength=k), 1)
    rr, cc = np.divmod(np.arange(H * W), W)
    cy = np.bincount(flat, weights=rr, minlength=k) / area
    cx = np.bincount(flat, weights=cc, minlength=k) / area
    bands = max(1, round(math.sqrt(k)))
    by_row = np.lexsort((cx, cy))
    order = np.concatenate(
        [band[np.lexsort((cy[band], cx[band]))] for band in np.array_split(by_row, bands)]
    )
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    out: LabelArray = rank[labels]
    return out


def _segment(img: FloatArray, n_segments: int, compactness: float, max_num_iter: int) -> LabelArray:
    """Exactly ``n_segments`` raster-ordered SLIC labels of one ``[0, 1]`` image."""
    from skimage.segmentation import slic

    raw = slic(
        img,
        n_segments=n_segments,
        compactness=compactness,
        channel_axis=None,
        start_label=0,
        enforce_connectivity=True,
        max_num_iter=max_num_iter,
    )
    labels, k = _consecutive(raw)
    while k > n_segments:
        k = _merge_smallest(labels, k, img)
    while k < n_segments:
        k = _split_largest(labels, k)
    return _raster_order(labels, k)


def _segment_image(
    image: NDArray[Any],
    n_segments: int,
    compactness: float,
    work_size: int | None,
    max_num_iter: int,
) -> LabelArray:
    H, W = image.shape
    work = _work_shape((H, W), work_size)
    if work[0] * work[1] < n_segments:
        raise CCGValueRangeError(
            f"`n_segments` must be at most the number of pixels at the working size {work} "
            f"({work[0] * work[1]}), got {n_segments}."
        )
    labels = _segment(_to_unit(_resize(image, work)), n_segments, compactness, max_num_iter)
    if work == (H, W):
        return labels
    rows = (np.arange(H) * work[0]) // H
    cols = (np.arange(W) * work[1]) // W
    out: LabelArray = labels[rows[:, None], cols[None, :]]
    return out


def _map(fn: Any, items: Sequence[Any], num_workers: int) -> list[Any]:
    if num_workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    # SLIC, PNG decoding and numpy release the GIL: threads scale without pickling images.
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        return list(pool.map(fn, items))


def superpixels(
    images: Tensor | NDArray[Any],
    n_segments: int,
    *,
    compactness: float = 0.1,
    work_size: int | None = 128,
    num_workers: int = 0,
    max_num_iter: int = 10,
) -> Tensor:
    """SLIC superpixels of a batch of grayscale images, exactly ``n_segments`` per image.

    Each image is area-downsampled so that its longer side is ``work_size``, min-max scaled to
    ``[0, 1]``, segmented by :func:`skimage.segmentation.slic` (``channel_axis=None``), then
    the smallest segments are merged into their most similar neighbour or the largest split in
    two until there are exactly ``n_segments``. Labels are numbered in raster order of their
    centroids (``round(sqrt(n_segments))`` bands from top to bottom, left to right within a
    band) so that patch ``l`` of one aligned chest X-ray roughly matches patch ``l`` of another,
    and upsampled (nearest) back to ``(H, W)``.

    Args:
        images: ``(N, H, W)`` or ``(N, 1, H, W)`` tensor or array of any real dtype.
        n_segments: ``m``, the exact number of labels per image.
        compactness: SLIC's balance of intensity and space on the ``[0, 1]`` scale; near
            ``0.1`` for radiographs (scikit-image's default 10 gives a square grid).
        work_size: The longer side SLIC runs at; ``None`` for the full size.
        num_workers: Threads (``0`` or ``1``: the calling thread only).
        max_num_iter: SLIC's k-means iterations (scikit-image's default 10; 5 is ~1.7x
            faster with nearly the same segments).

    Returns:
        ``(N, H, W)`` int64 labels in ``[0, n_segments)``, every label present in every image.

    Raises:
        CCGShapeError: Not ``(N, H, W)`` or ``(N, 1, H, W)``.
        CCGDTypeError: Not a tensor or array, or a complex / bool dtype.
        CCGValueRangeError: Bad parameters, non-finite values, or more segments than pixels.

    Example:
        >>> import torch
        >>> images = torch.rand(2, 64, 64)
        >>> labels = superpixels(images, 16)
        >>> labels.shape, labels.dtype, [len(torch.unique(x)) for x in labels]
        (torch.Size([2, 64, 64]), torch.int64, [16, 16])
    """
    _check_params(n_segments, compactness, work_size, num_workers, max_num_iter)
    if isinstance(images, Tensor):
        if images.dtype == torch.bool or images.dtype.is_complex:
            raise CCGDTypeError(f"`images` must have a real numeric dtype, got {images.dtype}.")
        if images.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            images = images.float()
        array = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray):
        array = images
        if (
            array.dtype == np.bool_
            or not np.issubdtype(array.dtype, np.number)
            or (np.issubdtype(array.dtype, np.complexfloating))
        ):
            raise CCGDTypeError(f"`images` must have a real numeric dtype, got {array.dtype}.")
    else:
        raise CCGDTypeError(
            f"`images` must be a torch.Tensor or numpy.ndarray, got {type(images).__name__}."
        )
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        hint = ""
        if array.ndim == 4 and array.shape[1] in (3, 4):
            hint = (
                " These look like RGB(A) images: superpixels segment one gray channel. The "
                "ChestXray14 dataset's 3 channels are copies of the one gray radiograph "
                "(expanded for ImageNet backbones): pass `images[:, 0]`."
            )
        raise CCGShapeError(
            f"`images` must have shape (N, H, W) or (N, 1, H, W), got shape "
            f"{tuple(array.shape)}.{hint}"
        )
    N, H, W = array.shape
    if N == 0:
        return torch.zeros(0, H, W, dtype=torch.int64)

    def run(i: int) -> LabelArray:
        return _segment_image(array[i], n_segments, compactness, work_size, max_num_iter)

    return torch.from_numpy(np.stack(_map(run, range(N), num_workers)))


def _read_work(path: Path, work_size: int | None, square: bool = False) -> FloatArray:
    """Decode an image file to float32 gray at the working size.

    With ``square`` the working size is ``work_size`` on both sides, whatever the aspect ratio.

    Pillow (a dependency of scikit-image) decodes and box-averages in C: integer factors use
    ``Image.reduce`` (the exact block mean, as :func:`superpixels`), others ``Image.resize``
    with the box filter. RGB(A) and palette images are converted to gray ("L"); a DICOM file
    is decoded by :func:`~ccg_layers.datasets.read_dicom` first.
    """
    from PIL import Image

    from ccg_layers.datasets.dicom import is_dicom, read_dicom

    # a DICOM file (VinDr-CXR, RSNA): the 8-bit image their Dataset decodes
    source = Image.fromarray(read_dicom(path)[0].numpy()) if is_dicom(path) else Image.open(path)
    with source as opened:
        im = opened if opened.mode in ("L", "F", "I", "I;16") else opened.convert("L")
        im = im if im.mode == "F" else im.convert("F")
        H, W = im.height, im.width
        h, w = (work_size, work_size) if square and work_size else _work_shape((H, W), work_size)
        if (h, w) != (H, W):
            if H % h == 0 and W % w == 0:
                im = im.reduce((W // w, H // h))
            else:
                im = im.resize((w, h), Image.Resampling.BOX)
        return np.asarray(im, dtype=np.float32)


def _cache_file(cache_dir: Path, path: Path, key: str) -> Path:
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{key}|v{_CACHE_VERSION}"
    return cache_dir / (hashlib.sha1(ident.encode()).hexdigest() + ".npy")


def _check_paths(paths: object) -> list[Path]:
    """``paths`` as a list of ``Path``: an iterable of ``str`` / ``os.PathLike``, not one path."""
    if isinstance(paths, str | bytes | os.PathLike):
        raise CCGDTypeError(
            f"`paths` must be a sequence of image paths, got a single path {paths!r}: pass "
            "[path] for one image."
        )
    if not isinstance(paths, Iterable):
        raise CCGDTypeError(
            f"`paths` must be a sequence of image paths, got {type(paths).__name__}."
        )
    files = list(paths)
    for i, p in enumerate(files):
        if not isinstance(p, str | os.PathLike):
            raise CCGDTypeError(
                f"`paths` must hold str or os.PathLike paths, got {type(p).__name__} at index {i}."
            )
    return [Path(p) for p in files]


def superpixels_from_files(
    paths: Sequence[str | os.PathLike[str]],
    n_segments: int,
    *,
    compactness: float = 0.1,
    work_size: int = 128,
    num_workers: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    max_num_iter: int = 10,
    square: bool = False,
) -> Tensor:
    """Superpixel labels of image files, at the working size, optionally cached on disk.

    Decodes each file with Pillow (PNG, JPEG, 16-bit PNG, ...; colour is converted to gray),
    downsamples it while decoding, then as :func:`superpixels` but returns the labels at the working size (e.g. ``128 x 128`` int64): that is all
    :func:`ccg_layers.functional.superpixel_pool` needs, and 64x smaller than 1024x1024 labels.

    With ``cache_dir``, each file's labels are stored as one ``.npy`` named by a hash of the
    file's absolute path, modification time, size and the parameters; a later call reads them
    back instead of recomputing. Files are written atomically (temporary file, then rename), so
    an interrupted run leaves only complete entries and simply resumes.

    Args:
        paths: Image files of equal working shape (e.g. all square, or any with ``square``).
        n_segments: Exact number of labels per image.
        compactness: See :func:`superpixels`.
        work_size: Longer side of the labels.
        num_workers: Threads for decoding and SLIC.
        cache_dir: Directory of the cache (created if needed), or ``None``.
        max_num_iter: See :func:`superpixels`.
        square: Resize every image to ``work_size x work_size`` whatever its aspect ratio, as
            a ``Dataset`` that resizes every image to ``S x S`` does (the labels then cover its
            images); the default keeps the aspect ratio.

    Returns:
        ``(N, h, w)`` int64 labels.

    Raises:
        CCGShapeError: Images whose working shapes differ.
        CCGDTypeError: ``paths`` a single path (not a sequence of paths) or not iterable, an
            entry or ``cache_dir`` not a ``str`` or ``os.PathLike``.
        CCGValueRangeError: Bad parameters.
        FileNotFoundError: A missing file.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from skimage.io import imsave
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> imsave(d / "a.png", (np.random.rand(256, 256) * 255).astype(np.uint8))
        >>> superpixels_from_files([d / "a.png"], 16, cache_dir=d / "cache").shape
        torch.Size([1, 128, 128])
    """
    _check_params(n_segments, compactness, work_size, num_workers, max_num_iter)
    check_flag(square, "square")
    files = _check_paths(paths)
    if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
        raise CCGDTypeError(
            f"`cache_dir` must be None, a str or an os.PathLike, got {type(cache_dir).__name__}."
        )
    cache = None if cache_dir is None else Path(cache_dir)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    key = f"{n_segments}|{compactness!r}|{work_size}|{max_num_iter}" + ("|square" if square else "")

    def run(path: Path) -> LabelArray:
        target = None if cache is None else _cache_file(cache, path, key)
        if target is not None and target.exists():
            cached: LabelArray = np.load(target).astype(np.int64)
            return cached
        small = _read_work(path, work_size, square)
        if small.size < n_segments:
            raise CCGValueRangeError(
                f"`n_segments` must be at most the number of pixels at the working size "
                f"{small.shape} ({small.size}), got {n_segments}."
            )
        labels = _segment(_to_unit(small), n_segments, compactness, max_num_iter)
        if target is not None:
            dtype = np.uint8 if n_segments <= 256 else np.int32
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, labels.astype(dtype))
            os.replace(tmp, target)
        return labels

    results = _map(run, files, num_workers)
    if not results:
        return torch.zeros(0, work_size, work_size, dtype=torch.int64)
    shapes = {r.shape for r in results}
    if len(shapes) > 1:
        raise CCGShapeError(
            f"`paths` must be images of one working shape to stack, got shapes {sorted(shapes)}."
        )
    return torch.from_numpy(np.stack(results))
