"""`imageflows bench`, `ablate` and `presets`: speed, memory and bits/dim of configs."""

from __future__ import annotations

import argparse

from imageflows.ablate import VARIANTS, markdown_table, run_ablation
from imageflows.bench import (
    bench_mixture_inverse,
    describe_model,
    format_mixture_inverse,
    format_table,
    run_bench,
)
from imageflows.models import preset_config
from imageflows.runs import preset_rows

from .arguments import Command, Outcome, add_set, given

DEFAULT_BENCH_PRESET = "glow-cifar10"


def add_commands(command: Command) -> None:
    """Register this group's subcommands."""
    bench = command(
        "bench",
        _bench,
        "speed and memory of one config; peak RSS is per process, so one config per invocation",
    )
    bench.add_argument("--preset", help=f"preset config (default {DEFAULT_BENCH_PRESET})")
    add_set(bench)
    bench.add_argument("--image-shape", metavar="C,H,W", help="sets model.image_shape")
    bench.add_argument("--batch-size", type=int, default=16, help="images per training step")
    bench.add_argument(
        "--repeats", type=int, help="timed repeats (default 10, paper sizes: 3; solvers: 3)"
    )
    bench.add_argument(
        "--warmup", type=int, help="untimed repeats (default 3, paper sizes: 1; solvers: 1)"
    )
    bench.add_argument("--sample-n", type=int, default=16, help="images per sampling call")
    bench.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    bench.add_argument("--seed", type=int, default=0, help="seed of the model and the data")
    bench.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    bench.add_argument(
        "--mixture-inverse",
        action="store_true",
        help="instead of a model: the mixture-CDF inverse, our Newton solver against the "
        "public 100-step bisection, on a fixed random problem (no --preset/--set)",
    )
    bench.add_argument(
        "--elements", type=int, default=100_000, help="--mixture-inverse: elements (100000)"
    )
    bench.add_argument(
        "--components", type=int, default=32, help="--mixture-inverse: logistics (32)"
    )

    ablate = command(
        "ablate",
        _ablate,
        "train Flow++ and Glow variants at one budget into a table of test bits/dim",
    )
    ablate.add_argument("--data", default="digits", help="dataset name (default digits)")
    ablate.add_argument("--data-dir", help="folder holding the dataset files")
    ablate.add_argument(
        "--out", help="ablation directory, reused to resume (default runs/ablate-DATA)"
    )
    ablate.add_argument(
        "--variants",
        type=lambda text: text.split(","),
        metavar="NAME,...",
        help=f"variants in table order (default all: {', '.join(VARIANTS)})",
    )
    ablate.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="evaluate on the first N test images (default: the whole split)",
    )
    add_set(ablate)
    ablate.add_argument("--no-progress", action="store_true", help="no progress bars")

    command("presets", _presets, "list the named presets with parameter counts")


def _bench(args: argparse.Namespace) -> Outcome:
    if args.mixture_inverse:
        return _bench_mixture_inverse(args)
    preset = args.preset or DEFAULT_BENCH_PRESET
    overrides = [f"model.image_shape={args.image_shape}"] if args.image_shape else []
    overrides += args.set
    result = run_bench(
        preset_config(preset).with_overrides(overrides),
        batch_size=args.batch_size,
        repeats=10 if args.repeats is None else args.repeats,
        warmup=3 if args.warmup is None else args.warmup,
        sample_n=args.sample_n,
        threads=args.threads,
        seed=args.seed,
        device=args.device,
    )
    result = {"preset": preset, "overrides": overrides, **result}
    return result, format_table(result)


def _bench_mixture_inverse(args: argparse.Namespace) -> Outcome:
    model_options = given(args, "--preset", "--set", "--image-shape")
    if model_options:
        raise ValueError(
            f"--mixture-inverse measures no model; drop {', '.join(model_options)} "
            "(size the problem with --elements and --components)"
        )
    result = bench_mixture_inverse(
        elements=args.elements,
        components=args.components,
        repeats=3 if args.repeats is None else args.repeats,
        warmup=1 if args.warmup is None else args.warmup,
        threads=args.threads,
        seed=args.seed,
        device=args.device,
    )
    return result, format_mixture_inverse(result)


def _ablate(args: argparse.Namespace) -> Outcome:
    result = run_ablation(
        args.data,
        args.out,
        args.variants,
        data_dir=args.data_dir,
        overrides=args.set,
        progress=not args.no_progress,
        limit=args.limit,
    )
    return result, f"{markdown_table(result)}\nwrote {result['table']} and {result['json']}"


def _presets(args: argparse.Namespace) -> Outcome:
    rows = preset_rows()
    width = max(len(row["name"]) for row in rows)
    message = "\n".join(
        f"{row['name']:<{width}}  {row['parameters'] / 1e6:7.2f}M parameters  "
        f"{describe_model(row['model'])} on {row['data']['name']}"
        for row in rows
    )
    return {"presets": rows}, message
