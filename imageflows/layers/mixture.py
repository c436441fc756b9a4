"""Flow++'s logistic-mixture CDF coupling map and its inverse (Flow++ section 3.1).

y = σ⁻¹(C(x)) · exp(a) + b with C(x) = Σ_k π_k σ((x − μ_k) · exp(−s_k)), per element.

Everything is computed in log space: log C and log(1 − C) are log-sum-exps of log-sigmoids, so the
logit σ⁻¹(C) = log C − log(1 − C) stays exact in the tails where C rounds to 0 or 1. The inverse
solves σ⁻¹(C(x)) = v in that logit domain, where the tails are nearly linear and Newton's method is
at its best, with a bisection safeguard inside a bracket that provably holds the root.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .elementwise import ElementwiseMap


class Mixture(NamedTuple):
    """A logistic mixture per element, K on dim 1: each field `[B, K, ...]` (or `[N, K]`)."""

    log_weights: Tensor  # log π_k (log-softmax of the logits)
    means: Tensor  # μ_k
    log_scales: Tensor  # s_k, clamped from below


def _normalise(logits: Tensor, log_scales: Tensor, min_log_scale: float) -> tuple[Tensor, Tensor]:
    """log π = log-softmax of the logits, and s clamped from below at `min_log_scale`."""
    return F.log_softmax(logits, dim=1), log_scales.clamp(min=min_log_scale)


def mixture_params(
    params: Tensor, components: int, min_log_scale: float = -7.0
) -> tuple[Tensor, Tensor, Mixture]:
    """Unpack `[B, 3K + 2, ...]` raw parameters as (a, b, mixture): a = tanh(raw a), b, (π, μ, s).

    tanh on a (so exp(a) ∈ (1/e, e)) and the clamp s_k ≥ −7 follow the official Flow++ code:
    both keep the map from becoming arbitrarily steep, which would make it ill-conditioned.
    """
    a, b, logits, means, log_scales = _split(params, components)
    log_weights, log_scales = _normalise(logits, log_scales, min_log_scale)
    return a, b, Mixture(log_weights, means, log_scales)


def _split(params: Tensor, components: int) -> tuple[Tensor, ...]:
    """a = tanh(raw a), b, and the raw logits, means and log-scales of `[B, 3K + 2, ...]`."""
    return params[:, 0].tanh(), params[:, 1], *params[:, 2:].split(components, dim=1)


def _logistic_terms(x: Tensor, means: Tensor, log_scales: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """z_k = (x − μ_k) e^{−s_k}, log σ(z_k) and log σ(−z_k), each `[B, K, ...]`."""
    z = (x.unsqueeze(1) - means) * (-log_scales).exp()
    return z, F.logsigmoid(z), F.logsigmoid(-z)


class _MixtureLogTerms(torch.autograd.Function):
    """`mixture_log_terms` with a hand-written backward that keeps only its inputs and outputs.

    Given raw parameters (`min_log_scale` set), the log-softmax and the clamp happen inside too.
    Autograd would keep about ten `[B, K, ...]` intermediates per coupling (z, the log-sigmoids,
    the log-sum-exp arguments, the normalised weights and scales); the backward recomputes them.
    With the responsibilities r^C_k = exp(ℓ_k + log σ(z_k) − log C), r^S_k (with σ(−z_k),
    1 − C) and r^P_k (the density's), and upstream gradients g_C, g_S, g_P:
        ∂/∂ℓ_k = g_C r^C_k + g_S r^S_k + g_P r^P_k,
        ∂/∂z_k = g_C r^C_k σ(−z_k) − g_S r^S_k σ(z_k) + g_P r^P_k (σ(−z_k) − σ(z_k)),
        ∂/∂x = Σ_k ∂/∂z_k e^{−s_k},  ∂/∂μ_k = −∂/∂z_k e^{−s_k},  ∂/∂s_k = −g_P r^P_k − ∂/∂z_k z_k,
    then through the log-softmax (∂/∂logit_k = ∂/∂ℓ_k − π_k Σ_j ∂/∂ℓ_j) and the clamp.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, weights: Tensor, means: Tensor, scales: Tensor, min_log_scale: float | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        log_weights, log_scales = (
            (weights, scales)
            if min_log_scale is None
            else _normalise(weights, scales, min_log_scale)
        )
        _, log_sig, log_sig_neg = _logistic_terms(x, means, log_scales)
        log_cdf = torch.logsumexp(log_weights + log_sig, dim=1)
        log_sf = torch.logsumexp(log_weights + log_sig_neg, dim=1)
        # logistic log-density: log σ(z) + log σ(−z) − s
        log_pdf = torch.logsumexp(log_weights + log_sig + log_sig_neg - log_scales, dim=1)
        ctx.min_log_scale = min_log_scale
        ctx.save_for_backward(x, weights, means, scales, log_cdf, log_sf, log_pdf)
        return log_cdf, log_sf, log_pdf

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_cdf: Tensor, g_sf: Tensor, g_pdf: Tensor) -> tuple[Tensor | None, ...]:
        x, weights, means, scales, log_cdf, log_sf, log_pdf = ctx.saved_tensors
        min_log_scale = ctx.min_log_scale
        log_weights, log_scales = (
            (weights, scales)
            if min_log_scale is None
            else _normalise(weights, scales, min_log_scale)
        )
        z, log_sig, log_sig_neg = _logistic_terms(x, means, log_scales)
        w_cdf = g_cdf.unsqueeze(1) * (log_weights + log_sig - log_cdf.unsqueeze(1)).exp()
        w_sf = g_sf.unsqueeze(1) * (log_weights + log_sig_neg - log_sf.unsqueeze(1)).exp()
        log_density = log_weights + log_sig + log_sig_neg - log_scales
        w_pdf = g_pdf.unsqueeze(1) * (log_density - log_pdf.unsqueeze(1)).exp()
        sig, sig_neg = log_sig.exp(), log_sig_neg.exp()
        g_z = (w_cdf + w_pdf) * sig_neg - (w_sf + w_pdf) * sig
        g_z_scaled = g_z * (-log_scales).exp()
        g_weights = w_cdf + w_sf + w_pdf
        g_scales = -w_pdf - g_z * z
        if min_log_scale is not None:
            g_weights = g_weights - log_weights.exp() * g_weights.sum(dim=1, keepdim=True)
            g_scales = g_scales * (scales >= min_log_scale)  # as autograd's clamp
        return g_z_scaled.sum(dim=1), g_weights, -g_z_scaled, g_scales, None


