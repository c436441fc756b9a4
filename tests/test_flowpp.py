"""Flow++: its layers, variational dequantizer and model contract (DESIGN sections 1, 3, 9)."""

from __future__ import annotations

import math

import pytest
import torch

import imageflows as imf
import imageflows.layers as L
from imageflows.config import ModelConfig
from imageflows.models import FlowPlusPlus, Glow, build_model
from imageflows.models.variational import VariationalDequantizer
from imageflows.nets import WNConv2d

from .bijection_cases import assert_flow_matches_brute_force, brute_force_logdet
from .test_glow import (
    draw_y,
    log_normal,
    random_images,
    zero_conditioners,
    zeroed_variational_log_q,
)

TINY = dict(
    image_shape=(2, 4, 4),
    layout="2cb,sq,2ch,1cb",
    hidden_channels=8,
    blocks=1,
    components=3,
    heads=2,
    dropout=0.0,
    num_levels=16,
)


def perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Move every parameter off its (data-dependent) init, as a trained model would be."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def tiny_flowpp(dtype=torch.float64, seed: int = 0, **kwargs) -> FlowPlusPlus:
    torch.manual_seed(seed)
    model = FlowPlusPlus(**{**TINY, **kwargs}).to(dtype)
    model.initialize(random_images(model, n=64, seed=seed + 100))
    perturb(model)
    return model


# --- layers -----------------------------------------------------------------------------------


def test_logit_log_det_includes_D_ln_09() -> None:
    y = torch.full((2, 3, 2, 2), 0.5, dtype=torch.float64)
    z, logdet = L.Logit()(y)
    torch.testing.assert_close(z, torch.zeros_like(y))
    # p = 0.5: log|dz/dy| = ln 0.9 − 2 ln ½ per element
    per_element = math.log(0.9) + 2 * math.log(2)
    torch.testing.assert_close(logdet, torch.full((2,), 12 * per_element, dtype=torch.float64))
    y = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    p = 0.05 + 0.9 * y
    z, logdet = L.Logit()(y)
    torch.testing.assert_close(z, torch.log(p / (1 - p)))
    torch.testing.assert_close(L.Logit().inverse(z)[0], y)
    with pytest.raises(ValueError, match="alpha"):
        L.Logit(0.5)


def test_checkerboard_split_alternates_columns_as_the_official_code() -> None:
    x = torch.arange(2 * 3 * 4).reshape(1, 2, 3, 4)
    even, odd = L.CheckerboardSplit()(x)
    assert torch.equal(even, x[..., 0::2]) and torch.equal(odd, x[..., 1::2])
    assert torch.equal(L.CheckerboardSplit().merge(even, odd), x)
    swapped, _ = L.SwapHalves(L.CheckerboardSplit())(x)
    assert torch.equal(swapped[..., 0::2], odd) and torch.equal(swapped[..., 1::2], even)
    with pytest.raises(ValueError, match="even width"):
        L.CheckerboardSplit()(torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match="equal shape"):
        L.SwapHalves(L.ChannelSplit())(torch.zeros(1, 3, 2, 2))


# --- variational dequantization -----------------------------------------------------------------


def tiny_dequantizer(dtype=torch.float64) -> VariationalDequantizer:
    torch.manual_seed(0)
    deq = VariationalDequantizer(
        (2, 2, 4), hidden_channels=8, blocks=1, components=2, heads=2, couplings=2
    ).to(dtype)
    x = torch.randint(0, 8, (32, 2, 2, 4), dtype=torch.uint8)
    deq.initialize(x, 8, dtype, torch.Generator().manual_seed(0))
    perturb(deq)
    return deq


