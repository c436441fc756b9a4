"""Conditioner networks: plain modules with no log-det."""

from .glow import ActNormNet, GlowConditioner, ZeroConv2d

__all__ = ["ActNormNet", "GlowConditioner", "ZeroConv2d"]
