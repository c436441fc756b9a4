"""The training loop (DESIGN section 7): build → initialize → wrap for DDP → step / log /
evaluate / sample / checkpoint.

The data order and every random stream follow from `train.seed` and the step
(`imageflows.train.data_order`), so a resumed run continues exactly as an uninterrupted one;
the step itself is `imageflows.train.step.train_step`, the one `imageflows bench` times.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from imageflows.config import Config, TrainConfig
from imageflows.data import ImageDataset
from imageflows.hardware import warn_if_slow_cpu_bf16
from imageflows.images import plot_curves
from imageflows.models import build_model
from imageflows.train.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    latest_valid_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
)
from imageflows.train.data_order import derived_seed, global_indices, load_data
from imageflows.train.distributed import (
    DistEnv,
    broadcast_module,
    data_parallel,
    process_group,
    run_on_main,
    shard,
    sharded_evaluate,
)
from imageflows.train.ema import EMA
from imageflows.train.guard import NonFiniteGuard
from imageflows.train.records import MetricsLog, Window, summary_writer_class
from imageflows.train.step import LogProb, make_optimizer, train_step
from imageflows.train.stop import EarlyStop
from imageflows.train.workdir import (
    CURVES_FILE,
    SAMPLES_FILE,
    draw_samples,
    prepare_workdir,
    resume_point,
)


def train(cfg: Config, workdir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train `cfg.model` on `cfg.data` into the run directory `workdir`.

    Writes `config.json`, `metrics.jsonl` (training records every `log_every` steps, test
    records every `eval_every`, a record for each reload by the guard), `samples/step_NNNNNNN.png`
    and `samples.png` (EMA samples, one row per temperature), `bpd.png`,
    `checkpoints/step_NNNNNNN/`, `model.safetensors` (the latest EMA weights) and, with
    `train.tensorboard`, TensorBoard event files. Evaluation (`imageflows.metrics.evaluate`
    with seed `train.seed`) and samples use the EMA weights.

    Under `torchrun` (`WORLD_SIZE` > 1) every process calls this; they train one model with
    DDP on slices of the same global batches, and only rank 0 writes (see
    `imageflows.train.distributed`). A step whose loss or gradient is not finite on any rank is
    skipped on all (`imageflows.train.guard`).

    Args:
        cfg: the run's configuration.
        workdir: the run directory; a new one unless `resume`.
        resume: continue from the newest checkpoint that verifies (`workdir/config.json` must
            exist; pass `Config.load(workdir / "config.json")`, or a copy with more steps).
        progress: show a tqdm bar with the running bits/dim on stderr (rank 0).

    The run ends after `train.steps`, or earlier, with the step under way finished and
    checkpointed, once its training time (across resumes) reaches `train.minutes`, or at
    SIGINT / SIGTERM (`imageflows.train.stop`); `--resume` continues it.

    Returns:
        `{"steps", "stopped", "test_bpd", "wall_seconds", "samples", "run_dir", "checkpoint"}`:
        `stopped` is None (all `train.steps` done), "minutes" or "signal"; `test_bpd` is the
        last evaluation's (None if a signal came before the first).
    """
    tc, workdir = cfg.train, Path(workdir)
    writer_class = summary_writer_class() if tc.tensorboard else None
    with process_group() as env:
        _check_environment(tc, env)
        train_data, test_data = load_data(cfg)
        test_data = test_data.first(tc.eval_images or None)
        run = Run(cfg, workdir, env, train_data)  # a model config it rejects writes nothing
        run_on_main(env, prepare_workdir, cfg, workdir, resume)
        run.start(run_on_main(env, resume_point, workdir) if resume else None)
        log_prob = data_parallel(run.model, env)
        if tc.compile:  # the flow's many small element-wise ops fuse into a few kernels
            log_prob = torch.compile(log_prob)
        log = MetricsLog(workdir, run.step, writer_class, enabled=env.is_main)
        try:
            return _loop(run, log_prob, log, test_data, progress and env.is_main)
        finally:
            log.close()


