"""Flow++'s logistic-mixture CDF map: forward formula, tails, and the inverse solver."""

from __future__ import annotations

import math

import pytest
import torch

import imageflows.layers as L
from imageflows.bench import bisect_mixture_cdf
from imageflows.layers import Mixture

K = 4
# (logits, means, log-scales) of hard mixtures, the raw parameters the conditioner would emit
MIXTURES = {
    "moderate": ([0.3, -0.5, 1.0, 0.0], [-1.0, 0.0, 0.5, 2.0], [0.0, -1.0, 0.5, -2.0]),
    "tiny_scales": ([0.0, 0.0, 1.0, -1.0], [-1.0, -0.999, 0.0, 1.0], [-7.0, -30.0, -7.0, -9.0]),
    "huge_scales": ([0.0, 1.0, -1.0, 0.0], [0.0, 10.0, -5.0, 1.0], [6.0, 8.0, 0.0, 3.0]),
    "far_means": ([0.0, 0.0, 0.0, 0.0], [-1e3, -10.0, 10.0, 1e3], [0.0, -3.0, 1.0, -7.0]),
    "dominant_weight": ([30.0, 0.0, 0.0, 0.0], [0.0, 5.0, -5.0, 100.0], [0.0, -2.0, 1.0, 0.0]),
    "negligible_weight": ([-30.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.1, 0.2], [3.0, -7.0, -7.0, -7.0]),
    "mixed_extremes": (
        [10.0, -10.0, 0.0, 5.0],
        [-500.0, 0.0, 1e-3, 500.0],
        [-7.0, 7.0, -7.0, 2.0],
    ),
}
# CDF values within 1e-6 of 0 and 1, the bulk, and logits far beyond float32's CDF resolution
CDF_GRID = [1e-6, 1e-5, 1e-3, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999, 1 - 1e-5, 1 - 1e-6]
FAR_LOGITS = [-80.0, -30.0, 30.0, 80.0]


def raw_params(mixture: str, n: int, dtype: torch.dtype, a: float = 0.0, b: float = 0.0):
    logits, means, log_scales = MIXTURES[mixture]
    row = torch.tensor([a, b, *logits, *means, *log_scales], dtype=dtype)
    return row.expand(n, 3 * K + 2).contiguous()  # (N, 3K + 2): one mixture per element


def logit_grid(dtype: torch.dtype) -> torch.Tensor:
    c = torch.tensor(CDF_GRID, dtype=torch.float64)
    v = torch.cat([c.log() - (-c).log1p(), torch.tensor(FAR_LOGITS, dtype=torch.float64)])
    return v.to(dtype)


def naive(x: torch.Tensor, params: torch.Tensor, components: int):
    """The map written directly with probabilities (float64, moderate values only)."""
    a, b = params[:, 0].tanh(), params[:, 1]
    logits, means, log_scales = params[:, 2:].split(components, dim=1)
    weights = logits.softmax(dim=1)
    scales = log_scales.exp()
    s = torch.sigmoid((x[:, None] - means) / scales)
    c = (weights * s).sum(1)
    pdf = (weights * s * (1 - s) / scales).sum(1)
    y = torch.log(c / (1 - c)) * a.exp() + b
    return y, torch.log(pdf) - torch.log(c) - torch.log(1 - c) + a


def test_forward_matches_the_naive_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(50, generator=g, dtype=torch.float64)
    params = torch.randn(50, 3 * 5 + 2, generator=g, dtype=torch.float64)
    y, logdet = L.MixtureCDF(5)(x, params)
    y_ref, logdet_ref = naive(x, params, 5)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(logdet, logdet_ref)


def _autograd_log_terms(x: torch.Tensor, m: Mixture) -> tuple[torch.Tensor, ...]:
    """The three log-sum-exps written with autograd's own ops (the reference)."""
    z = (x.unsqueeze(1) - m.means) * (-m.log_scales).exp()
    log_sig, log_sig_neg = torch.nn.functional.logsigmoid(z), torch.nn.functional.logsigmoid(-z)
    return (
        torch.logsumexp(m.log_weights + log_sig, dim=1),
        torch.logsumexp(m.log_weights + log_sig_neg, dim=1),
        torch.logsumexp(m.log_weights + log_sig + log_sig_neg - m.log_scales, dim=1),
    )


