"""Invertible layers under one protocol (DESIGN section 2)."""

from .actnorm import ActNorm
from .base import Bijection, DataInit, Inverse, Sequential, initialize
from .conv1x1 import FrozenInvConv1x1, InvConv1x1, InvConv1x1LU
from .coupling import ChannelSplit, CheckerboardSplit, Coupling, SwapHalves
from .elementwise import (
    Additive,
    Affine,
    ElementwiseMap,
    Shift,
    Standardize,
    standard_normal_log_prob,
)
from .logit import Logit
from .mixture import (
    Mixture,
    MixtureCDF,
    mixture_log_terms,
    mixture_params,
    solve_mixture_logit,
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
    "CheckerboardSplit",
    "Coupling",
    "DataInit",
    "ElementwiseMap",
    "FactorOut",
    "FrozenInvConv1x1",
    "Inverse",
    "InvConv1x1",
    "InvConv1x1LU",
    "LearnedPrior",
    "Logit",
    "Mixture",
    "MixtureCDF",
    "Reverse",
    "Reversible",
    "Sequential",
    "Shift",
    "Shuffle",
    "Squeeze",
    "Standardize",
    "SwapHalves",
    "initialize",
    "mixture_log_terms",
    "mixture_params",
    "solve_mixture_logit",
    "standard_normal_log_prob",
]
