"""Conditioner networks: plain modules with no log-det."""

from .flowpp import (
    ChannelLayerNorm,
    ContextNet,
    ConvAttnBlock,
    FlowppConditioner,
    GatedAttention,
    GatedConv,
    GatedPointwise,
    WNConv2d,
    concat_elu,
    gate,
)
from .glow import ConvActNorm, GlowConditioner, ZeroConv2d

__all__ = [
    "ChannelLayerNorm",
    "ContextNet",
    "ConvActNorm",
    "ConvAttnBlock",
    "FlowppConditioner",
    "GatedAttention",
    "GatedConv",
    "GatedPointwise",
    "GlowConditioner",
    "WNConv2d",
    "ZeroConv2d",
    "concat_elu",
    "gate",
]
