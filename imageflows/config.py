"""Run configuration: frozen dataclasses, `--set key=value` overrides, JSON round trip.

A run is described by one `Config` (model, data, train). Every key is a dataclass field, so an
override like `train.lr=1e-3` is coerced to the field's type and an unknown key is an error that
lists the valid ones. A model field tagged `_only("glow")` (or `"flowpp"`) belongs to that
`model.type` alone: `config.json` holds only the chosen type's keys, and giving another type's
key, by `--set` or in a file, is an error listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write_text
from .config_values import ConfigError, from_json, from_text, json_type

MODEL_TYPES = ("flowpp", "glow")
PRECISIONS = ("fp32", "bf16")


def _only(model_type: str, default: Any) -> Any:
    """A model field that only `model_type` takes."""
    return field(default=default, metadata={"model_type": model_type})


@dataclass(frozen=True)
class ModelConfig:
    type: str = "glow"  # builder: "glow" | "flowpp"
    image_shape: tuple[int, int, int] = (1, 8, 8)  # (C, H, W) of the modelled images
    num_levels: int = 17  # N, the number of pixel levels the model sees (2**n_bits)
    levels: int = _only("glow", 2)  # Glow's L: number of scales
    depth: int = _only("glow", 8)  # Glow's K: flow steps per scale
    hidden_channels: int = 64  # width of each coupling's conditioner
    coupling: str = "affine"  # the couplings' element-wise map: "additive" | "affine" | "mixture"
    components: int = 32  # logistics per element of a "mixture" coupling (Flow++: 32)
    min_scale: float = 0.1  # floor m of the affine scale m + (1 − m)·σ(h + 2); 0: the paper's
    permutation: str = "conv1x1_lu"  # "none" | "reverse" | "shuffle" | "conv1x1" | "conv1x1_lu"
    dequantization: str = "uniform"  # q(u|x): "uniform" | "variational" (Flow++'s flow)
    dequant_couplings: int = 4  # variational q(u|x): mixture couplings (Flow++ section 3.1)
    dequant_blocks: int = 2  # variational q(u|x): gated residual blocks per conditioner
    dequant_context_channels: int = 32  # variational q(u|x): channels of the context network
    layout: str = _only("flowpp", "4cb,sq,2ch,3cb")  # Ncb, Nch: N checkerboard/channel steps
    blocks: int = _only("flowpp", 10)  # gated conv + attention blocks per conditioner
    heads: int = _only("flowpp", 4)  # attention heads (hidden_channels must divide by it)
    attention: bool = _only("flowpp", True)  # self-attention in the conditioners (off: 1x1)
    dropout: float = _only("flowpp", 0.2)  # dropout probability inside the conditioners
    memory_saving: bool = False  # back-propagate through inverses: memory constant in depth
    num_classes: int = 0  # K > 0: class-conditional p(x|y) on the data's K classes; 0: p(x)
    # where the class enters: "prior" | "coupling" | "both"; none: glow "prior", flowpp "coupling"
    class_conditioning: str | None = None
    class_loss_weight: float = _only("glow", 0.01)  # classifier on the top latent (ycond); 0: none

    def __post_init__(self) -> None:
        _check_model_type(self.type)
        for f in dataclasses.fields(self):
            if not _takes(f, self.type) and getattr(self, f.name) != f.default:
                raise ConfigError(_not_taken(f.name, self.type))


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # "digits" | "mnist" | "cifar10" | "folder"
    dir: str | None = None  # folder holding the dataset files (digits needs none)


_POSITIVE = ("batch_size", "eval_every", "eval_batch_size", "checkpoint_every",
             "keep_checkpoints", "log_every", "init_batch_size", "max_bad_steps")  # fmt: skip
_NON_NEGATIVE = ("steps", "minutes", "warmup_steps", "grad_clip", "eval_images")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimizer steps in the whole run
    minutes: float = 0.0  # training-time budget of the run (across resumes, like steps); 0 = none
    batch_size: int = 64  # images per optimizer step
    lr: float = 1e-3  # Adam learning rate after warm-up
    warmup_steps: int = 200  # linear learning-rate warm-up from 0 (Glow: ~1 epoch)
    lr_milestones: tuple[int, ...] = ()  # step decay: from step lr_milestones[i] on, ...
    lr_values: tuple[float, ...] = ()  # ... the learning rate is lr_values[i] (instead of lr)
    grad_clip: float = 50.0  # max global gradient norm; 0 turns clipping off
    ema: float = 0.999  # decay of the Polyak (EMA) weights; 0 turns EMA off
    seed: int = 0  # seeds data order, init, dequantization noise, evaluation and sampling
    init_batch_size: int = 512  # images for the data-dependent (actnorm) init
    eval_every: int = 500  # steps between test bits/dim evaluations and sample grids
    eval_images: int = 0  # test images per periodic evaluation; 0 = the whole test split
    eval_batch_size: int = 500  # images per evaluation batch (each batch has its own noise)
    sample_temperatures: tuple[float, ...] = (0.0, 0.5, 0.7, 1.0)  # rows of the sample grid
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 3  # most recent checkpoints kept on disk
    log_every: int = 50  # steps between metrics.jsonl training records
    precision: str = "fp32"  # "fp32" | "bf16": conditioners in bf16 autocast when training
    compile: bool = False  # torch.compile the training step's forward and backward (slow start)
    max_bad_steps: int = 10  # consecutive non-finite steps before reloading the last checkpoint
    lr_backoff: float = 0.5  # learning-rate factor applied at each such reload
    tensorboard: bool = False  # also write TensorBoard event files (needs the `tb` extra)

    def __post_init__(self) -> None:
        for key in _POSITIVE:
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be ≥ 1, got {getattr(self, key)}")
        for key in _NON_NEGATIVE:
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be ≥ 0, got {getattr(self, key)}")
        if len(self.lr_milestones) != len(self.lr_values):
            raise ConfigError(
                f"train.lr_milestones and train.lr_values must be as long as each other, got "
                f"{len(self.lr_milestones)} steps and {len(self.lr_values)} learning rates"
            )
        if any(b <= a for a, b in itertools.pairwise((0, *self.lr_milestones))):
            raise ConfigError(
                f"train.lr_milestones must be increasing steps ≥ 1, got {self.lr_milestones}"
            )
        if any(value <= 0 for value in (self.lr, *self.lr_values)):
            raise ConfigError(
                f"train.lr and train.lr_values must be > 0, got {self.lr} and {self.lr_values}"
            )
        if not 0.0 < self.lr_backoff <= 1.0:
            raise ConfigError(f"train.lr_backoff must be in (0, 1], got {self.lr_backoff}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )


# Keys a resumed run may change: its length, the optimizer's schedule and the bookkeeping.
RESUMABLE = ("data.dir",) + tuple(
    f"train.{key}"
    for key in ("steps", "minutes", "lr", "lr_milestones", "lr_values", "warmup_steps",
                "grad_clip", "ema", "eval_every", "eval_images", "eval_batch_size",
                "sample_temperatures", "checkpoint_every", "keep_checkpoints", "log_every",
                "precision", "compile", "max_bad_steps", "lr_backoff", "tensorboard")
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The nested dict of `config.json`: each section's keys (the model's of its type)."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        return {
            name: {
                f.name: getattr(section, f.name)
                for f in dataclasses.fields(section)
                if _takes(f, self.model.type)
            }
            for name, section in sections.items()
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Config:
        """Build from a nested dict of typed values (JSON's), rejecting unknown or misplaced
        sections and keys and values of the wrong type; a missing key takes its default."""
        if not isinstance(raw, dict):
            raise ConfigError(
                f"expected an object of sections {', '.join(SECTIONS)}, got {json_type(raw)}"
            )
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; valid: {list(SECTIONS)}")
        for name, values in raw.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{name}: expected an object of keys, got {json_type(values)}")
        model_type = raw.get("model", {}).get("type", ModelConfig.type)
        if not isinstance(model_type, str):
            raise ConfigError(f"model.type: expected str, got {model_type!r}")
        _check_model_type(model_type)
        parts = {}
        for name, section in SECTIONS.items():
            values = raw.get(name, {})
            hints = typing.get_type_hints(section)
            valid = [f.name for f in dataclasses.fields(section) if _takes(f, model_type)]
            for key in values:
                if key in valid:
                    continue
                if key in hints:
                    raise ConfigError(_not_taken(key, model_type))
                valid_keys = _valid_keys(name, valid, model_type if name == "model" else None)
                raise ConfigError(f"unknown config key {name}.{key}; {valid_keys}")
            parts[name] = section(
                **{k: from_json(v, hints[k], f"{name}.{k}") for k, v in values.items()}
            )
        return cls(**parts)

    def with_overrides(self, assignments: list[str] | tuple[str, ...]) -> Config:
        """Apply `section.key=value` strings, e.g. `train.lr=1e-3`, in order.

        A `model.type=...` override drops the keys of the old type that the new one does not
        take, unless they are also given; those are errors."""
        raw = self.to_dict()
        given = set()
        for item in assignments:
            key, sep, value = item.partition("=")
            key = key.strip()
            section, dot, name = key.partition(".")
            if not sep or not dot:
                raise ConfigError(f"expected section.key=value, got {item!r}")
            if section not in SECTIONS:
                raise ConfigError(
                    f"unknown config section {section!r} in {item!r}; valid: {list(SECTIONS)}"
                )
            hints = typing.get_type_hints(SECTIONS[section])
            if name not in hints:
                of = raw["model"]["type"] if section == "model" else None
                valid = model_keys(of) if of else list(hints)
                raise ConfigError(f"unknown config key {key}; {_valid_keys(section, valid, of)}")
            raw[section][name] = from_text(value.strip(), hints[name], key)
            given.add(key)
        model_type = raw["model"]["type"]
        _check_model_type(model_type)
        raw["model"] = {
            k: v for k, v in raw["model"].items() if f"model.{k}" in given or takes(k, model_type)
        }
        return Config.from_dict(raw)

    def check_resumable_as(self, saved: Config) -> None:
        """Refuse to continue a run saved with `saved` under this config when a key that
        defines the model or the data order differs: a `ConfigError` naming those keys and the
        ones that may change (`RESUMABLE`)."""
        new, old = self.to_dict(), saved.to_dict()
        changed = sorted(
            f"{section}.{key}"
            for section in SECTIONS
            for key in set(new[section]) | set(old[section])
            if new[section].get(key) != old[section].get(key)
        )
        refused = [key for key in changed if key not in RESUMABLE]
        if refused:
            raise ConfigError(
                f"cannot change {', '.join(refused)} when resuming: they define the model or "
                f"the data order; keys that may change: {', '.join(RESUMABLE)}"
            )

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read `config.json`; anything malformed is a one-line `ConfigError` naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            raw = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        try:
            return cls.from_dict(raw)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def takes(key: str, model_type: str) -> bool:
    """Whether a model of `model_type` has the config key `model.<key>`."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    return key in fields and _takes(fields[key], model_type)


def model_keys(model_type: str) -> list[str]:
    """The keys (`levels`, `layout`, ...) of the `model` section of a `model_type`."""
    _check_model_type(model_type)
    return [f.name for f in dataclasses.fields(ModelConfig) if _takes(f, model_type)]


def _takes(f: dataclasses.Field, model_type: str) -> bool:
    return f.metadata.get("model_type", model_type) == model_type


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"unknown model.type {model_type!r}; choose one of {list(MODEL_TYPES)}")


def _not_taken(key: str, model_type: str) -> str:
    return f"model.{key} does not apply to model.type {model_type!r}; " + _valid_keys(
        "model", model_keys(model_type), model_type
    )


def _valid_keys(section: str, keys: list[str], model_type: str | None = None) -> str:
    of = f" for {model_type}" if model_type else ""
    return f"valid keys{of}: " + ", ".join(f"{section}.{k}" for k in keys)
