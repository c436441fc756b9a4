"""Model-level contract of Glow (DESIGN sections 1, 3 and 9)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import imageflows as imf
import imageflows.layers as L
from imageflows.models import FlowModel, build_model

from .bijection_cases import assert_flow_matches_brute_force

PERMUTATIONS = ["none", "reverse", "shuffle", "conv1x1", "conv1x1_lu"]


def tiny_glow(dtype=torch.float64, seed: int = 0, **kwargs) -> imf.Glow:
    """A small Glow with every parameter randomised (a zero-init coupling is the identity)."""
    torch.manual_seed(seed)
    options = dict(image_shape=(2, 4, 4), levels=2, depth=2, hidden_channels=8, num_levels=16)
    model = imf.Glow(**{**options, **kwargs}).to(dtype)
    model.initialize(random_images(model, n=64, seed=seed + 100))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def random_images(model: FlowModel, n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.num_levels, (n, *model.image_shape), generator=g).to(torch.uint8)


@pytest.mark.parametrize("coupling", ["additive", "affine"])
@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_whole_flow_logdet_matches_brute_force(coupling: str, permutation: str) -> None:
    model = tiny_glow(coupling=coupling, permutation=permutation)
    y = torch.rand(2, *model.image_shape, dtype=torch.float64)
    assert_flow_matches_brute_force(model.flow, y)


@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_decode_encode_is_exact_on_uint8(coupling: str) -> None:
    model = tiny_glow(torch.float32, coupling=coupling, image_shape=(3, 8, 8), num_levels=256)
    x = random_images(model, n=16)
    assert torch.equal(model.decode(model.encode(x)), x)


def zero_conditioners(module: torch.nn.Module) -> None:
    """Make every coupling's conditioner output zeros: a mixture coupling becomes the identity."""
    for m in module.modules():
        if isinstance(m, L.Coupling):
            m.conditioner.register_forward_hook(lambda _m, _args, out: torch.zeros_like(out))


