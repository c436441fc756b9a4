"""Runs that survive: kill -9 and resume, non-finite steps, bf16, TensorBoard (issue 5)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import imageflows as imf
from imageflows.config import Config, ConfigError
from imageflows.data import load_dataset
from imageflows.layers import Bijection, InvConv1x1LU
from imageflows.models import FlowModel, preset_config
from imageflows.nets import ConvActNorm, ZeroConv2d
from imageflows.train import load, train
from imageflows.train.checkpoint import load_state

from .test_glow import random_images
from .test_train import TINY, assert_same, metrics, steps, weights

KILL_SETTINGS = [
    "model.depth=2",
    "model.hidden_channels=16",
    "train.steps=20",
    "train.batch_size=16",
    "train.init_batch_size=64",
    "train.warmup_steps=5",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=2",
    "train.log_every=1",
    "train.eval_every=20",
    "train.eval_images=64",
    "train.sample_temperatures=",
]


# The training CLI in a child process whose checkpoint writer, asked for step 6, first says so
# on stdout and then waits forever: the test kills it there, two steps past checkpoint 4.
_BLOCK_AT_CHECKPOINT_6 = """
import sys, threading
import imageflows.train.state as state
from imageflows.cli import main
write = state.save_checkpoint
def save_checkpoint(workdir, step, *args):
    if step == 6:
        print("checkpoint 6", flush=True)
        threading.Event().wait()
    return write(workdir, step, *args)
