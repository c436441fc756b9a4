"""Operations on the standardised latent eps (DESIGN §1): one tensor holds every level's latents,
so sampling, interpolation and attribute arithmetic are plain tensor algebra on it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


@torch.no_grad()
def temperature_rows(model, temperatures: Sequence[float], n: int, seed: int = 0) -> Tensor:
    """Samples decode(T · eps) for each T, every row from the same base noise eps ~ N(0, I).

    Rows then differ by temperature alone (Glow section 5, Figure 8). Shapes: uint8
    `[len(temperatures) · n, C, H, W]`, row-major.
    """
    if n < 1 or not temperatures:
        raise ValueError(f"need n ≥ 1 and at least one temperature, got n={n}, {temperatures}")
    for t in temperatures:
        if not 0 <= t < float("inf"):
            raise ValueError(f"temperature must be finite and ≥ 0, got {t}")
    param = next(model.parameters())
    generator = torch.Generator(param.device).manual_seed(seed)
    eps = torch.randn(
        (n, *model.image_shape), generator=generator, dtype=param.dtype, device=param.device
    )
    return torch.cat([model.decode(t * eps) for t in temperatures])