def test_log_terms_backward_matches_autograd_and_finite_differences() -> None:
    g = torch.Generator().manual_seed(0)
    shape = (2, K, 3, 2)  # (B, K, C, W)
    x = (3 * torch.randn(2, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    log_weights = torch.log_softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=1)
    means = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
    log_scales = torch.randn(shape, generator=g, dtype=torch.float64)
    inputs = (x, *(t.requires_grad_() for t in (log_weights, means, log_scales)))
    assert torch.autograd.gradcheck(lambda x, *m: L.mixture_log_terms(x, Mixture(*m)), inputs)
    weights = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(3)]
    grads = []
    for f in (L.mixture_log_terms, _autograd_log_terms):
        loss = sum((w * t).sum() for w, t in zip(weights, f(x, Mixture(*inputs[1:])), strict=True))
        grads.append(torch.autograd.grad(loss, inputs))
    for ours, reference in zip(*grads, strict=True):
        torch.testing.assert_close(ours, reference)


def test_mixture_coupling_parameter_gradients_match_autograd() -> None:
    """MixtureCDF takes raw parameters into its fused log-terms (log-softmax and clamp inside):
    its gradients, a clamped log-scale included, are autograd's through the plain formula."""
    g = torch.Generator().manual_seed(0)
    layer = L.MixtureCDF(K, min_log_scale=-1.0)
    x = torch.randn(2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    params = torch.randn(2, 3 * K + 2, 3, 2, generator=g, dtype=torch.float64)
    params[:, 2 + 2 * K] = -3.0  # one component's log-scale below the clamp
    params.requires_grad_()
    weights = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(2)]

    def reference(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, m = L.mixture_params(params, K, min_log_scale=-1.0)
        log_cdf, log_sf, log_pdf = _autograd_log_terms(x, m)
        return (log_cdf - log_sf) * a.exp() + b, log_pdf - log_cdf - log_sf + a

    grads = []
    for f in (layer, reference):
        loss = sum((w * t).sum() for w, t in zip(weights, f(x, params), strict=True))
        grads.append(torch.autograd.grad(loss, (x, params)))
    for ours, expected in zip(*grads, strict=True):
        torch.testing.assert_close(ours, expected)
    assert torch.autograd.gradcheck(lambda x, p: layer(x, p), (x, params))


def test_single_component_is_an_affine_map_of_the_standardised_input() -> None:
    x = torch.linspace(-50, 50, 11, dtype=torch.float64)
    params = torch.tensor([0.4, -1.5, 0.7, 2.0, -0.3], dtype=torch.float64).expand(11, 5)
    y, logdet = L.MixtureCDF(1)(x, params)
    a = math.tanh(0.4)
    torch.testing.assert_close(y, (x - 2.0) * math.exp(0.3) * math.exp(a) - 1.5)
    torch.testing.assert_close(logdet, torch.full_like(x, 0.3 + a))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tails_are_finite_and_exact_where_the_cdf_rounds_to_0_or_1(dtype) -> None:
    """K equal standard logistics: σ⁻¹(C(x)) = x exactly, log-det 0, even at |x| = 1000."""
    x = torch.tensor([-1e3, -100.0, -60.0, -30.0, 0.0, 30.0, 60.0, 100.0, 1e3], dtype=dtype)
    params = torch.zeros(len(x), 3 * 3 + 2, dtype=dtype)
    y, logdet = L.MixtureCDF(3)(x, params)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(logdet, torch.zeros_like(x))
    back, logdet_back = L.MixtureCDF(3).inverse(y, params)
    torch.testing.assert_close(back, x)
    assert torch.isfinite(logdet_back).all()


def test_log_scales_are_clamped_from_below_at_minus_7() -> None:
    x = torch.linspace(-0.01, 0.01, 7, dtype=torch.float64)
    params = torch.zeros(7, 5, dtype=torch.float64)
    steep, clamped = params.clone(), params.clone()
    steep[:, 4], clamped[:, 4] = -20.0, -7.0
    for got, want in zip(L.MixtureCDF(1)(x, steep), L.MixtureCDF(1)(x, clamped), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_inverse_reaches_the_dtype_resolution_on_hard_mixtures(mixture: str, dtype) -> None:
    """forward(inverse(y)) = y to rounding: the residual of σ⁻¹(C(x̂)) = v, judged in float64.

    A float x̂ can be off the true root by its own rounding, which moves σ⁻¹(C) by g'·ulp(x̂),
    plus the rounding of log C and log(1 − C) themselves: tol covers exactly these.
    """
    v = logit_grid(dtype)
    params = raw_params(mixture, len(v), dtype)
    x_hat, logdet = L.MixtureCDF(K).inverse(v, params)
    assert x_hat.dtype == dtype and torch.isfinite(x_hat).all() and torch.isfinite(logdet).all()
    _, _, m = L.mixture_params(params.double(), K)
    log_cdf, log_sf, log_pdf = L.mixture_log_terms(x_hat.double(), m)
    residual = (log_cdf - log_sf - v.double()).abs()
    slope = (log_pdf - log_cdf - log_sf).exp()
    eps = torch.finfo(dtype).eps
    floor = m.log_scales.amin(dim=1).exp()
    tol = 16 * eps * (1 + v.double().abs()) + 8 * eps * slope * torch.maximum(x_hat.abs(), floor)
    assert (residual <= tol).all(), (residual / tol).max()
    _, iterations = L.solve_mixture_logit(v, L.mixture_params(params, K)[2])
    assert iterations < 100  # converged, not capped


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_recovers_x_where_the_map_is_well_conditioned(dtype) -> None:
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(500, generator=g, dtype=torch.float64)).to(dtype)
    params = torch.randn(500, 3 * 8 + 2, generator=g, dtype=torch.float64).to(dtype)
    layer = L.MixtureCDF(8)
    y, logdet = layer(x, params)
    x_back, logdet_back = layer.inverse(y, params)
    scale = 1e3 * torch.finfo(dtype).eps
    torch.testing.assert_close(x_back, x, rtol=scale, atol=scale)
    torch.testing.assert_close(logdet_back, -logdet, rtol=scale, atol=scale)


def test_inverse_gradients_are_the_implicit_function_gradients() -> None:
    """gradcheck (finite differences, float64) through the solver, w.r.t. y and the parameters."""
    g = torch.Generator().manual_seed(2)
    y = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_(True)
    params = torch.randn(6, 3 * 2 + 2, generator=g, dtype=torch.float64).requires_grad_(True)
    layer = L.MixtureCDF(2)
    assert torch.autograd.gradcheck(lambda y, p: layer.inverse(y, p), (y, params))


@pytest.mark.parametrize("mixture", ["moderate", "huge_scales"])
def test_bisection_reference_agrees_in_the_bulk_and_clips_the_tails(mixture: str) -> None:
    """The benchmark's reference (the public codes' bisection) against the layer's solver."""
    v = logit_grid(torch.float64)
    _, _, m = L.mixture_params(raw_params(mixture, len(v), torch.float64), K)
    newton, _ = L.solve_mixture_logit(v, m)
    bisection = bisect_mixture_cdf(v, m)
    bulk = v.abs() < 11  # CDF inside the public code's clip to [1e-5, 1 − 1e-5]
    torch.testing.assert_close(bisection[bulk], newton[bulk], rtol=1e-9, atol=1e-9)
    log_cdf, log_sf, _ = L.mixture_log_terms(bisection[~bulk], Mixture(*(t[~bulk] for t in m)))
    # in the tails the reference stops at the clipped CDF, |logit| = ln(1e5 − 1)
    clipped = (log_cdf - log_sf).abs()
    torch.testing.assert_close(clipped, torch.full_like(clipped, math.log(1e5 - 1)))


def test_mixture_needs_a_component() -> None:
    with pytest.raises(ValueError, match="at least 1 component"):
        L.MixtureCDF(0)
    assert L.MixtureCDF(32).num_params == 98


def test_inverse_keeps_a_preimage_where_the_map_is_flat_to_rounding() -> None:
    """Where C'(x) underflows against the dtype (here g' = C'/(C(1 − C)) ≈ 1e-118 on [−5, 2.5],
    so forward is one constant there), any point of the flat stretch is an exact preimage. The
    solver finds one; the differentiable Newton step must not move it by residual/g' (a
    one-ulp residual sent x to 1e102). Parameters from an initialised, randomised Glow
    conditioner."""
    layer = L.MixtureCDF(3)
    row = torch.tensor(
        [-51.43020718701242, -0.7911756274063124]  # a (tanh → −1), b
        + [2.11182084102355, -2.4149249521695992, 10.497236496686844]  # logits
        + [3.7762799066775337, 2.568339904406006, -15.469441546774545]  # means
        + [-3.3669524299099205, -24.850689311994657, -6.281883065961803],  # log-scales
        dtype=torch.float64,
    )
    x = torch.linspace(-5, 2.5, 31, dtype=torch.float64)
    params = row.expand(len(x), len(row)).contiguous()
    y, logdet = layer(x, params)
    assert (logdet < -30).all()  # flat: log|dy/dx| below −30 everywhere
    x_back, logdet_back = layer.inverse(y, params)
    assert torch.isfinite(x_back).all() and torch.isfinite(logdet_back).all()
    torch.testing.assert_close(layer(x_back, params)[0], y, rtol=1e-12, atol=1e-12)