def log_normal(v: torch.Tensor) -> torch.Tensor:
    """Σ log N(v; 0, 1) per example, written out."""
    return (-0.5 * v.pow(2) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def zeroed_variational_log_q(u: torch.Tensor) -> torch.Tensor:
    """log q(u|x) of an untrained variational dequantizer with zeroed conditioners.

    Its flow is then orthogonal 1x1 convolutions, identity couplings and swaps, then a sigmoid:
    u = σ(Q eps) with Q orthogonal, so log q(u) = Σ log N(v) − Σ log σ'(v) for v = logit(u).
    """
    v = u.log() - (-u).log1p()
    return log_normal(v) - (F.logsigmoid(v) + F.logsigmoid(-v)).flatten(1).sum(1)


def draw_y(model: FlowModel, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The y = (x + u)/N that `log_prob(x, generator seeded with seed)` draws."""
    generator = torch.Generator().manual_seed(seed)
    return model.dequantizer(x, model.num_levels, torch.float64, generator)[0]


def test_log_prob_is_the_dequantization_bound() -> None:
    model = tiny_glow()
    x = random_images(model)
    lp = model.log_prob(x, generator=torch.Generator().manual_seed(3))
    eps, logdet = model.flow(draw_y(model, x, seed=3))
    expected = log_normal(eps) + logdet - model.num_dims * math.log(model.num_levels)
    torch.testing.assert_close(lp, expected)


GLOW = dict(image_shape=(2, 8, 8), levels=2, depth=2, hidden_channels=8, num_levels=16)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_untrained_additive_glow_log_prob_in_closed_form(
    permutation: str, dequantization: str
) -> None:
    """An untrained additive Glow is y − ½ moved by permutations and rotations (zero-initialised
    couplings and priors, actnorm at zero, 1x1 convolutions drawn orthogonal), so
    log p(x) = Σ log N(y − ½) − log q(u|x) − D·ln N exactly: a missing D·ln N or log q fails."""
    torch.manual_seed(0)
    model = imf.Glow(
        **GLOW,
        coupling="additive",
        permutation=permutation,
        dequantization=dequantization,
        components=2,
    ).double()
    zero_conditioners(model.dequantizer)
    x = random_images(model, n=4)
    lp = model.log_prob(x, generator=torch.Generator().manual_seed(3))
    y = draw_y(model, x, seed=3)
    u = y * model.num_levels - x.double()
    assert ((u > 0) & (u < 1)).all()
    log_q = zeroed_variational_log_q(u) if dequantization == "variational" else 0.0
    expected = log_normal(y - 0.5) - log_q - model.num_dims * math.log(model.num_levels)
    torch.testing.assert_close(lp, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("min_scale", [0.0, 0.1])
def test_untrained_affine_glow_logdet_in_closed_form(min_scale: float) -> None:
    """Each zero-initialised affine coupling scales its half by s = m + (1 − m)·σ(2) (σ(2) for
    the paper's m = 0): K·D/2 elements at the first level, K·D/4 at the second, so
    log|det| = (K·D/2 + K·D/4)·log s."""
    torch.manual_seed(0)
    model = imf.Glow(**GLOW, coupling="affine", min_scale=min_scale).double()
    y = torch.rand(3, *model.image_shape, dtype=torch.float64)
    eps, logdet = model.flow(y)
    d, k = model.num_dims, model.depth
    scale = min_scale + (1 - min_scale) * torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    expected = (k * d // 2 + k * d // 4) * scale.log()
    torch.testing.assert_close(logdet, expected.expand(3), rtol=1e-6, atol=0)
    x = random_images(model, n=3)
    lp = model.log_prob(x, generator=torch.Generator().manual_seed(1))
    eps, _ = model.flow(draw_y(model, x, seed=1))
    ln_n = math.log(model.num_levels)
    torch.testing.assert_close(lp, log_normal(eps) + expected - d * ln_n, rtol=1e-6, atol=0)


def transformed_elements(model: FlowModel) -> torch.Tensor:
    """Which elements of y reach the transformed half of some coupling of `model.flow`, `[D]`.

    With every conditioner's output detached, the flow is a chain of permutations, rotations
    and element-wise maps, so ∂x_tr/∂y_j ≠ 0 exactly when y_j's value itself (not only through
    a conditioner) flows into a coupling's transformed half x_tr. Split priors do not count.
    """
    halves, hooks = [], []
    for m in model.flow.modules():
        if isinstance(m, L.Coupling):
            hooks.append(m.conditioner.register_forward_hook(lambda _m, _a, out: out.detach()))
            if not isinstance(m.transform, L.Standardize):
                hooks.append(
                    m.register_forward_pre_hook(
                        lambda mod, args: halves.append(mod.split(args[0])[1])
                    )
                )
    y = torch.rand(1, *model.image_shape, dtype=torch.float64, requires_grad=True)
    model.flow(y)
    for hook in hooks:
        hook.remove()
    reached = torch.zeros(model.num_dims, dtype=torch.bool)
    for x_tr in halves:
        basis = torch.eye(x_tr.numel(), dtype=x_tr.dtype).reshape(-1, *x_tr.shape)
        (jac,) = torch.autograd.grad(x_tr, y, basis, retain_graph=True, is_grads_batched=True)
        reached |= (jac.flatten(1) != 0).any(dim=0)
    return reached


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_every_dimension_is_transformed_by_some_coupling(permutation: str) -> None:
    """Issue 12 item 9: with permutation="none" the coupling always transformed the second half
    and the split kept the first, so part of the image only ever saw actnorm."""
    # A random channel permutation stays in the conditioning half of all K steps of a level
    # with probability 2^-K: at K = 2 some element usually is never transformed, at K = 16
    # (as in the paper's depths) almost never.
    depth = 16 if permutation == "shuffle" else 2
    torch.manual_seed(0)
    model = imf.Glow(**{**GLOW, "depth": depth}, permutation=permutation).double()
    reached = transformed_elements(model)
    assert len(reached) == model.num_dims
    untouched = (~reached).nonzero().flatten().tolist()
    assert not untouched, f"{len(untouched)} of {model.num_dims} elements never transformed"


def test_initialize_once_then_force() -> None:
    torch.manual_seed(0)
    model = imf.Glow((2, 4, 4), levels=2, depth=2, hidden_channels=8, num_levels=16)
    x = random_images(model, n=32)
    assert not model.is_initialized
    model.initialize(x)
    assert model.is_initialized
    with pytest.raises(RuntimeError, match="already initialised"):
        model.initialize(x)
    model.initialize(x, force=True)
    restored = tiny_glow(torch.float32, seed=5)
    restored.load_state_dict(model.state_dict())
    assert restored.is_initialized
    torch.testing.assert_close(restored.encode(x), model.encode(x), rtol=0, atol=0)


def test_initialized_model_standardises_the_first_actnorm_output() -> None:
    torch.manual_seed(0)
    model = imf.Glow((1, 8, 8), levels=1, depth=1, hidden_channels=8, num_levels=17)
    x = random_images(model, n=256)
    model.initialize(x)
    level = model.flow.layers[1]
    squeezed = level.layers[0](((x.float() + 0.5) / 17) - 0.5)[0]
    z = level.layers[1].layers[0](squeezed)[0]
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_sampling_temperature_zero_is_deterministic_and_seeded_sampling_reproducible() -> None:
    model = tiny_glow(torch.float32)
    a = model.sample(3, temperature=0.0, generator=torch.Generator().manual_seed(1))
    b = model.sample(3, temperature=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert torch.equal(a, model.decode(torch.zeros(3, *model.image_shape)))
    c = model.sample(3, 0.7, generator=torch.Generator().manual_seed(4))
    d = model.sample(3, 0.7, generator=torch.Generator().manual_seed(4))
    assert c.dtype == torch.uint8 and c.shape == (3, *model.image_shape) and torch.equal(c, d)


def test_bad_inputs_raise_clear_errors() -> None:
    model = tiny_glow(torch.float32)
    x = random_images(model)
    with pytest.raises(TypeError, match="uint8"):
        model.log_prob(x.float())
    with pytest.raises(ValueError, match="shape"):
        model.encode(x[:, :1])
    with pytest.raises(ValueError, match="shape"):
        model.encode(x[0])
    with pytest.raises(ValueError, match="0..15"):
        model.log_prob(torch.full_like(x, 200))
    with pytest.raises(TypeError, match="float latent"):
        model.decode(x)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=float("nan"))
    with pytest.raises(ValueError, match="divisible by 4"):
        imf.Glow((1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="unknown coupling"):
        imf.Glow((1, 8, 8), levels=1, depth=1, hidden_channels=4, coupling="mixtur")
    with pytest.raises(ValueError, match="unknown permutation"):
        imf.Glow((1, 8, 8), levels=1, depth=1, hidden_channels=4, permutation="flip")
    with pytest.raises(ValueError, match="n_bits or num_levels"):
        imf.Glow((1, 8, 8), levels=1, depth=1, hidden_channels=4, n_bits=5, num_levels=32)


def test_presets_build_and_match_the_papers() -> None:
    cfg = imf.preset_config("glow-cifar10").model
    assert (cfg.levels, cfg.depth, cfg.hidden_channels, cfg.coupling, cfg.permutation) == (
        3,
        32,
        512,
        "affine",
        "conv1x1_lu",
    )
    assert cfg.num_levels == 256
    params = sum(p.numel() for p in imf.from_preset("glow-cifar10").parameters())
    assert params == pytest.approx(44.0e6, rel=0.01)
    celeba = imf.preset_config("glow-celeba-5bit").model
    assert (celeba.coupling, celeba.num_levels) == ("additive", 32)
    digits = build_model(imf.preset_config("glow-digits").model)
    assert digits.image_shape == (1, 8, 8) and digits.num_levels == 17
    with pytest.raises(ValueError, match="unknown preset"):
        imf.from_preset("glow-imagenet")


def test_a_model_made_under_inference_mode_samples_and_round_trips() -> None:
    with torch.inference_mode():
        model = tiny_glow(torch.float32, image_shape=(3, 8, 8), num_levels=256)
        x = random_images(model, n=4)
        assert torch.equal(model.decode(model.encode(x)), x)
        assert model.sample(2).shape == (2, 3, 8, 8)
    assert torch.equal(model.decode(model.encode(x)), x)  # and outside inference mode
