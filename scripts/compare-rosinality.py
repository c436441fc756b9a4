#!/usr/bin/env python
"""Glow side by side with rosinality/glow-pytorch, in alternating processes on this machine.

    python scripts/compare-rosinality.py PATH/TO/glow-pytorch [--hidden 128] [--precision bf16]
        [--compile] [--pairs 3 | --interleaved ROUNDS]

This machine's speed drifts by ±25% from minute to minute, so ratios against figures measured
on another day mislead; here each pair of processes (ours: `imageflows bench`; theirs: their
`model.py`, imported from the checkout you give, trained as their `train.py` does) runs back to
back, and the ratio of each pair is reported. Both: Glow L=3 K=8 affine LU, batch 16 of 3x32x32,
2 threads, median of 10 steps after 3 warm-up, peak RSS after training, median of 10 samplings
of 16 images. Their `Flow` never passes `filter_size` to `AffineCoupling`, so the hidden width
is set through that argument's default. Prints a table and writes JSON with `--json-out`.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BATCH, SIZE, DEPTH, LEVELS, STEPS, WARMUP = 16, 32, 8, 3, 10, 3


def reference_model(checkout: str, hidden: int) -> tuple[Callable, Callable]:
    """Their training step (as their `train.py`) and their sampling of BATCH images."""
    import torch

    sys.path.insert(0, checkout)
    import model as ros  # their model.py

    ros.AffineCoupling.__init__.__defaults__ = (hidden, True)
    torch.manual_seed(0)
    n_bins, n_pixel = 256.0, 3 * SIZE * SIZE
    glow = ros.Glow(3, DEPTH, LEVELS, affine=True, conv_lu=True)
    optimizer = torch.optim.Adam(glow.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (BATCH, 3, SIZE, SIZE)).float() / n_bins - 0.5

    def step() -> None:
        log_p, logdet, _ = glow(x + torch.rand_like(x) / n_bins)
        loss = -math.log(n_bins) * n_pixel + logdet + log_p
        loss = (-loss / (math.log(2) * n_pixel)).mean()
        glow.zero_grad()
        loss.backward()
        optimizer.step()

    def sample() -> None:
        shapes, channels, size = [], 3, SIZE
        for _ in range(LEVELS - 1):
            size, channels = size // 2, channels * 2
            shapes.append((channels, size, size))
        shapes.append((channels * 4, size // 2, size // 2))
        with torch.no_grad():
            glow.reverse([torch.randn(BATCH, *shape) for shape in shapes])

    return step, sample


def our_model(hidden: int, precision: str, compile: bool = False) -> tuple[Callable, Callable]:
    """Our training step and sampling, set up as `imageflows bench` sets them up."""

    from imageflows.bench import train_step, training_setup
    from imageflows.models import preset_config

    cfg = preset_config("glow-cifar10").with_overrides(
        [f"model.depth={DEPTH}", f"model.hidden_channels={hidden}"]
    )
    model, optimizer, x = training_setup(cfg, BATCH)
    return train_step(model, optimizer, x, precision, compile), lambda: model.sample(BATCH)


def reference_worker(checkout: str, hidden: int) -> dict:
    """Their training step and sampling, timed like `imageflows bench`; one JSON line out."""
    import torch

    torch.set_num_threads(2)
    step, sample = reference_model(checkout, hidden)
    train = _timed(step)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "train_images_per_s": BATCH / statistics.median(train),
        "peak_rss_mib": rss,
        "sample_seconds": statistics.median(_timed(sample)),
    }


def interleaved(
    checkout: str, hidden: int, precision: str, rounds: int, compile: bool = False
) -> dict:
    """Both models in this process, one training step (then one sampling) of each in turn.

    Drift that lasts longer than a round slows both alike, so the median of the rounds' ratios
    is steadier than that of whole processes; peak RSS needs a process each (the default mode).
    Both run under our malloc settings (`keep_freed_memory`), theirs included.
    """
    import torch

    from imageflows.allocator import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(2)
    models = {
        "ours": our_model(hidden, precision, compile),
        "rosinality": reference_model(checkout, hidden),
    }
    result = {}
    for index, key in enumerate(("train_seconds", "sample_seconds")):
        times: dict[str, list[float]] = {name: [] for name in models}
        for i in range(WARMUP + rounds):
            for name, functions in models.items():
                start = time.perf_counter()
                functions[index]()
                if i >= WARMUP:
                    times[name].append(time.perf_counter() - start)
        result[key] = times
    return result


def _timed(fn) -> list[float]:
    times = []
    for i in range(WARMUP + STEPS):
        start = time.perf_counter()
        fn()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return times


def _json_of(command: list[str]) -> dict:
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", help="a clone of github.com/rosinality/glow-pytorch")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="ours; theirs is always float32, as in the issue's targets",
    )
    parser.add_argument(
        "--compile", action="store_true", help="ours with train.compile=true (torch.compile)"
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--interleaved",
        type=int,
        metavar="ROUNDS",
        help="instead of process pairs: both models in one process, ROUNDS alternating steps "
        "(and samplings); speed only",
    )
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_worker:
        print(json.dumps(reference_worker(args.checkout, args.hidden)))
        return
    if not (Path(args.checkout) / "model.py").is_file():
        sys.exit(f"no model.py in {args.checkout}: pass a clone of rosinality/glow-pytorch")
    if args.interleaved:
        report_interleaved(args)
        return
    ours_cmd = [
        "imageflows",
        "bench",
        "--preset",
        "glow-cifar10",
        "--batch-size",
        str(BATCH),
        "--set",
        f"model.depth={DEPTH}",
        "--set",
        f"model.hidden_channels={args.hidden}",
        "--set",
        f"train.precision={args.precision}",
        "--set",
        f"train.compile={str(args.compile).lower()}",
        "--sample-n",
        str(BATCH),
        "--repeats",
        str(STEPS),
        "--warmup",
        str(WARMUP),
        "--threads",
        "2",
        "--json",
    ]
    theirs_cmd = [
        sys.executable,
        __file__,
        args.checkout,
        "--hidden",
        str(args.hidden),
        "--reference-worker",
    ]
    pairs = [
        {"ours": _json_of(ours_cmd), "rosinality": _json_of(theirs_cmd)} for _ in range(args.pairs)
    ]
    keys = {
        "train_images_per_s": "train images/s",
        "peak_rss_mib": "peak RSS MiB",
        "sample_seconds": "sample 16 s",
    }
    print(
        f"Glow L={LEVELS} K={DEPTH} hidden {args.hidden}, ours {_ours(args)} vs rosinality "
        f"fp32, {args.pairs} alternating pairs"
    )
    print(f"{'':16s} {'ours':>24s} {'rosinality':>24s} {'ratio ours/theirs':>28s}")
    summary = {}
    for key, label in keys.items():
        ours = [p["ours"][key] for p in pairs]
        theirs = [p["rosinality"][key] for p in pairs]
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        summary[key] = {"ours": ours, "rosinality": theirs, "ratios": ratios}
        print(f"{label:16s} {_span(ours):>24s} {_span(theirs):>24s} {_span(ratios):>28s}")
    _write_json(args, pairs=pairs, summary=summary)


def report_interleaved(args: argparse.Namespace) -> None:
    times = interleaved(args.checkout, args.hidden, args.precision, args.interleaved, args.compile)
    print(
        f"Glow L={LEVELS} K={DEPTH} hidden {args.hidden}, ours {_ours(args)} vs rosinality "
        f"fp32, {args.interleaved} interleaved rounds in one process (medians; ratio: median "
        "and range of the rounds' ratios)"
    )
    print(f"{'':16s} {'ours':>10s} {'rosinality':>11s} {'ratio ours/theirs':>30s}")
    summary = {}
    for key, label, per_image in (
        ("train_seconds", "train images/s", True),
        ("sample_seconds", "sample 16 s", False),
    ):
        ours, theirs = times[key]["ours"], times[key]["rosinality"]
        # images/s ratios are their time over ours; sampling ratios our time over theirs
        ratios = [b / a if per_image else a / b for a, b in zip(ours, theirs, strict=True)]
        shown = [statistics.median(t) for t in (ours, theirs)]
        if per_image:
            shown = [BATCH / t for t in shown]
        summary[key] = {**times[key], "ratios": ratios, "median_ratio": statistics.median(ratios)}
        print(
            f"{label:16s} {_span(shown[:1]):>10s} {_span(shown[1:]):>11s} "
            f"{statistics.median(ratios):>12.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        )
    _write_json(args, interleaved_rounds=args.interleaved, summary=summary)


def _write_json(args: argparse.Namespace, **results: object) -> None:
    """The run's settings and `results` to `--json-out`, if given."""
    if args.json_out:
        settings = {"hidden": args.hidden, "precision": args.precision, "compile": args.compile}
        args.json_out.write_text(json.dumps({**settings, **results}, indent=2) + "\n")


def _ours(args: argparse.Namespace) -> str:
    return args.precision + (" compiled" if args.compile else "")


def _span(values: list[float]) -> str:
    digits = 3 if max(values) < 10 else 1
    return " ".join(f"{v:.{digits}f}" for v in values)


if __name__ == "__main__":
    main()
