"""`imageflows score` and `ood`: per-image bits/dim, and out-of-distribution detection."""

from __future__ import annotations

import argparse

from imageflows.ood import SYNTHETIC, run_ood, score_run

from .arguments import Command, Outcome

CONVERT_HELP = (
    "bring images of another shape to the model's (grey by ITU-R 601-2 luma, Pillow's bilinear "
    "resize)"
)


def add_commands(command: Command) -> None:
    """Register this group's subcommands."""
    score = command("score", _score, "per-image bits/dim of a run on a data split, as CSV")
    score.add_argument("run", metavar="RUN", help="run directory")
    score.add_argument(
        "--data", help=f"dataset name (default: the run's), or one of {', '.join(SYNTHETIC)}"
    )
    score.add_argument("--data-dir", help="folder holding the dataset files")
    score.add_argument("--split", default="test", help="data split (default test)")
    score.add_argument("--convert", action="store_true", help=CONVERT_HELP)
    score.add_argument("--limit", type=int, metavar="N", help="score the first N images only")
    score.add_argument("--out", required=True, help="CSV file to write")
    _add_common(score)

    ood = command(
        "ood", _ood, "tell a run's test images from another dataset's by four likelihood scores"
    )
    ood.add_argument("run", metavar="RUN", help="run directory")
    ood.add_argument("--data", help="in-distribution dataset (default: the run's)")
    ood.add_argument("--data-dir", help="folder holding the in-distribution dataset files")
    ood.add_argument(
        "--ood-data",
        required=True,
        metavar="NAME",
        help=f"OOD dataset: a dataset name, or one of {', '.join(SYNTHETIC)}",
    )
    ood.add_argument("--ood-data-dir", help="folder holding the OOD dataset files")
    ood.add_argument(
        "--ood-n", type=int, metavar="N", help="OOD images (synthetic default: as many as --data)"
    )
    ood.add_argument(
        "--background", metavar="RUN2", help="background run for the likelihood ratio"
    )
    ood.add_argument(
        "--typicality-batch", type=int, default=2, metavar="M", help="images per typicality batch"
    )
    ood.add_argument(
        "--train-n",
        type=int,
        metavar="N",
        help="training images for the typicality mean (default: as many as the test images)",
    )
    ood.add_argument("--split", default="test", help="data split of both sets (default test)")
    ood.add_argument("--convert", action="store_true", help=CONVERT_HELP)
    ood.add_argument("--limit", type=int, metavar="N", help="the first N images of each set")
    ood.add_argument("--out", required=True, help="new (or empty) folder for the results")
    _add_common(ood)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--batch-size", type=int, default=500, help="images per batch")


def _score(args: argparse.Namespace) -> Outcome:
    result = score_run(
        args.run,
        args.out,
        args.data,
        args.data_dir,
        args.split,
        args.convert,
        args.limit,
        args.seed,
        args.batch_size,
    )
    return result, (
        f"wrote bits/dim of {result['n']} images of {result['data']} to {result['out']} "
        f"(mean {result['bpd']:.4f})"
    )


def _ood(args: argparse.Namespace) -> Outcome:
    result = run_ood(
        args.run,
        args.ood_data,
        args.out,
        data=args.data,
        data_dir=args.data_dir,
        ood_data_dir=args.ood_data_dir,
        background=args.background,
        typicality_batch=args.typicality_batch,
        limit=args.limit,
        ood_n=args.ood_n,
        train_n=args.train_n,
        convert=args.convert,
        split=args.split,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    lines = [
        f"{result['in_distribution']['description']} ({result['in_distribution']['n']}) "
        f"against {result['ood']['description']} ({result['ood']['n']}):"
    ]
    lines += [
        f"  {name:<17} AUROC {rate['auroc']:.4f}  AUPR {rate['aupr']:.4f}"
        for name, rate in result["scores"].items()
    ]
    lines.append(f"results: {result['out']}/index.html")
    return result, "\n".join(lines)
