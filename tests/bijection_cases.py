"""The bijection-contract registry (DESIGN section 9): named layer cases and their helpers.

Each `Case` builds a layer, the inputs of both directions and, for a conditional layer, its
`cond` tensor. `tests/test_contract.py` runs the one contract test over `CASES`; the model tests
reuse `brute_force_logdet` and `assert_flow_matches_brute_force`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

import imageflows.layers as L
from imageflows.models import MultiScaleFlow, steps
from imageflows.nets import FlowppConditioner, GlowConditioner, ZeroConv2d

Sampler = Callable[[tuple[int, ...], torch.Generator], Tensor]


def normal(shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64)


def unit_interval(shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Inside (0, 1), away from the edges: the domain of a logit, the range of a sigmoid."""
    return 0.02 + 0.96 * torch.rand(shape, generator=g, dtype=torch.float64)


def far(scale: float) -> Sampler:
    """N(0, scale²): far in the logistic tails of a mixture coupling."""
    return lambda shape, g: scale * normal(shape, g)


@dataclass(frozen=True)
class Case:
    """One layer of the registry.

    `build` makes the layer (float32, freshly initialised); `shape` is one example's input
    (C, H, W); `x` and `z` sample the forward and the inverse direction's inputs (`z` is shaped
    like the forward's output); `cond_channels` > 0 gives the layer a `cond` of shape
    (cond_channels, H, cond_width or W), or with `cond_vector` a class-embedding-like `cond` of
    shape (cond_channels,); `train` runs it in training mode (dropout: every call is
    preceded by the same `torch.manual_seed`); `prepare` moves the randomised parameters where a
    case wants them (e.g. a mixture's tails); `tol` is the round trip's tolerance; `noise` the
    standard deviation added to every parameter (smaller for deep chains, whose conditioning
    compounds).
    """

    name: str
    build: Callable[[], L.Bijection]
    shape: tuple[int, int, int]
    x: Sampler = normal
    z: Sampler = normal
    cond_channels: int = 0
    cond_width: int | None = None
    cond_vector: bool = False
    train: bool = False
    prepare: Callable[[L.Bijection], None] | None = None
    tol: float = 1e-10
    noise: float = 0.3


CALL_SEED = 1234  # the dropout seed set before every call of a layer


def call(fn: Callable, v: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
    """fn(v, cond) with the global RNG at `CALL_SEED` (the same dropout masks every call)."""
    torch.manual_seed(CALL_SEED)
    return fn(v, cond)


def make_cond(case: Case, batch: int, seed: int = 7) -> Tensor | None:
    if not case.cond_channels:
        return None
    _, h, w = case.shape
    g = torch.Generator().manual_seed(seed)
    if case.cond_vector:
        return normal((batch, case.cond_channels), g)
    return normal((batch, case.cond_channels, h, case.cond_width or w), g)


def make_inputs(case: Case, batch: int = 3, seed: int = 1) -> Tensor:
    return case.x((batch, *case.shape), torch.Generator().manual_seed(seed))


def make_layer(case: Case, seed: int = 0) -> L.Bijection:
    """The layer in float64 with every trainable parameter moved away from its init (a
    zero-initialised coupling would pass any test)."""
    torch.manual_seed(seed)
    layer = case.build().double().train(case.train)
    with torch.no_grad():
        for p in layer.parameters():
            # drawn in logical order, so a channels-last parameter gets the same values
            p.add_(case.noise * torch.randn(p.shape, dtype=p.dtype))
    if case.prepare is not None:
        case.prepare(layer)
    return layer


def brute_force_logdet(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """log|det ∂fn/∂x| per example, from the full autograd Jacobian of one example at a time."""
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], xi)
        out.append(torch.linalg.slogdet(jac.reshape(xi.numel(), xi.numel()))[1])
    return torch.stack(out)


def assert_flow_matches_brute_force(flow: L.Bijection, y: Tensor) -> None:
    """Shape, log-det against the brute-force Jacobian, and the inverse, of a whole flow."""
    eps, logdet = flow(y)
    assert eps.shape == y.shape
    torch.testing.assert_close(logdet, brute_force_logdet(lambda v: flow(v)[0], y))
    y_back, logdet_inv = flow.inverse(eps)
    torch.testing.assert_close(y_back, y)
    torch.testing.assert_close(logdet_inv, -logdet)


# --- builders -----------------------------------------------------------------------------------


def glow_coupling(transform: L.ElementwiseMap, channels: int = 4, cond: int = 0) -> L.Coupling:
    """Glow's coupling on channel halves; a `cond` of `cond` channels is concatenated to x_id."""
    c_id, c_tr = channels // 2, channels - channels // 2
    return L.Coupling(GlowConditioner(c_id, transform.num_params * c_tr, 8, cond), transform)


