"""Invertible layers under one protocol (DESIGN section 2)."""

from .actnorm import ActNorm
from .base import Bijection, DataInit, Inverse, Sequential, initialize
from .conv1x1 import InvConv1x1, InvConv1x1LU
from .coupling import ChannelSplit, Coupling
from .elementwise import (
    Additive,
    Affine,
    ElementwiseMap,
    Shift,
    Standardize,
    standard_normal_log_prob,
)
from .permutations import ChannelPermutation, Reverse, Shuffle
from .prior import FactorOut, LearnedPrior
from .reshape import Squeeze
from .reversible import Reversible

__all__ = [
    "ActNorm",
    "Additive",
    "Affine",
    "Bijection",
    "ChannelPermutation",
    "ChannelSplit",
    "Coupling",
    "DataInit",
    "ElementwiseMap",
    "FactorOut",
    "Inverse",
    "InvConv1x1",
    "InvConv1x1LU",
    "LearnedPrior",
    "Reverse",
    "Reversible",
    "Sequential",
    "Shift",
    "Shuffle",
    "Squeeze",
    "Standardize",
    "initialize",
    "standard_normal_log_prob",
]