def mixture_log_terms(x: Tensor, m: Mixture) -> tuple[Tensor, Tensor, Tensor]:
    """log C(x), log(1 − C(x)) and log C'(x) (the mixture's log-density), each shaped like x.

    Differentiable in x and every mixture parameter, at the activation memory of its inputs.
    """
    return _MixtureLogTerms.apply(x, *m, None)


@torch.no_grad()
def solve_mixture_logit(v: Tensor, m: Mixture, max_iterations: int = 100) -> tuple[Tensor, int]:
    """x with σ⁻¹(C(x)) = v by safeguarded Newton, vectorised; returns (x, iterations used).

    Bracket: with r_k = μ_k + exp(s_k)·v, every component has σ((r_k − μ_k)/exp(s_k)) = σ(v), so
    C(min_k r_k) ≤ σ(v) ≤ C(max_k r_k) and the root lies in [min_k r_k, max_k r_k], tails
    included. Each iteration takes the Newton step on g(x) = σ⁻¹(C(x)) − v, whose derivative is
    C'/(C(1 − C)), unless it leaves the bracket or fails to halve the previous step, in which case
    it bisects (`rtsafe`, Numerical Recipes 9.4): every iteration halves the bracket or takes a
    step under half the last one, and `max_iterations` caps the count. An element stops when
    |g| is at the rounding level of log C − log(1 − C), or its step or bracket is within 4 ulp
    of max(|x|, min_k exp(s_k)). Typical mixtures take 3-9 iterations, staircases of tiny,
    far-apart components 20-35 in float32; converged elements leave the working set, so the
    late iterations cost little.
    """
    k = m.means.shape[1]
    m = Mixture(*(t.movedim(1, -1).reshape(-1, k) for t in m))  # (N, K)
    v_flat = v.reshape(-1)
    roots = m.means + m.log_scales.exp() * v_flat[:, None]
    lo, hi = roots.amin(dim=1), roots.amax(dim=1)
    x = (m.log_weights.exp() * roots).sum(dim=1).clamp(lo, hi)
    floor = m.log_scales.amin(dim=1).exp()
    last_step = hi - lo
    index = torch.arange(len(v_flat), device=v.device)
    out = torch.empty_like(v_flat)
    ulp = 4 * torch.finfo(v.dtype).eps
    iterations = 0
    while iterations < max_iterations and len(index):
        iterations += 1
        log_cdf, log_sf, log_pdf = mixture_log_terms(x, m)
        g = log_cdf - log_sf - v_flat
        hi = torch.where(g > 0, x, hi)
        lo = torch.where(g < 0, x, lo)
        step = g * (log_cdf + log_sf - log_pdf).exp()  # g / g'
        newton = x - step
        bisect = ~((newton > lo) & (newton < hi)) | (2 * step.abs() > last_step.abs())
        # |g| at the rounding level of log C − log(1 − C): no x does better, keep this one
        at_root = g.abs() <= ulp * (1 + log_cdf.abs() + log_sf.abs())
        x_new = torch.where(at_root, x, torch.where(bisect, 0.5 * (lo + hi), newton))
        last_step = torch.where(bisect, 0.5 * (hi - lo), step)
        tol = ulp * torch.maximum(x_new.abs(), floor)
        converged = at_root | ((x_new - x).abs() <= tol) | (hi - lo <= tol)
        out[index[converged]] = x_new[converged]
        keep = ~converged
        x, lo, hi, last_step, floor, v_flat, index = (
            t[keep] for t in (x_new, lo, hi, last_step, floor, v_flat, index)
        )
        m = Mixture(*(t[keep] for t in m))
    out[index] = x  # the few that hit max_iterations
    return out.reshape(v.shape), iterations


