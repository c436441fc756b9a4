"""End to end: a few training steps of a tiny Glow on digits, exact resume, evaluate, load."""

from __future__ import annotations

import json
import math
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imageflows.config import Config, ModelConfig, TrainConfig
from imageflows.data import load_dataset
from imageflows.metrics import evaluate
from imageflows.models import build_model
from imageflows.train import CheckpointWarning, load, loop, stop, train
from imageflows.train.data_order import global_indices
from imageflows.train.distributed import DistEnv

from ._signals import signal_after_step

TINY = Config(
    model=ModelConfig(image_shape=(1, 8, 8), num_levels=17, levels=2, depth=2, hidden_channels=16),
    train=TrainConfig(
        steps=4,
        batch_size=16,
        init_batch_size=64,
        warmup_steps=2,
        ema=0.9,
        eval_every=2,
        eval_images=64,
        eval_batch_size=32,
        sample_temperatures=(0.0, 0.7),
        checkpoint_every=2,
        keep_checkpoints=3,
        log_every=1,
    ),
)


def steps(cfg: Config, n: int, *more: str) -> Config:
    return cfg.with_overrides([f"train.steps={n}", *more])


def weights(run: Path, step: int, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step:07d}" / name)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An uninterrupted 4-step run, checkpoints at steps 2 and 4 (do not modify it)."""
    run = tmp_path_factory.mktemp("runs") / "run4"
    return run, train(TINY, run, progress=False)


def test_train_writes_a_self_describing_run(run4: tuple[Path, dict]) -> None:
    run, summary = run4
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "samples.png", "bpd.png"):
        assert (run / name).is_file(), name
    assert (run / "samples" / "step_0000002.png").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_0000002",
        "step_0000004",
    ]
    assert Config.load(run / "config.json") == TINY
    assert summary["steps"] == 4 and summary["run_dir"] == str(run)
    assert math.isfinite(summary["test_bpd"]) and 1.0 < summary["test_bpd"] < 10.0

    records = metrics(run)
    train_records = [r for r in records if "train_bpd" in r]
    test_records = [r for r in records if "test_bpd" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    assert [r["step"] for r in test_records] == [2, 4]
    assert all(math.isfinite(r["train_bpd"]) and r["grad_norm"] > 0 for r in train_records)
    assert [r["lr"] for r in train_records] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    assert test_records[-1]["test_bpd"] == summary["test_bpd"]
    assert test_records[-1]["recon_max_abs"] < 0.01
    # model.safetensors is the latest EMA, which with ema=0.9 differs from the raw weights.
    assert_same(load_file(run / "model.safetensors"), weights(run, 4, "ema.safetensors"))
    raw, ema = weights(run, 4), weights(run, 4, "ema.safetensors")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_checkpoint_state_loads_with_weights_only(run4: tuple[Path, dict]) -> None:
    path = run4[0] / "checkpoints" / "step_0000004"
    state = torch.load(path / "state.pt", weights_only=True)
    assert state["step"] == 4
    assert {"optimizer", "lr_scale", "reloads", "data_order"} <= set(state)
    assert state["lr_scale"] == 1.0 and state["reloads"] == 0
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["sha256"]) == {"model.safetensors", "ema.safetensors", "state.pt"}


