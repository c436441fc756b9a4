"""Perturbed training data for a likelihood-ratio background model (Ren et al., NeurIPS 2019).

`imageflows train` has no input-perturbation option, so the perturbed copy is written as an
image-folder tree `root/split/class/*.png`, which `imageflows train --data folder --data-dir
root` trains on.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from pathlib import Path

import torch
from PIL import Image

from imageflows._io import fsync_dir
from imageflows.data import ImageDataset
from imageflows.images import to_pixels


def perturb(dataset: ImageDataset, rate: float, seed: int = 0) -> ImageDataset:
    """Each level replaced, with probability `rate`, by a uniform random level (Ren et al.,
    NeurIPS 2019, §3.1: μ in [0.1, 0.3] for images); seeded by `seed`."""
    if not 0 <= rate <= 1:
        raise ValueError(f"perturbation rate must be in [0, 1], got {rate}")
    generator = torch.Generator().manual_seed(seed)
    shape = dataset.images.shape
    replace = torch.rand(shape, generator=generator) < rate
    noise = torch.randint(0, dataset.num_levels, shape, generator=generator, dtype=torch.uint8)
    images = torch.where(replace, noise, dataset.images)
    description = f"{dataset.description} perturbed (rate {rate:g}, seed {seed})"
    return dataclasses.replace(dataset, images=images, description=description)


def write_image_folder(dataset: ImageDataset, root: str | Path, split: str) -> Path:
    """Save `dataset` as `root/split/<label name>/<index>.png` 256-level pictures (DESIGN §4's
    rule), which `imageflows.data.load_folder` reads back, and a 2^b-level model reduces
    losslessly; returns `root/split`."""
    target = Path(root) / split
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another folder or split")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{split}.{uuid.uuid4().hex}.tmp"
    names = dataset.label_names or ["all"]
    pixels = to_pixels(dataset.images, dataset.num_levels).permute(0, 2, 3, 1).numpy()
    try:
        for index, (picture, label) in enumerate(zip(pixels, dataset.labels, strict=True)):
            folder = tmp / names[max(int(label), 0)]
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
            image.save(folder / f"{index:06d}.png", format="PNG")
        os.replace(tmp, target)  # the split appears whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return target
