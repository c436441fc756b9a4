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
    """y = (x + t) · σ(h + 2), Glow's affine coupling (Glow section 3.3, openai/glow code).

    The sigmoid keeps the scale in (0, 1) and the +2 makes it ≈ 0.88 when h = 0, so a
    zero-initialised conditioner starts as a constant contraction. log|∂y/∂x| = log σ(h + 2).
    """

    num_params = 2

    def _unpack(self, params: Tensor) -> tuple[Tensor, Tensor]:
        raw_scale, shift = params.unbind(1)  # one op; its backward is one `stack`
        return raw_scale + 2.0, shift

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        pre_scale, shift = self._unpack(params)
        return (x + shift) * pre_scale.sigmoid(), F.logsigmoid(pre_scale)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        pre_scale, shift = self._unpack(params)
        minus_log_scale = -F.logsigmoid(pre_scale)
        return y * minus_log_scale.exp() - shift, minus_log_scale


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
