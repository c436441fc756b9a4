"""The training loop (DESIGN section 7): build → initialize → step / log / evaluate / sample /
checkpoint, and `evaluate`, the test bits/dim of a model.

Everything random is a function of `train.seed` and the step: the data order (epoch `e` is a
permutation seeded `seed · 1000003 + e`, step `s` takes positions `[sB, (s+1)B)` of the
concatenated epochs), the initialisation, and a dedicated dequantization-noise generator whose
state is checkpointed with the rest. So a resumed run continues exactly as an uninterrupted one
(bitwise on CPU).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from imageflows._io import atomic_write_bytes, atomic_write_text
from imageflows.config import Config, TrainConfig
from imageflows.data import load_dataset, prepare
from imageflows.images import plot_curves, save_grid
from imageflows.latent import temperature_rows
from imageflows.metrics import bits_per_dim, evaluate
from imageflows.models import FlowModel, build_model
from imageflows.train.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointWarning,
    latest_valid_checkpoint,
    list_checkpoints,
    load_state,
    load_weights,
    save_checkpoint,
)
from imageflows.train.ema import EMA

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.png"
CURVES_FILE = "bpd.png"
SAMPLES_PER_ROW = 8


def train(cfg: Config, workdir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train `cfg.model` on `cfg.data` into the run directory `workdir`.

    Writes `config.json`, `metrics.jsonl` (training records every `log_every` steps, test
    records every `eval_every`), `samples/step_NNNNNNN.png` and `samples.png` (EMA samples, one
    row per temperature), `bpd.png`, `checkpoints/step_NNNNNNN/` and `model.safetensors` (the
    latest EMA weights). Evaluation and samples use the EMA weights.

    Args:
        cfg: the run's configuration.
        workdir: the run directory; a new one unless `resume`.
        resume: continue from the newest checkpoint that verifies (`workdir/config.json` must
            exist; pass `Config.load(workdir / "config.json")`, or a copy with more steps).
        progress: show a tqdm bar with the running bits/dim on stderr.

    Returns:
        `{"steps", "test_bpd", "wall_seconds", "samples", "run_dir", "checkpoint"}`.
    """
    tc = cfg.train
    _check_train_config(tc)
    workdir = Path(workdir)
    train_images, test_images = _load_images(cfg)
    _prepare_workdir(cfg, workdir, resume)
    if tc.eval_images:
        test_images = test_images[: tc.eval_images]
    num_train = len(train_images)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # Build and initialise, or restore.
    latest = latest_valid_checkpoint(workdir) if resume else None
    if resume and latest is None:
        warnings.warn(
            f"{workdir}: no valid checkpoint to resume from; starting again from step 0",
            CheckpointWarning,
            stacklevel=2,
        )
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model).to(device)
    if latest is None:
        init = global_indices(0, min(tc.init_batch_size, num_train), num_train, tc.seed)
        model.initialize(train_images[init].to(device))
    ema = EMA(model, tc.ema)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    warmup = tc.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
    )
    noise_gen = torch.Generator(device).manual_seed(derived_seed(tc.seed, "dequantization"))
    step, elapsed, checkpoint = 0, 0.0, None
    if latest is not None:
        step, checkpoint = latest
        elapsed = _restore(checkpoint, model, ema, optimizer, scheduler, noise_gen, num_train, tc)
        _set_aside_newer(workdir, step)
    checkpoint_step = step if checkpoint is not None else None
    records = _read_metrics(workdir / METRICS_FILE, up_to=step)
    last_test = next((r for r in reversed(records) if "test_bpd" in r), None)

    def log(record: dict) -> None:
        records.append(record)
        with open(workdir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def evaluate_and_draw() -> dict:
        result = evaluate(ema.model, test_images, tc.eval_batch_size, seed=tc.seed)
        record = {
            "step": step,
            "test_bpd": result["bpd"],
            "recon_max_abs": result["recon_max_abs"],
        }
        log(record)
        _draw_samples(ema.model, workdir, step, cfg)
        plot_curves(records, workdir / CURVES_FILE)
        return record

    def save() -> Path:
        state = {
            "step": step,
            "elapsed": elapsed,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "noise_generator": noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "data_order": {"seed": tc.seed, "batch_size": tc.batch_size, "num_images": num_train},
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return save_checkpoint(
            workdir, step, model.state_dict(), ema.model.state_dict(), state, tc.keep_checkpoints
        )

    # Train.
    window = _Window()
    started = time.perf_counter() - elapsed
    with tqdm(
        total=tc.steps,
        initial=step,
        desc="train",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        model.train()
        while step < tc.steps:
            start = step * tc.batch_size
            x = train_images[global_indices(start, start + tc.batch_size, num_train, tc.seed)]
            tick = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            bpd, grad_norm = _train_step(model, x.to(device), optimizer, noise_gen, tc.grad_clip)
            if bpd is None:
                warnings.warn(
                    f"step {step + 1}: non-finite bits/dim or gradient norm; update skipped",
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                ema.update(model, step + 1)
                bar.set_postfix(bpd=f"{bpd:.3f}", refresh=False)
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - started
            window.add(bpd, grad_norm, len(x), time.perf_counter() - tick)
            bar.update(1)

            if step % tc.log_every == 0 or step == tc.steps:
                log(window.record(step, lr, elapsed))
            if step % tc.eval_every == 0 or step == tc.steps:
                last_test = evaluate_and_draw()
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                elapsed = time.perf_counter() - started
                checkpoint, checkpoint_step = save(), step

    # A run resumed at its last step (or of 0 steps) still reports and checkpoints that step.
    if last_test is None or last_test["step"] != step:
        last_test = evaluate_and_draw()
    elapsed = time.perf_counter() - started
    if checkpoint_step != step:
        checkpoint = save()
    return {
        "steps": step,
        "test_bpd": last_test["test_bpd"],
        "wall_seconds": elapsed,
        "samples": str(workdir / SAMPLES_FILE) if tc.sample_temperatures else None,
        "run_dir": str(workdir),
        "checkpoint": str(checkpoint),
    }


def global_indices(start: int, stop: int, num_images: int, seed: int) -> Tensor:
    """Indices of the training images at global positions [start, stop) of the data order.

    Epoch `e` is `torch.randperm(num_images)` seeded `seed · 1000003 + e`; epochs are
    concatenated, so any step's batch follows from the step alone.
    """
    first, last = start // num_images, (stop - 1) // num_images
    order = torch.cat([_epoch_order(num_images, seed, e) for e in range(first, last + 1)])
    offset = first * num_images
    return order[start - offset : stop - offset]


@functools.lru_cache(maxsize=4)
def _epoch_order(num_images: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(num_images, generator=generator)


def derived_seed(seed: int, stream: str) -> int:
    """A seed for one named random stream, so streams sharing `train.seed` differ."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:7], "little")


def _train_step(
    model: FlowModel,
    x: Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    grad_clip: float,
) -> tuple[float | None, float]:
    """One optimizer step on the mean bits/dim of `x`; `(bpd, grad_norm)`, where bpd is `None`
    (and the update skipped) if the loss or the gradient is not finite."""
    loss = bits_per_dim(model.log_prob(x, generator=generator), model.num_dims).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # max_norm=inf clips nothing but still measures the norm.
    grad_norm = nn.utils.clip_grad_norm_(
        model.parameters(), grad_clip if grad_clip > 0 else float("inf")
    )
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        return None, float(grad_norm)
    optimizer.step()
    return loss.item(), grad_norm.item()


class _Window:
    """Training statistics since the last metrics record."""

    def __init__(self) -> None:
        self.bpd: list[float] = []
        self.grad_norm: list[float] = []
        self.skipped = self.images = 0
        self.seconds = 0.0

    def add(self, bpd: float | None, grad_norm: float, images: int, seconds: float) -> None:
        if bpd is None:
            self.skipped += 1
        else:
            self.bpd.append(bpd)
            self.grad_norm.append(grad_norm)
        self.images += images
        self.seconds += seconds

    def record(self, step: int, lr: float, elapsed: float) -> dict:
        """The record `{"step", "train_bpd", "lr", "grad_norm", "images_per_s", "time",
        "skipped_steps"}` (means over the window), then reset."""
        record = {
            "step": step,
            "train_bpd": sum(self.bpd) / len(self.bpd) if self.bpd else None,
            "lr": lr,
            "grad_norm": sum(self.grad_norm) / len(self.grad_norm) if self.grad_norm else None,
            "images_per_s": self.images / self.seconds if self.seconds > 0 else None,
            "time": elapsed,
            "skipped_steps": self.skipped,
        }
        self.__init__()
        return record


def _check_train_config(tc: TrainConfig) -> None:
    for key in ("batch_size", "eval_every", "eval_batch_size", "checkpoint_every",
                "keep_checkpoints", "log_every", "init_batch_size"):  # fmt: skip
        if getattr(tc, key) < 1:
            raise ValueError(f"train.{key} must be ≥ 1, got {getattr(tc, key)}")
    for key in ("steps", "warmup_steps", "grad_clip", "eval_images"):
        if getattr(tc, key) < 0:
            raise ValueError(f"train.{key} must be ≥ 0, got {getattr(tc, key)}")


def _prepare_workdir(cfg: Config, workdir: Path, resume: bool) -> None:
    config_path = workdir / CONFIG_FILE
    if resume and not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: cannot resume, no such file")
    if not resume and any((workdir / name).exists() for name in (CONFIG_FILE, CHECKPOINT_DIR)):
        raise FileExistsError(
            f"{workdir}: already holds a run; resume it or choose another directory"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    cfg.save(config_path)


def _load_images(cfg: Config) -> tuple[Tensor, Tensor]:
    """Train and test images of `cfg.data`, at the model's number of levels and shape."""
    splits = []
    for split in ("train", "test"):
        dataset = prepare(load_dataset(cfg.data.name, split, cfg.data.dir), cfg.model.num_levels)
        shape = tuple(dataset.images.shape[1:])
        if shape != tuple(cfg.model.image_shape):
            raise ValueError(
                f"dataset {cfg.data.name!r} ({split}) has images of shape {shape}, but "
                f"model.image_shape is {tuple(cfg.model.image_shape)}"
            )
        splits.append(dataset.images)
    return splits[0], splits[1]


def _restore(
    path: Path,
    model: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    noise_gen: torch.Generator,
    num_train: int,
    tc: TrainConfig,
) -> float:
    """Load checkpoint `path` into the training objects; returns the elapsed wall seconds."""
    state = load_state(path)
    order = {"seed": tc.seed, "batch_size": tc.batch_size, "num_images": num_train}
    if state["data_order"] != order:
        raise ValueError(
            f"{path}: checkpoint data order {state['data_order']} does not match this run's "
            f"{order}; the data set or train.seed/batch_size changed"
        )
    load_weights(model, path / MODEL_FILE)
    load_weights(ema.model, path / "ema.safetensors")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    noise_gen.set_state(state["noise_generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return float(state["elapsed"])


def _set_aside_newer(workdir: Path, step: int) -> None:
    """Rename checkpoints newer than `step` (they failed verification) out of the way, so they
    are neither resumed from nor counted by `keep_checkpoints`."""
    for later, path in list_checkpoints(workdir):
        if later > step:
            path.rename(path.with_name(f"{path.name}.corrupt"))


def _read_metrics(path: Path, up_to: int) -> list[dict]:
    """Records of `metrics.jsonl` up to step `up_to`; later ones (from after the checkpoint we
    resume from) are dropped from the file."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    kept = [r for r in records if r["step"] <= up_to]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


@torch.no_grad()
def _draw_samples(model: FlowModel, workdir: Path, step: int, cfg: Config) -> None:
    """`samples/step_NNNNNNN.png` and `samples.png`: one row per temperature, every row from
    the same base noise (fixed seed), so rows and grids over time are comparable."""
    temperatures = cfg.train.sample_temperatures
    if not temperatures:
        return
    seed = derived_seed(cfg.train.seed, "samples")
    grid = temperature_rows(model, temperatures, SAMPLES_PER_ROW, seed)
    path = workdir / "samples" / f"step_{step:07d}.png"
    path.parent.mkdir(exist_ok=True)
    save_grid(
        grid.cpu(),
        path,
        num_levels=cfg.model.num_levels,
        nrow=SAMPLES_PER_ROW,
        row_labels=[f"T={t:g}" for t in temperatures],
    )
    atomic_write_bytes(workdir / SAMPLES_FILE, path.read_bytes())
