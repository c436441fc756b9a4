"""imageflows: Glow and Flow++ from one set of composable invertible layers."""

from . import layers, nets
from .config import Config, ConfigError
from .metrics import bits_per_dim, evaluate, score_images
from .models import (
    PRESETS,
    FlowModel,
    FlowPlusPlus,
    Glow,
    build_model,
    from_preset,
    preset_config,
)
from .train import load

__all__ = [
    "PRESETS",
    "Config",
    "ConfigError",
    "FlowModel",
    "FlowPlusPlus",
    "Glow",
    "bits_per_dim",
    "build_model",
    "evaluate",
    "from_preset",
    "layers",
    "load",
    "nets",
    "preset_config",
    "score_images",
]
