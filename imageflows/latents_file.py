"""Latents files: the exact codes of dataset images (`imageflows encode`), and the images they
decode to (`imageflows decode`).

Both directions run the run's model in float64, where decode(encode(x)) == x holds (float32
rounding, amplified by an ill-conditioned trained flow, may not give it).

A file is a `torch.save`d dict. Format 2 (`LATENTS_FORMAT`) adds `conditioned`: whether `eps`
were encoded given the images' `labels` (by a class-conditional model), so that decoding can use
the same labels. Format 1 files, written before class-conditional runs could encode, read as
unconditioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from imageflows._io import atomic_write
from imageflows.explore import Explorer
from imageflows.images import save_grid
from imageflows.latent import class_labels
from imageflows.train.checkpoint import load

LATENTS_FORMAT = "imageflows-latents-2"
READABLE_FORMATS = ("imageflows-latents-1", LATENTS_FORMAT)


@dataclass(frozen=True)
class Latents:
    """The contents of a latents file that decoding needs.

    Attributes:
        eps: float `[n, C, H, W]`.
        labels: int64 `[n]`, the classes `eps` were encoded with; None if encoded unconditionally.
    """

    eps: Tensor
    labels: Tensor | None


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
    bit), the images' `labels` and `indices`, whether the labels conditioned the encoding (a
    class-conditional run encodes each image with its own label), and where they came from.
    """
    explorer = Explorer(run, data, data_dir, split, ema=ema)
    if count < 1 or not 0 <= start < len(explorer):
        raise ValueError(
            f"--n must be ≥ 1 and --start in 0..{len(explorer) - 1}, got {count} and {start}"
        )
    indices = torch.arange(start, min(start + count, len(explorer)))
    model, labels = explorer.model.double(), explorer.labels[indices]
    cond = class_labels(model, labels, len(indices))
    eps = model.encode(explorer.images[indices], cond).cpu()  # (n, C, H, W)
    info = explorer.provenance()
    payload = {
        "format": LATENTS_FORMAT,
        "eps": eps,
        "labels": labels,
        "conditioned": cond is not None,
        "indices": indices,
        **info,
    }
    atomic_write(out, lambda f: torch.save(payload, f))
    return {
        "out": str(out),
        "n": len(indices),
        "shape": list(eps.shape),
        "conditioned": cond is not None,
        **info,
    }


def read_latents_file(path: str | Path) -> Latents:
    """The latents of a file written by `write_latents` (format 1 or 2), checked.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a latents file, a newer format, or contents that do not fit together,
            each message naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such latents file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable latents file ({type(err).__name__})") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found not in READABLE_FORMATS:
        if isinstance(found, str) and found.startswith("imageflows-latents-"):
            raise ValueError(
                f"{path}: latents format {found!r} is newer than this imageflows reads "
                f"({', '.join(READABLE_FORMATS)}); upgrade imageflows"
            )
        raise ValueError(f"{path}: not an imageflows latents file (write one with encode)")
    eps = payload.get("eps")
    if not isinstance(eps, Tensor) or not eps.is_floating_point() or eps.dim() != 4:
        raise ValueError(f"{path}: 'eps' must be a float tensor [n, C, H, W]")
    conditioned = payload.get("conditioned", False)  # format 1: never conditioned
    if not isinstance(conditioned, bool):
        raise ValueError(f"{path}: 'conditioned' must be true or false, got {conditioned!r}")
    if not conditioned:
        return Latents(eps, None)
    labels = payload.get("labels")
    if (
        not isinstance(labels, Tensor)
        or labels.dtype != torch.int64
        or labels.shape != (len(eps),)
    ):
        raise ValueError(
            f"{path}: conditioned latents need 'labels', int64 [{len(eps)}] (one per latent)"
        )
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{path}: labels must be classes ≥ 0, found {int(labels.min())}")
    return Latents(eps, labels)


def read_latents(path: str | Path) -> Tensor:
    """The `eps` tensor of a latents file (see `read_latents_file`)."""
    return read_latents_file(path).eps


def write_decoded(
    run: str | Path,
    latents: str | Path,
    out: str | Path,
    ema: bool = True,
    decode_class: int | None = None,
) -> dict[str, Any]:
    """Decode a latents file with a run's model into a PNG grid.

    A class-conditional run decodes each latent with the label it was encoded with, or every
    latent as `decode_class` if given ("same style, another class"); without either, and for
    `decode_class` on an unconditional run, it raises `ValueError`.
    """
    model = load(run, ema=ema).double()
    stored = read_latents_file(latents)
    source = f"{latents} (encoded without labels)"
    labels = class_labels(model, stored.labels, len(stored.eps), decode_class, source)
    images = model.decode(stored.eps, labels)
    save_grid(images, out, model.num_levels, nrow=min(len(images), 8))
    return {
        "out": str(out),
        "n": len(images),
        "run": str(run),
        "latents": str(latents),
        "labels": None if labels is None else labels.tolist(),
    }
