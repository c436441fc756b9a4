"""The training loop (DESIGN section 7): build → initialize → wrap for DDP → step / log /
evaluate / sample / checkpoint, with a guard against non-finite steps.

Everything random is a function of `train.seed`, the step and the rank: the data order (epoch
`e` is a permutation seeded `seed · 1000003 + e`, step `s` takes positions `[sB, (s+1)B)` of the
concatenated epochs, rank `r` the r-th slice of them), the initialisation, and the
dequantization noise and torch's global generator (dropout), both reseeded at every step. So a
resumed run continues exactly as an uninterrupted one (bitwise on CPU), and a checkpoint holds
no generator state: the step, the rank and the number of guard reloads determine them all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from imageflows._io import atomic_write_bytes, atomic_write_text
from imageflows.allocator import keep_freed_memory
from imageflows.config import Config, ConfigError, TrainConfig
from imageflows.data import load_dataset, prepare
from imageflows.images import plot_curves, save_grid
from imageflows.latent import temperature_rows
from imageflows.metrics import bits_per_dim
from imageflows.models import FlowModel, build_model
from imageflows.train.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EMA_FILE,
    MODEL_FILE,
    CheckpointWarning,
    latest_valid_checkpoint,
    list_checkpoints,
    load_state,
    load_weights,
    save_checkpoint,
)
from imageflows.train.distributed import (
    DistEnv,
    all_reduce,
    broadcast_module,
    data_parallel,
    process_group,
    run_on_main,
    shard,
    sharded_evaluate,
)
from imageflows.train.ema import EMA

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.png"
CURVES_FILE = "bpd.png"
SAMPLES_PER_ROW = 8
PRECISIONS = ("fp32", "bf16")
# Reloads of the last checkpoint, each at a lower learning rate, before the guard gives up.
MAX_RELOADS_IN_A_ROW = 5


def train(cfg: Config, workdir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train `cfg.model` on `cfg.data` into the run directory `workdir`.

    Writes `config.json`, `metrics.jsonl` (training records every `log_every` steps, test
    records every `eval_every`, a record for each reload by the guard), `samples/step_NNNNNNN.png`
    and `samples.png` (EMA samples, one row per temperature), `bpd.png`,
    `checkpoints/step_NNNNNNN/`, `model.safetensors` (the latest EMA weights) and, with
    `train.tensorboard`, TensorBoard event files. Evaluation and samples use the EMA weights.

    Under `torchrun` (`WORLD_SIZE` > 1) every process calls this; they train one model with
    DDP on slices of the same global batches, and only rank 0 writes (see
    `imageflows.train.distributed`). A step whose loss or gradient is not finite on any rank is
    skipped on all; after `train.max_bad_steps` of them in a row the run goes back to its last
    good checkpoint (step 0 if none) with the learning rate times `train.lr_backoff`.

    Args:
        cfg: the run's configuration.
        workdir: the run directory; a new one unless `resume`.
        resume: continue from the newest checkpoint that verifies (`workdir/config.json` must
            exist; pass `Config.load(workdir / "config.json")`, or a copy with more steps).
        progress: show a tqdm bar with the running bits/dim on stderr (rank 0).

    Returns:
        `{"steps", "test_bpd", "wall_seconds", "samples", "run_dir", "checkpoint"}`.
    """
    tc = cfg.train
    _check_train_config(tc)
    keep_freed_memory()
    writer_class = _summary_writer_class() if tc.tensorboard else None
    workdir = Path(workdir)
    with process_group() as env:
        _check_environment(tc, env)
        train_images, test_images = _load_images(cfg)
        if tc.eval_images:
            test_images = test_images[: tc.eval_images]
        run_on_main(env, _prepare_workdir, cfg, workdir, resume)
        latest = run_on_main(env, _resume_point, workdir) if resume else None
        run = _Run(cfg, workdir, env, train_images, test_images)
        run.start(latest)
        run.log_prob = data_parallel(run.model, env)
        if tc.compile:  # the flow's many small element-wise ops fuse into a few kernels
            run.log_prob = torch.compile(run.log_prob)
        run.records = run_on_main(env, _read_metrics, workdir / METRICS_FILE, run.step)
        if env.is_main and writer_class is not None:
            run.open_writer(writer_class)
        try:
            return _train_loop(run, progress and env.is_main)
        finally:
            run.close_writer()


