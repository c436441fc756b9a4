"""Synthetic out-of-distribution sets in a model's shape, seeded and reproducible.

`noise`: every level uniform at random; `constant`: one level everywhere in an image, the
images spread over all levels (Nalisnick et al., ICLR 2019, Figure 2 and Appendix B);
`inverted`: the in-distribution test images with each level x taken to N − 1 − x.
"""

from __future__ import annotations

import dataclasses

import torch

from imageflows.data import ImageDataset

SYNTHETIC = ("noise", "constant", "inverted")


def noise_set(
    n: int, image_shape: tuple[int, int, int], num_levels: int, seed: int = 0
) -> ImageDataset:
    """`n` images of independent uniform levels in 0..N−1, from a generator seeded `seed`."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, num_levels, (n, *image_shape), generator=generator)
    return ImageDataset(
        images.to(torch.uint8),
        torch.full((n,), -1, dtype=torch.int64),
        [],
        num_levels,
        f"uniform noise ({n} images, seed {seed})",
    )


def constant_set(n: int, image_shape: tuple[int, int, int], num_levels: int) -> ImageDataset:
    """`n` constant images, image i at level round(i · (N − 1) / (n − 1)): every level from 0
    to N − 1 once n ≥ N; the label is the level."""
    levels = torch.linspace(0, num_levels - 1, n, dtype=torch.float64).round().to(torch.int64)
    images = levels.view(n, 1, 1, 1).expand(n, *image_shape).to(torch.uint8).contiguous()
    names = [str(level) for level in range(num_levels)]
    return ImageDataset(
        images, levels, names, num_levels, f"constant images ({n}, levels 0..{num_levels - 1})"
    )


def inverted_set(dataset: ImageDataset, n: int | None = None) -> ImageDataset:
    """The first `n` (default all) images of `dataset` with each level x as N − 1 − x,
    labels kept."""
    part = dataset.first(n)
    images = (dataset.num_levels - 1 - part.images.to(torch.int64)).to(torch.uint8)
    return dataclasses.replace(part, images=images, description=f"{part.description} inverted")


def synthetic_set(name: str, n: int, reference: ImageDataset, seed: int = 0) -> ImageDataset:
    """Synthetic set `name` (one of `SYNTHETIC`) of `n` images in the shape and levels of
    `reference`, whose images `inverted` inverts."""
    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic set {name!r}; valid: {', '.join(SYNTHETIC)}")
    if n < 1:
        raise ValueError(f"a synthetic set needs at least 1 image, got {n}")
    if name == "noise":
        return noise_set(n, reference.image_shape, reference.num_levels, seed)
    if name == "constant":
        return constant_set(n, reference.image_shape, reference.num_levels)
    return inverted_set(reference, n)
