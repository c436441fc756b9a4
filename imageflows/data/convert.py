"""Another dataset in a model's shape: the stated rule for cross-dataset evaluation.

An image is taken to 256 levels by the picture rule `round(x · 255 / (N − 1))` (DESIGN §4),
to the target channels by Pillow (RGB → grey by ITU-R 601-2 luma, L = 0.299 R + 0.587 G +
0.114 B, as `Image.convert("L")`; grey → RGB by repeating the channel), to the target size by
Pillow's bilinear resize (which averages over the source pixels when it shrinks), and to the
target levels by `to_levels` (`x >> (8 − b)`) or, for levels that are not a power of two, by
`round(x · (N − 1) / 255)`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from .dataset import ImageDataset, to_levels

CONVERSION_RULE = "ITU-R 601-2 luma for grey, Pillow's bilinear resize"


def convert(
    dataset: ImageDataset, image_shape: tuple[int, int, int], num_levels: int
) -> ImageDataset:
    """`dataset` with images of `image_shape` `(C, H, W)` (C = 1 or 3) at `num_levels` levels,
    labels kept, by the rule of this module; the description says so, e.g. "CIFAR-10 (JPEG
    q75) as 1x28x28 (ITU-R 601-2 luma for grey, Pillow's bilinear resize)"."""
    channels, height, width = image_shape
    if channels not in (1, 3) or dataset.image_shape[0] not in (1, 3):
        raise ValueError(
            f"convert: only grey (1 channel) and RGB (3 channels) images convert, asked "
            f"{dataset.image_shape[0]} -> {channels} channels"
        )
    if not 2 <= num_levels <= 256:
        raise ValueError(f"convert: num_levels must be in 2..256, got {num_levels}")
    levels = dataset.images.to(torch.int32)
    full = (levels * 255 + (dataset.num_levels - 1) // 2) // (dataset.num_levels - 1)
    pictures = full.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    mode = "L" if channels == 1 else "RGB"
    converted = np.stack([_convert_one(p, mode, (width, height)) for p in pictures])
    images = torch.from_numpy(converted.reshape(len(pictures), height, width, channels))
    images = _requantize(images.permute(0, 3, 1, 2).contiguous(), num_levels)
    shape = "x".join(map(str, image_shape))
    return dataclasses.replace(
        dataset,
        images=images,
        num_levels=num_levels,
        description=f"{dataset.description} as {shape} ({CONVERSION_RULE})",
    )


def _convert_one(picture: np.ndarray, mode: str, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image)


def _requantize(images: torch.Tensor, num_levels: int) -> torch.Tensor:
    if num_levels & (num_levels - 1) == 0:
        return to_levels(images, 256, num_levels)
    return ((images.to(torch.int32) * (num_levels - 1) + 127) // 255).to(torch.uint8)
