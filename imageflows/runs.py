"""Run directories (DESIGN §4): where a new run goes, the config and data of an existing one,
and the library side of `imageflows train`, `eval`, `sample` and `presets`.

A run directory describes itself, so every function here rebuilds what it needs from the
directory alone. Results are JSON-ready dicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from imageflows.config import Config, ModelConfig
from imageflows.data import CONVERSION_RULE, ImageDataset, load_dataset, prepare
from imageflows.data import convert as convert_images
from imageflows.images import save_grid
from imageflows.latent import temperature_rows
from imageflows.models import PRESETS, build_model, class_rows, freeze, preset_config
from imageflows.train import load, train
from imageflows.train.checkpoint import CONFIG_FILE, run_step
from imageflows.train.distributed import process_group, sharded_evaluate

RUNS_ROOT = Path("runs")


def run_config(run: str | Path) -> Config:
    """The config of run directory `run`, with a clear error when it is not a run."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    if not (run / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no {CONFIG_FILE})")
    return Config.load(run / CONFIG_FILE)


def run_dataset(
    cfg: Config,
    split: str,
    num_levels: int,
    data: str | None = None,
    data_dir: str | Path | None = None,
    convert: bool = False,
) -> tuple[str, ImageDataset]:
    """`(name, dataset)`: split `split` of dataset `data` (default the run's own) at the
    model's `num_levels`; with `convert`, images of another shape are brought to the model's
    by `imageflows.data.convert`'s stated rule, else they are a `ValueError`.

    Without `data_dir`, the run's data folder is used for the run's own dataset only: another
    dataset needs its own folder.
    """
    name = cfg.data.name if data is None else data
    if data_dir is None and name == cfg.data.name:
        data_dir = cfg.data.dir
    dataset = load_dataset(name, split, data_dir)
    shape = tuple(cfg.model.image_shape)
    if dataset.image_shape == shape:
        return name, prepare(dataset, num_levels)
    if not convert:
        raise ValueError(
            f"{dataset.description} images are {'x'.join(map(str, dataset.image_shape))}, the "
            f"model's {'x'.join(map(str, shape))}; pass --convert to resize and convert them "
            f"({CONVERSION_RULE})"
        )
    return name, convert_images(dataset, shape, num_levels)


def new_run_dir(out: str | Path) -> Path:
    """`out` if it is missing or an empty directory, else `FileExistsError`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"--out {out} already holds files; continue that run with --resume {out}, "
            "or choose a new --out"
        )
    return out


def free_run_dir(root: Path, name: str) -> Path:
    """`root/name`, or `root/name-2`, `root/name-3`, ...: the first that is missing or empty."""
    for index in range(1, 10_000):
        candidate = root / (name if index == 1 else f"{name}-{index}")
        if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
            return candidate
    raise FileExistsError(f"no free run directory {root / name}-N; pass --out")


def start_run(
    preset: str,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train preset `preset` with `overrides` (`section.key=value`) into a new run directory.

    Args:
        preset: a name of `PRESETS`.
        overrides: applied in order, e.g. `["data.name=mnist", "train.lr=1e-3"]`.
        out: the run directory (missing or empty); default `runs/PRESET`, or `runs/PRESET-2`,
            ... if that is taken.
        progress: a progress bar on stderr.

    Returns:
        The summary of `imageflows.train.train`.
    """
    cfg = preset_config(preset).with_overrides(list(overrides))
    workdir = new_run_dir(out) if out is not None else free_run_dir(RUNS_ROOT, preset)
    return train(cfg, workdir, resume=False, progress=progress)


def resume_run(run: str | Path, overrides: Sequence[str] = (), progress: bool = True) -> dict:
    """Continue run `run` from its newest checkpoint, its config changed by `overrides`
    (e.g. `["train.steps=8000"]`); returns the summary of `imageflows.train.train`."""
    cfg = run_config(run).with_overrides(list(overrides))
    return train(cfg, Path(run), resume=True, progress=progress)


