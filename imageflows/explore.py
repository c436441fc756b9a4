"""A trained run and one data split, loaded once, for the latent-space tools: the backend of
`imageflows interpolate`, `imageflows manipulate`, `imageflows encode` and the web app of
`imageflows serve`.

Attributes come from labels: each class of a labelled dataset (direction = class mean minus the
mean of the rest), or the columns of a CelebA-style attribute file matched to the images of a
`folder` dataset by file name.

On a class-conditional run every image is encoded with its own dataset label, and decoded with
it too unless a command says otherwise (`imageflows.latent.class_labels` decides).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from imageflows.attributes import Direction, cached_directions, read_attribute_file
from imageflows.data import folder_files
from imageflows.images import save_grid
from imageflows.latent import check_alphas, edit, interpolate
from imageflows.runs import run_config, run_dataset
from imageflows.train.checkpoint import load, run_step


class Explorer:
    """A run's model (loaded once, eval mode) with the images and attributes of one data split.

    Args:
        run: the run directory.
        data: dataset name; default the run's own.
        data_dir: the dataset's folder; default the run's when `data` is the run's dataset.
        split: the split whose images are shown, edited and used for directions.
        attr_file: a CelebA-style attribute file (`list_attr_celeba.txt`) for a `folder`
            dataset; without it, the attributes are the dataset's class names.
        ema: the EMA weights (`False`: the raw weights of the newest checkpoint).
        batch_size: images per encode call when computing directions.
    """

    def __init__(
        self,
        run: str | Path,
        data: str | None = None,
        data_dir: str | Path | None = None,
        split: str = "test",
        attr_file: str | Path | None = None,
        ema: bool = True,
        batch_size: int = 256,
    ) -> None:
        self.run = Path(run)
        config = run_config(self.run)
        self.model = load(self.run, ema=ema)
        self.ema = ema
        self.batch_size = batch_size
        self.step: int | None = run_step(self.run)
        self.split = split
        self.data, dataset = run_dataset(config, split, self.model.num_levels, data, data_dir)
        if dataset.image_shape != tuple(self.model.image_shape):
            raise ValueError(
                f"{dataset.description} ({split}) has images of shape {dataset.image_shape}, "
                f"but the model of {self.run} takes {tuple(self.model.image_shape)}"
            )
        self.images = dataset.images
        self.labels = dataset.labels
        self.label_names = dataset.label_names
        self.description = dataset.description
        if attr_file is None:
            self.attributes = list(dataset.label_names)
            classes = torch.arange(len(dataset.label_names))
            # A class attribute: +1 for the class, -1 for every other class.
            self._signs = torch.where(self.labels[:, None] == classes, 1, -1).to(torch.int8)
        else:
            if self.data != "folder":
                raise ValueError(
                    f"an attribute file needs a folder dataset (images matched by file name), "
                    f"got --data {self.data}"
                )
            table = read_attribute_file(attr_file)
            self.attributes = list(table.names)
            self._signs = table.signs_for([p.name for p in folder_files(data_dir, split)])
            if len(self._signs) != len(self.images):  # the folder changed while we read it
                raise RuntimeError(
                    f"{Path(data_dir) / split}: found {len(self._signs)} image files but loaded "
                    f"{len(self.images)} images"
                )
            if not self._signs.any():
                raise ValueError(
                    f"{attr_file}: lists none of the {len(self.images)} image files of "
                    f"{Path(data_dir) / split}"
                )
        self._directions: dict[str, Direction] = {}

    def __len__(self) -> int:
        return len(self.images)

    def provenance(self) -> dict[str, Any]:
        """Where results come from: run, step, data, split and which weights (JSON-ready)."""
        return {
            "run": str(self.run),
            "step": self.step,
            "data": self.description,
            "split": self.split,
            "weights": "ema" if self.ema else "raw",
        }

    def check_index(self, index: int) -> int:
        """`index` if it names an image of the split, else `ValueError` giving the range."""
        if not 0 <= index < len(self.images):
            raise ValueError(
                f"image index {index} out of range 0..{len(self.images) - 1} "
                f"({self.description}, {self.split} split)"
            )
        return index

    def check_attribute(self, name: str) -> str:
        """`name` if it is an attribute, else `ValueError` listing the valid ones."""
        if name not in self.attributes:
            shown = ", ".join(self.attributes[:50]) + (" ..." if len(self.attributes) > 50 else "")
            raise ValueError(f"unknown attribute {name!r}; valid attributes: {shown}")
        return name

    def usable_attributes(self) -> list[str]:
        """The attributes with examples on both sides in this split (so with a direction)."""
        both = (self._signs == 1).any(0) & (self._signs == -1).any(0)
        return [
            name for name, usable in zip(self.attributes, both.tolist(), strict=True) if usable
        ]

    def directions(self, attributes: Sequence[str]) -> dict[str, Direction]:
        """The directions of `attributes`, from memory, the run's cache, or computed (and
        cached) in one pass over the split."""
        for name in attributes:
            self.check_attribute(name)
        missing = [name for name in dict.fromkeys(attributes) if name not in self._directions]
        if missing:
            columns = [self.attributes.index(name) for name in missing]
            self._directions |= cached_directions(
                self.model,
                self.images,
                self._signs[:, columns],
                missing,
                self.run,
                self.data,
                self.split,
                self.step,
                self.ema,
                self.batch_size,
                self.labels,
            )
        return {name: self._directions[name] for name in attributes}

    def interpolate(
        self,
        pairs: Sequence[tuple[int, int]],
        steps: int,
        spherical: bool = False,
        decode_class: int | None = None,
    ) -> Tensor:
        """uint8 `[len(pairs), steps, C, H, W]`: frames between the images of each pair (on a
        class-conditional run decoded as `decode_class`, else as the nearer endpoint's class;
        see `imageflows.latent.interpolate`)."""
        if not pairs:
            raise ValueError("need at least one pair of image indices")
        first = [self.check_index(a) for a, _ in pairs]
        second = [self.check_index(b) for _, b in pairs]
        return interpolate(
            self.model,
            self.images[first],
            self.images[second],
            steps,
            spherical,
            self.labels[first],
            self.labels[second],
            decode_class,
        )

    def manipulate(
        self, indices: Sequence[int], attribute: str, alphas: Sequence[float]
    ) -> Tensor:
        """uint8 `[len(alphas), len(indices), C, H, W]`: each image moved by α · direction."""
        if not indices:
            raise ValueError("need at least one image index")
        check_alphas(alphas)  # before the direction is computed and cached
        rows = [self.check_index(i) for i in indices]
        direction = self.directions([attribute])[attribute]
        return edit(self.model, self.images[rows], direction.vector, alphas, self.labels[rows])

    def edit(self, index: int, alphas: dict[str, float]) -> Tensor:
        """uint8 `[C, H, W]`: decode(encode(x) + Σ α_k · direction_k) for one image."""
        rows = [self.check_index(index)]
        directions = self.directions(list(alphas))
        combined = torch.zeros(self.model.image_shape)
        for name, alpha in alphas.items():
            combined += alpha * directions[name].vector
        return edit(self.model, self.images[rows], combined, [1.0], self.labels[rows])[0, 0]


def write_interpolation(
    run: str | Path,
    pairs: Sequence[tuple[int, int]],
    steps: int,
    out: str | Path,
    spherical: bool = False,
    data: str | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    ema: bool = True,
    decode_class: int | None = None,
) -> dict[str, Any]:
    """Interpolate between the images of each pair of a split and write one PNG row per pair,
    labelled "A:B". On a class-conditional run the frames are decoded as `decode_class`, else
    as the nearer endpoint's class. Returns the paths and numbers used (JSON-ready)."""
    explorer = Explorer(run, data, data_dir, split, ema=ema)
    frames = explorer.interpolate(pairs, steps, spherical, decode_class)
    out = save_grid(
        frames.flatten(0, 1),
        out,
        explorer.model.num_levels,
        nrow=steps,
        row_labels=[f"{a}:{b}" for a, b in pairs],
    )
    return {
        "out": str(out),
        **explorer.provenance(),
        "pairs": [list(pair) for pair in pairs],
        "labels": [
            [explorer.label_names[int(explorer.labels[i])] for i in pair] for pair in pairs
        ],
        "steps": steps,
        "spherical": spherical,
        "class": decode_class,
        "t": torch.linspace(0, 1, steps, dtype=torch.float64).tolist(),
    }


