"""Model-level contract of Glow (DESIGN sections 1, 3 and 9)."""

from __future__ import annotations

import math

import pytest
import torch

import imageflows as imf
from imageflows.layers import Sequential, Shift
from imageflows.models import FlowModel, build_model
from imageflows.models.dequantize import UniformDequantizer

from .test_layers import assert_flow_matches_brute_force


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
@pytest.mark.parametrize("permutation", ["none", "reverse", "shuffle", "conv1x1", "conv1x1_lu"])
def test_whole_flow_logdet_matches_brute_force(coupling: str, permutation: str) -> None:
    model = tiny_glow(coupling=coupling, permutation=permutation)
    y = torch.rand(2, *model.image_shape, dtype=torch.float64)
    assert_flow_matches_brute_force(model.flow, y)


@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_decode_encode_is_exact_on_uint8(coupling: str) -> None:
    model = tiny_glow(torch.float32, coupling=coupling, image_shape=(3, 8, 8), num_levels=256)
    x = random_images(model, n=16)
    assert torch.equal(model.decode(model.encode(x)), x)


def test_log_prob_is_the_dequantization_bound() -> None:
    model = tiny_glow()
    x = random_images(model)
    lp = model.log_prob(x, generator=torch.Generator().manual_seed(3))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps, logdet = model.flow((x.double() + u) / model.num_levels)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(eps).flatten(1).sum(1)
    expected = normal + logdet - model.num_dims * math.log(model.num_levels)
    torch.testing.assert_close(lp, expected)


def test_log_prob_of_the_identity_flow_in_closed_form() -> None:
    """With flow(y) = y − ½ the bound is Σ log N(y − ½) − D ln N, computed by hand."""
    model = FlowModel((1, 2, 2), 4, Sequential([Shift(-0.5)]), UniformDequantizer())
    model.register_parameter("anchor", torch.nn.Parameter(torch.zeros((), dtype=torch.float64)))
    x = torch.tensor([[[[0, 1], [2, 3]]]], dtype=torch.uint8)
    lp = model.log_prob(x, generator=torch.Generator().manual_seed(0))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = ((x.double() + u) / 4 - 0.5).flatten()
    by_hand = sum(-0.5 * t * t - 0.5 * math.log(2 * math.pi) for t in v.tolist()) - 4 * math.log(4)
    assert lp.item() == pytest.approx(by_hand, rel=1e-12)


def test_untrained_bits_per_dim_are_sane() -> None:
    torch.manual_seed(0)
    model = imf.Glow((1, 8, 8), levels=2, depth=2, hidden_channels=16, num_levels=17)
    x = random_images(model, n=64)
    model.initialize(x)
    bpd = imf.bits_per_dim(model.log_prob(x), model.num_dims)
    assert torch.isfinite(bpd).all()
    # uniform noise over 17 levels costs log2(17) ≈ 4.09 bits/dim; a fresh model is near that
    assert 3.0 < bpd.mean().item() < 6.0


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
    assert torch.equal(a, model.decode(torch.zeros(3, *model.image_shape), exact=False))
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


def test_exact_path_is_a_float64_copy_outside_the_state_dict() -> None:
    model = tiny_glow(torch.float32)
    x = random_images(model)
    keys = set(model.state_dict())
    eps = model.encode(x)
    assert eps.dtype == torch.float64 and set(model.state_dict()) == keys
    expected = model.flow.double()((x.double() + 0.5) / model.num_levels)[0]
    model.float()
    torch.testing.assert_close(eps, expected)
    with torch.no_grad():
        next(model.parameters()).add_(0.1)  # a parameter update invalidates the copy
    assert not torch.equal(model.encode(x), eps)
    model.exact_dtype = torch.float32
    assert model.encode(x).dtype == torch.float32


def test_a_model_made_under_inference_mode_samples_and_round_trips() -> None:
    # its parameters are inference tensors, which keep no version for the kernel caches
    with torch.inference_mode():
        model = tiny_glow(torch.float32, image_shape=(3, 8, 8), num_levels=256)
        x = random_images(model, n=4)
        assert torch.equal(model.decode(model.encode(x)), x)
        eps = model.encode(x)
        with torch.no_grad():
            next(model.parameters()).add_(0.1)  # in place, with no version to tell it by
        assert not torch.equal(model.encode(x), eps)  # nothing stale was served
        assert model.sample(2).shape == (2, 3, 8, 8)
    assert torch.equal(model.decode(model.encode(x)), x)  # and outside inference mode
