"""The learning-rate schedule: warm-up, the step decay, its config checks and a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageflows.config import Config, ConfigError, TrainConfig
from imageflows.train import train
from imageflows.train.schedule import scheduled_lr

from .test_train import TINY


def test_warm_up_then_the_step_decay() -> None:
    tc = TrainConfig(lr=1e-3, warmup_steps=4, lr_milestones=(6, 9), lr_values=(3e-4, 1e-4))
    got = [scheduled_lr(tc, t) for t in range(11)]
    want = [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 3e-4, 3e-4, 3e-4, 1e-4, 1e-4]
    assert got == pytest.approx(want, rel=1e-12)


def test_a_milestone_inside_the_warm_up_scales_the_ramp() -> None:
    tc = TrainConfig(lr=1e-3, warmup_steps=10, lr_milestones=(2,), lr_values=(1e-4,))
    assert [scheduled_lr(tc, t) for t in (0, 1, 2, 9, 10)] == pytest.approx(
        [1e-4, 2e-4, 3e-5, 1e-4, 1e-4], rel=1e-12
    )


def test_without_milestones_the_rate_is_constant_after_warm_up() -> None:
    tc = TrainConfig(lr=2e-3, warmup_steps=0)
    assert {scheduled_lr(tc, t) for t in (0, 1, 10**6)} == {2e-3}


def test_the_schedule_is_read_from_the_command_line() -> None:
    cfg = Config().with_overrides(["train.lr_milestones=18010,22035", "train.lr_values=3e-4,1e-4"])
    assert cfg.train.lr_milestones == (18010, 22035) and cfg.train.lr_values == (3e-4, 1e-4)
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr_milestones": (10,)}, "as long as each other, got 1 steps and 0 learning rates"),
        ({"lr_milestones": (10, 10), "lr_values": (1e-4, 1e-5)}, "increasing steps ≥ 1"),
        ({"lr_milestones": (0,), "lr_values": (1e-4,)}, "increasing steps ≥ 1"),
        ({"lr_milestones": (5,), "lr_values": (0.0,)}, "must be > 0"),
        ({"lr": -1e-3}, "must be > 0"),
    ],
)
def test_bad_schedules_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_training_follows_the_schedule_across_a_resume(tmp_path: Path) -> None:
    """The optimizer's rate at every step is the schedule's, and a resumed run may add a
    milestone (the step decay of a long run decided as it goes)."""
    run = tmp_path / "run"
    first = TINY.with_overrides(["train.steps=3", "train.warmup_steps=2"])
    train(first, run, progress=False)
    more = Config.load(run / "config.json").with_overrides(
        ["train.steps=6", "train.lr_milestones=4", "train.lr_values=2.5e-4"]
    )
    train(more, run, resume=True, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # A record at step s logs the rate of the step just taken, step s - 1 counted from 0.
    logged = [(r["step"], r["lr"]) for r in records if "train_bpd" in r]
    assert logged == [(1, 5e-4), (2, 1e-3), (3, 1e-3), (4, 1e-3), (5, 2.5e-4), (6, 2.5e-4)]
    assert Config.load(run / "config.json").train.lr_milestones == (4,)
