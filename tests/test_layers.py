"""The layer contract (DESIGN section 9), run over one registry of layer cases in float64."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import imageflows.layers as L
from imageflows.layers.base import parameter_versions
from imageflows.nets import FlowppConditioner, GlowConditioner, ZeroConv2d
from imageflows.nets.flowpp import WNConv2d
from imageflows.nets.glow import ConvActNorm


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], L.Bijection]
    shape: tuple[int, int, int]  # (C, H, W) of one example


def _coupling(transform: L.ElementwiseMap, channels: int = 4) -> L.Coupling:
    c_id, c_tr = channels // 2, channels - channels // 2
    return L.Coupling(GlowConditioner(c_id, transform.num_params * c_tr, 8), transform)


def _flowpp_coupling(
    transform: L.ElementwiseMap, shape: tuple[int, int, int], attention: bool = True
) -> L.Coupling:
    """A Flow++ coupling on the column halves of a `shape` input (checkerboard split)."""
    c, h, w = shape
    net = FlowppConditioner(
        c, transform.num_params * c, 8, 1, (h, w // 2), heads=2, attention=attention
    )
    return L.Coupling(net, transform, L.CheckerboardSplit())


CASES = [
    Case("actnorm_per_channel", lambda: L.ActNorm(4), (4, 3, 3)),
    Case("actnorm_per_element", lambda: L.ActNorm((2, 3, 3)), (2, 3, 3)),
    Case("conv1x1", lambda: L.InvConv1x1(4), (4, 3, 3)),
    Case("conv1x1_lu", lambda: L.InvConv1x1LU(4), (4, 3, 3)),
    Case("reverse", lambda: L.Reverse(4), (4, 2, 2)),
    Case("shuffle", lambda: L.Shuffle(5), (5, 2, 2)),
    Case("permutation", lambda: L.ChannelPermutation(torch.tensor([2, 0, 1])), (3, 2, 2)),
    Case("squeeze", lambda: L.Squeeze(), (2, 4, 4)),
    Case("unsqueeze", lambda: L.Inverse(L.Squeeze()), (8, 2, 2)),
    Case("shift", lambda: L.Shift(-0.5), (2, 2, 2)),
    Case("coupling_additive", lambda: _coupling(L.Additive()), (4, 3, 3)),
    Case("coupling_affine", lambda: _coupling(L.Affine()), (4, 3, 3)),
    Case("coupling_affine_odd", lambda: _coupling(L.Affine(), 5), (5, 2, 2)),
    Case(
        "split_prior",
        lambda: L.Coupling(ZeroConv2d(2, 2 * 2), L.Standardize()),
        (4, 3, 3),
    ),
    Case("learned_prior", lambda: L.LearnedPrior(3), (3, 2, 2)),
    Case("factor_out", lambda: L.FactorOut(L.InvConv1x1(2)), (4, 2, 2)),
    Case(
        "sequential_glow_step",
        lambda: L.Sequential([L.ActNorm(4), L.InvConv1x1LU(4), _coupling(L.Affine())]),
        (4, 2, 2),
    ),
    Case(
        "reversible_glow_step",
        lambda: L.Reversible([L.ActNorm(4), L.InvConv1x1LU(4), _coupling(L.Affine())]),
        (4, 2, 2),
    ),
    Case("inverse_of_coupling", lambda: L.Inverse(_coupling(L.Affine())), (4, 2, 2)),
    # Flow++ (a sigmoid in front keeps the logit's input inside (0, 1) both ways)
    Case("logit", lambda: L.Sequential([L.Inverse(L.Logit(0.0)), L.Logit()]), (2, 2, 3)),
    Case("coupling_mixture", lambda: _coupling(L.MixtureCDF(3)), (4, 3, 3)),
    Case("coupling_mixture_odd", lambda: _coupling(L.MixtureCDF(1), 3), (3, 2, 2)),
    Case(
        "coupling_mixture_checkerboard",
        lambda: _flowpp_coupling(L.MixtureCDF(2), (2, 3, 4)),
        (2, 3, 4),
    ),
    Case(
        "coupling_affine_checkerboard_no_attention",
        lambda: _flowpp_coupling(L.Affine(), (2, 2, 4), attention=False),
        (2, 2, 4),
    ),
    Case("swap_checkerboard", lambda: L.SwapHalves(L.CheckerboardSplit()), (2, 3, 4)),
    Case("swap_channels", lambda: L.SwapHalves(L.ChannelSplit()), (4, 2, 2)),
    Case(
        "flowpp_step",
        lambda: L.Sequential(
            [
                L.ActNorm((3, 2, 4)),
                L.InvConv1x1(3),
                _flowpp_coupling(L.MixtureCDF(2), (3, 2, 4)),
                L.SwapHalves(L.CheckerboardSplit()),
            ]
        ),
        (3, 2, 4),
    ),
]


def make(case: Case, seed: int = 0) -> L.Bijection:
    """The layer in float64 with every trainable parameter moved away from its init."""
    torch.manual_seed(seed)
    layer = case.build().double()
    with torch.no_grad():
        for p in layer.parameters():
            # drawn in logical order, so a channels-last parameter gets the same values
            p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype))
    return layer


def inputs(case: Case, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *case.shape), generator=g, dtype=torch.float64)


def brute_force_logdet(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """log|det J| per example, from the full autograd Jacobian of one example at a time."""
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], xi)
        out.append(torch.linalg.slogdet(jac.reshape(xi.numel(), xi.numel()))[1])
    return torch.stack(out)


def assert_flow_matches_brute_force(flow: L.Bijection, y: torch.Tensor) -> None:
    """Shape, log-det against the brute-force Jacobian, and the inverse, of a whole flow."""
    eps, logdet = flow(y)
    assert eps.shape == y.shape
    torch.testing.assert_close(logdet, brute_force_logdet(lambda v: flow(v)[0], y))
    y_back, logdet_inv = flow.inverse(eps)
    torch.testing.assert_close(y_back, y)
    torch.testing.assert_close(logdet_inv, -logdet)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_round_trip_both_ways(case: Case) -> None:
    layer, x = make(case), inputs(case)
    z, ld_forward = layer(x)
    assert ld_forward.shape == (x.shape[0],) and torch.isfinite(ld_forward).all()
    x_back, ld_inverse = layer.inverse(z)
    assert x_back.shape == x.shape
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ld_inverse, -ld_forward, atol=1e-10, rtol=1e-10)
    z2 = inputs(case, seed=2)
    z2 = z2.reshape(z.shape) if z.numel() == z2.numel() else z2
    x2, _ = layer.inverse(z2)
    torch.testing.assert_close(layer(x2)[0], z2, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_logdet_matches_brute_force_jacobian(case: Case) -> None:
    layer, x = make(case), inputs(case, batch=2)
    z, ld = layer(x)
    torch.testing.assert_close(ld, brute_force_logdet(lambda v: layer(v)[0], x))
    ld_inv = layer.inverse(z)[1]
    torch.testing.assert_close(ld_inv, brute_force_logdet(lambda v: layer.inverse(v)[0], z))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_examples_are_independent_of_the_batch(case: Case) -> None:
    layer, x = make(case), inputs(case, batch=4)
    z, ld = layer(x)
    for i in range(x.shape[0]):
        zi, ldi = layer(x[i : i + 1])
        torch.testing.assert_close(zi, z[i : i + 1])
        torch.testing.assert_close(ldi, ld[i : i + 1])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradients_reach_every_parameter(case: Case) -> None:
    layer, x = make(case), inputs(case).requires_grad_(True)
    weights = torch.randn_like(x)
    z, ld = layer(x)
    ((z.reshape(x.shape) * weights).sum() + ld.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_state_dict_round_trip(case: Case) -> None:
    layer, x = make(case, seed=0), inputs(case)
    other = make(case, seed=123)
    other.load_state_dict(layer.state_dict())
    z = layer(x)[0]
    torch.testing.assert_close(other(x)[0], z, atol=0, rtol=0)
    torch.testing.assert_close(
        other.inverse(z + 0.1)[0], layer.inverse(z + 0.1)[0], atol=0, rtol=0
    )


def test_registry_covers_every_public_layer() -> None:
    public = {
        obj
        for _, obj in inspect.getmembers(L, inspect.isclass)
        if issubclass(obj, (L.Bijection, L.ElementwiseMap))
        and obj not in (L.Bijection, L.ElementwiseMap)
    }
    covered = {type(m) for case in CASES for m in case.build().modules()}
    assert public - covered == set()


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
    coupling = _coupling(L.Affine()).double()
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
    z, _ = affine(x)
    torch.testing.assert_close(z[:, 2:], x[:, 2:] * torch.sigmoid(torch.tensor(2.0)))


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


CACHED_LAYERS = {  # layers whose kernels `derived` builds once per parameter version
    "conv1x1": lambda: L.InvConv1x1(3),
    "conv1x1-lu": lambda: L.InvConv1x1LU(3),
    "actnorm": lambda: L.ActNorm(3),
    "conv-actnorm": lambda: ConvActNorm(3, 3, 3),
    "zero-conv": lambda: ZeroConv2d(3, 3),
    "wn-conv": lambda: WNConv2d(3, 3, 3),
}


def _output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = layer(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", CACHED_LAYERS)
def test_cached_kernels_follow_parameter_updates(name: str) -> None:
    torch.manual_seed(0)
    layer = CACHED_LAYERS[name]().double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))  # random, not the zero/identity init
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        before = _output(layer, x)
        assert "_derived" in layer.__dict__
        assert torch.equal(_output(layer, x), before)  # served from the cache
        for p in layer.parameters():
            p.add_(0.1)  # an optimizer step: in place, bumps the version
        after = _output(layer, x)
    expected = _output(layer, x)  # with autograd: computed afresh, and the cache dropped
    assert "_derived" not in layer.__dict__
    torch.testing.assert_close(after, expected.detach())
    assert not torch.allclose(after, before)
    if isinstance(layer, L.Bijection):
        with torch.no_grad():
            torch.testing.assert_close(layer.inverse(layer(x)[0])[0], x)
    other = CACHED_LAYERS[name]().double()  # a load replaces the parameters in place
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn_like(p))
        loaded = _output(other, x)
        _output(layer, x)  # cached again
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(_output(layer, x), loaded)


def test_parameter_versions_change_with_every_kind_of_parameter_change() -> None:
    layer = ConvActNorm(3, 3, 3)
    key = parameter_versions(layer)
    assert len(key) == len(list(layer.parameters()))  # the nested conv's and actnorm's
    assert parameter_versions(layer) == key  # reading changes nothing
    with torch.no_grad():
        layer.actnorm.bias.add_(1.0)  # in place: a new version
    updated = parameter_versions(layer)
    assert updated != key
    layer.conv.weight = nn.Parameter(layer.conv.weight.detach().clone())  # replaced
    replaced = parameter_versions(layer)
    assert replaced != updated
    layer.double()  # moved to new storage
    assert parameter_versions(layer) != replaced


def test_cached_kernels_of_inference_tensors_are_computed_every_call() -> None:
    with torch.inference_mode():
        layer = L.InvConv1x1(3)  # its weight is an inference tensor: no version counter
        x = torch.randn(2, 3, 4, 4)
        before = layer(x)[0]
        layer.weight.add_(0.5 * torch.eye(3))
        after = layer(x)[0]
        assert "_derived" not in layer.__dict__
        assert not torch.allclose(after, before)
        torch.testing.assert_close(layer.inverse(after)[0], x)
        assert parameter_versions(layer) is None