class MixtureCDF(ElementwiseMap):
    """Flow++'s coupling map: y = σ⁻¹(Σ_k π_k σ((x − μ_k) e^{−s_k})) · e^a + b (section 3.1).

    `params` is `[B, 3K + 2, *x.shape[1:]]`: a, b, K logits, K means, K log-scales.
    log|dy/dx| = log C'(x) − log C(x) − log(1 − C(x)) + a, exact and finite in the tails.
    The inverse solves with `solve_mixture_logit` under no_grad, then takes one differentiable
    Newton step, so gradients (and Jacobians) through the inverse are those of the implicit
    function, correct to the resolution of the input's dtype.
    """

    def __init__(
        self, components: int, min_log_scale: float = -7.0, max_iterations: int = 100
    ) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"a logistic mixture needs at least 1 component, got {components}")
        self.components = components
        self.num_params = 3 * components + 2
        self.min_log_scale = min_log_scale
        self.max_iterations = max_iterations

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        a, b, logits, means, log_scales = _split(params, self.components)
        # raw parameters in: the log-softmax and clamp run inside, keeping nothing extra
        log_cdf, log_sf, log_pdf = _MixtureLogTerms.apply(
            x, logits, means, log_scales, self.min_log_scale
        )
        return (log_cdf - log_sf) * a.exp() + b, log_pdf - log_cdf - log_sf + a

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        a, b, m = mixture_params(params, self.components, self.min_log_scale)
        v = (y - b) * (-a).exp()
        root, _ = solve_mixture_logit(
            v.detach(), Mixture(*(t.detach() for t in m)), self.max_iterations
        )
        # the implicit-function gradient dx = −dg/g' attached to the detached root: g − g.detach()
        # is exactly zero, so x keeps the root's value even where the map is flat to rounding
        # (a full Newton step there, residual / g', can throw a valid root far away)
        log_cdf, log_sf, log_pdf = mixture_log_terms(root, m)
        g = log_cdf - log_sf - v
        inverse_slope = (
            (log_cdf + log_sf - log_pdf).detach().exp().clamp(max=torch.finfo(g.dtype).max)
        )
        x = root - (g - g.detach()) * inverse_slope
        log_cdf, log_sf, log_pdf = mixture_log_terms(x, m)
        return x, -(log_pdf - log_cdf - log_sf + a)

    def extra_repr(self) -> str:
        return f"components={self.components}, min_log_scale={self.min_log_scale}"
