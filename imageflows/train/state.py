"""One rank's training state — model, EMA, optimizer, step, learning-rate scale — and its
transitions: a fresh start with data-dependent init, a resume from a checkpoint, a save, and the
non-finite guard's reload (DESIGN section 7).

The data order and every random stream follow from `train.seed` and the step
(`imageflows.train.data_order`), so a state restored from a checkpoint continues exactly.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from imageflows.config import Config
from imageflows.data import ImageDataset
from imageflows.models import build_model
from imageflows.train.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    latest_valid_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
)
from imageflows.train.data_order import derived_seed, global_indices
from imageflows.train.distributed import DistEnv, broadcast_module, run_on_main, shard
from imageflows.train.ema import EMA
from imageflows.train.records import MetricsLog
from imageflows.train.schedule import scheduled_lr
from imageflows.train.step import make_optimizer


class Run:
    """One rank's training state (model, EMA, optimizer, step, learning-rate scale) and its
    transitions: start (fresh or from a checkpoint), save, reload."""

    def __init__(self, cfg: Config, workdir: Path, env: DistEnv, train_data: ImageDataset) -> None:
        self.cfg, self.tc, self.workdir, self.env = cfg, cfg.train, workdir, env
        self.train_images = train_data.images
        self.train_labels = train_data.labels if cfg.model.num_classes else None
        torch.manual_seed(self.tc.seed)
        self.model = build_model(cfg.model).to(env.device)
        self.ema = EMA(self.model, self.tc.ema)
        self.optimizer = make_optimizer(self.model, self.tc.lr)
        self.empty_optimizer = self.optimizer.state_dict()
        self.step, self.elapsed = 0, 0.0
        self.lr_scale, self.reloads = 1.0, 0
        self.checkpoint: Path | None = None
        self.checkpoint_step: int | None = None

    def start(self, checkpoint: tuple[int, Path] | None) -> None:
        """Put every rank at step 0 with freshly initialised weights, or at `checkpoint`."""
        if checkpoint is None:
            if self.model.is_initialized:  # the guard going back to step 0: rebuild its weights
                torch.manual_seed(self.tc.seed)
                self.model.load_state_dict(build_model(self.cfg.model).state_dict())
            if self.env.is_main:  # data-dependent init on the first images of the data order
                num_train = len(self.train_images)
                first = global_indices(
                    0, min(self.tc.init_batch_size, num_train), num_train, self.tc.seed
                )
                labels = None if self.train_labels is None else self.train_labels[first]
                self.model.initialize(
                    self.train_images[first].to(self.env.device), force=True, labels=labels
                )
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
        self.lr_scale, self.reloads = float(state["lr_scale"]), int(state["reloads"])
        self.checkpoint, self.checkpoint_step = path, step

    def data_order(self) -> dict:
        """What the data order depends on; a resume must find the same."""
        return {
            "seed": self.tc.seed,
            "batch_size": self.tc.batch_size,
            "num_images": len(self.train_images),
        }

    def lr(self) -> float:
        """The learning rate of the coming step: the schedule's, times the guard's scale."""
        return scheduled_lr(self.tc, self.step) * self.lr_scale

    def batch(self) -> tuple[Tensor, torch.Generator, Tensor | None]:
        """This rank's slice of the coming step's global batch, its dequantization noise and
        its labels (None for an unconditional model); torch's global generator (dropout) is
        reseeded for the step too."""
        tc, env = self.tc, self.env
        start = self.step * tc.batch_size
        indices = global_indices(start, start + tc.batch_size, len(self.train_images), tc.seed)
        mine = shard(indices, env)
        x = self.train_images[mine].to(env.device)
        labels = None if self.train_labels is None else self.train_labels[mine].to(env.device)
        torch.manual_seed(self._seed("torch"))
        return x, torch.Generator(env.device).manual_seed(self._seed("dequantization")), labels

    def _seed(self, stream: str) -> int:
        # A reload gives the replayed steps new noise: the seeds include the reload count.
        return derived_seed(self.tc.seed, f"{stream}/{self.env.rank}/{self.step}/{self.reloads}")

    def save(self) -> None:
        """Checkpoint this step (rank 0 writes; an error is raised on every rank)."""
        self.checkpoint = run_on_main(self.env, self._write_checkpoint)
        self.checkpoint_step = self.step

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

    def reload(self, log: MetricsLog) -> dict | None:
        """Go back to the newest good checkpoint (step 0 if none) with the learning rate
        lowered by `train.lr_backoff`; returns the last test record still standing."""
        failed_at, elapsed = self.step, self.elapsed
        lr_scale, reloads = self.lr_scale * self.tc.lr_backoff, self.reloads + 1
        self.start(run_on_main(self.env, latest_valid_checkpoint, self.workdir))
        self.elapsed, self.lr_scale, self.reloads = elapsed, lr_scale, reloads
        record = {
            "step": self.step,
            "event": "reload",
            "failed_at": failed_at,
            "lr_scale": lr_scale,
            "time": elapsed,
        }
        return run_on_main(self.env, _report_reload, log, record, self.tc.max_bad_steps)


def _report_reload(log: MetricsLog, record: dict, max_bad_steps: int) -> dict | None:
    warnings.warn(
        f"step {record['failed_at']}: {max_bad_steps} non-finite steps in a row; reloaded "
        f"step {record['step']} with the learning rate scaled by {record['lr_scale']:g}",
        RuntimeWarning,
        stacklevel=2,
    )
    log.rewind(record["step"])
    log.append(record)
    return log.last_test()