state.save_checkpoint = save_checkpoint
sys.exit(main(sys.argv[1:]))
"""


def _cli(*args: str, block: bool = False) -> list[str]:
    start = ["-c", _BLOCK_AT_CHECKPOINT_6] if block else ["-m", "imageflows"]
    return [sys.executable, *start, "train", "--no-progress", *args]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL on this platform")
def test_resume_after_sigkill_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    run, sets = tmp_path / "killed", [a for kv in KILL_SETTINGS for a in ("--set", kv)]
    # One thread, as in this process (conftest), so both runs sum in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(
        _cli("--out", str(run), *sets, block=True),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    marker = process.stdout.readline()  # blocks until the child reaches checkpoint 6 (or dies)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert marker == b"checkpoint 6\n", stderr.decode()[-2000:]
    assert process.returncode == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step_0000002", "step_0000004"]
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6]  # two steps past it

    resumed = subprocess.run(_cli("--resume", str(run)), env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    reference = tmp_path / "reference"
    train(preset_config("glow-digits").with_overrides(KILL_SETTINGS), reference, progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        assert_same(weights(run, 20, name), weights(reference, 20, name))
    assert [r.get("train_bpd") for r in metrics(run)] == [
        r.get("train_bpd") for r in metrics(reference)
    ]


def _poison(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int] | None) -> None:
    """Make training calls number `bad_calls` (1-based; all if None) of `log_prob` NaN."""
    log_prob, calls = FlowModel.log_prob, [0]

    def poisoned(self, x, labels=None, generator=None):
        out = log_prob(self, x, labels, generator=generator)
        if not self.training:
            return out
        calls[0] += 1
        return out * math.nan if bad_calls is None or calls[0] in bad_calls else out

    monkeypatch.setattr(FlowModel, "log_prob", poisoned)


def test_a_non_finite_step_is_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison(monkeypatch, {3})
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="step 3: non-finite.*skipped"):
        summary = train(steps(TINY, 4, "train.checkpoint_every=1"), run, progress=False)
    for name in ("model.safetensors", "ema.safetensors"):  # step 3 changed nothing
        assert_same(weights(run, 3, name), weights(run, 2, name))
    assert summary["steps"] == 4 and math.isfinite(summary["test_bpd"])
    records = [r for r in metrics(run) if "train_bpd" in r]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 0]
    assert records[2]["train_bpd"] is None and records[3]["train_bpd"] is not None
    assert all(torch.isfinite(t).all() for t in weights(run, 4).values() if t.is_floating_point())


@pytest.mark.filterwarnings("ignore:step .* update skipped:RuntimeWarning")
@pytest.mark.parametrize(("bad_calls", "failed_at", "back_to"), [({5, 6}, 6, 4), ({1, 2}, 2, 0)])
def test_repeated_failures_reload_with_a_lower_lr(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bad_calls: set[int],
    failed_at: int,
    back_to: int,
) -> None:
    """Two failures in a row go back to the last checkpoint, or rebuild step 0 if none."""
    _poison(monkeypatch, bad_calls)
    run = tmp_path / "run"
    cfg = steps(TINY, 8, "train.max_bad_steps=2", "train.warmup_steps=0")
    warning = f"step {failed_at}: 2 non-finite .*reloaded step {back_to}"
    with pytest.warns(RuntimeWarning, match=warning):
        summary = train(cfg, run, progress=False)
    assert summary["steps"] == 8 and math.isfinite(summary["test_bpd"])
    records = metrics(run)
    (event,) = [r for r in records if r.get("event") == "reload"]
    assert event["step"] == back_to and event["lr_scale"] == 0.5
    train_records = [r for r in records if "train_bpd" in r]
    assert [r["step"] for r in train_records] == list(range(1, 9))  # abandoned records dropped
    assert all(r["skipped_steps"] == 0 for r in train_records)
    assert {r["lr"] for r in train_records if r["step"] > back_to} == {0.5 * TINY.train.lr}
    state = load_state(run / "checkpoints" / "step_0000008")
    assert state["lr_scale"] == 0.5 and state["reloads"] == 1
    # A resume keeps the lowered learning rate.
    train(steps(cfg, 9), run, resume=True, progress=False)
    assert metrics(run)[-2]["lr"] == 0.5 * TINY.train.lr


def test_the_guard_gives_up_when_nothing_helps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison(monkeypatch, None)
    cfg = steps(TINY, 4, "train.max_bad_steps=1")
    with pytest.warns(RuntimeWarning), pytest.raises(FloatingPointError, match="5 reloads"):
        train(cfg, tmp_path / "run", progress=False)


def test_bf16_training_keeps_exact_round_trips(tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = train(steps(TINY, 3, "train.precision=bf16"), run, progress=False)
    assert math.isfinite(summary["test_bpd"])
    assert all(math.isfinite(r["train_bpd"]) for r in metrics(run) if "train_bpd" in r)
    x = load_dataset("digits", "test").images[:64]
    for ema in (True, False):
        model = load(run, ema=ema)
        assert torch.equal(model.decode(model.encode(x)), x)


def test_bf16_runs_conditioners_in_bf16_and_the_flow_in_float32() -> None:
    torch.manual_seed(0)
    model = imf.Glow((2, 8, 8), levels=2, depth=2, hidden_channels=8, num_levels=16)
    x = random_images(model, n=4)
    model.initialize(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dtypes: dict[str, set[torch.dtype]] = {"flow": set(), "conv": set()}

    def record(module, inputs, output) -> None:
        if isinstance(module, Bijection):
            dtypes["flow"].update(t.dtype for t in output)
        else:
            dtypes["conv"].add(output.dtype)

    for module in model.modules():
        if isinstance(module, Bijection | ConvActNorm | ZeroConv2d):  # the conditioners' layers
            module.register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_prob = model.log_prob(x, generator=torch.Generator().manual_seed(0))
    assert dtypes == {"flow": {torch.float32}, "conv": {torch.bfloat16}}
    assert log_prob.dtype == torch.float32
    exact = model.log_prob(x, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(log_prob, exact)  # the conditioners did run in bf16
    torch.testing.assert_close(log_prob, exact, rtol=1e-2, atol=0.0)


def test_conv1x1_ignores_autocast() -> None:
    torch.manual_seed(0)
    layer, x = InvConv1x1LU(6), torch.randn(2, 6, 4, 4)
    z, logdet = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_ac, logdet_ac = layer(x)
        x_ac = layer.inverse(z_ac)[0]
    assert z_ac.dtype == torch.float32 and torch.equal(z_ac, z) and torch.equal(logdet_ac, logdet)
    torch.testing.assert_close(x_ac, x, rtol=0, atol=1e-5)


def _bf16_gradients(memory_saving: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    options = dict(levels=2, depth=3, hidden_channels=8, num_levels=16)
    model = imf.Glow((2, 8, 8), **options, memory_saving=memory_saving)
    x = random_images(model, n=8)
    model.initialize(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = -model.log_prob(x, generator=torch.Generator().manual_seed(0)).mean()
    loss.backward()
    return [p.grad for p in model.parameters()]


def test_memory_saving_replays_autocast() -> None:
    plain, saving = _bf16_gradients(False), _bf16_gradients(True)
    for p, q in zip(plain, saving, strict=True):
        # Replaying bf16 gives autograd's gradients to ~1e-7 (as in float32); recomputing the
        # conditioners in float32 instead gives gradients ~1e-2 off.
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


def test_unknown_precision_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.precision must be one of fp32, bf16, got 'fp16'"):
        train(steps(TINY, 1, "train.precision=fp16"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_tensorboard_events_beside_the_metrics(tmp_path: Path) -> None:
    pytest.importorskip(
        "tensorboard", reason="tensorboard not installed (pip install 'imageflows[tb]')"
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(steps(TINY, 2, "train.tensorboard=true"), run, progress=False)
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert {"train_bpd", "test_bpd", "lr"} <= set(accumulator.Tags()["scalars"])
    train_bpd = [r["train_bpd"] for r in metrics(run) if "train_bpd" in r]
    logged = [e.value for e in accumulator.Scalars("train_bpd")]
    assert logged == pytest.approx(train_bpd, rel=1e-6)


def test_tensorboard_missing_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(RuntimeError, match=r"needs the tensorboard package.*imageflows\[tb\]"):
        train(steps(TINY, 1, "train.tensorboard=true"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_cleans_up_after_a_crash(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(steps(TINY, 2), run, progress=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train_b')  # a kill -9 in the middle of a write
    stale = run / ".model.safetensors.0123abcd.tmp"  # ... or of an atomic write
    stale.write_bytes(b"half")
    train(steps(Config.load(run / "config.json"), 3), run, resume=True, progress=False)
    assert not stale.exists()
    assert [r["step"] for r in metrics(run)] == [1, 2, 2, 3, 3]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert_same(load_file(run / "model.safetensors"), weights(run, 3, "ema.safetensors"))


def test_compiled_training_trains_like_eager(tmp_path: Path, aot_eager_compile: list) -> None:
    """`train.compile=true` compiles the training forward (and backward)."""
    train(steps(TINY, 2), tmp_path / "eager", progress=False)
    assert not aot_eager_compile
    train(steps(TINY, 2, "train.compile=true"), tmp_path / "compiled", progress=False)
    assert aot_eager_compile
    eager, traced = weights(tmp_path / "eager", 2), weights(tmp_path / "compiled", 2)
    assert eager.keys() == traced.keys()
    for key in eager:
        torch.testing.assert_close(traced[key], eager[key], rtol=1e-4, atol=1e-6, msg=key)
