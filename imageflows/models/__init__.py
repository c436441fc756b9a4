"""Glow (and later Flow++) models built from `imageflows.layers`, presets and the builder."""

from __future__ import annotations

from ..config import ModelConfig
from .base import FlowModel
from .glow import Glow
from .presets import PRESETS, preset_config


def build_model(cfg: ModelConfig) -> FlowModel:
    """The model a `ModelConfig` describes (`cfg.type` picks the builder)."""
    if cfg.type != "glow":
        raise ValueError(f"unknown model.type {cfg.type!r}; choose one of ['glow']")
    return Glow(
        image_shape=cfg.image_shape,
        levels=cfg.levels,
        depth=cfg.depth,
        hidden_channels=cfg.hidden_channels,
        coupling=cfg.coupling,
        permutation=cfg.permutation,
        dequantization=cfg.dequantization,
        num_levels=cfg.num_levels,
        memory_saving=cfg.memory_saving,
    )


def from_preset(name: str) -> FlowModel:
    """A fresh (uninitialised) model of a named preset, e.g. `from_preset("glow-mnist")`."""
    return build_model(preset_config(name).model)


__all__ = ["PRESETS", "FlowModel", "Glow", "build_model", "from_preset", "preset_config"]
