"""Ablations at one training budget: Flow++'s components (Flow++ Table 2) and Glow's
permutation × coupling comparison (Glow Figure 3).

`run_ablation` trains each chosen variant into `out_dir/<variant>/` with the same `train.*`
settings, evaluates its EMA weights on the test split (or its first `limit` images) and
rewrites `out_dir/ablation.md` and `out_dir/ablation.json` after every variant, so an
interrupted ablation (Ctrl-C ends it after the step under way, checkpointed) leaves a partial
table. Rerunning it skips finished variants (a checkpoint at `train.steps`, or past the training
time `train.minutes`, which makes the budget one of wall-clock time), reading their numbers
back, and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imageflows._io import atomic_write_text
from imageflows.config import Config
from imageflows.data import ImageDataset, load_dataset, prepare
from imageflows.metrics import evaluate
from imageflows.runs import parameter_count
from imageflows.train import load, train
from imageflows.train.checkpoint import CONFIG_FILE, latest_valid_checkpoint, load_state
from imageflows.train.stop import out_of_time

from .table import EVAL_SEED, JSON_FILE, TABLE_FILE, markdown_table, write_tables
from .variants import ABLATED_KEYS, VARIANTS, Variant, base_config, variant_config, variant_names

__all__ = [
    "ABLATED_KEYS",
    "EVAL_SEED",
    "JSON_FILE",
    "TABLE_FILE",
    "VARIANTS",
    "Variant",
    "base_config",
    "markdown_table",
    "run_ablation",
    "variant_config",
]

RESULT_FILE = "ablation_result.json"  # one variant's row, in its run directory


def run_ablation(
    data: str,
    out_dir: str | Path | None = None,
    variants: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    limit: int | None = None,
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
        limit: evaluate on the first `limit` test images only (default: the whole split), for
            models whose evaluation would cost more than their training budget.

    Returns:
        The content of `ablation.json`: `data`, `n_test`, `budget`, `rows` (one per finished
        variant: `variant`, `description`, `test_bpd`, `parameters`, `train_seconds`,
        `steps`, `recon_max_abs`, `run_dir`), `pending`, and the paths `table` and `json`.
    """
    names = variant_names(variants)
    configs = {name: variant_config(name, data, data_dir, overrides) for name in names}
    parameters = {name: parameter_count(cfg.model) for name, cfg in configs.items()}
    test = load_dataset(data, "test", data_dir)
    n_split = len(test)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of test images, got {limit}")
    test = test.first(limit)
    out_dir = Path(out_dir or f"runs/ablate-{data}")
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for index, name in enumerate(names, 1):
        if progress:
            print(f"ablation [{index}/{len(names)}] {name}", file=sys.stderr)
        row = _run_variant(name, configs[name], out_dir / name, test, progress)
        rows.append({**row, "parameters": parameters[name]})
        result = write_tables(out_dir, test, configs, rows, names[index:], n_split)
    return result


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
    if not _finished(latest, cfg):
        if train(cfg, run_dir, resume=started, progress=progress)["stopped"] == "signal":
            raise KeyboardInterrupt  # the table so far stays; a rerun resumes this variant
        latest = latest_valid_checkpoint(run_dir)
    assert latest is not None and _finished(latest, cfg), latest
    step, checkpoint = latest

    cache = run_dir / RESULT_FILE
    if cache.is_file():
        row = json.loads(cache.read_text())
        if (row.get("steps"), row.get("data"), row.get("n_test")) == (
            step,
            test.description,
            len(test),
        ):
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
        "n_test": len(test),
        "run_dir": str(run_dir),
    }
    atomic_write_text(cache, json.dumps(row, indent=2) + "\n")
    return row


def _finished(latest: tuple[int, Path] | None, cfg: Config) -> bool:
    """Whether the newest checkpoint ends the variant's budget: `train.steps`, or the
    training time of `train.minutes`."""
    if latest is None:
        return False
    step, checkpoint = latest
    minutes = cfg.train.minutes
    return step == cfg.train.steps or out_of_time(minutes, load_state(checkpoint)["elapsed"])


def _check_same_run(run_dir: Path, cfg: Config) -> None:
    """A variant's directory may only be resumed with its own config; `train.steps` and
    `train.minutes` may grow and `data.dir` move."""
    existing = Config.load(run_dir / CONFIG_FILE).to_dict()
    wanted = cfg.to_dict()
    differ = [
        f"{section}.{key}: {existing[section][key]!r} there, {value!r} now"
        for section, values in wanted.items()
        for key, value in values.items()
        if f"{section}.{key}" not in ("train.steps", "train.minutes", "data.dir")
        and _jsonable(existing[section][key]) != _jsonable(value)
    ]
    if differ:
        raise ValueError(
            f"{run_dir} holds a run of another config ({'; '.join(differ)}); "
            "use another --out or the same --set options"
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples and lists compare equal