def evaluate_run(
    run: str | Path,
    data: str | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    iw_samples: int = 1,
    seed: int = 0,
    batch_size: int = 500,
    ema: bool = True,
    convert: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    """Bits/dim of a run's model on a data split (see `imageflows.metrics.evaluate`), or
    on its first `limit` images, on the GPU where PyTorch sees one.

    Under `torchrun` each process is one rank and scores every `world_size`-th batch (on GPU
    `LOCAL_RANK` where there are GPUs); the figures are those of one process, since each batch
    keeps its own noise (`imageflows.train.distributed.sharded_evaluate`).

    Returns:
        `imageflows.metrics.evaluate`'s figures (`bpd`, its median and 1st/99th percentiles,
        `n`, `iw_samples`, `roundtrip_failures`, `recon_max_abs`; for a class-conditional
        model the bits/dim of log p(x|y) and `accuracy`, `bpd_marginal`), `data` (e.g. "CIFAR-10
        (JPEG q75)"), `split`, `weights` ("ema" or "raw"), `run`, `step`, `device` (rank 0's)
        and `processes`.
    """
    if not 1 <= iw_samples <= MAX_IW_SAMPLES:
        raise ValueError(f"--iw-samples must be in 1..{MAX_IW_SAMPLES}, got {iw_samples}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    run = Path(run)
    cfg = run_config(run)
    with process_group() as env:
        model = load(run, ema=ema).to(env.device)
        _, dataset = run_dataset(cfg, split, model.num_levels, data, data_dir, convert)
        dataset = dataset.first(limit)
        labels = dataset.labels if model.num_classes else None
        scores = sharded_evaluate(model, dataset.images, batch_size, seed, env, labels, iw_samples)
    return {
        **scores,
        "data": dataset.description,
        "split": split,
        "weights": "ema" if ema else "raw",
        "run": str(run),
        "step": run_step(run),
        "device": str(env.device),
        "processes": env.world_size,
    }


MAX_IW_SAMPLES = 4096  # draws of u per image: the Flow++ authors' evaluation takes 4,096
MAX_SAMPLES = 4096  # images in one sample picture (64 x 64 of them)


def write_samples(
    run: str | Path,
    out: str | Path,
    n: int | None = None,
    temperatures: Sequence[float] | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    nrow: int | None = None,
    ema: bool = True,
    label: int | None = None,
) -> dict[str, Any]:
    """Samples of a run's model into PNG `out` (Glow section 5, Figure 8).

    With `temperatures`: one row of `n` samples per temperature (default 8), labelled "T=0.7",
    every row decoded from the same noise. Without: `n` samples at `temperature` (default 64),
    `nrow` a row (default about √n). One picture holds at most `MAX_SAMPLES` images.
    A class-conditional model samples class `label`, or without it draws one row of `n`
    (default 8) per class (and temperature), labelled "class 3" ("T=0.7 class 3").

    Returns:
        `out`, `n`, `temperatures`, `classes` (the classes drawn, None if unconditional),
        `seed` and `run`.
    """
    run = Path(run)
    model_cfg = run_config(run).model
    per_class = model_cfg.num_classes > 0 and label is None
    if label is not None and not 0 <= label < model_cfg.num_classes:
        raise ValueError(
            f"--class {label}: the run's model has classes 0..{model_cfg.num_classes - 1}"
            if model_cfg.num_classes
            else "--class needs a class-conditional run (model.num_classes > 0)"
        )
    if n is None:
        n = 64 if temperatures is None and not per_class else 8
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if nrow is not None and nrow < 1:
        raise ValueError(f"--nrow must be at least 1, got {nrow}")
    if temperatures is not None and not temperatures:
        raise ValueError("--temperatures needs at least one number")
    classes = list(range(model_cfg.num_classes)) if per_class else [label]
    total = n * (len(temperatures) if temperatures is not None else 1) * len(classes)
    if total > MAX_SAMPLES:
        raise ValueError(
            f"--n {n} asks for {total} images in one picture; at most {MAX_SAMPLES} are drawn"
        )
    model = freeze(load(run, ema=ema))
    rows = list(temperatures) if temperatures is not None else [temperature]
    if model.num_classes:
        grid = class_rows(model, rows, classes, n, seed)
    else:
        grid = temperature_rows(model, rows, n, seed)
    if per_class:
        nrow = n
        labels = [f"{f'T={t:g} ' if temperatures else ''}class {c}" for t in rows for c in classes]
    elif temperatures is not None:
        nrow, labels = n, [f"T={t:g}" for t in rows]
    else:
        nrow, labels = nrow or math.ceil(math.sqrt(n)), None
    out = save_grid(grid, out, model.num_levels, nrow=nrow, row_labels=labels)
    return {
        "out": str(out),
        "n": n,
        "temperatures": rows,
        "classes": classes if model.num_classes else None,
        "seed": seed,
        "run": str(run),
    }


def parameter_count(model: ModelConfig) -> int:
    """The number of parameters of the model `model` describes, allocating nothing."""
    with torch.device("meta"):  # shapes only
        return sum(p.numel() for p in build_model(model).parameters())


def preset_rows() -> list[dict[str, Any]]:
    """Each named preset a run can start from: `name`, `parameters` and its config sections."""
    return [
        {"name": name, "parameters": parameter_count(cfg.model), **cfg.to_dict()}
        for name, cfg in PRESETS.items()
    ]
