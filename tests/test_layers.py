"""Layer behaviour the bijection contract (tests/test_contract.py) does not state: data-dependent
init, the zero-initialised couplings' starting maps, composition, argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import imageflows.layers as L
from imageflows.nets import GlowConditioner

from .bijection_cases import glow_coupling


def test_actnorm_data_dependent_init_standardises_its_input() -> None:
    torch.manual_seed(0)
    layer = L.ActNorm(3).double()
    x = 5 + 3 * torch.randn(64, 3, 4, 4, dtype=torch.float64)
    L.initialize(layer, x)
    z, _ = layer(x)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(
        z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), rtol=1e-4, atol=0
    )


def test_initialize_reaches_actnorm_inside_conditioners() -> None:
    torch.manual_seed(0)
    coupling = glow_coupling(L.Affine()).double()
    hidden_actnorms = [m for m in coupling.conditioner.modules() if isinstance(m, L.ActNorm)]
    L.initialize(coupling, torch.randn(16, 4, 3, 3, dtype=torch.float64))
    assert all(m.log_scale.abs().sum() > 0 for m in hidden_actnorms)


def test_zero_initialised_couplings_start_as_identity_and_glow_scale() -> None:
    x = torch.randn(2, 4, 3, 3)
    additive = L.Coupling(GlowConditioner(2, 2, 8), L.Additive())
    z, ld = additive(x)
    torch.testing.assert_close(z, x)
    assert torch.all(ld == 0)
    affine = L.Coupling(GlowConditioner(2, 4, 8), L.Affine())
    z, ld = affine(x)
    torch.testing.assert_close(z[:, :2], x[:, :2], rtol=0, atol=0)
    scale = 1 / (1 + math.exp(-2))
    torch.testing.assert_close(z[:, 2:], x[:, 2:] * scale)
    torch.testing.assert_close(ld, torch.full((2,), 18 * math.log(scale)))  # 18 scaled elements


def test_squeeze_rejects_odd_sizes() -> None:
    with pytest.raises(ValueError, match="even height and width"):
        L.Squeeze()(torch.zeros(1, 1, 3, 4))


def test_sequential_sums_logdets_and_inverse_swaps_directions() -> None:
    torch.manual_seed(0)
    a, b = L.ActNorm(2).double(), L.InvConv1x1(2).double()
    for p in [*a.parameters(), *b.parameters()]:
        nn.init.normal_(p)
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    seq = L.Sequential([a, b])
    z, ld = seq(x)
    za, lda = a(x)
    torch.testing.assert_close(z, b(za)[0])
    torch.testing.assert_close(ld, lda + b(za)[1])
    torch.testing.assert_close(L.Inverse(seq)(z)[0], x)


def test_affine_floor_bounds_the_contraction_far_in_the_tails() -> None:
    """s = m + (1 − m)·σ(h + 2) ≥ m however negative h; m = 0 is the paper's σ(h + 2)."""
    x = torch.linspace(-3, 3, 7, dtype=torch.float64).view(1, 7)
    h = torch.tensor([-200.0, -80, -20, 0, 5, 20, 80], dtype=torch.float64).view(1, 7)
    params = torch.stack([h, torch.zeros_like(h)], dim=1)  # (B, P, ...): raw scale, shift
    z, log_scale = L.Affine(min_scale=0.25)(x, params)
    torch.testing.assert_close(log_scale.exp(), 0.25 + 0.75 * torch.sigmoid(h + 2))
    assert log_scale.min() >= math.log(0.25) - 1e-12
    torch.testing.assert_close(L.Affine(min_scale=0.25).inverse(z, params)[0], x)
    paper = L.Affine()(x, params)[1]
    torch.testing.assert_close(paper, torch.nn.functional.logsigmoid(h + 2))
    with pytest.raises(ValueError, match="min_scale must be in"):
        L.Affine(min_scale=1.0)
