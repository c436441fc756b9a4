"""Invertible 1x1 convolution, dense and LU-decomposed (Glow section 3.2)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from .base import Bijection, derived


def _random_rotation(channels: int) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(channels, channels))
    return q


def _no_autocast(x: Tensor) -> torch.autocast:
    """W x in x's dtype even under bf16 autocast: unlike a coupling's conditioner, W lies on the
    flow's main path, and a rounded W (or W⁻¹) would make the layer inexact to invert."""
    return torch.autocast(x.device.type, enabled=False)


def _mix_channels(weight: Tensor, x: Tensor) -> Tensor:
    """W x at every pixel: `[C, C]` times `[B, C, H, W]`, as one batched matrix product (about
    twice as fast as a 1x1 `conv2d` with its backward on CPU, and no kernel reshaping)."""
    return torch.matmul(weight, x.flatten(2)).view_as(x)


class InvConv1x1(Bijection):
    """z = W x at every pixel; log|det| = H·W·log|det W| (Glow eq. 9).

    Subclasses change only how W (and log|det W|) are parameterised.
    Shapes: x, z `[B, C, H, W]`; logdet `[B]`.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(_random_rotation(channels))

    def matrix(self) -> tuple[Tensor, Tensor]:
        """W `[C, C]` and log|det W| (a scalar)."""
        return self.weight, torch.linalg.slogdet(self.weight)[1]

    def _kernels(self, inverse: bool) -> tuple[Tensor, Tensor]:
        """W (or W⁻¹) `[C, C]` and log|det W|.

        Without autograd (encoding, sampling) both directions are built once per parameter
        version and reused (`derived`), instead of an LU product and an inversion per call.
        """
        if torch.is_grad_enabled():  # training: computed every call, one direction only
            return derived(self, partial(self._kernel, inverse))
        weight, inverse_weight, logabsdet = derived(self, self._both_kernels)
        return (inverse_weight if inverse else weight), logabsdet

    def _kernel(self, inverse: bool) -> tuple[Tensor, Tensor]:
        weight, logabsdet = self.matrix()
        return (torch.linalg.inv(weight) if inverse else weight), logabsdet

    def _both_kernels(self) -> tuple[Tensor, Tensor, Tensor]:
        weight, logabsdet = self.matrix()
        # clone: the dense W is the parameter itself, and a cached view of it would alias it
        return weight.clone(), torch.linalg.inv(weight), logabsdet

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with _no_autocast(x):
            weight, logabsdet = self._kernels(inverse=False)
            z = _mix_channels(weight, x)
        return z, (logabsdet * x[0, 0].numel()).expand(x.shape[0])

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with _no_autocast(z):
            weight, logabsdet = self._kernels(inverse=True)
            x = _mix_channels(weight, z)
        return x, (-logabsdet * z[0, 0].numel()).expand(z.shape[0])


class InvConv1x1LU(InvConv1x1):
    """W = P L (U + diag(sign(s) exp(log|s|))), P fixed (Glow section 3.2, LU decomposition).

    log|det W| = Σ log|s| costs O(C) instead of O(C³).
    """

    def __init__(self, channels: int) -> None:
        Bijection.__init__(self)
        p, lower, upper = torch.linalg.lu(_random_rotation(channels))
        s = upper.diagonal()
        self.register_buffer("p", p)
        self.register_buffer("sign_s", s.sign())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(upper.triu(1))
        self.log_s = nn.Parameter(s.abs().log())

    def matrix(self) -> tuple[Tensor, Tensor]:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.p @ lower @ upper, self.log_s.sum()