def test_dequantizer_log_q_matches_a_brute_force_jacobian() -> None:
    deq = tiny_dequantizer()
    x = torch.randint(0, 8, (2, 2, 2, 4), dtype=torch.uint8)
    y, log_q = deq(x, 8, torch.float64, torch.Generator().manual_seed(5))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    context = deq.context_features(x, 8, torch.float64)
    u = deq.flow(eps, context)[0]
    torch.testing.assert_close(y, (x.double() + u) / 8)

    def u_of_eps(i: int):  # example i's own context
        return lambda e: deq.flow(e, context[i : i + 1])[0]

    logdet = torch.cat([brute_force_logdet(u_of_eps(i), eps[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(log_q, log_normal(eps) - logdet)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantizer_noise_lies_strictly_inside_the_bin(dtype) -> None:
    deq = tiny_dequantizer(dtype)
    with torch.no_grad():  # blow the pre-sigmoid values up until σ rounds to 0 or 1
        for m in deq.flow.modules():
            if isinstance(m, L.ActNorm):
                m.log_scale.fill_(4.0)
    x = torch.randint(0, 8, (64, 2, 2, 4), dtype=torch.uint8)
    y, log_q = deq(x, 8, dtype, torch.Generator().manual_seed(0))
    u = y * 8 - x.to(dtype)
    assert ((u > 0) & (u < 1)).all() and torch.isfinite(log_q).all()
    assert torch.equal(torch.floor(y * 8).to(torch.uint8), x)


def test_dequantizer_needs_an_even_width() -> None:
    with pytest.raises(ValueError, match="even image width"):
        VariationalDequantizer((1, 4, 5))


# --- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "coupling,permutation",
    [
        ("mixture", "conv1x1"),
        ("affine", "reverse"),
        ("additive", "conv1x1_lu"),
        ("mixture", "none"),
    ],
)
def test_whole_flow_logdet_matches_brute_force(coupling: str, permutation: str) -> None:
    model = tiny_flowpp(coupling=coupling, permutation=permutation)
    y = 0.05 + 0.9 * torch.rand(2, *model.image_shape, dtype=torch.float64)
    assert_flow_matches_brute_force(model.flow, y)


@pytest.mark.parametrize("coupling", ["mixture", "affine"])
def test_decode_encode_is_exact_on_uint8(coupling: str) -> None:
    model = tiny_flowpp(
        torch.float32, coupling=coupling, image_shape=(3, 8, 8), num_levels=256, dropout=0.2
    )
    model.eval()
    x = random_images(model, n=16)
    assert torch.equal(model.decode(model.encode(x)), x)


def test_log_prob_is_the_variational_bound() -> None:
    model = tiny_flowpp()
    x = random_images(model)
    lp = model.log_prob(x, generator=torch.Generator().manual_seed(3))
    deq, n = model.dequantizer, model.num_levels
    eps_u = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u, logdet_u = deq.flow(eps_u, deq.context_features(x, n, torch.float64))
    log_q = log_normal(eps_u) - logdet_u
    eps, logdet = model.flow((x.double() + u) / n)
    expected = log_normal(eps) + logdet - log_q - model.num_dims * math.log(n)
    torch.testing.assert_close(lp, expected)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_log_prob_in_closed_form_with_identity_couplings(dequantization: str) -> None:
    """With every conditioner's output zero (mixture couplings are then the identity) and
    actnorm untrained, Flow++'s flow is logit(0.05 + 0.9·y) moved by orthogonal 1x1
    convolutions and swaps: log p(x) = Σ [log N(w) + ln 0.9 − ln p − ln(1 − p)] − log q − D·ln N
    with p = 0.05 + 0.9·y, w = logit(p). A missing D·ln N, D·ln 0.9 or log q fails."""
    torch.manual_seed(0)
    model = FlowPlusPlus(**{**TINY, "dequantization": dequantization}).double()
    zero_conditioners(model)
    x = random_images(model, n=4)
    lp = model.log_prob(x, generator=torch.Generator().manual_seed(3))
    y = draw_y(model, x, seed=3)
    p = 0.05 + 0.9 * y
    w = p.log() - (-p).log1p()
    logit_logdet = (math.log(0.9) - p.log() - (-p).log1p()).flatten(1).sum(1)
    u = y * model.num_levels - x.double()
    log_q = zeroed_variational_log_q(u) if dequantization == "variational" else 0.0
    ln_n = math.log(model.num_levels)
    expected = log_normal(w) + logit_logdet - log_q - model.num_dims * ln_n
    torch.testing.assert_close(lp, expected, rtol=1e-6, atol=0)


def test_initialize_reaches_the_dequantizer_and_every_conditioner() -> None:
    torch.manual_seed(0)
    model = FlowPlusPlus(**TINY)
    model.initialize(random_images(model, n=32))
    convs = [m for m in model.modules() if isinstance(m, WNConv2d)]
    assert any(m in convs for m in model.dequantizer.modules())
    assert all((m.gain != 1).any() for m in convs)
    actnorms = [m for m in model.modules() if isinstance(m, L.ActNorm)]
    assert all(m.log_scale.abs().sum() > 0 for m in actnorms)


def test_dropout_acts_in_training_mode_only() -> None:
    model = tiny_flowpp(dropout=0.5)
    x = random_images(model)

    def log_prob() -> torch.Tensor:
        return model.log_prob(x, generator=torch.Generator().manual_seed(0))

    assert not torch.equal(log_prob(), log_prob())
    model.eval()
    assert torch.equal(log_prob(), log_prob())


def test_sampling_with_temperature() -> None:
    model = tiny_flowpp(torch.float32)
    model.eval()
    zero = model.sample(3, temperature=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(zero, model.decode(torch.zeros(3, *model.image_shape)))
    a = model.sample(4, 0.7, generator=torch.Generator().manual_seed(4))
    b = model.sample(4, 0.7, generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == (4, *model.image_shape) and torch.equal(a, b)
    assert int(a.max()) < model.num_levels


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_memory_saving_gives_the_same_gradients(dropout: float) -> None:
    """With dropout, the backward pass must rebuild each coupling with the forward's masks."""
    plain = tiny_flowpp(dropout=dropout)
    saving = FlowPlusPlus(**{**TINY, "dropout": dropout}, memory_saving=True).double()
    saving.load_state_dict(plain.state_dict())
    x = random_images(plain)
    for model in (plain, saving):
        torch.manual_seed(1)  # the same dropout masks in both forward passes
        model.log_prob(x, generator=torch.Generator().manual_seed(0)).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), saving.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_glow_mixes_in_mixture_couplings_and_variational_dequantization() -> None:
    torch.manual_seed(0)
    model = Glow(
        (2, 4, 4),
        levels=2,
        depth=1,
        hidden_channels=8,
        num_levels=16,
        coupling="mixture",
        components=3,
        dequantization="variational",
    )
    x = random_images(model, n=32)
    model.initialize(x)
    perturb(model)
    assert isinstance(model.dequantizer, VariationalDequantizer)
    assert torch.equal(model.decode(model.encode(x)), x)
    assert torch.isfinite(model.log_prob(x)).all()
    model.double()
    y = torch.rand(2, *model.image_shape, dtype=torch.float64)
    torch.testing.assert_close(model.flow(y)[1], brute_force_logdet(lambda v: model.flow(v)[0], y))


def test_zero_initialised_mixture_coupling_starts_as_the_identity() -> None:
    """Glow's zero-initialised conditioner makes a mixture coupling exactly the identity."""
    model = Glow((1, 4, 4), levels=1, depth=1, hidden_channels=4, coupling="mixture")
    coupling = next(m for m in model.modules() if isinstance(m, L.Coupling))
    x = torch.randn(3, 4, 2, 2)
    z, logdet = coupling(x)
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(logdet, torch.zeros(3), atol=1e-5, rtol=0)


def test_layouts_are_checked() -> None:
    with pytest.raises(ValueError, match="bad stage 'x2'"):
        FlowPlusPlus(**{**TINY, "layout": "2cb,x2"})
    with pytest.raises(ValueError, match="bad stage '0cb'"):
        FlowPlusPlus(**{**TINY, "layout": "0cb"})
    with pytest.raises(ValueError, match="stage 'ch' needs an even number of channels"):
        FlowPlusPlus(**{**TINY, "image_shape": (3, 4, 4), "layout": "1ch"})
    with pytest.raises(ValueError, match="stage 'cb' needs an even width"):
        FlowPlusPlus(**{**TINY, "layout": "sq,sq,1cb", "dequantization": "uniform"})
    with pytest.raises(ValueError, match="stage 'sq' needs an even height and width"):
        FlowPlusPlus(**{**TINY, "layout": "sq,sq,sq"})
    with pytest.raises(ValueError, match="unknown coupling"):
        FlowPlusPlus(**{**TINY, "coupling": "spline"})
    with pytest.raises(ValueError, match="unknown dequantization"):
        FlowPlusPlus(**{**TINY, "dequantization": "importance"})


def test_config_builds_flowpp_and_its_switches() -> None:
    options = {k: v for k, v in TINY.items()}
    cfg = ModelConfig(type="flowpp", **options, attention=False, coupling="affine")
    model = build_model(cfg)
    assert isinstance(model, FlowPlusPlus) and model.num_levels == 16
    modules = {type(m).__name__ for m in model.modules()}
    assert "GatedPointwise" in modules and "GatedAttention" not in modules
    assert "Affine" in modules and "MixtureCDF" not in modules
    glow = build_model(ModelConfig(type="glow", coupling="mixture", components=2))
    assert any(isinstance(m, L.MixtureCDF) and m.components == 2 for m in glow.modules())
    with pytest.raises(ValueError, match="unknown model.type"):
        build_model(ModelConfig(type="realnvp"))


def test_presets_match_the_papers() -> None:
    cfg = imf.preset_config("flowpp-cifar10").model
    assert (cfg.layout, cfg.hidden_channels, cfg.blocks, cfg.components) == (
        "4cb,sq,2ch,3cb",
        96,
        10,
        32,
    )
    assert (cfg.heads, cfg.dropout, cfg.dequantization, cfg.coupling) == (
        4,
        0.2,
        "variational",
        "mixture",
    )
    model = imf.from_preset("flowpp-cifar10")
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(31_443_440, rel=0.02)
    deq = sum(p.numel() for p in model.dequantizer.parameters())
    assert deq == pytest.approx(3_466_976, rel=0.02)  # the official Dequant's count
    mnist = imf.from_preset("flowpp-mnist")
    assert isinstance(mnist, FlowPlusPlus) and mnist.image_shape == (1, 28, 28)
    for name in ("flowpp-imagenet32", "flowpp-imagenet64"):
        assert imf.preset_config(name).model.type == "flowpp"
