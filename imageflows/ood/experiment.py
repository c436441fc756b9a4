"""The library side of `imageflows score` and `imageflows ood`: load the sets, score every
image, rate each score's separation of in-distribution from OOD images, write the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from imageflows.config import Config
from imageflows.data import CONVERSION_RULE, DATASETS, ImageDataset
from imageflows.metrics import ImageScores, score_images
from imageflows.models.base import FlowModel
from imageflows.runs import run_config, run_dataset
from imageflows.train import load
from imageflows.train.checkpoint import run_step

from .report import check_out_dir, write_ood_outputs, write_scores_csv
from .scores import (
    auroc_aupr,
    complexity_corrected,
    likelihood_ratio,
    png_bits_per_dim,
    typicality_scores,
)
from .synthetic import SYNTHETIC, synthetic_set

SYNTHETIC_N = 1000  # images of a synthetic set that `score` makes without --limit


def load_set(
    cfg: Config,
    num_levels: int,
    name: str | None,
    split: str = "test",
    data_dir: str | Path | None = None,
    convert: bool = False,
    n: int | None = None,
    reference: ImageDataset | None = None,
    seed: int = 0,
) -> ImageDataset:
    """The first `n` (default all) images of dataset `name` (default the run's) in the model's
    shape and `num_levels`, or synthetic set `name` made like `reference` (`n` images,
    default as many as `reference` holds).

    A dataset of another shape is converted by `imageflows.data.convert`'s rule with
    `convert`, else it is a `ValueError`; the description says when it was converted.
    """
    if name in SYNTHETIC:
        if reference is None:
            raise ValueError(f"synthetic set {name!r} needs in-distribution images to copy")
        return synthetic_set(name, n or len(reference), reference, seed)
    if name is not None and name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS + SYNTHETIC)}"
        )
    _, dataset = run_dataset(cfg, split, num_levels, name, data_dir, convert=convert)
    return dataset.first(n)


def conversion(dataset: ImageDataset) -> str | None:
    """The conversion rule `dataset` went through, or None if it is in the model's shape."""
    return CONVERSION_RULE if CONVERSION_RULE in dataset.description else None


def check_count(option: str, value: int | None) -> None:
    """`ValueError` unless `value` (a count given as `option`) is missing or at least 1."""
    if value is not None and value < 1:
        raise ValueError(f"{option} must be at least 1, got {value}")


def classify(model: FlowModel, images: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """`(predicted [N] int64, posterior [N, K])` of a class-conditional model's `classify`,
    batch by batch."""
    device = next(model.parameters()).device
    with torch.no_grad():
        parts = [model.classify(x.to(device)) for x in images.split(batch_size)]
    return torch.cat([p for p, _ in parts]).cpu(), torch.cat([q for _, q in parts]).cpu()


def score_run(
    run: str | Path,
    out: str | Path,
    data: str | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    convert: bool = False,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Per-image bits/dim of run `run`'s model on a data split, into CSV file `out`.

    The columns are `index, label, bpd, roundtrip_error` (see `imageflows.metrics.
    score_images`), and for a class-conditional model also `predicted` and `posterior_<k>`
    from `model.classify`. `data` may name a synthetic set (`SYNTHETIC`), made like the run's
    own test images (`limit` images, default `SYNTHETIC_N`).

    Returns:
        `out`, `n`, `bpd` (the mean), `data`, `conversion`, `split`, `run` and `step`.
    """
    check_count("--limit", limit)
    check_count("--batch-size", batch_size)
    cfg = run_config(run)
    model = load(run)
    reference = None
    if data in SYNTHETIC:
        reference = load_set(cfg, model.num_levels, None, split, convert=convert)
        limit = limit or SYNTHETIC_N
    dataset = load_set(
        cfg, model.num_levels, data, split, data_dir, convert, limit, reference, seed
    )
    labels, predicted, posterior = None, None, None
    if getattr(model, "num_classes", 0) > 0:
        predicted, posterior = classify(model, dataset.images, batch_size)
        known = len(dataset) and 0 <= dataset.labels.min() <= dataset.labels.max() < len(
            posterior[0]
        )
        labels = dataset.labels if known else predicted  # bits/dim of log p(x|y)
    scores = score_images(model, dataset.images, batch_size, seed, labels=labels)
    columns: dict[str, list] = {
        "index": scores.index.tolist(),
        "label": dataset.labels[scores.index].tolist(),
        "bpd": scores.bpd.tolist(),
        "roundtrip_error": scores.roundtrip_error.tolist(),
    }
    if predicted is not None and posterior is not None:
        columns["predicted"] = predicted.tolist()
        for k, column in enumerate(posterior.double().T):
            columns[f"posterior_{k}"] = column.tolist()
    path = write_scores_csv(out, columns)
    return {
        "out": str(path),
        "n": len(dataset),
        "bpd": scores.bpd.mean().item(),
        "data": dataset.description,
        "conversion": conversion(dataset),
        "split": split,
        "run": str(run),
        "step": run_step(Path(run)),
    }


def run_ood(
    run: str | Path,
    ood_data: str,
    out: str | Path,
    data: str | None = None,
    data_dir: str | Path | None = None,
    ood_data_dir: str | Path | None = None,
    background: str | Path | None = None,
    typicality_batch: int = 2,
    limit: int | None = None,
    ood_n: int | None = None,
    train_n: int | None = None,
    convert: bool = False,
    split: str = "test",
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, Any]:
    """In-distribution test images against OOD set `ood_data`, by four scores, into folder
    `out` (see `imageflows.ood.report`):

    - `bpd`: the model's bits/dim;
    - `complexity`: bits/dim less the PNG code length (Serrà et al., ICLR 2020);
    - `likelihood_ratio`: bits/dim less `background`'s (Ren et al., NeurIPS 2019), if given;
    - `typicality`: |batch mean bits/dim − training mean| over batches of `typicality_batch`
      (Nalisnick et al. 2019), the training mean over the first `train_n` training images
      (default as many as the test images scored).

    `limit` keeps the first images of each set; `ood_n` sets the OOD count alone (a synthetic
    set defaults to as many images as the in-distribution set). Images of another shape are
    converted with `convert` (see `load_set`).

    Returns:
        The summary written to `out/summary.json`.
    """
    for option, value in (("--typicality-batch", typicality_batch), ("--limit", limit),
                          ("--ood-n", ood_n), ("--train-n", train_n),
                          ("--batch-size", batch_size)):  # fmt: skip
        check_count(option, value)
    out = check_out_dir(out)
    cfg = run_config(run)
    background_cfg = run_config(background) if background is not None else None
    model = load(run)
    levels = model.num_levels
    test = load_set(cfg, levels, data, split, data_dir, convert, limit)
    train = load_set(cfg, levels, data, "train", data_dir, convert, train_n or len(test))
    ood = load_set(cfg, levels, ood_data, split, ood_data_dir, convert, ood_n or limit, test, seed)
    for part in (test, ood):
        if len(part) < typicality_batch:
            raise ValueError(
                f"--typicality-batch {typicality_batch} needs at least as many images; "
                f"{part.description} has {len(part)}"
            )

    def score(m: FlowModel, dataset: ImageDataset) -> ImageScores:
        # A class-conditional model scores log p(x|y) at its predicted class: OOD data has none.
        conditional = getattr(m, "num_classes", 0) > 0
        labels = classify(m, dataset.images, batch_size)[0] if conditional else None
        return score_images(m, dataset.images, batch_size, seed, labels=labels)

    in_scores, ood_scores = score(model, test), score(model, ood)
    train_bpd = score(model, train).bpd.mean().item()
    sets = {"in": (test, in_scores), "ood": (ood, ood_scores)}
    columns: dict[str, dict[str, Tensor]] = {}
    for key, (dataset, scores) in sets.items():
        png = png_bits_per_dim(dataset.images, levels)
        columns[key] = {
            "bpd": scores.bpd,
            "png_bpd": png,
            "complexity": complexity_corrected(scores.bpd, png),
            "typicality": typicality_scores(scores.bpd, train_bpd, typicality_batch),
        }
    if background is not None:
        other = load(background)
        if (other.image_shape, other.num_levels) != (model.image_shape, levels):
            raise ValueError(
                f"background run {background} models {_shape(other)}, the run {_shape(model)}"
            )
        for key, (dataset, _) in sets.items():
            columns[key]["background_bpd"] = score(other, dataset).bpd
            columns[key]["likelihood_ratio"] = likelihood_ratio(
                columns[key]["bpd"], columns[key]["background_bpd"]
            )
    names = ["bpd", "complexity", "likelihood_ratio", "typicality"]
    names = [name for name in names if name in columns["in"]]
    rates = {name: auroc_aupr(columns["in"][name], columns["ood"][name]) for name in names}
    summary = {
        "run": str(run),
        "step": run_step(Path(run)),
        "background": None if background is None else str(background),
        "background_step": None if background_cfg is None else run_step(Path(background)),
        "in_distribution": _describe(test, split),
        "ood": _describe(ood, split if ood_data not in SYNTHETIC else ood_data),
        "train_reference": {**_describe(train, "train"), "mean_bpd": train_bpd},
        "conversion": next(filter(None, map(conversion, (test, ood))), None),
        "typicality_batch": typicality_batch,
        "seed": seed,
        "scores": {
            name: {
                "auroc": auroc,
                "aupr": aupr,
                "n_in": len(columns["in"][name]),
                "n_ood": len(columns["ood"][name]),
            }
            for name, (auroc, aupr) in rates.items()
        },
    }
    rows = {key: _rows(dataset, scores, columns[key], typicality_batch)
            for key, (dataset, scores) in sets.items()}  # fmt: skip
    write_ood_outputs(out, rows, summary, {name: (columns["in"][name], columns["ood"][name])
                                           for name in names})  # fmt: skip
    return {"out": str(out), **summary}


def _shape(model: FlowModel) -> str:
    return f"{'x'.join(map(str, model.image_shape))} images at {model.num_levels} levels"


def _describe(dataset: ImageDataset, split: str) -> dict[str, Any]:
    return {"description": dataset.description, "split": split, "n": len(dataset),
            "conversion": conversion(dataset)}  # fmt: skip


def _rows(
    dataset: ImageDataset, scores: ImageScores, columns: dict[str, Tensor], batch: int
) -> dict[str, list]:
    """The per-image columns of one set; an image's typicality is its batch's."""
    n = len(dataset)
    typical = columns["typicality"].repeat_interleave(batch).tolist()
    per_image = {k: v.tolist() for k, v in columns.items() if k != "typicality"}
    return {
        "index": scores.index.tolist(),
        "label": dataset.labels[scores.index].tolist(),
        **per_image,
        "typicality_batch": [i // batch if i < len(typical) else None for i in range(n)],
        "typicality": typical + [None] * (n - len(typical)),
        "roundtrip_error": scores.roundtrip_error.tolist(),
    }
