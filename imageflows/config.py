"""Run configuration: frozen dataclasses, `--set key=value` overrides, JSON round trip.

A run is described by one `Config` (model, data, train). Every key is a dataclass field, so an
override like `train.lr=1e-3` is coerced to the field's type and an unknown key is an error that
lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write_text


class ConfigError(ValueError):
    """A configuration key or value is not valid."""


@dataclass(frozen=True)
class ModelConfig:
    type: str = "glow"  # builder: "glow" | "flowpp"
    image_shape: tuple[int, int, int] = (1, 8, 8)  # (C, H, W) of the modelled images
    num_levels: int = 17  # N, the number of pixel levels the model sees (2**n_bits)
    levels: int = 2  # Glow's L: number of scales
    depth: int = 8  # Glow's K: flow steps per scale
    hidden_channels: int = 64  # width of each coupling's conditioner
    coupling: str = "affine"  # the couplings' element-wise map: "additive" | "affine" | "mixture"
    components: int = 32  # logistics per element of a "mixture" coupling (Flow++: 32)
    permutation: str = "conv1x1_lu"  # "none" | "reverse" | "shuffle" | "conv1x1" | "conv1x1_lu"
    dequantization: str = "uniform"  # q(u|x): "uniform" | "variational" (Flow++'s flow)
    layout: str = "4cb,sq,2ch,3cb"  # Flow++: Ncb, Nch = N checkerboard, channel steps; sq
    blocks: int = 10  # Flow++: gated conv + attention blocks per conditioner
    heads: int = 4  # Flow++: attention heads (hidden_channels must divide by it)
    attention: bool = True  # Flow++: self-attention in the conditioners (off: pointwise layer)
    dropout: float = 0.2  # Flow++: dropout probability inside the conditioners
    memory_saving: bool = False  # back-propagate through inverses: memory constant in depth


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # "digits" | "mnist" | "cifar10" | "folder"
    dir: str | None = None  # folder holding the dataset files (digits needs none)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimizer steps in the whole run
    batch_size: int = 64  # images per optimizer step
    lr: float = 1e-3  # Adam learning rate after warm-up
    warmup_steps: int = 200  # linear learning-rate warm-up from 0 (Glow: ~1 epoch)
    grad_clip: float = 50.0  # max global gradient norm; 0 turns clipping off
    ema: float = 0.999  # decay of the Polyak (EMA) weights; 0 turns EMA off
    seed: int = 0  # seeds data order, init, dequantization noise and sampling
    init_batch_size: int = 512  # images for the data-dependent (actnorm) init
    eval_every: int = 500  # steps between test bits/dim evaluations and sample grids
    eval_images: int = 0  # test images per periodic evaluation; 0 = the whole test split
    eval_batch_size: int = 500  # images per evaluation batch
    sample_temperatures: tuple[float, ...] = (0.0, 0.5, 0.7, 1.0)  # rows of the sample grid
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 3  # most recent checkpoints kept on disk
    log_every: int = 50  # steps between metrics.jsonl training records
    precision: str = "fp32"  # "fp32" | "bf16": conditioners in bf16 autocast when training
    compile: bool = False  # torch.compile the training step's forward and backward (slow start)
    max_bad_steps: int = 10  # consecutive non-finite steps before reloading the last checkpoint
    lr_backoff: float = 0.5  # learning-rate factor applied at each such reload
    tensorboard: bool = False  # also write TensorBoard event files (needs the `tb` extra)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build from a nested dict, rejecting unknown sections and keys."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        unknown = set(raw) - set(sections)
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {sorted(unknown)}; valid: {sorted(sections)}"
            )
        parts = {}
        for name, sub in hints.items():
            values = raw.get(name, {})
            valid = {f.name: f for f in dataclasses.fields(sub)}
            bad = set(values) - set(valid)
            if bad:
                keys = ", ".join(f"{name}.{k}" for k in valid)
                raise ConfigError(f"unknown config key(s) {sorted(bad)}; valid keys: {keys}")
            sub_hints = typing.get_type_hints(sub)
            parts[name] = sub(
                **{k: _coerce(v, sub_hints[k], f"{name}.{k}") for k, v in values.items()}
            )
        return cls(**parts)

    def with_overrides(self, assignments: list[str]) -> Config:
        """Apply `section.key=value` strings, e.g. `train.lr=1e-3`."""
        raw = self.to_dict()
        for item in assignments:
            key, sep, value = item.partition("=")
            section, dot, name = key.strip().partition(".")
            if not sep or not dot:
                raise ConfigError(f"expected section.key=value, got {item!r}")
            if section not in raw:
                raise ConfigError(
                    f"unknown config section {section!r} in {item!r}; valid: {sorted(raw)}"
                )
            if name not in raw[section]:
                keys = ", ".join(f"{section}.{k}" for k in raw[section])
                raise ConfigError(f"unknown config key {key!r}; valid keys: {keys}")
            raw[section][name] = value.strip()
        return Config.from_dict(raw)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(raw)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert `value` (a string from the command line or a JSON value) to the type `hint`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [i for i in items if not (isinstance(i, str) and not i.strip())]
        item_type = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(i, item_type, key) for i in items)
        if len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(_coerce(i, t, key) for i, t in zip(items, args, strict=True))
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                return int(as_float)
            return int(value)
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {value!r} as {hint.__name__}") from None