def flowpp_coupling(
    transform: L.ElementwiseMap,
    shape: tuple[int, int, int],
    attention: bool = True,
    dropout: float = 0.0,
    cond: int = 0,
) -> L.Coupling:
    """Flow++'s coupling on the column halves of a `shape` input (checkerboard split); with
    `cond` channels its gated convolutions see `cond` as the variational dequantizer's do."""
    c, h, w = shape
    net = FlowppConditioner(
        c,
        transform.num_params * c,
        8,
        1,
        (h, w // 2),
        heads=2,
        attention=attention,
        dropout=dropout,
        cond_channels=cond,
    )
    return L.Coupling(net, transform, L.CheckerboardSplit())


def flowpp_step(
    shape: tuple[int, int, int], transform: L.ElementwiseMap, dropout: float = 0.0, cond: int = 0
) -> L.Sequential:
    """Flow++'s checkerboard step as the models build it: per-element actnorm → 1x1 convolution
    → coupling → swap; with `cond` channels every gated convolution sees `cond`."""
    net = partial(
        FlowppConditioner,
        hidden_channels=8,
        blocks=1,
        heads=2,
        dropout=dropout,
        cond_channels=cond,
    )
    return L.Sequential(steps.flowpp_step(shape, "cb", transform, "conv1x1", net))


def multiscale_glow(permutation: str, cond: int = 0) -> MultiScaleFlow:
    """Glow's multi-scale flow of two levels of one step: squeeze, step, split prior,
    factor-out, top prior, unsqueeze; with `cond` K > 0, the couplings and the top prior are
    conditioned on a `[B, K]` class embedding."""

    def step(c: int) -> list[L.Bijection]:
        return steps.glow_step(c, 4, "affine", permutation, cond_channels=cond)

    return MultiScaleFlow(1, 2, 1, step, cond_features=cond)


def mixture_tail_case(
    name: str, logits: list[float], means: list[float], log_scales: list[float]
) -> Case:
    """A mixture coupling whose conditioner, a 1x1 convolution, gives parameters near these (its
    randomised weights scaled down, they vary by O(0.1) over the inputs), on inputs of scale 60
    in both directions."""
    k = len(logits)
    offsets = torch.tensor([0.0, 0.0, *logits, *means, *log_scales], dtype=torch.float64)

    def build() -> L.Coupling:
        transform = L.MixtureCDF(k)
        return L.Coupling(nn.Conv2d(2, transform.num_params * 2, 1), transform)

    def prepare(layer: L.Bijection) -> None:
        conv = layer.conditioner
        with torch.no_grad():  # channel p·C_tr + c holds parameter p of transformed channel c
            conv.bias.add_(offsets.repeat_interleave(2))
            conv.weight.mul_(0.002)

    return Case(name, build, (4, 2, 2), x=far(60.0), z=far(60.0), prepare=prepare, tol=1e-8)


# --- the registry -------------------------------------------------------------------------------

CB = L.CheckerboardSplit
CASES = [
    Case("actnorm_per_channel", lambda: L.ActNorm(4), (4, 3, 3)),
    Case("actnorm_per_element", lambda: L.ActNorm((2, 3, 3)), (2, 3, 3)),
    Case("conv1x1", lambda: L.InvConv1x1(4), (4, 3, 3)),
    Case("conv1x1_lu", lambda: L.InvConv1x1LU(4), (4, 3, 3)),
    Case("conv1x1_frozen", lambda: L.InvConv1x1LU(4).double().frozen(), (4, 3, 3)),
    Case("reverse", lambda: L.Reverse(4), (4, 2, 2)),
    Case("shuffle", lambda: L.Shuffle(5), (5, 2, 2)),
    Case("permutation", lambda: L.ChannelPermutation(torch.tensor([2, 0, 1])), (3, 2, 2)),
    Case("squeeze", lambda: L.Squeeze(), (2, 4, 4)),
    Case("unsqueeze", lambda: L.Inverse(L.Squeeze()), (8, 2, 2)),
    Case("shift", lambda: L.Shift(-0.5), (2, 2, 2)),
    Case("logit", lambda: L.Logit(), (2, 2, 3), x=unit_interval),
    Case("sigmoid", lambda: L.Inverse(L.Logit(0.0)), (2, 2, 3), z=unit_interval),
    Case("swap_checkerboard", lambda: L.SwapHalves(CB()), (2, 3, 4)),
    Case("swap_channels", lambda: L.SwapHalves(L.ChannelSplit()), (4, 2, 2)),
    # couplings
    Case("coupling_additive", lambda: glow_coupling(L.Additive()), (4, 3, 3)),
    Case("coupling_affine", lambda: glow_coupling(L.Affine()), (4, 3, 3)),
    Case("coupling_affine_odd", lambda: glow_coupling(L.Affine(), 5), (5, 2, 2)),
    Case("coupling_affine_floor", lambda: glow_coupling(L.Affine(min_scale=0.2)), (4, 3, 3)),
    Case("coupling_mixture", lambda: glow_coupling(L.MixtureCDF(3)), (4, 3, 3)),
    Case("coupling_mixture_odd", lambda: glow_coupling(L.MixtureCDF(1), 3), (3, 2, 2)),
    Case(
        "coupling_mixture_checkerboard",
        lambda: flowpp_coupling(L.MixtureCDF(2), (2, 3, 4)),
        (2, 3, 4),
    ),
    Case(
        "coupling_affine_checkerboard_no_attention",
        lambda: flowpp_coupling(L.Affine(), (2, 2, 4), attention=False),
        (2, 2, 4),
    ),
    # Inputs of scale 60 against means within ±6 and scales e^-7 (-9 is clamped to -7) to e^0:
    # (x − μ_k)/exp(s_k) reaches 1e5, C rounds to 0 or 1 for |x| ≳ 45 (log-space arithmetic
    # only), and between the means the inverse solves on a staircase of narrow components.
    mixture_tail_case("coupling_mixture_tails", [4, -3, 0], [-6, 0.5, 6], [-9, -4, 0]),
    # Large scales (e^6 ≈ 400) beside a narrow one, far-apart means and a negligible weight.
    mixture_tail_case("coupling_mixture_wide_scales", [0, -2, -12], [-30, 0, 50], [-7, 3, 6]),
    # conditional layers: `cond` as the variational dequantizer and class-conditional flows give it
    Case(
        "coupling_affine_cond",
        lambda: glow_coupling(L.Affine(), cond=3),
        (4, 2, 2),
        cond_channels=3,
    ),
    Case(
        "coupling_mixture_cond",
        lambda: flowpp_coupling(L.MixtureCDF(2), (2, 2, 4), cond=3),
        (2, 2, 4),
        cond_channels=3,
        cond_width=2,
    ),
    # training mode with dropout: the same seed gives the same masks in both directions
    Case(
        "coupling_mixture_dropout_train",
        lambda: flowpp_coupling(L.MixtureCDF(2), (2, 2, 4), dropout=0.5),
        (2, 2, 4),
        train=True,
    ),
    Case(
        "coupling_affine_cond_dropout_train",
        lambda: flowpp_coupling(L.Affine(), (2, 2, 4), attention=False, dropout=0.3, cond=2),
        (2, 2, 4),
        cond_channels=2,
        cond_width=2,
        train=True,
    ),
    # priors and the multi-scale combinator
    Case("split_prior", lambda: L.Coupling(ZeroConv2d(2, 2 * 2), L.Standardize()), (4, 3, 3)),
    Case("learned_prior", lambda: L.LearnedPrior(3), (3, 2, 2)),
    # class-conditional layers: cond is a [B, K] class embedding (one-hot y in the models)
    Case(
        "learned_prior_class_cond",
        lambda: L.LearnedPrior(3, cond_features=4),
        (3, 2, 2),
        cond_channels=4,
        cond_vector=True,
    ),
    Case(
        "coupling_affine_class_cond",
        lambda: glow_coupling(L.Affine(), cond=3),
        (4, 2, 2),
        cond_channels=3,
        cond_vector=True,
    ),
    Case(
        "coupling_mixture_class_cond",
        lambda: flowpp_coupling(L.MixtureCDF(2), (2, 2, 4), cond=3),
        (2, 2, 4),
        cond_channels=3,
        cond_vector=True,
    ),
    Case(
        "multiscale_glow_class_cond",
        lambda: multiscale_glow("conv1x1_lu", cond=2),
        (1, 4, 4),
        cond_channels=2,
        cond_vector=True,
        noise=0.05,
    ),
    Case("factor_out", lambda: L.FactorOut(L.InvConv1x1(2)), (4, 2, 2)),
    # combinators
    Case(
        "sequential_glow_step",
        lambda: L.Sequential([L.ActNorm(4), L.InvConv1x1LU(4), glow_coupling(L.Affine())]),
        (4, 2, 2),
    ),
    Case(
        "reversible_glow_step",
        lambda: L.Reversible([L.ActNorm(4), L.InvConv1x1LU(4), glow_coupling(L.Affine())]),
        (4, 2, 2),
    ),
    Case("inverse_of_coupling", lambda: L.Inverse(glow_coupling(L.Affine())), (4, 2, 2)),
    Case("flowpp_step", lambda: flowpp_step((3, 2, 4), L.MixtureCDF(2)), (3, 2, 4)),
    Case("multiscale_glow", lambda: multiscale_glow("conv1x1_lu"), (1, 4, 4), noise=0.05),
    Case("multiscale_glow_swap", lambda: multiscale_glow("none"), (1, 4, 4), noise=0.05),
    Case(
        "reversible_flowpp_step_cond_dropout_train",
        lambda: L.Reversible(flowpp_step((2, 2, 4), L.MixtureCDF(2), dropout=0.3, cond=2).layers),
        (2, 2, 4),
        cond_channels=2,
        cond_width=2,
        train=True,
    ),
    Case(
        "dequantizer_flow_cond",  # the variational dequantizer's flow: steps, then a sigmoid
        lambda: L.Sequential(
            [
                flowpp_step((2, 2, 4), L.MixtureCDF(2), cond=3),
                L.Inverse(L.Logit(0.0)),
            ]
        ),
        (2, 2, 4),
        z=unit_interval,
        cond_channels=3,
        cond_width=2,
    ),
]
