"""Datasets as uint8 image tensors: scikit-learn digits, MNIST, CIFAR-10 and image folders.

Every loader reads local files only and returns an `ImageDataset` whose images are uint8
`[N, C, H, W]` with values in `0..num_levels-1` (DESIGN section 4). `load_dataset` picks the
loader by name; `prepare` reduces 256-level data to the 2^b levels a model sees.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

SPLITS = ("train", "test")
_DIGIT_NAMES = [str(i) for i in range(10)]
_CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]  # fmt: skip
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
        dataset = _load_digits(split)
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


def _load_digits(split: str, root: Path | None = None) -> ImageDataset:
    """scikit-learn's 8x8 digits: values 0..16 (17 levels), 1437 train and 360 test images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return ImageDataset(
        torch.from_numpy(x), torch.from_numpy(y), _DIGIT_NAMES, 17, "digits (scikit-learn)"
    )


def _load_mnist(split: str, root: Path) -> ImageDataset:
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
    _check_labels(labels, 10, labels_path)
    return ImageDataset(
        torch.from_numpy(images[:, None].copy()),  # (N, 1, 28, 28)
        torch.from_numpy(labels.astype(np.int64)),
        _DIGIT_NAMES,
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


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"{path}: label {int(labels.max())} outside 0..{num_classes - 1}")


def _load_cifar10(split: str, root: Path) -> ImageDataset:
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
        x, y = _read_cifar_batch(root / name)
        images.append(x)
        labels.append(y)
    meta_path = root / "batches.meta"
    label_names = _CIFAR10_NAMES
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


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
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
    _check_labels(labels, 10, path)
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


def _load_folder(split: str, root: Path) -> ImageDataset:
    """An image-folder tree `root/split/class/*.png|jpg|jpeg`; classes sorted by name.

    All images must have one size. The set is grey (1 channel) if every image is grey, else RGB.
    """
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"{split_dir}: no such split folder; expected {root}/SPLIT/CLASS/*.png|jpg, "
            f"found splits: {', '.join(found) or 'none'}"
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(
            p for p in (split_dir / name).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES
        )
        files += found
        labels += [label] * len(found)
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
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.tensor(labels, dtype=torch.int64),
        classes,
        256,
        _folder_description(root, classes, files),
    )


def _read_image(path: Path) -> np.ndarray:
    """`[H, W]` uint8 for a grey image, `[H, W, 3]` for anything else."""
    try:
        with Image.open(path) as image:
            mode = "L" if image.mode in ("1", "L", "LA") else "RGB"
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: unreadable image ({err})") from None


def _folder_description(root: Path, classes: list[str], files: list[Path]) -> str:
    """E.g. "CIFAR-10 (JPEG q75)", so lossy re-encodes are never reported as the original."""
    name = "CIFAR-10" if classes == _CIFAR10_NAMES else f"folder {root.name}"
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


LOADERS: dict[str, Callable[[str, Path], ImageDataset]] = {
    "digits": _load_digits,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "folder": _load_folder,
}
DATASETS = tuple(LOADERS)
