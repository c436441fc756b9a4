"""Latent-space operations (`imageflows.latent`), attribute directions on disk
(`imageflows.attributes`), the run explorer, and the interpolate and manipulate commands, on a
tiny trained Glow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from imageflows import attributes, cli
from imageflows.attributes import cached_directions, direction_path, read_attribute_file
from imageflows.config import Config, DataConfig, ModelConfig
from imageflows.data import folder_files, load_dataset
from imageflows.explore import Explorer
from imageflows.latent import (
    attribute_directions,
    edit,
    interpolate,
    interpolation_path,
    reconstruct,
)
from imageflows.models import build_model
from imageflows.train import load

from ._tiny_run import copy_run, tiny_run


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load(tiny_run())


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_dataset("digits", "test").images


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolation_endpoints_reproduce_the_images(model, digits, spherical: bool) -> None:
    x_a, x_b = digits[[0, 5]], digits[[1, 9]]
    frames = interpolate(model, x_a, x_b, steps=7, spherical=spherical)
    assert frames.shape == (2, 7, 1, 8, 8) and frames.dtype == torch.uint8
    assert torch.equal(frames[:, 0], x_a) and torch.equal(frames[:, -1], x_b)
    assert not torch.equal(frames[:, 3], x_a)  # the middle is neither end
    one = interpolate(model, digits[0], digits[1], steps=3, spherical=spherical)
    assert one.shape == (3, 1, 8, 8)
    assert torch.equal(one[0], digits[0]) and torch.equal(one[-1], digits[1])


def test_linear_and_spherical_paths() -> None:
    a = torch.zeros(1, 2, 1, 1)
    b = torch.zeros(1, 2, 1, 1)
    a[0, 0], b[0, 1] = 2.0, 2.0  # orthogonal, equal norms
    linear = interpolation_path(a, b, steps=5)
    spherical = interpolation_path(a, b, steps=5, spherical=True)
    assert linear.shape == spherical.shape == (1, 5, 2, 1, 1)
    assert torch.allclose(linear[0, 2].flatten(), torch.tensor([1.0, 1.0]))
    # slerp keeps the norm of equal-norm ends and moves at constant angular speed
    assert torch.allclose(spherical[0].flatten(1).norm(dim=1), torch.full((5,), 2.0))
    assert torch.allclose(spherical[0, 2].flatten(), torch.full((2,), math.sqrt(2)))
    assert torch.allclose(spherical[0, 1].flatten(), 2 * torch.tensor([0.9238795, 0.3826834]))
    # parallel ends: slerp is undefined, the path falls back to the straight line
    assert torch.equal(interpolation_path(a, 3 * a, 4, True), interpolation_path(a, 3 * a, 4))
    for steps in (0, 1):
        with pytest.raises(ValueError, match="at least 2 steps"):
            interpolation_path(a, b, steps)
    with pytest.raises(ValueError, match="differ in shape"):
        interpolation_path(a, b[:, :1], 3)


def test_alpha_zero_reproduces_the_input(model, digits) -> None:
    x = digits[:4]
    assert torch.equal(reconstruct(model, x), x)
    direction = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    rows = edit(model, x, direction, [0.0, 3.0])
    assert rows.shape == (2, 4, 1, 8, 8)
    assert torch.equal(rows[0], x) and not torch.equal(rows[1], x)
    with pytest.raises(ValueError, match="does not fit"):
        edit(model, x, direction[:, :4], [1.0])
    with pytest.raises(ValueError, match="finite"):
        edit(model, x, direction, [float("nan")])


class _Identity:
    """A stand-in model whose latent is the image itself, so means are known exactly."""

    image_shape = (1, 2, 2)
    num_classes = 0

    def encode(self, x: torch.Tensor, labels: None = None) -> torch.Tensor:
        return x.float()


def test_direction_points_from_the_negative_to_the_positive_mean() -> None:
    images = torch.tensor([5, 7, 1, 3, 100], dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2)
    signs = torch.tensor([[1, -1], [1, -1], [-1, 1], [-1, 0], [0, 1]])
    directions, counts = attribute_directions(_Identity(), images, signs, batch_size=2)
    # column 0: mean(5, 7) - mean(1, 3) = 4; column 1: mean(1, 100) - mean(5, 7) = 44.5
    assert torch.equal(directions[0], torch.full((1, 2, 2), 4.0))
    assert torch.equal(directions[1], torch.full((1, 2, 2), 44.5))
    assert counts.tolist() == [[2, 2], [2, 2]]
    one, count = attribute_directions(_Identity(), images, signs[:, 0])
    assert torch.equal(one, directions[0]) and count.tolist() == [2, 2]
    with pytest.raises(ValueError, match=r"no positive \(\+1\) examples"):
        attribute_directions(_Identity(), images, -torch.ones(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\+1.*-1.*0"):
        attribute_directions(_Identity(), images, torch.full((5,), 2))


def test_direction_on_a_model_is_the_difference_of_mean_latents(model, digits) -> None:
    labels = load_dataset("digits", "test").labels
    signs = torch.where(labels == 3, 1, -1)
    direction, _ = attribute_directions(model, digits, signs, batch_size=7)
    eps = model.encode(digits).double()
    expected = eps[labels == 3].mean(0) - eps[labels != 3].mean(0)
    assert torch.allclose(direction.double(), expected, atol=1e-5)
    projection = eps.flatten(1) @ direction.double().flatten()
    assert projection[labels == 3].mean() > projection[labels != 3].mean()


ATTRIBUTES = """3
Smiling  Young Bald
a.png  1 -1 -1
b.png -1  1 -1
c.png  1  1  1
"""


def test_attribute_file_parser(tmp_path: Path) -> None:
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(ATTRIBUTES)
    table = read_attribute_file(path)
    assert table.names == ["Smiling", "Young", "Bald"] and table.files == [
        "a.png",
        "b.png",
        "c.png",
    ]
    assert table.values.tolist() == [[1, -1, -1], [-1, 1, -1], [1, 1, 1]]
    signs = table.signs_for(["x/c.png", "missing.png", "a.png"])
    assert signs.dtype == torch.int8 and signs.tolist() == [[1, 1, 1], [0, 0, 0], [1, -1, -1]]

    broken = {
        "2\nSmiling Young\na.png 1 -1\n": "announces 2 images, the file lists 1",
        "x\nSmiling\n": ":1: expected the number of images",
        "1\nSmiling Young\na.png 1\n": ":3: expected a file name and 2 values, got 2 fields",
        "1\nSmiling\na.png yes\n": ":3: values must be",
        "1\nSmiling\na.png 2\n": ":3: values must be",
        "1\nA A\na.png 1 1\n": ":2: expected distinct attribute names",
        "2\nA\na.png 1\na.png 1\n": "more than once",
    }
    for text, message in broken.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_attribute_file(path)
    with pytest.raises(FileNotFoundError, match="no such attribute file"):
        read_attribute_file(tmp_path / "nope.txt")


def test_directions_are_cached_in_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(tmp_path / "run")
    first = Explorer(run).directions(["3", "7"])
    path = direction_path(run, "digits", "test", "3", step=4)
    assert path == run / "directions" / "digits-test-3-step4.safetensors" and path.is_file()
    assert not first["3"].cached and first["3"].path == path
    assert first["3"].n_positive == 37 and first["3"].n_negative == 323

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached direction was recomputed")

    monkeypatch.setattr(attributes, "attribute_directions", forbidden)
    second = Explorer(run).directions(["7", "3"])
    assert second["3"].cached and second["7"].cached
    assert torch.equal(second["3"].vector, first["3"].vector)
    assert (second["3"].n_positive, second["3"].n_negative) == (37, 323)
    monkeypatch.undo()

    # Other data under the same key (here: other labels) is not served from the cache.
    explorer = Explorer(run)
    signs = -explorer._signs[:, [3]]
    model, images = explorer.model, explorer.images
    other = cached_directions(model, images, signs, ["3"], run, "digits", "test", step=4)
    assert not other["3"].cached and torch.allclose(other["3"].vector, -first["3"].vector)
    # Raw weights and other splits have their own files; no step means no file at all.
    assert (
        Explorer(run, ema=False).directions(["3"])["3"].path.name.endswith("step4-raw.safetensors")
    )
    uncached = cached_directions(model, images, signs, ["3"], run, "digits", "x", step=None)
    assert uncached["3"].path is None and not any(run.glob("directions/*-x-*"))
    path.write_bytes(b"torn")
    assert not Explorer(run).directions(["3"])["3"].cached  # unreadable: recomputed


def test_explorer_rejects_bad_requests() -> None:
    explorer = Explorer(tiny_run())
    with pytest.raises(ValueError, match=r"image index 360 out of range 0\.\.359"):
        explorer.interpolate([(0, 360)], 3)
    with pytest.raises(ValueError, match="unknown attribute 'smile'; valid attributes: 0, 1"):
        explorer.directions(["smile"])
    with pytest.raises(ValueError, match="attribute file needs a folder dataset"):
        Explorer(tiny_run(), attr_file="list_attr_celeba.txt")


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_interpolate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "interp.png"
    argv = ["interpolate", str(tiny_run()), "--pairs", "3:17,5:8", "--steps", "9"]
    assert cli.main([*argv, "--spherical", "--out", str(out), "--json"]) == 0
    result = _json(capsys)
    assert result["out"] == str(out) and result["pairs"] == [[3, 17], [5, 8]]
    assert result["steps"] == 9 and result["spherical"] and result["t"][4] == 0.5
    assert result["step"] == 4 and "digits" in result["data"] and len(result["labels"]) == 2
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 4 * picture.height  # 2 rows of 9
    assert cli.main([*argv[:2], "--pairs", "0:360", "--out", str(out)]) == 2
    assert "image index 360 out of range" in capsys.readouterr().err
    assert cli.main([*argv[:2], "--pairs", "3-17"]) == 2
    assert "expected pairs of image indices" in capsys.readouterr().err


def test_manipulate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tmp_path / "run")
    out = tmp_path / "edit.png"
    argv = ["manipulate", str(run), "--attribute", "3", "--alphas", "-2,-1,0,1,2"]
    assert cli.main([*argv, "--images", "0,1,2", "--out", str(out), "--json"]) == 0
    result = _json(capsys)
    assert result["alphas"] == [-2, -1, 0, 1, 2] and result["images"] == [0, 1, 2]
    assert result["direction"] == str(run / "directions" / "digits-test-3-step4.safetensors")
    assert not result["direction_cached"] and result["direction_norm"] > 0
    with Image.open(out) as picture:
        assert picture.height > picture.width  # 6 rows (input + 5 alphas) of 3 images
    assert cli.main([*argv, "--images", "4", "--out", str(out)]) == 0
    assert "direction read from" in capsys.readouterr().err
    assert cli.main([*argv[:3], "smile", "--out", str(out)]) == 2
    assert "unknown attribute 'smile'" in capsys.readouterr().err


def test_manipulate_with_a_celeba_attribute_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A folder dataset of 8x8 grey images, one class folder, as CelebA is usually laid out.
    digits = load_dataset("digits", "test")
    folder = tmp_path / "faces" / "test" / "all"
    folder.mkdir(parents=True)
    rows = []
    for i in range(12):
        Image.fromarray(digits.images[i, 0].numpy() * 15).save(folder / f"{i:06d}.png")
        rows.append(f"{i:06d}.png {1 if digits.labels[i] % 2 else -1} {1 if i < 6 else -1}")
    attr_file = tmp_path / "list_attr_celeba.txt"
    attr_file.write_text(f"{len(rows)}\nOdd Early\n" + "\n".join(rows) + "\n")
    files = folder_files(tmp_path / "faces", "test")
    assert [path.name for path in files] == [f"{i:06d}.png" for i in range(12)]

    # A hand-made run of a 256-level model (no checkpoints: directions are not cached).
    run = tmp_path / "run"
    model_cfg = ModelConfig(image_shape=(1, 8, 8), num_levels=256, depth=1, hidden_channels=8)
    Config(model=model_cfg, data=DataConfig(name="folder")).save(run / "config.json")
    model = build_model(model_cfg)
    model.initialize(load_dataset("folder", "test", tmp_path / "faces").images)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, run / "model.safetensors"
    )

    out = tmp_path / "edit.png"
    argv = ["manipulate", str(run), "--data", "folder", "--data-dir", str(tmp_path / "faces")]
    argv += ["--attr-file", str(attr_file), "--attribute", "Odd", "--images", "0,1"]
    assert cli.main([*argv, "--out", str(out), "--json"]) == 0
    result = _json(capsys)
    odd = int((digits.labels[:12] % 2).sum())
    assert (result["n_positive"], result["n_negative"]) == (odd, 12 - odd)
    assert result["direction"] is None and result["step"] is None and out.is_file()
    assert cli.main([*argv[:-4], "--attribute", "3", "--out", str(out)]) == 2
    assert "valid attributes: Odd, Early" in capsys.readouterr().err
