"""The run directory around the checkpoints: creating it, finding where to resume, pictures."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from imageflows._io import atomic_write_bytes
from imageflows.config import Config
from imageflows.images import save_grid
from imageflows.latent import temperature_rows
from imageflows.models import FlowModel, class_rows
from imageflows.train.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CheckpointWarning,
    latest_valid_checkpoint,
    list_checkpoints,
)
from imageflows.train.data_order import derived_seed

SAMPLES_FILE = "samples.png"
CURVES_FILE = "bpd.png"
SAMPLES_PER_ROW = 8


def prepare_workdir(cfg: Config, workdir: Path, resume: bool) -> None:
    """Create `workdir` with `config.json` (a new run), or rewrite the config of one resumed,
    once `cfg` is checked against it (`Config.check_resumable_as`): nothing is written before."""
    config_path = workdir / CONFIG_FILE
    if resume and not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: cannot resume, no such file")
    if resume:
        cfg.check_resumable_as(Config.load(config_path))
    if not resume and any((workdir / name).exists() for name in (CONFIG_FILE, CHECKPOINT_DIR)):
        raise FileExistsError(
            f"{workdir}: already holds a run; resume it or choose another directory"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    cfg.save(config_path)


def resume_point(workdir: Path) -> tuple[int, Path] | None:
    """The newest checkpoint that verifies; newer, broken ones are renamed `*.corrupt`, so they
    are neither resumed from nor counted by `keep_checkpoints`. Temporary files of atomic writes
    that a crash interrupted are deleted."""
    for stale in workdir.glob(".*.tmp"):
        stale.unlink()
    latest = latest_valid_checkpoint(workdir)
    if latest is None:
        warnings.warn(
            f"{workdir}: no valid checkpoint to resume from; starting again from step 0",
            CheckpointWarning,
            stacklevel=2,
        )
        return None
    for later, path in list_checkpoints(workdir):
        if later > latest[0]:
            path.rename(path.with_name(f"{path.name}.corrupt"))
    return latest


@torch.no_grad()
def draw_samples(model: FlowModel, workdir: Path, step: int, cfg: Config) -> None:
    """`samples/step_NNNNNNN.png` and `samples.png`: one row per temperature, every row from
    the same base noise (fixed seed), so rows and grids over time are comparable."""
    temperatures = cfg.train.sample_temperatures
    if not temperatures:
        return
    seed = derived_seed(cfg.train.seed, "samples")
    labels = [f"T={t:g}" for t in temperatures]
    if model.num_classes:  # a row per temperature and class
        classes = range(model.num_classes)
        grid = class_rows(model, temperatures, classes, SAMPLES_PER_ROW, seed)
        labels = [f"T={t:g} class {c}" for t in temperatures for c in classes]
    else:
        grid = temperature_rows(model, temperatures, SAMPLES_PER_ROW, seed)
    path = workdir / "samples" / f"step_{step:07d}.png"
    path.parent.mkdir(exist_ok=True)
    save_grid(
        grid.cpu(),
        path,
        num_levels=cfg.model.num_levels,
        nrow=SAMPLES_PER_ROW,
        row_labels=labels,
    )
    atomic_write_bytes(workdir / SAMPLES_FILE, path.read_bytes())
