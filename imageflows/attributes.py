"""Attribute directions on disk and the attribute labels they come from.

A run caches each direction it computes under `RUN/directions/`, keyed by checkpoint step,
dataset, split and attribute (DESIGN §4), and reuses it only for exactly the same images and
signs. Attributes beyond class labels come from CelebA-style attribute files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor

from ._io import atomic_write_bytes
from .latent import attribute_directions
from .models import FlowModel

DIRECTIONS_DIR = "directions"


def direction_path(
    run_dir: str | Path, dataset: str, split: str, attribute: str, step: int, ema: bool = True
) -> Path:
    """`RUN/directions/<dataset>-<split>-<attribute>-step<N>.safetensors` (`-raw` for raw
    weights); characters unsafe in file names become `_`."""
    name = "-".join(
        re.sub(r"[^A-Za-z0-9_.]", "_", part) or "_" for part in (dataset, split, attribute)
    )
    suffix = "" if ema else "-raw"
    return Path(run_dir) / DIRECTIONS_DIR / f"{name}-step{step}{suffix}.safetensors"


def save_direction(path: str | Path, direction: Tensor, metadata: dict[str, str]) -> Path:
    """Write one direction `[C, H, W]` with string metadata, atomically."""
    data = save_safetensors_bytes({"direction": direction.detach().cpu().contiguous()}, metadata)
    return atomic_write_bytes(path, data)


def read_direction(path: str | Path) -> tuple[Tensor, dict[str, str]] | None:
    """`(direction, metadata)` from a file written by `save_direction`; `None` if the file is
    missing or unreadable (a cache miss: the caller recomputes and rewrites it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            return f.get_tensor("direction"), dict(f.metadata() or {})
    except (SafetensorError, ValueError, OSError):  # torn, foreign or keyless file
        return None


@dataclass(frozen=True, eq=False)
class Direction:
    """An attribute direction in eps space and where it came from.

    Attributes:
        attribute: the attribute's name.
        vector: float32 `[C, H, W]`, mean eps with the attribute minus mean eps without.
        n_positive, n_negative: examples in each mean.
        path: the cache file, or `None` when not cached on disk.
        cached: whether it was read from `path` rather than computed.
    """

    attribute: str
    vector: Tensor
    n_positive: int
    n_negative: int
    path: Path | None
    cached: bool


def cached_directions(
    model: FlowModel,
    images: Tensor,
    signs: Tensor,
    attributes: Sequence[str],
    run_dir: str | Path,
    dataset: str,
    split: str,
    step: int | None,
    ema: bool = True,
    batch_size: int = 256,
    labels: Tensor | None = None,
) -> dict[str, Direction]:
    """`attribute_directions` for the columns of `signs` named `attributes`, each read from its
    `direction_path` when that file was computed from the same images and signs, else computed
    (all missing ones in one pass) and written there. With `step=None` (a run without
    checkpoints, so no key) nothing is read or written. `labels` (int64 `[N]`, the images' own)
    condition a class-conditional model's encoder."""
    if signs.dim() != 2 or signs.shape[1] != len(attributes):
        raise ValueError(
            f"signs must be [N, {len(attributes)}] for attributes {list(attributes)}, "
            f"got {list(signs.shape)}"
        )
    prints = _fingerprints(images, signs)
    found: dict[str, Direction] = {}
    if step is not None:
        for name, digest in zip(attributes, prints, strict=True):
            path = direction_path(run_dir, dataset, split, name, step, ema)
            stored = read_direction(path)
            if stored is not None and stored[1].get("fingerprint") == digest:
                vector, meta = stored
                n_pos, n_neg = int(meta["n_positive"]), int(meta["n_negative"])
                found[name] = Direction(name, vector, n_pos, n_neg, path, cached=True)
    missing = [k for k, name in enumerate(attributes) if name not in found]
    if not missing:
        return found
    names = [attributes[k] for k in missing]
    vectors, counts = attribute_directions(
        model, images, signs[:, missing], batch_size, names, labels
    )
    for k, name, vector, (n_pos, n_neg) in zip(
        missing, names, vectors, counts.tolist(), strict=True
    ):
        path = None
        if step is not None:
            path = direction_path(run_dir, dataset, split, name, step, ema)
            meta = {
                "dataset": dataset,
                "split": split,
                "attribute": name,
                "step": str(step),
                "weights": "ema" if ema else "raw",
                "fingerprint": prints[k],
                "n_positive": str(n_pos),
                "n_negative": str(n_neg),
            }
            save_direction(path, vector, meta)
        found[name] = Direction(name, vector, n_pos, n_neg, path, cached=False)
    return {name: found[name] for name in attributes}


def _fingerprints(images: Tensor, signs: Tensor) -> list[str]:
    """Per column of `signs`, the sha256 of the images and that column: a cached direction is
    reused only for exactly the data it was computed from."""
    base = hashlib.sha256(str(list(images.shape)).encode())
    base.update(images.contiguous().cpu().numpy().tobytes())
    prints = []
    for column in signs.to(torch.int8).T:
        digest = base.copy()
        digest.update(column.contiguous().numpy().tobytes())
        prints.append(digest.hexdigest())
    return prints


@dataclass(frozen=True, eq=False)
class AttributeTable:
    """Binary attributes per image file, as in CelebA's `list_attr_celeba.txt`.

    Attributes:
        names: the attribute names (columns), e.g. "Smiling".
        files: the image file names (rows), e.g. "000001.jpg".
        values: int8 `[len(files), len(names)]` of +1 (has it) and −1 (lacks it).
    """

    names: list[str]
    files: list[str]
    values: Tensor

    def signs_for(self, file_names: Sequence[str]) -> Tensor:
        """int8 `[len(file_names), A]`: each file's row, matched by base name; 0 for files the
        table does not list."""
        row = {name: i for i, name in enumerate(self.files)}
        signs = torch.zeros(len(file_names), len(self.names), dtype=torch.int8)
        for i, name in enumerate(file_names):
            j = row.get(Path(name).name)
            if j is not None:
                signs[i] = self.values[j]
        return signs


def read_attribute_file(path: str | Path) -> AttributeTable:
    """Read a CelebA-style attribute file.

    Format: line 1 the number of images; line 2 the attribute names; then one line per image,
    `FILENAME v1 v2 ...` with each value +1 or −1 (0 is read as −1, as some re-releases use
    0/1). Whitespace of any width separates fields.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line, naming the file and line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such attribute file")
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and an attribute-name line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{path}:1: expected the number of images, got {lines[0]!r}") from None
    names = lines[1].split()
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{path}:2: expected distinct attribute names, got {lines[1]!r}")
    files, rows = [], []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise ValueError(
                f"{path}:{number}: expected a file name and {len(names)} values, "
                f"got {len(fields)} fields"
            )
        try:
            values = [int(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"{path}:{number}: values must be +1 or -1: {line!r}") from None
        if any(v not in (-1, 0, 1) for v in values):
            raise ValueError(f"{path}:{number}: values must be +1 or -1: {line!r}")
        files.append(fields[0])
        rows.append([1 if v == 1 else -1 for v in values])
    if len(files) != count:
        raise ValueError(f"{path}: line 1 announces {count} images, the file lists {len(files)}")
    if len(set(files)) != len(files):
        raise ValueError(f"{path}: a file name is listed more than once")
    values = torch.tensor(rows, dtype=torch.int8).view(len(files), len(names))
    return AttributeTable(names, files, values)
