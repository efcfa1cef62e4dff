"""Input transforms: radiographs as an ImageNet-pretrained backbone expects them.

:func:`normalize_radiographs` turns the 1-byte luminance the dataset reader returns into the
ImageNet-normalised 3-channel input, wherever the images are (on the GPU, after a
1-byte-per-pixel transfer). Re-exported by :mod:`ccg_layers.datasets`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_radiographs"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize_radiographs(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 luminance ``(..., 1, H, W)`` -> ImageNet-normalised ``(..., 3, H, W)`` ``dtype``.

    The gray value ``v / 255`` is repeated to the three channels and normalised with
    :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`, as ImageNet-pretrained backbones expect.
    Runs wherever ``images`` are (on the GPU, after a 1-byte-per-pixel transfer).

    Example:
        >>> import torch
        >>> x = normalize_radiographs(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8))
        >>> x.shape, round(float(x[0, 0, 0, 0]), 3)
        (torch.Size([2, 3, 4, 4]), 2.249)
    """
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=images.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=images.device).view(shape)
    return (images.to(dtype) / 255.0 - mean) / std
