"""`imageflows train`, `eval` and `sample`: make a run, measure it, draw from it."""

from __future__ import annotations

import argparse
from typing import Any

from imageflows.runs import evaluate_run, resume_run, start_run, write_samples

from .arguments import Command, Outcome, add_raw, add_set, floats, given

DEFAULT_PRESET = "glow-digits"


def add_commands(command: Command) -> None:
    """Register this group's subcommands."""
    train = command(
        "train",
        _train,
        "train a model (no arguments: a small Glow on digits into runs/glow-digits)",
    )
    train.add_argument("--preset", help=f"named preset config (default {DEFAULT_PRESET})")
    train.add_argument("--data", help="dataset name (default: the preset's)")
    train.add_argument("--data-dir", help="folder holding the dataset files")
    train.add_argument(
        "--out", help="new run directory (default runs/PRESET, or runs/PRESET-2, ... if taken)"
    )
    train.add_argument("--resume", metavar="RUN", help="continue the run in directory RUN")
    add_set(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = command("eval", _eval, "bits/dim of a trained run on a data split")
    evaluate.add_argument("run", metavar="RUN", help="run directory")
    evaluate.add_argument("--data", help="dataset name (default: the run's)")
    evaluate.add_argument("--data-dir", help="folder holding the dataset files")
    evaluate.add_argument("--split", default="test", help="data split (default test)")
    evaluate.add_argument(
        "--iw-samples",
        type=int,
        default=1,
        metavar="K",
        help="dequantization draws per image; K > 1 gives the tighter importance-weighted bound",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise")
    evaluate.add_argument("--batch-size", type=int, default=500, help="images per batch")
    evaluate.add_argument(
        "--limit", type=int, metavar="N", help="the first N images of the split only"
    )
    evaluate.add_argument(
        "--convert",
        action="store_true",
        help="bring another dataset's images to the model's shape (grey by ITU-R 601-2 luma, "
        "Pillow's bilinear resize)",
    )
    add_raw(evaluate)

    sample = command("sample", _sample, "draw samples from a trained run into a PNG")
    sample.add_argument("run", metavar="RUN", help="run directory")
    sample.add_argument(
        "--n", type=int, help="images (default 64; per row with --temperatures, default 8)"
    )
    temperature = sample.add_mutually_exclusive_group()
    temperature.add_argument(
        "--temperature", type=float, default=1.0, help="scale of the latent noise (default 1)"
    )
    temperature.add_argument(
        "--temperatures",
        type=floats,
        metavar="T1,T2,...",
        help="one row of --n samples per temperature, all rows from the same noise",
    )
    sample.add_argument("--out", default="samples.png", help="PNG to write (default samples.png)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    sample.add_argument("--nrow", type=int, help="images per row (single temperature only)")
    sample.add_argument(
        "--class",
        dest="label",
        type=int,
        metavar="C",
        help="class to sample (class-conditional runs; default: one row of --n per class)",
    )
    add_raw(sample)


def _train(args: argparse.Namespace) -> Outcome:
    progress = not args.no_progress
    if args.resume:
        fixed = given(args, "--preset", "--data", "--data-dir", "--out")
        if fixed:
            raise ValueError(
                f"--resume continues a run with its own config; drop {', '.join(fixed)} "
                "(change e.g. the step count with --set train.steps=N)"
            )
        summary = resume_run(args.resume, args.set, progress)
    else:
        data = [f"data.name={args.data}"] if args.data is not None else []
        data += [f"data.dir={args.data_dir}"] if args.data_dir is not None else []
        preset = args.preset or DEFAULT_PRESET
        summary = start_run(preset, data + args.set, args.out or None, progress)
    return summary, _train_message(summary)


def _train_message(summary: dict[str, Any]) -> str:
    run, steps, seconds = summary["run_dir"], summary["steps"], summary["wall_seconds"]
    lines = [f"{steps} steps in {seconds:.1f} s"]
    if summary["test_step"] == steps:
        lines = [f"test bits/dim {summary['test_bpd']:.4f} after {lines[0]}"]
    elif summary["test_step"] is not None:  # stopped by a signal, which skips the evaluation
        test = f"test bits/dim {summary['test_bpd']:.4f} at step {summary['test_step']}"
        lines = [f"{test} (the last evaluation); {lines[0]}"]
    if summary["stopped"] is not None:
        why = "a signal" if summary["stopped"] == "signal" else "train.minutes"
        lines.append(f"stopped early by {why}; continue: imageflows train --resume {run}")
    lines.append(f"samples: {summary['samples']}")
    lines.append(f"run: {run}  (next: imageflows eval {run}; imageflows sample {run})")
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> Outcome:
    result = evaluate_run(
        args.run,
        args.data,
        args.data_dir,
        args.split,
        iw_samples=args.iw_samples,
        seed=args.seed,
        batch_size=args.batch_size,
        ema=not args.raw,
        convert=args.convert,
        limit=args.limit,
    )
    weights = "raw" if args.raw else "EMA"
    bound = f", importance-weighted over {args.iw_samples} draws" if args.iw_samples > 1 else ""
    message = (
        f"{args.split} bits/dim {result['bpd']:.4f} on {result['n']} images of "
        f"{result['data']}, {weights} weights at step {result['step']}{bound}; per image: "
        f"median {result['bpd_median']:.4f}, 1st-99th percentile {result['bpd_p1']:.4f}-"
        f"{result['bpd_p99']:.4f}; round trips off by half a level or more: "
        f"{result['roundtrip_failures_float32']} images in float32 (max error "
        f"{result['recon_max_abs']:.2g} levels), {result['roundtrip_failures']} in float64"
    )
    if result["processes"] > 1:
        message += f"\nshared among {result['processes']} processes (rank 0 on {result['device']})"
    if "accuracy" in result:
        message += (
            f"\nclass-conditional: bits/dim of log p(x|y); Bayes-classifier accuracy "
            f"{100 * result['accuracy']:.2f}%, marginal bits/dim {result['bpd_marginal']:.4f}"
        )
    return result, message


def _sample(args: argparse.Namespace) -> Outcome:
    if args.temperatures is not None and args.nrow is not None:
        raise ValueError("--nrow applies to --temperature only; --temperatures puts --n per row")
    result = write_samples(
        args.run,
        args.out,
        args.n,
        args.temperatures,
        args.temperature,
        seed=args.seed,
        nrow=args.nrow,
        ema=not args.raw,
        label=args.label,
    )
    classes = result["classes"] or [None]
    count = len(result["temperatures"]) * len(classes) * result["n"]
    return result, f"wrote {count} samples to {result['out']}"
