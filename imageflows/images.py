"""Pictures: image grids and training curves as PNG files.

A level x of an N-level image maps to the pixel round(x * 255 / (N - 1)) (DESIGN section 4).
Files are written atomically: a temporary file in the target folder, then `os.replace`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from ._io import atomic_write

_MIN_WIDTH = 256  # small images (8x8 digits) are upscaled until a grid is about this wide
_BACKGROUND = 255  # padding and caption margin are white, so dark-background tiles stay apart


def to_pixels(images: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Map levels 0..N-1 to pixels 0..255 by round(x * 255 / (N - 1)); uint8, same shape."""
    if images.dtype.is_floating_point or images.dtype.is_complex or images.dtype == torch.bool:
        raise TypeError(f"images must hold integer levels (uint8), got {images.dtype}")
    if not 2 <= num_levels <= 256:
        raise ValueError(f"num_levels must be in 2..256, got {num_levels}")
    x = images.to(torch.int64)
    if x.numel() and (x.min() < 0 or x.max() >= num_levels):
        raise ValueError(
            f"image values {int(x.min())}..{int(x.max())} outside 0..{num_levels - 1}"
        )
    top = num_levels - 1
    return ((x * 255 + top // 2) // top).to(torch.uint8)  # integer round half up


def save_grid(
    images: torch.Tensor,
    path: str | Path,
    num_levels: int,
    nrow: int | None = None,
    row_labels: list[str] | None = None,
    padding: int = 2,
) -> Path:
    """Tile images `[B, C, H, W]` (C = 1 or 3) into one PNG, `nrow` images per row.

    Images narrower in total than ~256 pixels are upscaled by an integer factor (nearest
    neighbour). `row_labels`, one per grid row (e.g. "T=0.7"), are drawn at the left.

    Returns:
        The path written; parent folders are created.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, C, H, W] with C = 1 or 3, got {list(images.shape)}")
    b, c, h, w = images.shape
    if b == 0:
        raise ValueError("no images to save")
    if nrow is not None and nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} grid rows")
    scale = max(1, math.ceil(_MIN_WIDTH / (nrow * w)))
    tiles = to_pixels(images, num_levels)
    tiles = tiles.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    h, w = h * scale, w * scale

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    widths = [measure.textbbox((0, 0), label, font=font)[2] for label in row_labels or []]
    margin = max(widths) + 2 * padding if widths else 0
    grid = torch.full(
        (c, padding + rows * (h + padding), margin + padding + nrow * (w + padding)),
        _BACKGROUND,
        dtype=torch.uint8,
    )
    for i, tile in enumerate(tiles):
        top = padding + (i // nrow) * (h + padding)
        left = margin + padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = tile
    array = grid.permute(1, 2, 0).numpy()  # (H, W, C) for Pillow
    picture = Image.fromarray(array[..., 0] if c == 1 else array, "L" if c == 1 else "RGB")
    draw = ImageDraw.Draw(picture)
    ink = 0 if c == 1 else (0, 0, 0)
    for r, label in enumerate(row_labels or []):
        _, ascent, _, descent = draw.textbbox((0, 0), label, font=font)
        middle = padding + r * (h + padding) + h // 2
        draw.text((padding, middle - (ascent + descent) // 2), label, fill=ink, font=font)
    return atomic_write(path, lambda f: picture.save(f, format="PNG"))


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Plot every `*_bpd` series of metrics records (e.g. train_bpd, test_bpd) against `step`.

    Records without a `*_bpd` value are skipped, so all of metrics.jsonl can be passed.

    Returns:
        The PNG path written; parent folders are created.
    """
    # imported here: matplotlib adds ~30 MiB and 0.3 s to every process, most never plot
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series: dict[str, list[tuple[float, float]]] = {}
    for i, record in enumerate(records):
        keys = [k for k, v in record.items() if k.endswith("_bpd") and v is not None]
        if keys and "step" not in record:
            raise ValueError(f"metrics record {i} has {keys[0]} but no step: {record}")
        for key in keys:
            series.setdefault(key, []).append((record["step"], float(record[key])))

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)  # attaches a non-interactive canvas: no display, no pyplot state
    axes = figure.add_subplot()
    for key in sorted(series, key=lambda k: (k != "train_bpd", k)):
        steps, values = zip(*sorted(series[key]), strict=True)
        axes.plot(steps, values, marker="." if len(steps) < 50 else None, label=key[:-4])
    if series:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no bits/dim recorded yet", ha="center", transform=axes.transAxes)
    axes.set_xlabel("step")
    axes.set_ylabel("bits/dim")
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return atomic_write(path, lambda f: figure.savefig(f, format="png"))