def _train_loop(run: _Run, progress: bool) -> dict:
    tc, env = run.tc, run.env
    last_test = _last_test(run.records)
    window = _Window()
    bad_in_a_row = 0
    started = time.perf_counter() - run.elapsed
    with tqdm(
        total=tc.steps,
        initial=run.step,
        desc="train",
        unit="step",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        run.model.train()
        while run.step < tc.steps:
            tick = time.perf_counter()
            lr = run.lr()
            bpd, grad_norm = run.train_step()
            run.step += 1
            run.elapsed = time.perf_counter() - started
            window.add(bpd, grad_norm, tc.batch_size, time.perf_counter() - tick)
            bar.update(1)
            if bpd is None:
                bad_in_a_row += 1
                if env.is_main:
                    warnings.warn(
                        f"step {run.step}: non-finite bits/dim or gradient norm; update skipped "
                        f"({bad_in_a_row} in a row, reload at {tc.max_bad_steps})",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                if bad_in_a_row >= tc.max_bad_steps:
                    last_test = run.reload()
                    bad_in_a_row, window = 0, _Window()
                    bar.n = run.step
                    bar.refresh()
                    continue
            else:
                bad_in_a_row = 0
                run.ema.update(run.model, run.step)
                bar.set_postfix(bpd=f"{bpd:.3f}", refresh=False)

            if run.step % tc.log_every == 0 or run.step == tc.steps:
                record = window.record(run.step, lr, run.elapsed)
                if env.is_main:
                    run.log(record)
            if run.step % tc.eval_every == 0 or run.step == tc.steps:
                last_test = run.evaluate()
            if run.step % tc.checkpoint_every == 0 or run.step == tc.steps:
                run.elapsed = time.perf_counter() - started
                run.save()

    # A run resumed at its last step (or of 0 steps) still reports and checkpoints that step.
    if last_test is None or last_test["step"] != run.step:
        last_test = run.evaluate()
    run.elapsed = time.perf_counter() - started
    if run.checkpoint_step != run.step:
        run.save()
    return {
        "steps": run.step,
        "test_bpd": last_test["test_bpd"],
        "wall_seconds": run.elapsed,
        "samples": str(run.workdir / SAMPLES_FILE) if tc.sample_temperatures else None,
        "run_dir": str(run.workdir),
        "checkpoint": str(run.checkpoint),
    }


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam (Glow section 5, Flow++ section 4) as one fused kernel over all parameters.

    A Glow has hundreds of small parameters (actnorm, LU factors); the per-parameter loop of
    plain Adam costs about a tenth of a CPU training step, the fused update a fiftieth.
    """
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


class _Run:
    """One rank's training state (model, EMA, optimizer, step, learning-rate scale) and what
    the loop does with it: start, step, evaluate, save, reload."""

    def __init__(
        self, cfg: Config, workdir: Path, env: DistEnv, train_images: Tensor, test_images: Tensor
    ) -> None:
        self.cfg, self.tc, self.workdir, self.env = cfg, cfg.train, workdir, env
        self.train_images, self.test_images = train_images, test_images
        torch.manual_seed(self.tc.seed)
        self.model = build_model(cfg.model).to(env.device)
        self.ema = EMA(self.model, self.tc.ema)
        self.optimizer = make_optimizer(self.model, self.tc.lr)
        self.empty_optimizer = self.optimizer.state_dict()
        self.log_prob: nn.Module | None = None  # (x, generator) ↦ log p(x), set after the init
        self.step, self.elapsed = 0, 0.0
        self.lr_scale, self.reloads, self.reloads_in_a_row = 1.0, 0, 0
        self.checkpoint: Path | None = None
        self.checkpoint_step: int | None = None
        self.records: list[dict] = []
        self.writer: Any = None

    def start(self, checkpoint: tuple[int, Path] | None) -> None:
        """Put every rank at step 0 with freshly initialised weights, or at `checkpoint`."""
        if checkpoint is None:
            if self.model.is_initialized:  # the guard going back to step 0: rebuild its weights
                torch.manual_seed(self.tc.seed)
                self.model.load_state_dict(build_model(self.cfg.model).state_dict())
            if self.env.is_main:
                num_train = len(self.train_images)
                first = global_indices(
                    0, min(self.tc.init_batch_size, num_train), num_train, self.tc.seed
                )
                self.model.initialize(self.train_images[first].to(self.env.device), force=True)
            broadcast_module(self.model, self.env)
            self.ema.model.load_state_dict(self.model.state_dict())
            self.optimizer.load_state_dict(self.empty_optimizer)
            self.step, self.elapsed, self.lr_scale = 0, 0.0, 1.0
            self.checkpoint = self.checkpoint_step = None
            return
        step, path = checkpoint
        state = load_state(path)
        order = self.data_order()
        if state["data_order"] != order:
            raise ValueError(
                f"{path}: checkpoint data order {state['data_order']} does not match this run's "
                f"{order}; the data set or train.seed/batch_size changed"
            )
        load_weights(self.model, path / MODEL_FILE)
        load_weights(self.ema.model, path / EMA_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        # Checkpoints written before the guard existed carry neither: nothing was lowered.
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.reloads = int(state.get("reloads", 0))
        self.checkpoint, self.checkpoint_step = path, step

    def data_order(self) -> dict:
        return {
            "seed": self.tc.seed,
            "batch_size": self.tc.batch_size,
            "num_images": len(self.train_images),
        }

    def lr(self) -> float:
        """The learning rate of the coming step: linear warm-up, times the guard's scale."""
        warmup = self.tc.warmup_steps
        ramp = min(1.0, (self.step + 1) / warmup) if warmup > 0 else 1.0
        return self.tc.lr * self.lr_scale * ramp

    def seed(self, stream: str) -> int:
        return derived_seed(self.tc.seed, f"{stream}/{self.env.rank}/{self.step}/{self.reloads}")

    def train_step(self) -> tuple[float | None, float]:
        """One optimizer step on this step's global batch; `(bpd, grad_norm)`, with bpd the
        global batch's mean, or `None` (and the update skipped) if the loss or the gradient
        is not finite on some rank."""
        tc, env = self.tc, self.env
        start = self.step * tc.batch_size
        batch = global_indices(start, start + tc.batch_size, len(self.train_images), tc.seed)
        x = self.train_images[shard(batch, env)].to(env.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        torch.manual_seed(self.seed("torch"))
        noise = torch.Generator(env.device).manual_seed(self.seed("dequantization"))
        # Only the forward is autocast; the model keeps its main path in float32 (DESIGN §3).
        with torch.autocast(env.device.type, torch.bfloat16, enabled=tc.precision == "bf16"):
            log_prob = self.log_prob(x, noise)
        bpd = bits_per_dim(log_prob.float(), self.model.num_dims)
        # DDP averages the ranks' gradients, which makes this the gradient of the global mean.
        loss = bpd.sum() * (env.world_size / tc.batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # max_norm=inf clips nothing but still measures the norm.
        grad_norm = nn.utils.clip_grad_norm_(
            self.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf")
        )
        # One sum over ranks serves the logged loss and the skip decision, which therefore is
        # the same on every rank: a non-finite value anywhere makes the sums non-finite.
        bpd_sum, norm_sum = all_reduce(torch.stack([bpd.detach().sum(), grad_norm]).tolist(), env)
        if not (math.isfinite(bpd_sum) and math.isfinite(norm_sum)):
            self.optimizer.zero_grad(set_to_none=True)
            return None, grad_norm.item()
        self.optimizer.step()
        return bpd_sum / tc.batch_size, grad_norm.item()

    def evaluate(self) -> dict:
        """Test bits/dim of the EMA weights over all ranks; rank 0 logs it and draws samples."""
        tc = self.tc
        result = sharded_evaluate(
            self.ema.model, self.test_images, tc.eval_batch_size, tc.seed, self.env
        )
        record = {
            "step": self.step,
            "test_bpd": result["bpd"],
            "recon_max_abs": result["recon_max_abs"],
        }
        run_on_main(self.env, self._report_test, record)
        return record

    def _report_test(self, record: dict) -> None:
        self.log(record)
        _draw_samples(self.ema.model, self.workdir, self.step, self.cfg)
        plot_curves(self.records, self.workdir / CURVES_FILE)

    def save(self) -> None:
        """Checkpoint this step (rank 0 writes; an error is raised on every rank)."""
        self.checkpoint = run_on_main(self.env, self._write_checkpoint)
        self.checkpoint_step = self.step
        self.reloads_in_a_row = 0

    def _write_checkpoint(self) -> Path:
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "optimizer": self.optimizer.state_dict(),
            "lr_scale": self.lr_scale,
            "reloads": self.reloads,
            "world_size": self.env.world_size,
            "data_order": self.data_order(),
        }
        return save_checkpoint(
            self.workdir,
            self.step,
            self.model.state_dict(),
            self.ema.model.state_dict(),
            state,
            self.tc.keep_checkpoints,
        )

    def reload(self) -> dict | None:
        """Go back to the newest good checkpoint (step 0 if none) with the learning rate
        lowered by `train.lr_backoff`; returns the last test record still standing."""
        tc = self.tc
        if self.reloads_in_a_row >= MAX_RELOADS_IN_A_ROW:
            raise FloatingPointError(
                f"step {self.step}: training still gives non-finite values after "
                f"{self.reloads_in_a_row} reloads of checkpoint step {self.checkpoint_step or 0} "
                f"at learning rates down to {tc.lr * self.lr_scale:g}; lower train.lr or "
                "check the data"
            )
        failed_at, elapsed, reloads = self.step, self.elapsed, self.reloads
        lr_scale = self.lr_scale * tc.lr_backoff
        self.start(run_on_main(self.env, latest_valid_checkpoint, self.workdir))
        self.elapsed, self.lr_scale = elapsed, lr_scale
        # A new count also gives the replayed steps new noise (their seeds include it).
        self.reloads, self.reloads_in_a_row = reloads + 1, self.reloads_in_a_row + 1
        record = {
            "step": self.step,
            "event": "reload",
            "failed_at": failed_at,
            "lr_scale": lr_scale,
            "time": elapsed,
        }
        return run_on_main(self.env, self._report_reload, record)

    def _report_reload(self, record: dict) -> dict | None:
        warnings.warn(
            f"step {record['failed_at']}: {self.tc.max_bad_steps} non-finite steps in a row; "
            f"reloaded step {record['step']} with the learning rate scaled by "
            f"{record['lr_scale']:g}",
            RuntimeWarning,
            stacklevel=2,
        )
        self.records = _read_metrics(self.workdir / METRICS_FILE, up_to=self.step)
        if self.writer is not None:  # hide the abandoned steps' events, as a resume does
            writer_class = type(self.writer)
            self.close_writer()
            self.open_writer(writer_class)
        self.log(record)
        return _last_test(self.records)

    def log(self, record: dict) -> None:
        """Append a record to metrics.jsonl (and its numbers to TensorBoard); rank 0 only."""
        self.records.append(record)
        with open(self.workdir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and type(value) in (int, float):
                    self.writer.add_scalar(key, value, record["step"])

    def open_writer(self, writer_class: type) -> None:
        # Events of steps after the one resumed from belong to an abandoned future: hide them.
        purge = self.step + 1 if self.step > 0 else None
        self.writer = writer_class(log_dir=str(self.workdir), purge_step=purge)

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _last_test(records: list[dict]) -> dict | None:
    return next((r for r in reversed(records) if "test_bpd" in r), None)


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
                "keep_checkpoints", "log_every", "init_batch_size", "max_bad_steps"):  # fmt: skip
        if getattr(tc, key) < 1:
            raise ConfigError(f"train.{key} must be ≥ 1, got {getattr(tc, key)}")
    for key in ("steps", "warmup_steps", "grad_clip", "eval_images"):
        if getattr(tc, key) < 0:
            raise ConfigError(f"train.{key} must be ≥ 0, got {getattr(tc, key)}")
    if not 0.0 < tc.lr_backoff <= 1.0:
        raise ConfigError(f"train.lr_backoff must be in (0, 1], got {tc.lr_backoff}")
    if tc.precision not in PRECISIONS:
        raise ConfigError(
            f"train.precision must be one of {', '.join(PRECISIONS)}, got {tc.precision!r}"
        )


def _check_environment(tc: TrainConfig, env: DistEnv) -> None:
    if env.world_size > tc.batch_size:
        raise ValueError(
            f"train.batch_size={tc.batch_size} is smaller than the {env.world_size} processes "
            "sharing each batch; raise it or start fewer processes"
        )
    if tc.precision == "bf16" and env.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision=bf16, but {torch.cuda.get_device_name()} has no bf16")


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError(
            "train.tensorboard=true needs the tensorboard package: pip install 'imageflows[tb]'"
        ) from None
    return SummaryWriter


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


def _resume_point(workdir: Path) -> tuple[int, Path] | None:
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


def _read_metrics(path: Path, up_to: int) -> list[dict]:
    """Records of `metrics.jsonl` up to step `up_to`; later ones (from after the checkpoint we
    resume from) and a last line cut short by a crash are dropped from the file."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not a JSON record") from None
    kept = [r for r in records if r["step"] <= up_to]
    if len(kept) != len(lines):
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
