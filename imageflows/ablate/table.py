"""The ablation's table: `ablation.md` and `ablation.json`, rewritten after every variant."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from imageflows._io import atomic_write_text
from imageflows.config import Config
from imageflows.data import ImageDataset

from .variants import VARIANTS

TABLE_FILE = "ablation.md"
JSON_FILE = "ablation.json"
EVAL_SEED = 0  # dequantization noise of the test evaluation: the same draw for every variant


def markdown_table(result: dict[str, Any]) -> str:
    """The markdown of `ablation.md` for a `run_ablation` result."""
    budget = result["budget"]
    lines = [
        f"# Ablation on {result['data']}",
        "",
        f"Same budget for every variant: {_steps(budget)} of {budget['batch_size']} "
        f"images, Adam at {budget['lr']:g} after {budget['warmup_steps']} warm-up steps"
        f"{_per_family(result['differences'])}. Test bits/dim: EMA weights on "
        f"{_test_images(result['n_test'], result['n_split'])}, one draw of dequantization "
        f"noise (seed {EVAL_SEED}). Train seconds include the periodic evaluations.",
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


def _steps(budget: dict[str, Any]) -> str:
    if not budget.get("minutes"):
        return f"{budget['steps']} steps"
    return f"{budget['minutes']:g} minutes of training (at most {budget['steps']} steps)"


def _test_images(n_test: int, n_split: int) -> str:
    if n_test == n_split:
        return f"the whole test split ({n_test:,} images)"
    return f"the first {n_test:,} of the {n_split:,} test images"


def write_tables(
    out_dir: Path,
    test: ImageDataset,
    configs: dict[str, Config],
    rows: list[dict[str, Any]],
    pending: list[str],
    n_split: int,
) -> dict[str, Any]:
    """Write both tables of the finished `rows` (and the `pending` variants) into `out_dir`;
    returns the content of `ablation.json`. `test` holds the evaluated images, the first of
    the split's `n_split`."""
    first = next(iter(configs.values())).train
    result = {
        "data": test.description,
        "split": "test",
        "n_test": len(test.images),
        "n_split": n_split,
        "budget": {
            key: getattr(first, key)
            for key in ("steps", "minutes", "batch_size", "lr", "warmup_steps")
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
