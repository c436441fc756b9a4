"""Datasets as uint8 image tensors: scikit-learn digits, MNIST, CIFAR-10 and image folders.

Every loader reads local files only and returns an `ImageDataset` whose images are uint8
`[N, C, H, W]` with values in `0..num_levels-1` (DESIGN section 4). `load_dataset` picks the
loader by name; `prepare` reduces 256-level data to the 2^b levels a model sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .cifar10 import load_cifar10
from .convert import CONVERSION_RULE, convert
from .dataset import ImageDataset, prepare, to_levels
from .digits import load_digits, load_mnist
from .folder import IMAGE_SUFFIXES, folder_files, load_folder

SPLITS = ("train", "test")
LOADERS: dict[str, Callable[[str, Path], ImageDataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "folder": load_folder,
}
DATASETS = tuple(LOADERS)

__all__ = [
    "CONVERSION_RULE",
    "DATASETS",
    "IMAGE_SUFFIXES",
    "LOADERS",
    "SPLITS",
    "ImageDataset",
    "convert",
    "folder_files",
    "load_dataset",
    "prepare",
    "to_levels",
]


def load_dataset(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    description: str | None = None,
) -> ImageDataset:
    """Load split `split` of dataset `name` from `data_dir`.

    Args:
        name: one of `DATASETS`: "digits", "mnist", "cifar10", "folder".
        split: "train" or "test"; for "folder", the name of a subdirectory of `data_dir`.
        data_dir: folder holding the files; "digits" needs none (bundled with scikit-learn).
        description: overrides the dataset's human name in reports.

    Raises:
        ValueError: unknown name or split, or malformed files (the message names the file).
        FileNotFoundError: a missing folder or file (the message says what was expected).
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(LOADERS)}")
    if name != "folder" and split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {name}; valid splits: {', '.join(SPLITS)}")
    if name == "digits":
        dataset = load_digits(split)
    else:
        if data_dir is None:
            raise ValueError(f"dataset {name!r} needs a data directory (data_dir / --data-dir)")
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such data directory for dataset {name!r}")
        dataset = LOADERS[name](split, root)
    if description is not None:
        dataset = dataclasses.replace(dataset, description=description)
    return dataset
