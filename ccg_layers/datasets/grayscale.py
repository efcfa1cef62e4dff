"""Radiographs as 8-bit grayscale: PNG and JPEG files read and resized to the working size.

Read with Pillow (which scikit-image's ``imageio`` depends on). Every dataset's image reading
goes through :func:`gray_to_uint8`; DICOM files are decoded by
:func:`~ccg_layers.datasets.read_dicom` first.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["gray_to_uint8", "read_radiograph"]


def read_radiograph(path: str | os.PathLike[str], size: int | None = None) -> Tensor:
    """Read a radiograph as ``(1, H, W)`` uint8 luminance, optionally resized to ``size`` x ``size``.

    PNG or JPEG of any bit depth: 8-bit gray is taken as is, RGB(A) becomes its ITU-R 601-2
    luma (alpha dropped), 16-bit gray is scaled to 8 bits (``round(v * 255 / 65535)``). The
    resize is the block mean for integer factors (``Image.reduce``, e.g. 1024 -> 512) and
    Pillow's bilinear filter (antialiased when shrinking) otherwise.

    Args:
        path: The image file.
        size: The square working size ``S``; ``None`` keeps the file's size.

    Returns:
        ``(1, S, S)`` (or ``(1, H, W)``) uint8.

    Raises:
        OSError: The file is missing or not an image Pillow can read.

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> path = tempfile.mkdtemp() + "/x.png"
        >>> Image.fromarray(np.full((40, 30), 65535, dtype=np.uint16)).save(path)
        >>> image = read_radiograph(path, 16)
        >>> image.shape, image.dtype, int(image.max())
        (torch.Size([1, 16, 16]), torch.uint8, 255)
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32) * (255.0 / 65535.0)
            gray = Image.fromarray(arr, mode="F")
        else:
            if im.format == "JPEG" and size is not None:
                im.draft("L", (size, size))  # decode at a reduced scale when it is enough
            gray = im if im.mode == "L" else im.convert("L")  # ITU-R 601-2 luma, alpha dropped
            gray.load()
        return gray_to_uint8(gray, size)


def gray_to_uint8(gray: Any, size: int | None) -> Tensor:
    """A Pillow ``"L"`` or ``"F"`` (0..255) image as ``(1, S, S)`` uint8, resized.

    The resize of :func:`read_radiograph`: block mean for integer factors, else bilinear.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> gray = Image.fromarray(np.full((4, 8), 127.6, dtype=np.float32), mode="F")
        >>> gray_to_uint8(gray, 2).tolist()
        [[[128, 128], [128, 128]]]
    """
    from PIL import Image

    if size is not None and gray.size != (size, size):
        w, h = gray.size
        if w % size == 0 and h % size == 0:  # 1024 -> 512: the exact block mean, fastest
            gray = gray.reduce((w // size, h // size))
        else:
            gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(gray)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.array(arr, dtype=np.uint8))[None]