def write_manipulation(
    run: str | Path,
    attribute: str,
    alphas: Sequence[float],
    images: Sequence[int],
    out: str | Path,
    data: str | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    attr_file: str | Path | None = None,
    ema: bool = True,
) -> dict[str, Any]:
    """Edit images of a split along an attribute direction and write a PNG: the inputs in the
    first row, then one row per α (a class-conditional run encodes and decodes each image with
    its own label). Returns the paths and numbers used (JSON-ready)."""
    explorer = Explorer(run, data, data_dir, split, attr_file, ema)
    edited = explorer.manipulate(images, attribute, alphas)
    direction = explorer.directions([attribute])[attribute]
    inputs = explorer.images[list(images)]
    out = save_grid(
        torch.cat([inputs, edited.flatten(0, 1)]),
        out,
        explorer.model.num_levels,
        nrow=len(images),
        row_labels=["input", *(f"alpha={alpha:g}" for alpha in alphas)],
    )
    return {
        "out": str(out),
        **explorer.provenance(),
        "attribute": attribute,
        "alphas": list(alphas),
        "images": list(images),
        "direction": str(direction.path) if direction.path else None,
        "direction_cached": direction.cached,
        "direction_norm": float(direction.vector.norm()),
        "n_positive": direction.n_positive,
        "n_negative": direction.n_negative,
    }
