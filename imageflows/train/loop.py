"""The training loop (DESIGN section 7): build → initialize → wrap for DDP → step / log /
evaluate / sample / checkpoint.

The data order and every random stream follow from `train.seed` and the step
(`imageflows.train.data_order`), so a resumed run continues exactly as an uninterrupted one;
the step itself is `imageflows.train.step.train_step`, the one `imageflows bench` times.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from imageflows.config import Config, TrainConfig
from imageflows.data import ImageDataset
from imageflows.hardware import warn_if_slow_cpu_bf16
from imageflows.images import plot_curves
from imageflows.train.data_order import load_data
from imageflows.train.distributed import (
    DistEnv,
    data_parallel,
    process_group,
    run_on_main,
    sharded_evaluate,
)
from imageflows.train.guard import NonFiniteGuard
from imageflows.train.records import MetricsLog, Window, summary_writer_class
from imageflows.train.state import Run
from imageflows.train.step import LogProb, train_step
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
        `{"steps", "stopped", "test_bpd", "test_step", "wall_seconds", "samples", "run_dir",
        "checkpoint"}`: `stopped` is None (all `train.steps` done), "minutes" or "signal";
        `test_bpd` is the last evaluation's, at step `test_step` (both None if a signal came
        before the first; a signal skips the evaluation, so `test_step` may be below `steps`).
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
                guard.reload(run.step, run.checkpoint_step, run.lr())
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
        "test_step": None if last_test is None else last_test["step"],
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
