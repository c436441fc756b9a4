"""The dataset container and the reduction of 256-level data to the 2^b levels a model sees."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True, eq=False)  # tensors have no single truth value for ==
class ImageDataset:
    """A labelled set of quantized images.

    Attributes:
        images: uint8 `[N, C, H, W]`, values in `0..num_levels-1`.
        labels: int64 `[N]` class indices into `label_names`.
        label_names: human names of the classes.
        num_levels: N, the number of pixel levels (256 for 8-bit data).
        description: human name of the data for reports, e.g. "MNIST", "CIFAR-10 (JPEG q75)".
    """

    images: torch.Tensor
    labels: torch.Tensor
    label_names: list[str]
    num_levels: int
    description: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{list(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 [{len(self.images)}], got {self.labels.dtype} "
                f"{list(self.labels.shape)}"
            )
        if not 2 <= self.num_levels <= 256:
            raise ValueError(f"num_levels must be in 2..256, got {self.num_levels}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of one image."""
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageDataset:
        """The images and labels at `indices`, everything else unchanged."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return dataclasses.replace(self, images=self.images[index], labels=self.labels[index])

    def first(self, n: int | None) -> ImageDataset:
        """The first `n` images (all of them if there are fewer, or if `n` is None)."""
        return self if n is None else self.subset(range(min(n, len(self))))


def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """`ValueError` naming file `path` if a label read from it is not in `0..num_classes-1`."""
    if len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"{path}: label {int(labels.max())} outside 0..{num_classes - 1}")


def to_levels(images: torch.Tensor, from_levels: int, to_levels: int) -> torch.Tensor:
    """Requantize uint8 images from `from_levels` to `to_levels` levels.

    Equal levels return `images` unchanged; 256 levels go to 2^b levels (b <= 8) by
    `x >> (8 - b)`, as Glow's n_bits does. Any other pair raises `ValueError` naming both.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if from_levels == to_levels:
        return images
    bits = to_levels.bit_length() - 1
    if from_levels == 256 and 2 <= to_levels < 256 and to_levels == 1 << bits:
        return images >> (8 - bits)
    raise ValueError(
        f"cannot convert images with {from_levels} levels to {to_levels} levels; only "
        "256 levels reduce, to a power of two"
    )


def prepare(dataset: ImageDataset, num_levels: int) -> ImageDataset:
    """`dataset` with its images requantized to `num_levels` levels (see `to_levels`)."""
    images = to_levels(dataset.images, dataset.num_levels, num_levels)
    return dataclasses.replace(dataset, images=images, num_levels=num_levels)
