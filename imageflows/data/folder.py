"""Image-folder trees `root/split/class/*.png|jpg|jpeg`, with JPEG re-encodes named as such."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .cifar10 import CIFAR10_NAMES
from .dataset import ImageDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_folder(split: str, root: Path) -> ImageDataset:
    """An image-folder tree `root/split/class/*.png|jpg|jpeg`; classes sorted by name.

    Images come round-robin over the classes (the first file of each class, then the second,
    ...), so that the first N images, which `--limit` and `train.eval_images` take, sample
    every class rather than the first one or two. All images must have one size. The set is
    grey (1 channel) if every image is grey, else RGB.
    """
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"{split_dir}: no such split folder; expected {root}/SPLIT/CLASS/*.png|jpg, "
            f"found splits: {', '.join(found) or 'none'}"
        )
    classes = _class_files(split_dir)
    labels, files = _round_robin(classes)
    if not files:
        raise FileNotFoundError(f"{split_dir}: no images; expected {split_dir}/CLASS/*.png|jpg")
    arrays = []
    for path in files:
        array = _read_image(path)
        if arrays and array.shape[:2] != arrays[0].shape[:2]:
            (h, w), (h0, w0) = array.shape[:2], arrays[0].shape[:2]
            raise ValueError(f"{path}: size {w}x{h} differs from {w0}x{h0} of {files[0]}")
        arrays.append(array)
    if any(a.ndim == 3 for a in arrays):
        # Grey images join a colour set losslessly by repeating their one channel.
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays]
        images = np.stack(arrays).transpose(0, 3, 1, 2)  # (N, 3, H, W)
    else:
        images = np.stack(arrays)[:, None]  # (N, 1, H, W)
    names = [name for name, _ in classes]
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.tensor(labels, dtype=torch.int64),
        names,
        256,
        _description(root, names, files),
    )


def folder_files(root: str | Path, split: str) -> list[Path]:
    """The image files of split `split` of a folder tree, in the order `load_folder` reads
    them (round-robin over the classes, sorted by name; files sorted within each class)."""
    return _round_robin(_class_files(Path(root).expanduser() / split))[1]


def _round_robin(classes: list[tuple[str, list[Path]]]) -> tuple[list[int], list[Path]]:
    """(labels, files): the i-th file of every class before any (i+1)-th."""
    order = sorted(
        (rank, label, path)
        for label, (_, paths) in enumerate(classes)
        for rank, path in enumerate(paths)
    )
    return [label for _, label, _ in order], [path for _, _, path in order]


def _class_files(split_dir: Path) -> list[tuple[str, list[Path]]]:
    """`(class name, sorted image files)` for each class folder of `split_dir`, sorted."""
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir())
    return [
        (folder.name, sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        for folder in folders
    ]


def _read_image(path: Path) -> np.ndarray:
    """`[H, W]` uint8 for a grey image, `[H, W, 3]` for anything else."""
    try:
        with Image.open(path) as image:
            mode = "L" if image.mode in ("1", "L", "LA") else "RGB"
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: unreadable image ({err})") from None


def _description(root: Path, classes: list[str], files: list[Path]) -> str:
    """E.g. "CIFAR-10 (JPEG q75)", so lossy re-encodes are never reported as the original."""
    name = "CIFAR-10" if classes == CIFAR10_NAMES else f"folder {root.name}"
    jpeg = next((p for p in files if p.suffix.lower() in (".jpg", ".jpeg")), None)
    if jpeg is None:
        return name
    quality = _jpeg_quality(jpeg)
    return f"{name} (JPEG q{quality})" if quality else f"{name} (JPEG)"


# The IJG (libjpeg) luminance table, which "quality" scales.
_IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
)  # fmt: skip


def _jpeg_quality(path: Path) -> int | None:
    """The IJG quality setting whose luminance table `path` uses, or None if none matches."""
    with Image.open(path) as image:
        table = np.asarray(getattr(image, "quantization", {}).get(0, []))
    if table.shape != (64,):
        return None
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        if np.array_equal(np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255), table):
            return quality
    return None
