"""Per-image bits/dim and round trips of the shipped runs on images they never saw.

    python scripts/robustness.py MNIST_DIR CIFAR10_JPEG_DIR OUT.json

For `runs/glow-mnist` and `runs/glow-digits`: their own test split, 1,000 uniform-noise images
(seed 0), one constant image per level, the inverted test images (x -> N - 1 - x) and other
datasets brought to the model's shape by `imageflows.data.convert` (MNIST for the digits model;
CIFAR-10 (JPEG q75) for both), each through `imageflows.metrics.evaluate` (what
`imageflows eval` reports), printed and written to OUT.json.
"""

from __future__ import annotations

import json
import sys

import torch

import imageflows as imf
from imageflows.runs import run_config, run_dataset

KEYS = ("n", "bpd", "bpd_median", "bpd_p1", "bpd_p99", "roundtrip_failures_float32",
        "roundtrip_failures", "recon_max_abs")  # fmt: skip


def image_sets(run: str, own_dir: str | None, others: list[tuple[str, str]]) -> dict:
    model = imf.load(run)
    levels, shape, cfg = model.num_levels, model.image_shape, run_config(run)
    _, own = run_dataset(cfg, "test", levels, None, own_dir)
    generator = torch.Generator().manual_seed(0)
    sets = {
        "own test split": own.images,
        "uniform noise (1,000)": torch.randint(0, levels, (1000, *shape), generator=generator),
        f"constant (one per level, {levels})": torch.arange(levels)
        .view(levels, 1, 1, 1)
        .expand(levels, *shape),
        "inverted test split": levels - 1 - own.images.int(),
    }
    for name, folder in others:
        _, dataset = run_dataset(cfg, "test", levels, name, folder, convert=True)
        sets[dataset.description] = dataset.images
    return {name: images.to(torch.uint8).contiguous() for name, images in sets.items()}


def main(mnist_dir: str, cifar_dir: str, out: str) -> None:
    runs = {
        "runs/glow-mnist": (mnist_dir, [("folder", cifar_dir)]),
        "runs/glow-digits": (None, [("mnist", mnist_dir), ("folder", cifar_dir)]),
    }
    results = {}
    for run, (own_dir, others) in runs.items():
        model = imf.load(run)
        for name, images in image_sets(run, own_dir, others).items():
            scores = imf.evaluate(model, images)
            results[f"{run} | {name}"] = {key: scores[key] for key in KEYS}
            print(run, "|", name, json.dumps(results[f"{run} | {name}"]), flush=True)
    with open(out, "w") as file:
        json.dump(results, file, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
