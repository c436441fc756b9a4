"""Glow and Flow++ models built from `imageflows.layers`, presets and the builder."""

from __future__ import annotations

from ..config import ModelConfig
from .base import FlowModel, Objective, class_rows
from .flowpp import FlowPlusPlus
from .frozen import freeze
from .glow import Glow
from .multiscale import MultiScaleFlow
from .presets import PRESETS, preset_config


def build_model(cfg: ModelConfig) -> FlowModel:
    """The model a `ModelConfig` describes (`cfg.type` picks the builder)."""
    shared = dict(
        image_shape=cfg.image_shape,
        hidden_channels=cfg.hidden_channels,
        coupling=cfg.coupling,
        permutation=cfg.permutation,
        dequantization=cfg.dequantization,
        num_levels=cfg.num_levels,
        memory_saving=cfg.memory_saving,
        components=cfg.components,
        min_scale=cfg.min_scale,
        dequant_couplings=cfg.dequant_couplings,
        dequant_blocks=cfg.dequant_blocks,
        dequant_context_channels=cfg.dequant_context_channels,
        num_classes=cfg.num_classes,
    )
    if cfg.class_conditioning is not None:
        shared["class_conditioning"] = cfg.class_conditioning
    if cfg.type == "glow":
        return Glow(
            levels=cfg.levels,
            depth=cfg.depth,
            class_loss_weight=cfg.class_loss_weight,
            **shared,
        )
    if cfg.type == "flowpp":
        return FlowPlusPlus(
            layout=cfg.layout,
            blocks=cfg.blocks,
            heads=cfg.heads,
            attention=cfg.attention,
            dropout=cfg.dropout,
            **shared,
        )
    raise ValueError(f"unknown model.type {cfg.type!r}; choose one of ['flowpp', 'glow']")


def from_preset(name: str) -> FlowModel:
    """A fresh (uninitialised) model of a named preset, e.g. `from_preset("glow-mnist")`."""
    return build_model(preset_config(name).model)


__all__ = [
    "PRESETS",
    "FlowModel",
    "FlowPlusPlus",
    "Glow",
    "MultiScaleFlow",
    "Objective",
    "build_model",
    "class_rows",
    "freeze",
    "from_preset",
    "preset_config",
]
