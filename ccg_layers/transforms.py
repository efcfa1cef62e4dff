"""Input transforms: radiographs as an ImageNet-pretrained backbone expects them.

:func:`normalize_radiographs` turns the 1-byte luminance the dataset reader returns into the
ImageNet-normalised 3-channel input, wherever the images are (on the GPU, after a
1-byte-per-pixel transfer). Re-exported by :mod:`ccg_layers.datasets`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ccg_layers.errors import CCGDTypeError
from ccg_layers.validation import check_float_dtype, check_shape, check_tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "imagenet_input", "normalize_radiographs"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize_radiographs(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 luminance ``(..., 1, H, W)`` -> ImageNet-normalised ``(..., 3, H, W)`` ``dtype``.

    The gray value ``v / 255`` is repeated to the three channels and normalised with
    :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`, as ImageNet-pretrained backbones expect.
    Runs wherever ``images`` are (on the GPU, after a 1-byte-per-pixel transfer).

    Args:
        images: ``(..., 1, H, W)`` uint8 luminance, 0-255 (the dataset's default ``output``).
        dtype: The floating dtype of the result.

    Returns:
        ``(..., 3, H, W)`` ``dtype``: ``(v / 255 - mean_c) / std_c`` in channel ``c``.

    Raises:
        CCGDTypeError: ``images`` not uint8 (already scaled or normalised images would be
            scaled again), or ``dtype`` not a floating dtype.
        CCGShapeError: ``images`` without a channel axis of size 1 before ``(H, W)``.

    Example:
        >>> import torch
        >>> x = normalize_radiographs(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8))
        >>> x.shape, round(float(x[0, 0, 0, 0]), 3)
        (torch.Size([2, 3, 4, 4]), 2.249)
    """
    check_tensor(images, "images")
    if images.dtype != torch.uint8:
        raise CCGDTypeError(
            f"`images` must be uint8 luminance (0-255, the dataset's output='uint8'), got "
            f"{images.dtype}; float images would be scaled by 1/255 a second time."
        )
    check_shape(images, "images", (1, "H", "W"), leading=True)
    check_float_dtype(dtype, "dtype", allow_none=False)
    return imagenet_input(images, dtype)


def imagenet_input(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Kernel of :func:`normalize_radiographs` (validated inputs: uint8 ``(..., 1, H, W)``)."""
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=images.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=images.device).view(shape)
    return (images.to(dtype) / 255.0 - mean) / std
