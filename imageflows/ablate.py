"""Ablations at one training budget: Flow++'s components (Flow++ Table 2) and Glow's
permutation × coupling comparison (Glow Figure 3).

`run_ablation` trains each chosen variant into `out_dir/<variant>/` with the same `train.*`
settings, evaluates its EMA weights on the whole test split and rewrites `out_dir/ablation.md`
and `out_dir/ablation.json` after every variant, so an interrupted ablation leaves a partial
table. Rerunning it skips finished variants (a checkpoint at `train.steps`), reading their
numbers back, and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from imageflows._io import atomic_write_text
from imageflows.config import MODEL_TYPES, Config, ConfigError, DataConfig, takes
from imageflows.data import ImageDataset, load_dataset, prepare
from imageflows.metrics import evaluate
from imageflows.models import preset_config
from imageflows.runs import parameter_count
from imageflows.train import load, train
from imageflows.train.checkpoint import CONFIG_FILE, latest_valid_checkpoint, load_state

TABLE_FILE = "ablation.md"
JSON_FILE = "ablation.json"
RESULT_FILE = "ablation_result.json"  # one variant's row, in its run directory
EVAL_SEED = 0  # dequantization noise of the test evaluation: the same draw for every variant


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
    dataset: `glow-mnist` / `flowpp-mnist`, at that dataset's image shape.
    """
    if family not in ("glow", "flowpp"):
        raise ValueError(f"unknown variant family {family!r}; choose 'glow' or 'flowpp'")
    if data == "digits":
        glow = preset_config("glow-digits")
        if family == "glow":
            return glow
        flowpp = preset_config("flowpp-mnist")
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
    cfg = preset_config(f"{family}-mnist")
    model = dataclasses.replace(cfg.model, image_shape=_SHAPES.get(data, cfg.model.image_shape))
    return dataclasses.replace(cfg, model=model, data=DataConfig(name=data))


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


