"""Element-wise bijections y = f(x; θ) whose parameters θ come from a conditioner.

Each map takes `params` shaped `[B, P, *x.shape[1:]]` (P = `num_params`) and returns the output
and the element-wise log|∂y/∂x|, shaped like x; a `Coupling` sums it per example.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Bijection, zero_logdet


class ElementwiseMap(nn.Module):
    """A parameterised scalar bijection applied to every element."""

    num_params: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Additive(ElementwiseMap):
    """y = x + t: NICE's additive coupling (Dinh et al. 2015), volume preserving."""

    num_params = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[:, 0], x.new_zeros(()).expand_as(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[:, 0], y.new_zeros(()).expand_as(y)


class Affine(ElementwiseMap):
    """y = (x + t) · s with s = m + (1 − m)·σ(h + 2): Glow's affine coupling for m = 0 (Glow
    section 3.3, openai/glow code).

    The sigmoid keeps the scale in (0, 1) and the +2 makes it ≈ 0.88 when h = 0, so a
    zero-initialised conditioner starts as a constant contraction. log|∂y/∂x| = log s.
    A floor m = `min_scale` > 0 bounds the contraction: the paper's form lets a conditioner
    reach σ(−70) on inputs far from the data, and the inverse then amplifies rounding past any
    float's resolution; with the floor it amplifies it by at most 1/m per coupling.
    """

    num_params = 2

    def __init__(self, min_scale: float = 0.0) -> None:
        super().__init__()
        if not 0 <= min_scale < 1:
            raise ValueError(f"Affine's min_scale must be in [0, 1), got {min_scale}")
        self.min_scale = min_scale

    def _log_scale(self, pre_scale: Tensor) -> Tensor:
        """log s, stable in the sigmoid's tails."""
        if not self.min_scale:
            return F.logsigmoid(pre_scale)
        return self._scale(pre_scale).log()

    def _scale(self, pre_scale: Tensor) -> Tensor:
        m = self.min_scale
        return pre_scale.sigmoid() if not m else m + (1 - m) * pre_scale.sigmoid()

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raw_scale, shift = params.unbind(1)  # one op; its backward is one `stack`
        pre_scale = raw_scale + 2.0
        scale = self._scale(pre_scale)
        log_scale = F.logsigmoid(pre_scale) if not self.min_scale else scale.log()  # one sigmoid
        return (x + shift) * scale, log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raw_scale, shift = params.unbind(1)
        minus_log_scale = -self._log_scale(raw_scale + 2.0)
        return y * minus_log_scale.exp() - shift, minus_log_scale

    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale}" if self.min_scale else ""


class Standardize(ElementwiseMap):
    """eps = (z − μ) · exp(−log σ): a Gaussian prior N(μ, σ²) written as a bijection to N(0, 1).

    Glow's learned priors (section 3, openai/glow `split2d` and `learntop`); log|∂eps/∂z| = −log σ.
    """

    num_params = 2

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = params.unbind(1)
        return (x - mean) * (-log_std).exp(), -log_std

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = params.unbind(1)
        return y * log_std.exp() + mean, log_std


class Shift(Bijection):
    """z = x + c for a constant c, e.g. Glow's centring y − ½; log|det| = 0."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x + self.offset, zero_logdet(x)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z - self.offset, zero_logdet(z)

    def extra_repr(self) -> str:
        return f"offset={self.offset}"


_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(eps: Tensor) -> Tensor:
    """log N(eps; 0, I) summed over all but the batch dimension: `[B, ...]` → `[B]`."""
    return -0.5 * (eps.pow(2) + _LOG_2PI).flatten(1).sum(1)
