"""Bad inputs to the model API get a clear error naming the problem (DESIGN section 3)."""

from __future__ import annotations

import pytest
import torch

import imageflows as imf


def tiny_glow() -> imf.Glow:
    model = imf.Glow(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8, num_levels=17)
    model.initialize(torch.randint(0, 17, (8, 1, 8, 8), dtype=torch.uint8))
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_decode_refuses_non_finite_latents(value: float) -> None:
    eps = torch.zeros(2, 1, 8, 8)
    eps[1, 0, 3, 4] = value
    with pytest.raises(ValueError, match="latents must be finite, found 1 NaN or infinite"):
        tiny_glow().decode(eps)


def test_per_element_actnorm_refuses_a_batch_of_one() -> None:
    model = imf.FlowPlusPlus(
        image_shape=(1, 8, 8), layout="2cb", hidden_channels=8, blocks=1, components=4
    )
    with pytest.raises(ValueError, match="at least 2 values per parameter, got a batch of 1"):
        model.initialize(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    assert not model.is_initialized


def test_glow_initialises_on_a_batch_of_one() -> None:
    model = imf.Glow(image_shape=(1, 8, 8), levels=2, depth=1, hidden_channels=8, num_levels=17)
    model.initialize(torch.randint(0, 17, (1, 1, 8, 8), dtype=torch.uint8))
    log_scales = [m.log_scale for m in model.modules() if isinstance(m, imf.layers.ActNorm)]
    assert max(s.abs().max().item() for s in log_scales) < 10
