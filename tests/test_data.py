import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imageflows.data import (
    DATASETS,
    ImageDataset,
    convert,
    folder_files,
    load_dataset,
    prepare,
    to_levels,
)

MNIST_DIR = Path("/work/shared/data/mnist")


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of uint8 `array`, gzipped when `path` ends in .gz."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(raw)
    return path


def make_mnist(root: Path, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    """Train files gzipped, test files plain, so both encodings are read."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    write_idx(root / "train-images-idx3-ubyte.gz", arrays["train_x"])
    write_idx(root / "train-labels-idx1-ubyte.gz", arrays["train_y"])
    write_idx(root / "t10k-images-idx3-ubyte", arrays["test_x"])
    write_idx(root / "t10k-labels-idx1-ubyte", arrays["test_y"])
    return arrays


def make_cifar(root: Path, per_batch: int = 4, meta: bool = True) -> None:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
        }
        (root / name).write_bytes(pickle.dumps(batch))
    if meta:
        names = [f"class{i}".encode() for i in range(10)]
        (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))


def write_image(path: Path, array: np.ndarray, **save_args: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_args)


def test_registry_names() -> None:
    assert set(DATASETS) == {"digits", "mnist", "cifar10", "folder"}


def test_digits_split_is_stratified() -> None:
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert train.num_levels == 17 and int(train.images.max()) == 16
    assert train.label_names == [str(i) for i in range(10)]
    assert train.description == "digits (scikit-learn)"
    counts = torch.bincount(test.labels, minlength=10)
    total = counts + torch.bincount(train.labels, minlength=10)
    assert torch.all((counts - 0.2 * total).abs() <= 1)


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_reads_gzipped_and_plain_idx(tmp_path: Path, split: str) -> None:
    arrays = make_mnist(tmp_path)
    data = load_dataset("mnist", split, tmp_path)
    assert data.images.shape == (len(arrays[f"{split}_x"]), 1, 28, 28)
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    assert torch.equal(data.images[:, 0], torch.from_numpy(arrays[f"{split}_x"]))
    assert data.labels.tolist() == arrays[f"{split}_y"].tolist()
    assert data.num_levels == 256 and data.description == "MNIST"


def test_mnist_missing_file(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", "test", tmp_path)


def test_mnist_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("mnist", "train", tmp_path / "nowhere")


def test_mnist_truncated_file(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", "test", tmp_path)


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", "train", tmp_path)


def test_mnist_bad_magic(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*bad magic"):
        load_dataset("mnist", "test", tmp_path)


def test_mnist_wrong_dimensions(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 784), np.uint8))
    with pytest.raises(ValueError, match="2 dimensions, expected 3"):
        load_dataset("mnist", "test", tmp_path)


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="wrong count, 2 labels for 3 images"):
        load_dataset("mnist", "test", tmp_path)


def test_mnist_label_out_of_range(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 10], np.uint8))
    with pytest.raises(ValueError, match="label 10 outside 0..9"):
        load_dataset("mnist", "test", tmp_path)


def test_cifar10_batches(tmp_path: Path) -> None:
    make_cifar(tmp_path / "cifar-10-batches-py")
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.labels.shape == (20,)
    assert train.label_names == [f"class{i}" for i in range(10)]
    assert train.num_levels == 256 and train.description == "CIFAR-10"
    batch = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    # Rows hold the red plane, then green, then blue, each row-major.
    assert torch.equal(test.images[1, 1, 2], torch.from_numpy(batch[b"data"][1, 1088:1120]))
    assert test.labels.tolist() == batch[b"labels"]


def test_cifar10_without_meta_uses_official_names(tmp_path: Path) -> None:
    make_cifar(tmp_path, meta=False)
    assert load_dataset("cifar10", "test", tmp_path).label_names[:2] == ["airplane", "automobile"]


def test_cifar10_missing_batch(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", "train", tmp_path)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, "missing key b'labels'"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"uint8 \[N, 3072\]"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
        ([1, 2], "expected a pickled dict"),
    ],
)
def test_cifar10_malformed_batch(tmp_path: Path, batch: object, message: str) -> None:
    make_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=f"test_batch.*{message}"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar10_unreadable_pickle(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch: not a readable"):
        load_dataset("cifar10", "test", tmp_path)


def test_folder_tree(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    colour = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    write_image(tmp_path / "train" / "dog" / "a.png", colour)
    write_image(tmp_path / "train" / "cat" / "b.png", grey)
    write_image(tmp_path / "train" / "cat" / "c.jpg", colour, quality=90)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    data = load_dataset("folder", "train", tmp_path)
    assert data.label_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 1, 0]  # round-robin over the classes: b, a, c
    assert data.images.shape == (3, 3, 6, 5) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[1], torch.from_numpy(colour).permute(2, 0, 1))
    assert [p.name for p in folder_files(tmp_path, "train")] == ["b.png", "a.png", "c.jpg"]
    # A grey image in a colour set repeats its channel.
    assert torch.equal(data.images[0], torch.from_numpy(grey).expand(3, 6, 5))
    assert data.num_levels == 256
    assert data.description == f"folder {tmp_path.name} (JPEG q90)"


def test_folder_all_grey_has_one_channel(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_image(tmp_path / "test" / "x" / "a.png", grey)
    data = load_dataset("folder", "test", tmp_path, description="my set")
    assert data.images.shape == (1, 1, 3, 4)
    assert torch.equal(data.images[0, 0], torch.from_numpy(grey))
    assert data.description == "my set"


def test_folder_detects_cifar10_jpeg(tmp_path: Path) -> None:
    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    for name in names:
        write_image(tmp_path / "test" / name / "0.jpg", np.zeros((32, 32, 3), np.uint8))
    data = load_dataset("folder", "test", tmp_path)
    assert data.label_names == names
    assert data.description == "CIFAR-10 (JPEG q75)"  # Pillow's default JPEG quality


def test_folder_size_mismatch(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a" / "1.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "train" / "b" / "2.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"2.png: size 5x4 differs from 4x4"):
        load_dataset("folder", "train", tmp_path)


def test_folder_corrupted_image(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a" / "1.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "train" / "a" / "2.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ValueError, match="2.jpg: unreadable image"):
        load_dataset("folder", "train", tmp_path)


def test_folder_missing_split(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a" / "1.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="found splits: train"):
        load_dataset("folder", "valid", tmp_path)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset("folder", "train", tmp_path)


def test_unknown_name_and_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*digits, mnist, cifar10"):
        load_dataset("svhn", "train", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'valid'.*train, test"):
        load_dataset("digits", "valid")
    with pytest.raises(ValueError, match="needs a data directory"):
        load_dataset("mnist", "train")


def test_to_levels() -> None:
    x = torch.tensor([0, 7, 8, 128, 255], dtype=torch.uint8)
    assert to_levels(x, 256, 256) is x
    assert to_levels(x, 256, 32).tolist() == [0, 0, 1, 16, 31]
    assert to_levels(x, 256, 2).tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="256 levels to 17 levels"):
        to_levels(x, 256, 17)
    with pytest.raises(ValueError, match="17 levels to 256 levels"):
        to_levels(x, 17, 256)
    with pytest.raises(TypeError, match="uint8"):
        to_levels(x.float(), 256, 32)


def test_prepare_and_subset(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    data = load_dataset("mnist", "train", tmp_path)
    reduced = prepare(data, 32)
    assert reduced.num_levels == 32 and int(reduced.images.max()) <= 31
    assert torch.equal(reduced.images, data.images >> 3)
    part = data.subset([3, 1])
    assert len(part) == 2 and part.image_shape == (1, 28, 28)
    assert torch.equal(part.labels, data.labels[[3, 1]])


def test_dataset_validates_fields() -> None:
    with pytest.raises(ValueError, match="images must be uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), [], 256, "x")
    with pytest.raises(ValueError, match=r"labels must be int64 \[2\]"):
        images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
        ImageDataset(images, torch.zeros(3, dtype=torch.int64), [], 256, "x")


@pytest.mark.slow
def test_real_mnist() -> None:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    train = load_dataset("mnist", "train", MNIST_DIR)
    test = load_dataset("mnist", "test", MNIST_DIR)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert torch.bincount(test.labels).tolist()[:2] == [980, 1135]


def test_convert_follows_the_stated_rule() -> None:
    """RGB → grey is Pillow's ITU-R 601-2 luma and sizes change by Pillow's bilinear resize; a
    17-level set goes to 256 levels by round(x·255/16) first; labels are kept."""
    generator = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 3, 32, 32), generator=generator, dtype=torch.uint8)
    data = ImageDataset(rgb, torch.tensor([0, 1, 2]), ["a", "b", "c"], 256, "RGB set")
    grey = convert(data, (1, 28, 28), 256)
    assert grey.images.shape == (3, 1, 28, 28) and grey.images.dtype == torch.uint8
    by_pillow = Image.fromarray(rgb[1].permute(1, 2, 0).numpy()).convert("L")
    by_pillow = by_pillow.resize((28, 28), Image.Resampling.BILINEAR)
    assert torch.equal(grey.images[1, 0], torch.from_numpy(np.array(by_pillow)))
    assert torch.equal(grey.labels, data.labels) and "1x28x28" in grey.description
    # a power-of-two level count is reached by x >> (8 - b), as `to_levels`
    assert torch.equal(convert(data, (1, 28, 28), 32).images, grey.images >> 3)
    digits = ImageDataset(
        torch.tensor([[[[0, 8], [16, 4]]]], dtype=torch.uint8), torch.tensor([0]), ["0"], 17, "d"
    )
    up = convert(digits, (3, 2, 2), 256)
    assert up.images[0, :, 0, 1].tolist() == [128, 128, 128]  # round(8·255/16) = 127.5 → 128
    assert up.images[0, 0].tolist() == [[0, 128], [255, 64]]
    assert convert(up, (1, 2, 2), 17).images[0, 0].tolist() == [[0, 8], [16, 4]]
    with pytest.raises(ValueError, match="channels"):
        convert(data, (2, 28, 28), 256)
