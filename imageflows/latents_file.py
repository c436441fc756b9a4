"""Latents files: the exact codes of dataset images (`imageflows encode`), and the images they
decode to (`imageflows decode`).

Both directions run the run's model in float64, where decode(encode(x)) == x holds (float32
rounding, amplified by an ill-conditioned trained flow, may not give it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from imageflows._io import atomic_write
from imageflows.explore import Explorer
from imageflows.images import save_grid
from imageflows.train.checkpoint import load

LATENTS_FORMAT = "imageflows-latents-1"


def write_latents(
    run: str | Path,
    out: str | Path,
    count: int = 64,
    start: int = 0,
    data: str | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    ema: bool = True,
) -> dict[str, Any]:
    """Encode images `start .. start+count-1` of a split into a latents file (`torch.save`).

    The file holds `eps` (float64, exact: `imageflows decode` gives the images back bit for
    bit), the images' `labels` and `indices`, and where they came from.
    """
    explorer = Explorer(run, data, data_dir, split, ema=ema)
    if count < 1 or not 0 <= start < len(explorer):
        raise ValueError(
            f"--n must be ≥ 1 and --start in 0..{len(explorer) - 1}, got {count} and {start}"
        )
    indices = torch.arange(start, min(start + count, len(explorer)))
    eps = explorer.model.double().encode(explorer.images[indices]).cpu()  # (n, C, H, W)
    info = explorer.provenance()
    payload = {
        "format": LATENTS_FORMAT,
        "eps": eps,
        "labels": explorer.labels[indices],
        "indices": indices,
        **info,
    }
    atomic_write(out, lambda f: torch.save(payload, f))
    return {"out": str(out), "n": len(indices), "shape": list(eps.shape), **info}


def read_latents(path: str | Path) -> Tensor:
    """The `eps` tensor of a latents file written by `write_latents`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such latents file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable latents file ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != LATENTS_FORMAT:
        raise ValueError(f"{path}: not an imageflows latents file (write one with encode)")
    return payload["eps"]


def write_decoded(
    run: str | Path, latents: str | Path, out: str | Path, ema: bool = True
) -> dict[str, Any]:
    """Decode a latents file with a run's model into a PNG grid."""
    model = load(run, ema=ema).double()
    eps = read_latents(latents)
    images = model.decode(eps)
    save_grid(images, out, model.num_levels, nrow=min(len(images), 8))
    return {"out": str(out), "n": len(images), "run": str(run), "latents": str(latents)}