def test_resume_continues_bitwise(run4: tuple[Path, dict], tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(steps(TINY, 2), run, progress=False)
    resumed = steps(Config.load(run / "config.json"), 4)
    summary = train(resumed, run, resume=True, progress=False)
    assert summary["steps"] == 4
    assert_same(weights(run, 4), weights(run4[0], 4))
    assert_same(weights(run, 4, "ema.safetensors"), weights(run4[0], 4, "ema.safetensors"))
    train_bpd = [(r["step"], r["train_bpd"]) for r in metrics(run) if "train_bpd" in r]
    assert train_bpd == [(r["step"], r["train_bpd"]) for r in metrics(run4[0]) if "train_bpd" in r]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_the_step_and_resume_continues_bitwise(
    signum: signal.Signals,
    run4: tuple[Path, dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = signal.getsignal(signum)
    monkeypatch.setattr(loop, "train_step", signal_after_step(3, signum))
    run = tmp_path / "run"
    summary = train(TINY, run, progress=False)
    assert summary["stopped"] == "signal" and summary["steps"] == 3
    assert summary["checkpoint"].endswith("step_0000003")  # off the every-2-steps schedule
    tests = [r for r in metrics(run) if "test_bpd" in r]
    assert tests[-1]["step"] == 2 and summary["test_bpd"] == tests[-1]["test_bpd"]  # none at 3
    assert signal.getsignal(signum) is handler

    summary = train(Config.load(run / "config.json"), run, resume=True, progress=False)
    assert summary["stopped"] is None and summary["steps"] == 4
    assert_same(weights(run, 4), weights(run4[0], 4))
    assert_same(weights(run, 4, "ema.safetensors"), weights(run4[0], 4, "ema.safetensors"))


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """SIGINT as a foreground process has it (a background job, `cmd &` in a script, starts
    with SIGINT ignored, and a second signal then does what it did before: nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_second_signal_acts_at_once(default_sigint: None) -> None:
    with stop.EarlyStop(0, DistEnv(0, 1, torch.device("cpu"))) as early_stop:
        assert early_stop.check(0.0) is None
        signal.raise_signal(signal.SIGINT)
        assert early_stop.check(0.0) == "signal"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_minutes_is_a_budget_of_training_time() -> None:
    env = DistEnv(0, 1, torch.device("cpu"))
    with stop.EarlyStop(2, env) as budget, stop.EarlyStop(0, env) as unlimited:
        assert budget.check(119.9) is None
        assert budget.check(120.0) == "minutes"
        assert unlimited.check(1e9) is None


def test_corrupt_checkpoint_falls_back_to_the_previous_one(
    run4: tuple[Path, dict], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run4[0], run)
    newest = run / "checkpoints" / "step_0000004" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    newest.write_bytes(bytes(data))

    with pytest.warns(CheckpointWarning, match=r"step_0000004.model\.safetensors"):
        train(Config.load(run / "config.json"), run, resume=True, progress=False)
    # Resumed from step 2 and redid steps 3-4 exactly; the records after step 2 were replaced.
    assert_same(weights(run, 4), weights(run4[0], 4))
    assert [r["step"] for r in metrics(run)] == [r["step"] for r in metrics(run4[0])]
    assert (run / "checkpoints" / "step_0000004.corrupt").is_dir()


def test_old_checkpoints_are_deleted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = steps(TINY, 3, "train.checkpoint_every=1", "train.keep_checkpoints=2")
    train(cfg, run, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_0000002",
        "step_0000003",
    ]


def test_load_gives_the_ema_or_raw_weights(run4: tuple[Path, dict]) -> None:
    run = run4[0]
    x = load_dataset("digits", "test").images[:16]
    model = load(run)
    assert not model.training and model.is_initialized
    reference = build_model(TINY.model)
    reference.load_state_dict(weights(run, 4, "ema.safetensors"))
    reference.eval()
    seed = torch.Generator().manual_seed
    assert torch.equal(
        model.log_prob(x, generator=seed(1)), reference.log_prob(x, generator=seed(1))
    )
    raw = load(run, ema=False)
    assert_same(raw.state_dict(), weights(run, 4))


def test_load_errors_name_the_path(run4: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path / "empty")
    run = tmp_path / "run"
    shutil.copytree(run4[0], run)
    (run / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="model.safetensors.*not a valid safetensors"):
        load(run)


def test_evaluate_is_reproducible(run4: tuple[Path, dict]) -> None:
    model = load(run4[0])
    x = load_dataset("digits", "test").images[:40]
    first = evaluate(model, x, batch_size=16, seed=3)
    assert first == evaluate(model, x, batch_size=16, seed=3)
    assert first["n"] == 40 and first["recon_max_abs"] < 0.01
    assert math.isfinite(first["bpd"])
    with pytest.raises(TypeError, match="uint8"):
        evaluate(model, x.float())


def test_training_evaluates_as_evaluate_does(run4: tuple[Path, dict]) -> None:
    """The test records are `evaluate` of the EMA weights with seed `train.seed`, exactly."""
    run, summary = run4
    tc = TINY.train
    x = load_dataset("digits", "test").images[: tc.eval_images]
    result = evaluate(load(run), x, batch_size=tc.eval_batch_size, seed=tc.seed)
    assert result["bpd"] == summary["test_bpd"] == metrics(run)[-1]["test_bpd"]


def test_bad_runs_are_refused(run4: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(TINY, run4[0], progress=False)
    wrong = TINY.with_overrides(["model.image_shape=1,16,16"])
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(1, 16, 16\)"):
        train(wrong, tmp_path / "wrong", progress=False)
    assert not (tmp_path / "wrong").exists()
    with pytest.raises(FileNotFoundError, match="config.json"):
        train(TINY, tmp_path / "never", resume=True, progress=False)


def test_data_order_is_a_function_of_the_step() -> None:
    n, seed = 10, 5
    whole = global_indices(0, 30, n, seed)
    assert sorted(whole[:10].tolist()) == list(range(10))
    assert sorted(whole[10:20].tolist()) == list(range(10))
    assert not torch.equal(whole[:10], whole[10:20])
    assert torch.equal(global_indices(7, 23, n, seed), whole[7:23])
    assert not torch.equal(global_indices(0, 10, n, seed + 1), whole[:10])
