"""CIFAR-10 from the official python pickle batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .dataset import ImageDataset, check_labels

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]  # fmt: skip


def load_cifar10(split: str, root: Path) -> ImageDataset:
    """CIFAR-10 from the official python pickle batches: 32x32 RGB, 256 levels.

    The batches are read with `pickle`, which can run arbitrary code: load only trusted files.
    """
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: expected CIFAR-10 batch file(s) {', '.join(missing)}")
    images, labels = [], []
    for name in names:
        x, y = _read_batch(root / name)
        images.append(x)
        labels.append(y)
    meta_path = root / "batches.meta"
    label_names = CIFAR10_NAMES
    if meta_path.is_file():
        names = _unpickle(meta_path).get(b"label_names")
        if not isinstance(names, list) or len(names) != 10:
            raise ValueError(f"{meta_path}: expected key b'label_names' with 10 class names")
        label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return ImageDataset(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        list(label_names),
        256,
        "CIFAR-10",
    )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    for key in (b"data", b"labels"):
        if key not in batch:
            raise ValueError(f"{path}: missing key {key!r}; has {sorted(batch)}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: wrong count, {labels.size} labels for {len(data)} images")
    check_labels(labels, 10, path)
    return data.reshape(-1, 3, 32, 32), labels  # rows are channel-major: R plane, G, B


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            content = pickle.load(f, encoding="bytes")
    except Exception as err:  # unpickling can fail in arbitrary ways
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle ({err})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return content
