"""Handwritten digits: scikit-learn's bundled 8x8 digits and MNIST from its IDX files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .dataset import ImageDataset, check_labels

DIGIT_NAMES = [str(i) for i in range(10)]


def load_digits(split: str, root: Path | None = None) -> ImageDataset:
    """scikit-learn's 8x8 digits: values 0..16 (17 levels), 1437 train and 360 test images."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    x = digits.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return ImageDataset(
        torch.from_numpy(x), torch.from_numpy(y), DIGIT_NAMES, 17, "digits (scikit-learn)"
    )


def load_mnist(split: str, root: Path) -> ImageDataset:
    """MNIST from its IDX files in `root`, gzipped or not: 28x28 grey, 256 levels."""
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_file(root, f"{prefix}-images-idx3-ubyte", "MNIST images")
    labels_path = _find_file(root, f"{prefix}-labels-idx1-ubyte", "MNIST labels")
    images = _read_idx(images_path, ndim=3)
    labels = _read_idx(labels_path, ndim=1)
    if len(labels) != len(images):
        raise ValueError(
            f"{labels_path}: wrong count, {len(labels)} labels for {len(images)} images "
            f"in {images_path.name}"
        )
    check_labels(labels, 10, labels_path)
    return ImageDataset(
        torch.from_numpy(images[:, None].copy()),  # (N, 1, 28, 28)
        torch.from_numpy(labels.astype(np.int64)),
        DIGIT_NAMES,
        256,
        "MNIST",
    )


def _find_file(root: Path, stem: str, what: str) -> Path:
    for path in (root / stem, root / f"{stem}.gz"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{root}: expected {what} file {stem} or {stem}.gz")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file as a uint8 array: big-endian magic 0x0000 08 NDIM, NDIM uint32 sizes, data."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise ValueError(f"{path}: bad magic number {raw[:4].hex()!r}, not an IDX file")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX data type 0x{raw[2]:02x}, expected 0x08 (uint8)")
    if raw[3] != ndim:
        raise ValueError(f"{path}: IDX file has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated, header needs {header} bytes, file has {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: {state}, sizes {list(shape)} need {expected} bytes, file has {len(raw)}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable gzip file ({err})") from None