def _loop(
    run: Run, log_prob: LogProb, log: MetricsLog, test_data: ImageDataset, show_progress: bool
) -> dict:
    tc, env = run.tc, run.env
    last_test = run_on_main(env, log.last_test)
    window, guard = Window(), NonFiniteGuard(tc.max_bad_steps, warn=env.is_main)
    started = time.perf_counter() - run.elapsed
    with (
        EarlyStop(tc.minutes, env) as early_stop,
        tqdm(
            total=tc.steps,
            initial=run.step,
            desc="train",
            unit="step",
            file=sys.stderr,
            disable=not show_progress,
            dynamic_ncols=True,
        ) as progress,
    ):
        run.model.train()
        stopped: str | None = None
        # checked before each step: a signal or the end of train.minutes ends the run early
        while (
            run.step < tc.steps
            and (stopped := early_stop.check(time.perf_counter() - started)) is None
        ):
            tick = time.perf_counter()
            lr = run.lr()
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            x, noise, labels = run.batch()
            result = train_step(
                run.model,
                run.optimizer,
                x,
                noise,
                labels=labels,
                log_prob=log_prob,
                grad_clip=tc.grad_clip,
                precision=tc.precision,
                batch_size=tc.batch_size,
                env=env,
            )
            run.step += 1
            run.elapsed = time.perf_counter() - started
            window.add(
                result.bpd,
                result.grad_norm,
                tc.batch_size,
                time.perf_counter() - tick,
                result.class_bits,
            )
            progress.update(1)
            if guard.must_reload(run.step, result.bpd is not None):
                guard.reload(run.step, run.checkpoint_step, tc.lr * run.lr_scale)
                last_test = run.reload(log)
                window, progress.n = Window(), run.step
                progress.refresh()
                continue
            if result.bpd is not None:
                run.ema.update(run.model, run.step)
                progress.set_postfix(bpd=f"{result.bpd:.3f}", refresh=False)

            if run.step % tc.log_every == 0 or run.step == tc.steps:
                log.append(window.record(run.step, lr, run.elapsed))
            if run.step % tc.eval_every == 0 or run.step == tc.steps:
                last_test = _evaluate(run, log, test_data)
            if run.step % tc.checkpoint_every == 0 or run.step == tc.steps:
                run.elapsed = time.perf_counter() - started
                run.save()
                guard.checkpointed()

    # The last step is evaluated (even of a run resumed at its end) and checkpointed; a signal
    # asks to stop soon, so it is only checkpointed.
    if stopped != "signal" and (last_test is None or last_test["step"] != run.step):
        last_test = _evaluate(run, log, test_data)
    run.elapsed = time.perf_counter() - started
    if run.checkpoint_step != run.step:
        run.save()
    return {
        "steps": run.step,
        "stopped": stopped,
        "test_bpd": None if last_test is None else last_test["test_bpd"],
        "wall_seconds": run.elapsed,
        "samples": str(run.workdir / SAMPLES_FILE) if tc.sample_temperatures else None,
        "run_dir": str(run.workdir),
        "checkpoint": str(run.checkpoint),
    }


def _evaluate(run: Run, log: MetricsLog, test_data: ImageDataset) -> dict:
    """Test bits/dim of the EMA weights over all ranks (of log p(x|y) and the Bayes
    classifier's accuracy for a class-conditional model); rank 0 logs it and draws samples."""
    tc = run.tc
    labels = test_data.labels if run.model.num_classes else None
    result = sharded_evaluate(
        run.ema.model, test_data.images, tc.eval_batch_size, tc.seed, run.env, labels
    )
    record = {"step": run.step, "test_bpd": result["bpd"]}
    record["recon_max_abs"] = result["recon_max_abs"]
    if "accuracy" in result:
        record["test_accuracy"] = result["accuracy"]
    run_on_main(run.env, _report_test, run, log, record)
    return record


def _report_test(run: Run, log: MetricsLog, record: dict) -> None:
    log.append(record)
    draw_samples(run.ema.model, run.workdir, run.step, run.cfg)
    plot_curves(log.records, run.workdir / CURVES_FILE)


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
        """The learning rate of the coming step: linear warm-up, times the guard's scale."""
        warmup = self.tc.warmup_steps
        ramp = min(1.0, (self.step + 1) / warmup) if warmup > 0 else 1.0
        return self.tc.lr * self.lr_scale * ramp

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


def _check_environment(tc: TrainConfig, env: DistEnv) -> None:
    if env.world_size > tc.batch_size:
        raise ValueError(
            f"train.batch_size={tc.batch_size} is smaller than the {env.world_size} processes "
            "sharing each batch; raise it or start fewer processes"
        )
    if tc.precision == "bf16" and env.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision=bf16, but {torch.cuda.get_device_name()} has no bf16")
    if tc.precision == "bf16" and env.device.type == "cpu" and env.is_main:
        warn_if_slow_cpu_bf16()
