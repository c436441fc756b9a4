"""The ablation's variants: Flow++'s components (Flow++ Table 2) and Glow's permutation ×
coupling comparison (Glow Figure 3), each a set of overrides on one base config."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from imageflows.config import MODEL_TYPES, Config, ConfigError, DataConfig, takes
from imageflows.models import preset_config


class Variant(NamedTuple):
    """One row of the ablation: `overrides` (`--set` strings) on the base config of `family`."""

    family: str  # "flowpp" | "glow": which base config (see `base_config`)
    description: str  # what it changes, for the table
    overrides: tuple[str, ...]


_PERMUTATIONS = {  # Glow Figure 3's three permutations
    "reverse": ("reverse", "channel reversal"),
    "shuffle": ("shuffle", "fixed random shuffle"),
    "1x1": ("conv1x1_lu", "invertible 1x1 convolution (LU)"),
}

VARIANTS: dict[str, Variant] = {
    "flowpp": Variant(
        "flowpp", "base: mixture coupling, variational dequantization, attention", ()
    ),
    "flowpp-uniform": Variant(
        "flowpp", "uniform dequantization", ("model.dequantization=uniform",)
    ),
    "flowpp-affine": Variant(
        "flowpp", "affine coupling instead of mixture", ("model.coupling=affine",)
    ),
    "flowpp-noattn": Variant(
        "flowpp", "no attention (a pointwise layer instead)", ("model.attention=false",)
    ),
    **{
        f"glow-{name}-{coupling}": Variant(
            "glow",
            f"{text}, {coupling} coupling",
            (f"model.permutation={permutation}", f"model.coupling={coupling}"),
        )
        for coupling in ("additive", "affine")
        for name, (permutation, text) in _PERMUTATIONS.items()
    },
}

# The keys the variants differ in: a user override of one would blur the comparison.
ABLATED_KEYS = frozenset(
    ["model.type"] + [o.partition("=")[0] for v in VARIANTS.values() for o in v.overrides]
)
# Image shape of each dataset whose models start from the MNIST presets (the sizes of a CPU
# budget); other datasets keep 1x28x28 unless `--set model.image_shape=C,H,W`.
_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def base_config(family: str, data: str) -> Config:
    """The config a `family`'s variants start from on dataset `data`.

    Digits: `glow-digits`, and for Flow++ a tiny model of the same budget (16 channels, 1 block,
    4 logistics; the train section of `glow-digits` with Flow++'s gradient clipping). Any other
    dataset: `glow-mnist` / `flowpp-mnist`, at that dataset's image shape. The Flow++ base has
    attention, as Flow++ Table 2's has (the `flowpp-mnist` preset leaves it out).
    """
    if family not in ("glow", "flowpp"):
        raise ValueError(f"unknown variant family {family!r}; choose 'glow' or 'flowpp'")
    if data == "digits":
        glow = preset_config("glow-digits")
        if family == "glow":
            return glow
        flowpp = _mnist_preset("flowpp")
        model = dataclasses.replace(
            flowpp.model,
            image_shape=glow.model.image_shape,
            num_levels=glow.model.num_levels,
            hidden_channels=16,
            blocks=1,
            components=4,
        )
        train_cfg = dataclasses.replace(glow.train, grad_clip=flowpp.train.grad_clip)
        return Config(model=model, data=glow.data, train=train_cfg)
    cfg = _mnist_preset(family)
    model = dataclasses.replace(cfg.model, image_shape=_SHAPES.get(data, cfg.model.image_shape))
    return dataclasses.replace(cfg, model=model, data=DataConfig(name=data))


def _mnist_preset(family: str) -> Config:
    """`glow-mnist` / `flowpp-mnist`, the Flow++ with attention (Table 2's base)."""
    cfg = preset_config(f"{family}-mnist")
    if family == "flowpp":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention=True))
    return cfg


def variant_config(
    name: str,
    data: str,
    data_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """The full config of variant `name` on `data`: base, then `overrides`, then the variant's.

    A `model.*` override applies to the variants whose model type has that key (`model.depth`
    to the Glows, `model.blocks` to the Flow++s); one that no model type has is an error.

    Raises:
        ValueError: unknown variant, an override of a key the variants differ in, or of
            `data.*` (the data is `data`, `data_dir`).
    """
    variant = _variant(name)
    keys = {o.partition("=")[0].strip() for o in overrides}
    clash = sorted(keys & ABLATED_KEYS)
    if clash:
        raise ConfigError(
            f"--set {', '.join(clash)}: the ablation's variants set these keys themselves; "
            "pick variants with --variants instead"
        )
    data_keys = sorted(key for key in keys if key.startswith("data."))
    if data_keys:
        raise ConfigError(
            f"--set {', '.join(data_keys)}: give the data with --data and --data-dir"
        )
    cfg = base_config(variant.family, data)
    cfg = dataclasses.replace(
        cfg, data=DataConfig(name=data, dir=None if data_dir is None else str(data_dir))
    )
    own = [o for o in overrides if _applies(o.partition("=")[0].strip(), cfg.model.type)]
    return cfg.with_overrides([*own, *variant.overrides])


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown ablation variant {name!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]


def _applies(key: str, model_type: str) -> bool:
    """Whether override key `key` goes to a model of `model_type`: any key but another model
    type's own (a key no type has is kept, for the config's error listing the valid ones)."""
    section, _, name = key.partition(".")
    if section != "model":
        return True
    return takes(name, model_type) or not any(takes(name, other) for other in MODEL_TYPES)


def variant_names(variants: Sequence[str] | None) -> list[str]:
    if variants is None:
        return list(VARIANTS)
    names = list(dict.fromkeys(v.strip() for v in variants if v.strip()))  # ordered, unique
    if not names:
        raise ValueError(f"no ablation variants given; choose from {', '.join(VARIANTS)}")
    for name in names:
        _variant(name)
    return names
