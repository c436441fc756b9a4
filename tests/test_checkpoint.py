"""Checkpoints on disk (atomic, checksummed, pruned) and the EMA of the weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from imageflows._io import atomic_write_text
from imageflows.config import ModelConfig
from imageflows.models import build_model
from imageflows.train.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    STATE_KEYS,
    CheckpointWarning,
    latest_valid_checkpoint,
    list_checkpoints,
    load_safetensors,
    load_state,
    run_step,
    save_checkpoint,
    verify_checkpoint,
    weights_step,
)
from imageflows.train.ema import EMA


def tensors(value: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((3, 2), value), "count": torch.tensor(7)}


def state(step: int) -> dict:
    """A training state as `train` writes it (`STATE_KEYS`)."""
    order = {"seed": 0, "batch_size": 4, "num_images": 10}
    return {"step": step, "elapsed": 1.5, "optimizer": {}, "lr_scale": 1.0, "reloads": 0,
            "world_size": 1, "data_order": order}  # fmt: skip


def save(run: Path, step: int, keep: int = 5, value: float = 1.0) -> Path:
    return save_checkpoint(run, step, tensors(value), tensors(value + 1), state(step), keep)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    path = save(tmp_path, 3, value=2.0)
    assert path == tmp_path / "checkpoints" / "step_0000003"
    verify_checkpoint(path)
    assert torch.equal(
        load_safetensors(path / "model.safetensors")["weight"], torch.full((3, 2), 2.0)
    )
    assert torch.equal(
        load_safetensors(tmp_path / "model.safetensors")["weight"], torch.full((3, 2), 3.0)
    )
    assert load_state(path) == state(3)
    assert sorted(p.name for p in path.iterdir()) == [
        "ema.safetensors",
        "manifest.json",
        "model.safetensors",
        "state.pt",
    ]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    save(tmp_path, 2, value=1.0)
    path = save(tmp_path, 2, value=5.0)
    verify_checkpoint(path)
    assert load_safetensors(path / "model.safetensors")["weight"][0, 0] == 5.0
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2]


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3, 4]


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    save(tmp_path, 1)
    bad = {"weight": torch.tensor([1.0, float("nan")])}
    with pytest.raises(FloatingPointError, match="step 2.*'weight'.*non-finite"):
        save_checkpoint(tmp_path, 2, bad, bad, {}, keep=5)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]
    assert load_safetensors(tmp_path / "model.safetensors")["weight"][0, 0] == 2.0


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_damaged_checkpoint_is_skipped_with_a_warning(tmp_path: Path, damage: str) -> None:
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    target = newest / ("manifest.json" if damage == "manifest" else "state.pt")
    data = target.read_bytes()
    if damage == "flip":
        target.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    elif damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        target.unlink()
    else:
        target.write_text("{")
    with pytest.raises(ValueError, match=target.name):
        verify_checkpoint(newest)
    with pytest.warns(CheckpointWarning, match=f"step_0000002.*{target.name}"):
        step, path = latest_valid_checkpoint(tmp_path)
    assert step == 1 and path.name == "step_0000001"


def test_no_valid_checkpoint(tmp_path: Path) -> None:
    assert latest_valid_checkpoint(tmp_path) is None
    (save(tmp_path, 1) / "ema.safetensors").write_bytes(b"")
    with pytest.warns(CheckpointWarning):
        assert latest_valid_checkpoint(tmp_path) is None


def test_bad_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_safetensors(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="bad.safetensors: not a valid safetensors file"):
        load_safetensors(tmp_path / "bad.safetensors")


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "config.json", json.dumps({"a": 1}))
    atomic_write_text(tmp_path / "config.json", json.dumps({"a": 2}))
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_ema_averages_floats_and_copies_other_buffers() -> None:
    model = nn.Linear(2, 2)
    model.register_buffer("calls", torch.tensor(3))
    ema = EMA(model, decay=0.75)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
        model.calls.fill_(9)
    ema.update(model, step=1000)
    assert torch.allclose(ema.model.weight, before + 1.0)
    assert ema.model.calls.item() == 9 and ema.model.calls.dtype == torch.int64
    assert not ema.model.training and not ema.model.weight.requires_grad
    with pytest.raises(ValueError, match="train.ema"):
        EMA(model, decay=1.0)


def test_ema_decay_warms_up_over_the_first_steps() -> None:
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(11.0)
    ema.update(model, step=1)  # decay min(0.999, 2/11)
    assert torch.allclose(ema.model.weight, before + 11.0 * (1 - 2 / 11))


def test_ema_of_zero_decay_is_the_model() -> None:
    model = build_model(ModelConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8))
    ema = EMA(model, decay=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.initialized.fill_(True)
    ema.update(model, step=1000)
    for key, value in model.state_dict().items():
        assert torch.equal(ema.model.state_dict()[key], value), key


def test_weights_record_their_step(tmp_path: Path) -> None:
    model = build_model(ModelConfig(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8))
    state = {"step": 7}
    save_checkpoint(tmp_path, 7, model.state_dict(), model.state_dict(), state, keep=2)
    assert weights_step(tmp_path / MODEL_FILE) == 7 and run_step(tmp_path) == 7
    shutil.rmtree(tmp_path / "checkpoints")
    assert run_step(tmp_path) == 7  # a committed run without its checkpoints still knows
    assert weights_step(tmp_path / "missing.safetensors") is None


def test_a_state_without_a_training_key_is_refused_by_name(tmp_path: Path) -> None:
    assert set(state(1)) == set(STATE_KEYS)
    partial = {k: v for k, v in state(1).items() if k != "data_order"}
    path = save_checkpoint(tmp_path, 1, tensors(1.0), tensors(2.0), partial, keep=1)
    message = rf"{STATE_FILE}: not a training state, it lacks data_order"
    with pytest.raises(ValueError, match=message):
        load_state(path)
