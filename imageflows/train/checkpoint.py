"""Run directories on disk: atomic writes, checksummed checkpoints, and `load(run_dir)`.

A checkpoint is a directory `checkpoints/step_NNNNNNN/` holding `model.safetensors` (raw
weights), `ema.safetensors` (Polyak weights), `state.pt` (optimizer, step, learning-rate scale,
data order; plain tensors and containers, so it loads with `torch.load(weights_only=True)`) and
`manifest.json` (the sha256 of each file). It is written into a temporary directory and renamed
into place, so a crash leaves either the whole checkpoint or none of it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from imageflows._io import atomic_write_bytes, fsync_dir
from imageflows.config import Config
from imageflows.models import FlowModel, build_model

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
# What `state.pt` holds: besides the optimizer, what the step's random streams depend on.
STATE_KEYS = ("step", "elapsed", "optimizer", "lr_scale", "reloads", "world_size", "data_order")
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointWarning(UserWarning):
    """A checkpoint on disk is unreadable or fails its checksums and is being skipped."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(workdir: Path) -> list[tuple[int, Path]]:
    """`(step, path)` of every checkpoint directory under `workdir`, oldest first."""
    root = Path(workdir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _tensor_bytes(state: dict[str, torch.Tensor], what: str, step: int) -> bytes:
    """Serialise a state dict to safetensors bytes, refusing non-finite values."""
    tensors = {}
    for name, value in state.items():
        value = value.detach().cpu()
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise FloatingPointError(
                f"refusing to write the step {step} checkpoint: {what} tensor {name!r} holds "
                "non-finite values (lower train.lr or resume from an earlier checkpoint)"
            )
        # safetensors rejects views and shared storage; a private copy is neither.
        tensors[name] = value.contiguous().clone()
    return save_safetensors_bytes(tensors, metadata={"step": str(step)})


def weights_step(path: Path) -> int | None:
    """The training step recorded in a weights file (None for files without one)."""
    try:
        with safe_open(str(path), "pt") as f:
            step = (f.metadata() or {}).get("step")
    except (OSError, SafetensorError):
        return None
    return int(step) if step is not None and step.isdigit() else None


def run_step(run_dir: Path) -> int | None:
    """The step of a run's `model.safetensors` (its EMA weights), else of its latest checkpoint."""
    step = weights_step(Path(run_dir) / MODEL_FILE)
    if step is None:
        checkpoints = list_checkpoints(run_dir)
        step = checkpoints[-1][0] if checkpoints else None
    return step


def save_checkpoint(
    workdir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically, update `workdir/model.safetensors` (the EMA
    weights), and delete all but the newest `keep` checkpoints. Returns the checkpoint path."""
    files = {
        MODEL_FILE: _tensor_bytes(model_state, "model", step),
        EMA_FILE: _tensor_bytes(ema_state, "EMA", step),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files[STATE_FILE] = buffer.getvalue()
    manifest = {
        "step": step,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    files[MANIFEST_FILE] = (json.dumps(manifest, indent=2) + "\n").encode()

    root = Path(workdir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp_{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, data in files.items():
        with open(tmp / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(tmp)
    if final.exists():
        # os.replace cannot overwrite a non-empty directory: move the old one aside first.
        old = root / f".old_{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_bytes(Path(workdir) / MODEL_FILE, files[EMA_FILE])

    for _, path in list_checkpoints(workdir)[: -max(keep, 1)]:
        shutil.rmtree(path)
    return final


def verify_checkpoint(path: Path) -> None:
    """Raise `ValueError` naming the file if checkpoint `path` is incomplete or corrupt."""
    manifest_path = Path(path) / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{manifest_path}: missing or unreadable manifest ({err})") from None
    for name in (MODEL_FILE, EMA_FILE, STATE_FILE):
        file = Path(path) / name
        if name not in expected:
            raise ValueError(f"{manifest_path}: no checksum for {name}")
        if not file.is_file():
            raise ValueError(f"{file}: missing")
        if hashlib.sha256(file.read_bytes()).hexdigest() != expected[name]:
            raise ValueError(f"{file}: sha256 does not match {manifest_path} (corrupt file)")


def latest_valid_checkpoint(workdir: Path) -> tuple[int, Path] | None:
    """The newest checkpoint whose checksums verify; each newer, broken one is reported with a
    `CheckpointWarning`. `None` if there is none."""
    for step, path in reversed(list_checkpoints(workdir)):
        try:
            verify_checkpoint(path)
        except ValueError as err:
            warnings.warn(
                f"skipping checkpoint {path}: {err}; trying the previous one",
                CheckpointWarning,
                stacklevel=2,
            )
            continue
        return step, path
    return None


def load_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing file is `FileNotFoundError`, a bad one `ValueError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        tensors = load_safetensors_bytes(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise ValueError(f"{path}: not a valid safetensors file ({err})") from None
    return {name: t.to(device) for name, t in tensors.items()}


def load_state(path: Path) -> dict[str, Any]:
    """Read a checkpoint's `state.pt` (plain tensors and containers only); one without the
    keys that `train` writes is a `ValueError` naming the file and the keys."""
    file = Path(path) / STATE_FILE
    state = torch.load(file, map_location="cpu", weights_only=True)
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{file}: not a training state, it lacks {', '.join(missing)}")
    return state


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file into `model`; a mismatch is a `ValueError` naming the file."""
    state = load_safetensors(path, next(model.parameters()).device)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the configured model: {err}") from None


def load(run_dir: str | Path, ema: bool = True) -> FlowModel:
    """Rebuild a run's model from `config.json` and load its weights, in eval mode.

    Args:
        run_dir: the run directory written by `train`.
        ema: load the latest Polyak (EMA) weights, `run_dir/model.safetensors`; with `False`,
            the raw weights of the newest checkpoint that verifies.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    cfg = Config.load(run_dir / CONFIG_FILE)
    model = build_model(cfg.model)
    if ema:
        weights = run_dir / MODEL_FILE
    else:
        latest = latest_valid_checkpoint(run_dir)
        if latest is None:
            raise FileNotFoundError(f"{run_dir / CHECKPOINT_DIR}: no valid checkpoint")
        weights = latest[1] / MODEL_FILE
    load_weights(model, weights)
    return model.eval()
