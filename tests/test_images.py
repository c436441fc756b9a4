from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imageflows.images import plot_curves, save_grid, to_pixels


def test_to_pixels_maps_levels_to_full_range() -> None:
    x = torch.tensor([0, 1, 8, 16], dtype=torch.uint8)
    assert to_pixels(x, 17).tolist() == [0, 16, 128, 255]  # round(x * 255 / 16)
    assert to_pixels(torch.tensor([0, 1], dtype=torch.uint8), 2).tolist() == [0, 255]
    full = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_pixels(full, 256), full)
    assert to_pixels(x, 17).dtype == torch.uint8


def test_to_pixels_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"outside 0..15"):
        to_pixels(torch.tensor([16], dtype=torch.uint8), 16)
    with pytest.raises(TypeError, match="integer levels"):
        to_pixels(torch.zeros(2), 17)


def test_grid_size_upscaling_and_pixels(tmp_path: Path) -> None:
    images = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    images[0] = 16
    images[1, 0, 0, 0] = 8
    path = save_grid(images, tmp_path / "sub" / "grid.png", num_levels=17, nrow=3)
    assert path == tmp_path / "sub" / "grid.png"
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left
    picture = Image.open(path)
    scale = 11  # smallest integer with 3 * 8 * scale >= 256
    tile = 8 * scale
    assert picture.mode == "L"
    assert picture.size == (2 + 3 * (tile + 2), 2 + 2 * (tile + 2))
    pixels = np.asarray(picture)
    assert (pixels[2 : 2 + tile, 2 : 2 + tile] == 255).all()  # max level -> white
    second = pixels[2 : 2 + tile, 4 + tile : 4 + 2 * tile]
    assert (second[:scale, :scale] == 128).all() and (second[scale:, scale:] == 0).all()
    assert (pixels[:2] == 255).all()  # padding


def test_grid_colour_without_upscaling(tmp_path: Path) -> None:
    images = torch.zeros(2, 3, 4, 200, dtype=torch.uint8)
    images[1, 0] = 31
    images[1, 2] = 15
    picture = Image.open(save_grid(images, tmp_path / "rgb.png", num_levels=32, nrow=2, padding=0))
    assert picture.mode == "RGB" and picture.size == (400, 4)
    assert picture.getpixel((300, 2)) == (255, 0, 123)  # round(15 * 255 / 31) = 123


def test_grid_row_labels(tmp_path: Path) -> None:
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    plain = Image.open(save_grid(images, tmp_path / "plain.png", 17, nrow=2))
    labels = ["T=0", "T=0.7"]
    captioned = Image.open(save_grid(images, tmp_path / "cap.png", 17, nrow=2, row_labels=labels))
    assert captioned.size[1] == plain.size[1] and captioned.size[0] > plain.size[0]
    margin = captioned.size[0] - plain.size[0]
    assert np.asarray(captioned)[:, :margin].min() < 128  # dark caption text was drawn
    with pytest.raises(ValueError, match="1 row labels for 2 grid rows"):
        save_grid(images, tmp_path / "bad.png", 17, nrow=2, row_labels=["x"])


def test_grid_rejects_bad_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"C = 1 or 3, got \[2, 2, 8, 8\]"):
        save_grid(torch.zeros(2, 2, 8, 8, dtype=torch.uint8), tmp_path / "x.png", 17)


def test_plot_curves(tmp_path: Path) -> None:
    records = [{"step": s, "train_bpd": 3.0 - s / 1000, "lr": 1e-3} for s in range(0, 500, 50)]
    records += [{"step": 250, "test_bpd": 2.9}, {"step": 500, "test_bpd": 2.6}, {"event": "x"}]
    path = plot_curves(records, tmp_path / "plots" / "curves.png", title="glow-digits")
    picture = Image.open(path)
    assert picture.format == "PNG" and picture.size[0] > 100
    assert plot_curves([], tmp_path / "empty.png").is_file()
    with pytest.raises(ValueError, match="record 0 has train_bpd but no step"):
        plot_curves([{"train_bpd": 1.0}], tmp_path / "bad.png")