def run_ablation(
    data: str,
    out_dir: str | Path | None = None,
    variants: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate each of `variants` (default: all of `VARIANTS`) at one budget.

    Every config is built and checked (including a shape-only build of its model) before any
    training starts. Each variant trains into `out_dir/<variant>/`; `ablation.md` and
    `ablation.json` in `out_dir` are rewritten after each one.

    Args:
        data: dataset name (`digits`, `mnist`, `cifar10`, `folder`).
        out_dir: the ablation's directory (created if missing; reused to resume); default
            `runs/ablate-DATA`.
        variants: names from `VARIANTS`, in table order.
        data_dir: folder holding the dataset files.
        overrides: `--set` strings applied to every variant, e.g. `["train.steps=500"]`.
        progress: progress bars and one line per variant on stderr.

    Returns:
        The content of `ablation.json`: `data`, `n_test`, `budget`, `rows` (one per finished
        variant: `variant`, `description`, `test_bpd`, `parameters`, `train_seconds`,
        `steps`, `recon_max_abs`, `run_dir`), `pending`, and the paths `table` and `json`.
    """
    names = _variant_names(variants)
    configs = {name: variant_config(name, data, data_dir, overrides) for name in names}
    parameters = {name: parameter_count(cfg.model) for name, cfg in configs.items()}
    test = load_dataset(data, "test", data_dir)
    out_dir = Path(out_dir or f"runs/ablate-{data}")
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for index, name in enumerate(names, 1):
        if progress:
            print(f"ablation [{index}/{len(names)}] {name}", file=sys.stderr)
        row = _run_variant(name, configs[name], out_dir / name, test, progress)
        rows.append({**row, "parameters": parameters[name]})
        result = _write_tables(out_dir, test, configs, rows, names[index:])
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The markdown of `ablation.md` for a `run_ablation` result."""
    budget = result["budget"]
    lines = [
        f"# Ablation on {result['data']}",
        "",
        f"Same budget for every variant: {budget['steps']} steps of {budget['batch_size']} "
        f"images, Adam at {budget['lr']:g} after {budget['warmup_steps']} warm-up steps"
        f"{_per_family(result['differences'])}. Test bits/dim: EMA weights on the whole test "
        f"split ({result['n_test']:,} images), one draw of dequantization noise (seed "
        f"{EVAL_SEED}). Train seconds include the periodic evaluations.",
        "",
        "| variant | what it changes | test bits/dim | parameters | train seconds | steps |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['variant']} | {r['description']} | {r['test_bpd']:.4f} | {r['parameters']:,} | "
        f"{r['train_seconds']:.1f} | {r['steps']} |"
        for r in result["rows"]
    ]
    if result["pending"]:
        lines += ["", f"Not trained yet: {', '.join(result['pending'])}."]
    return "\n".join(lines) + "\n"


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


def _variant_names(variants: Sequence[str] | None) -> list[str]:
    if variants is None:
        return list(VARIANTS)
    names = list(dict.fromkeys(v.strip() for v in variants if v.strip()))  # ordered, unique
    if not names:
        raise ValueError(f"no ablation variants given; choose from {', '.join(VARIANTS)}")
    for name in names:
        _variant(name)
    return names


def _run_variant(
    name: str, cfg: Config, run_dir: Path, test: ImageDataset, progress: bool
) -> dict[str, Any]:
    """Train (or resume, or skip) one variant and return its row without `parameters`."""
    started = (run_dir / CONFIG_FILE).is_file()
    if started:
        _check_same_run(run_dir, cfg)
    latest = latest_valid_checkpoint(run_dir) if started else None
    if latest is not None and latest[0] > cfg.train.steps:
        raise ValueError(
            f"{run_dir}: already trained for {latest[0]} steps, more than train.steps="
            f"{cfg.train.steps}; use another --out to compare at a smaller budget"
        )
    if latest is None or latest[0] < cfg.train.steps:
        train(cfg, run_dir, resume=started, progress=progress)
        latest = latest_valid_checkpoint(run_dir)
    assert latest is not None and latest[0] == cfg.train.steps, latest
    step, checkpoint = latest

    cache = run_dir / RESULT_FILE
    if cache.is_file():
        row = json.loads(cache.read_text())
        if row.get("steps") == step and row.get("data") == test.description:
            return row
    model = load(run_dir)
    images = prepare(test, model.num_levels).images
    scores = evaluate(model, images, cfg.train.eval_batch_size, seed=EVAL_SEED)
    row = {
        "variant": name,
        "description": VARIANTS[name].description,
        "test_bpd": scores["bpd"],
        "recon_max_abs": scores["recon_max_abs"],
        "train_seconds": float(load_state(checkpoint)["elapsed"]),
        "steps": step,
        "data": test.description,
        "run_dir": str(run_dir),
    }
    atomic_write_text(cache, json.dumps(row, indent=2) + "\n")
    return row


def _check_same_run(run_dir: Path, cfg: Config) -> None:
    """A variant's directory may only be resumed with its own config; `train.steps` may grow
    and `data.dir` move."""
    existing = Config.load(run_dir / CONFIG_FILE).to_dict()
    wanted = cfg.to_dict()
    differ = [
        f"{section}.{key}: {existing[section][key]!r} there, {value!r} now"
        for section, values in wanted.items()
        for key, value in values.items()
        if f"{section}.{key}" not in ("train.steps", "data.dir")
        and _jsonable(existing[section][key]) != _jsonable(value)
    ]
    if differ:
        raise ValueError(
            f"{run_dir} holds a run of another config ({'; '.join(differ)}); "
            "use another --out or the same --set options"
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples and lists compare equal


def _write_tables(
    out_dir: Path,
    test: ImageDataset,
    configs: dict[str, Config],
    rows: list[dict[str, Any]],
    pending: list[str],
) -> dict[str, Any]:
    first = next(iter(configs.values())).train
    result = {
        "data": test.description,
        "split": "test",
        "n_test": len(test.images),
        "budget": {
            key: getattr(first, key) for key in ("steps", "batch_size", "lr", "warmup_steps")
        },
        "differences": _train_differences(configs),
        "rows": rows,
        "pending": pending,
        "table": str(out_dir / TABLE_FILE),
        "json": str(out_dir / JSON_FILE),
    }
    atomic_write_text(out_dir / TABLE_FILE, markdown_table(result))
    atomic_write_text(out_dir / JSON_FILE, json.dumps(result, indent=2) + "\n")
    return result


def _train_differences(configs: dict[str, Config]) -> dict[str, dict[str, Any]]:
    """`train.*` keys whose values differ between the families: key → {family: value}."""
    by_family: dict[str, dict[str, Any]] = {}
    for name, cfg in configs.items():
        by_family.setdefault(VARIANTS[name].family, dataclasses.asdict(cfg.train))
    keys = next(iter(by_family.values()))
    return {
        f"train.{key}": {family: values[key] for family, values in by_family.items()}
        for key in keys
        if len({json.dumps(values[key]) for values in by_family.values()}) > 1
    }


def _per_family(differences: dict[str, dict[str, Any]]) -> str:
    if not differences:
        return ""
    parts = [
        f"{key} " + " / ".join(f"{value} ({family})" for family, value in values.items())
        for key, values in differences.items()
    ]
    return "; each family keeps its preset's " + ", ".join(parts)
