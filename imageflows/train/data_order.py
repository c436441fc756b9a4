"""The training data and every random stream of a run, as functions of the seed and the step.

Everything random is a function of `train.seed`, the step and the rank: the data order (epoch
`e` is a permutation seeded `seed · 1000003 + e`, step `s` takes positions `[sB, (s+1)B)` of the
concatenated epochs, rank `r` the r-th slice of them), the initialisation, and the
dequantization noise and torch's global generator (dropout), both reseeded at every step. So a
resumed run continues exactly as an uninterrupted one (bitwise on CPU), and a checkpoint holds
no generator state: the step, the rank and the number of guard reloads determine them all.
"""

from __future__ import annotations

import functools
import hashlib

import torch
from torch import Tensor

from imageflows.config import Config
from imageflows.data import ImageDataset, load_dataset, prepare


def load_images(cfg: Config) -> tuple[Tensor, Tensor]:
    """Train and test images of `cfg.data`, at the model's number of levels and shape."""
    train, test = load_data(cfg)
    return train.images, test.images


def load_data(cfg: Config) -> tuple[ImageDataset, ImageDataset]:
    """Train and test splits of `cfg.data`, at the model's number of levels and shape; a
    class-conditional model's `num_classes` must be the data's number of classes."""
    splits = []
    for split in ("train", "test"):
        dataset = prepare(load_dataset(cfg.data.name, split, cfg.data.dir), cfg.model.num_levels)
        shape = tuple(dataset.images.shape[1:])
        if shape != tuple(cfg.model.image_shape):
            raise ValueError(
                f"dataset {cfg.data.name!r} ({split}) has images of shape {shape}, but "
                f"model.image_shape is {tuple(cfg.model.image_shape)}"
            )
        classes = len(dataset.label_names)
        if cfg.model.num_classes and cfg.model.num_classes != classes:
            raise ValueError(
                f"model.num_classes={cfg.model.num_classes}, but dataset {cfg.data.name!r} has "
                f"{classes} classes"
            )
        splits.append(dataset)
    return splits[0], splits[1]


def global_indices(start: int, stop: int, num_images: int, seed: int) -> Tensor:
    """Indices of the training images at global positions [start, stop) of the data order.

    Epoch `e` is `torch.randperm(num_images)` seeded `seed · 1000003 + e`; epochs are
    concatenated, so any step's batch follows from the step alone.
    """
    first, last = start // num_images, (stop - 1) // num_images
    order = torch.cat([_epoch_order(num_images, seed, e) for e in range(first, last + 1)])
    offset = first * num_images
    return order[start - offset : stop - offset]


@functools.lru_cache(maxsize=4)
def _epoch_order(num_images: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(num_images, generator=generator)


def derived_seed(seed: int, stream: str) -> int:
    """A seed for one named random stream, so streams sharing `train.seed` differ."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:7], "little")
