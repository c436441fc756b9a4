"""The `imageflows` command line: each subcommand parses its arguments, then calls the library.

Human output and progress go to stderr; `--json` prints exactly one JSON object on stdout. Bad
input ends with one line `imageflows: error: ...` on stderr and exit status 2 (set
IMAGEFLOWS_TRACEBACK=1 to see the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from imageflows.ablate import VARIANTS, markdown_table, run_ablation
from imageflows.allocator import keep_freed_memory
from imageflows.bench import (
    bench_mixture_inverse,
    describe_model,
    format_mixture_inverse,
    format_table,
    run_bench,
)
from imageflows.config import Config
from imageflows.data import load_dataset, prepare
from imageflows.explore import (
    write_decoded,
    write_interpolation,
    write_latents,
    write_manipulation,
)
from imageflows.images import save_grid
from imageflows.latent import temperature_rows
from imageflows.metrics import evaluate
from imageflows.models import PRESETS, build_model, preset_config
from imageflows.report import write_report
from imageflows.train import load, train
from imageflows.train.checkpoint import run_step

DEFAULT_PRESET = "glow-digits"
DEFAULT_BENCH_PRESET = "glow-cifar10"

Outcome = tuple[dict[str, Any], str]  # (JSON result, human-readable message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default `sys.argv[1:]`); returns the exit status."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        result, message = args.handler(args)
    except (ValueError, TypeError, OSError, RuntimeError, ArithmeticError) as err:
        if os.environ.get("IMAGEFLOWS_TRACEBACK"):
            raise
        print(f"imageflows: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imageflows: interrupted", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 alone reports
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(message, file=sys.stderr)
    return 0


def _one_line(err: Exception) -> str:
    lines = str(err).strip().splitlines() or [type(err).__name__]
    if len(lines) == 1:
        return lines[0]
    return f"{lines[0]} [{len(lines) - 1} more lines: rerun with IMAGEFLOWS_TRACEBACK=1]"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = argparse.ArgumentParser(
        prog="imageflows", description="Glow and Flow++ image flows with exact likelihood."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train_cmd = _command(
        commands,
        "train",
        _train,
        "train a model (no arguments: a small Glow on digits into runs/glow-digits)",
    )
    train_cmd.add_argument("--preset", help=f"named preset config (default {DEFAULT_PRESET})")
    train_cmd.add_argument("--data", help="dataset name (default: the preset's)")
    train_cmd.add_argument("--data-dir", help="folder holding the dataset files")
    train_cmd.add_argument(
        "--out", help="new run directory (default runs/PRESET, or runs/PRESET-2, ... if taken)"
    )
    train_cmd.add_argument("--resume", metavar="RUN", help="continue the run in directory RUN")
    _add_set(train_cmd)
    train_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")

    eval_cmd = _command(commands, "eval", _eval, "bits/dim of a trained run on a data split")
    eval_cmd.add_argument("run", metavar="RUN", help="run directory")
    eval_cmd.add_argument("--data", help="dataset name (default: the run's)")
    eval_cmd.add_argument("--data-dir", help="folder holding the dataset files")
    eval_cmd.add_argument("--split", default="test", help="data split (default test)")
    eval_cmd.add_argument(
        "--iw-samples",
        type=int,
        default=1,
        metavar="K",
        help="dequantization draws per image; K > 1 gives the tighter importance-weighted bound",
    )
    eval_cmd.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise")
    eval_cmd.add_argument("--batch-size", type=int, default=500, help="images per batch")
    eval_cmd.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")

    sample_cmd = _command(
        commands, "sample", _sample, "draw samples from a trained run into a PNG"
    )
    sample_cmd.add_argument("run", metavar="RUN", help="run directory")
    sample_cmd.add_argument(
        "--n", type=int, default=64, help="images (per row with --temperatures)"
    )
    temperature_group = sample_cmd.add_mutually_exclusive_group()
    temperature_group.add_argument(
        "--temperature", type=float, default=1.0, help="scale of the latent noise (default 1)"
    )
    temperature_group.add_argument(
        "--temperatures",
        type=_floats,
        metavar="T1,T2,...",
        help="one row of --n samples per temperature, all rows from the same noise",
    )
    sample_cmd.add_argument(
        "--out", default="samples.png", help="PNG to write (default samples.png)"
    )
    sample_cmd.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    sample_cmd.add_argument("--nrow", type=int, help="images per row (single temperature only)")
    sample_cmd.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")

    bench_cmd = _command(
        commands,
        "bench",
        _bench,
        "speed and memory of one config; peak RSS is per process, so one config per invocation",
    )
    bench_cmd.add_argument("--preset", help=f"preset config (default {DEFAULT_BENCH_PRESET})")
    _add_set(bench_cmd)
    bench_cmd.add_argument("--image-shape", metavar="C,H,W", help="sets model.image_shape")
    bench_cmd.add_argument("--batch-size", type=int, default=16, help="images per training step")
    bench_cmd.add_argument(
        "--repeats", type=int, help="timed repeats (default 10, paper sizes: 3; solvers: 3)"
    )
    bench_cmd.add_argument(
        "--warmup", type=int, help="untimed repeats (default 3, paper sizes: 1; solvers: 1)"
    )
    bench_cmd.add_argument("--sample-n", type=int, default=16, help="images per sampling call")
    bench_cmd.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    bench_cmd.add_argument("--seed", type=int, default=0, help="seed of the model and the data")
    bench_cmd.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    bench_cmd.add_argument(
        "--mixture-inverse",
        action="store_true",
        help="instead of a model: the mixture-CDF inverse, our Newton solver against the "
        "public 100-step bisection, on a fixed random problem (no --preset/--set)",
    )
    bench_cmd.add_argument(
        "--elements", type=int, default=100_000, help="--mixture-inverse: elements (100000)"
    )
    bench_cmd.add_argument(
        "--components", type=int, default=32, help="--mixture-inverse: logistics (32)"
    )

    ablate_cmd = _command(
        commands,
        "ablate",
        _ablate,
        "train Flow++ and Glow variants at one budget into a table of test bits/dim",
    )
    ablate_cmd.add_argument("--data", default="digits", help="dataset name (default digits)")
    ablate_cmd.add_argument("--data-dir", help="folder holding the dataset files")
    ablate_cmd.add_argument(
        "--out", help="ablation directory, reused to resume (default runs/ablate-DATA)"
    )
    ablate_cmd.add_argument(
        "--variants",
        type=lambda text: text.split(","),
        metavar="NAME,...",
        help=f"variants in table order (default all: {', '.join(VARIANTS)})",
    )
    _add_set(ablate_cmd)
    ablate_cmd.add_argument("--no-progress", action="store_true", help="no progress bars")

    _command(commands, "presets", _presets, "list the named presets with parameter counts")

    interpolate_cmd = _command(
        commands, "interpolate", _interpolate, "interpolate between the latents of real images"
    )
    _add_run_data(interpolate_cmd)
    interpolate_cmd.add_argument(
        "--pairs",
        type=_pairs,
        required=True,
        metavar="A:B,...",
        help="image indices of the split to join, one grid row per pair, e.g. 3:17,5:8",
    )
    interpolate_cmd.add_argument(
        "--steps", type=int, default=9, help="frames per row, endpoints included (default 9)"
    )
    interpolate_cmd.add_argument(
        "--spherical", action="store_true", help="spherical (slerp) instead of linear paths"
    )
    interpolate_cmd.add_argument(
        "--out", default="interpolation.png", help="PNG to write (default interpolation.png)"
    )

    manipulate_cmd = _command(
        commands, "manipulate", _manipulate, "edit real images along an attribute direction"
    )
    _add_run_data(manipulate_cmd)
    # "--alphas -2,-1,0" must read as a value, not an option: Python 3.13's rule for arguments
    # that look like negative numbers, on older Pythons too.
    manipulate_cmd._negative_number_matcher = re.compile(r"^-\.?\d")
    manipulate_cmd.add_argument(
        "--attribute",
        required=True,
        help="a class name of the dataset (e.g. 3 for a digit) or an --attr-file column",
    )
    manipulate_cmd.add_argument(
        "--alphas",
        type=_floats,
        default=[-2.0, -1.0, 0.0, 1.0, 2.0],
        metavar="A1,A2,...",
        help="multiples of the direction, one grid row each (default -2,-1,0,1,2)",
    )
    manipulate_cmd.add_argument(
        "--images",
        type=_ints,
        default=[0, 1, 2, 3],
        metavar="I1,I2,...",
        help="image indices of the split to edit, one grid column each (default 0,1,2,3)",
    )
    manipulate_cmd.add_argument(
        "--attr-file",
        help="CelebA-style attribute file (list_attr_celeba.txt) for a folder dataset",
    )
    manipulate_cmd.add_argument(
        "--out", default="manipulation.png", help="PNG to write (default manipulation.png)"
    )

    serve_cmd = _command(commands, "serve", _serve, "a local web page to explore a run's latents")
    _add_run_data(serve_cmd)
    serve_cmd.add_argument(
        "--attr-file",
        help="CelebA-style attribute file (list_attr_celeba.txt) for a folder dataset",
    )
    serve_cmd.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; the app has no login)",
    )
    serve_cmd.add_argument("--port", type=int, default=8000, help="port (default 8000)")

    encode_cmd = _command(commands, "encode", _encode, "encode dataset images into a latents file")
    _add_run_data(encode_cmd)
    encode_cmd.add_argument("--n", type=int, default=64, help="images to encode (default 64)")
    encode_cmd.add_argument("--start", type=int, default=0, help="index of the first image")
    encode_cmd.add_argument("--out", default="latents.pt", help="file to write (latents.pt)")

    decode_cmd = _command(commands, "decode", _decode, "decode a latents file into a PNG grid")
    decode_cmd.add_argument("run", metavar="RUN", help="run directory")
    decode_cmd.add_argument("latents", metavar="LATENTS", help="a file written by encode")
    decode_cmd.add_argument("--out", default="decoded.png", help="PNG to write (decoded.png)")
    decode_cmd.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")

    report_cmd = _command(commands, "report", _report, "a one-page offline HTML summary of a run")
    report_cmd.add_argument("run", metavar="RUN", help="run directory")
    report_cmd.add_argument("--out", help="HTML file to write (default RUN/report.html)")
    return parser


def _command(
    commands: Any, name: str, handler: Callable[[argparse.Namespace], Outcome], summary: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=summary)
    parser.set_defaults(handler=handler)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=1e-3 (repeatable)",
    )


def _add_run_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory")
    parser.add_argument("--data", help="dataset name (default: the run's)")
    parser.add_argument("--data-dir", help="folder holding the dataset files")
    parser.add_argument("--split", default="test", help="data split (default test)")
    parser.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")


def _data_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"data": args.data, "data_dir": args.data_dir, "split": args.split}


def _ints(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _pairs(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [
            tuple(int(i) for i in item.split(":")) for item in text.split(",") if item.strip()
        ]
    except ValueError:
        pairs = []
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected pairs of image indices A:B,C:D, got {text!r}")
    return pairs


def _floats(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _train(args: argparse.Namespace) -> Outcome:
    if args.resume:
        given = [
            flag
            for flag, value in (
                ("--preset", args.preset),
                ("--data", args.data),
                ("--data-dir", args.data_dir),
                ("--out", args.out),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                f"--resume continues a run with its own config; drop {', '.join(given)} "
                "(change e.g. the step count with --set train.steps=N)"
            )
        workdir = Path(args.resume)
        cfg = _run_config(workdir).with_overrides(args.set)
        summary = train(cfg, workdir, resume=True, progress=not args.no_progress)
    else:
        preset = args.preset or DEFAULT_PRESET
        data = [f"data.name={args.data}"] if args.data is not None else []
        data += [f"data.dir={args.data_dir}"] if args.data_dir is not None else []
        cfg = preset_config(preset).with_overrides(data + args.set)
        workdir = _new_run_dir(Path(args.out)) if args.out else _free_run_dir(Path("runs"), preset)
        summary = train(cfg, workdir, resume=False, progress=not args.no_progress)
    return summary, _train_message(summary, workdir)


def _train_message(summary: dict[str, Any], workdir: Path) -> str:
    return (
        f"test bits/dim {summary['test_bpd']:.4f} after {summary['steps']} steps "
        f"({summary['wall_seconds']:.1f} s)\n"
        f"samples: {summary['samples']}\n"
        f"run: {workdir}  (next: imageflows eval {workdir}; imageflows sample {workdir})"
    )


def _eval(args: argparse.Namespace) -> Outcome:
    if args.iw_samples < 1:
        raise ValueError(f"--iw-samples must be at least 1, got {args.iw_samples}")
    run = Path(args.run)
    cfg = _run_config(run)
    name = args.data or cfg.data.name
    # The run's data folder belongs to the run's dataset; another dataset needs its own.
    data_dir = (
        args.data_dir
        if args.data_dir is not None
        else (cfg.data.dir if name == cfg.data.name else None)
    )
    model = load(run, ema=not args.raw)
    dataset = prepare(load_dataset(name, args.split, data_dir), model.num_levels)
    result = evaluate(model, dataset.images, args.batch_size, args.seed, args.iw_samples)
    result = {
        "bpd": float(result["bpd"]),
        "n": int(result["n"]),
        "iw_samples": args.iw_samples,
        "recon_max_abs": int(result["recon_max_abs"]),
        "data": dataset.description,
        "split": args.split,
        "weights": "raw" if args.raw else "ema",
        "run": str(run),
        "step": run_step(run),
    }
    weights = "raw" if args.raw else "EMA"
    bound = f", importance-weighted over {args.iw_samples} draws" if args.iw_samples > 1 else ""
    message = (
        f"{args.split} bits/dim {result['bpd']:.4f} on {result['n']} images of "
        f"{dataset.description}, {weights} weights at step {result['step']}{bound}; "
        f"decode(encode(x)) max |error| {result['recon_max_abs']}"
    )
    return result, message


def _sample(args: argparse.Namespace) -> Outcome:
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.temperatures is not None and args.nrow is not None:
        raise ValueError("--nrow applies to --temperature only; --temperatures puts --n per row")
    if args.temperatures == []:
        raise ValueError("--temperatures needs at least one number")
    run = Path(args.run)
    _run_config(run)
    model = load(run, ema=not args.raw)
    temperatures = args.temperatures or [args.temperature]
    grid = temperature_rows(model, temperatures, args.n, args.seed)
    if args.temperatures is not None:
        nrow, labels = args.n, [f"T={t:g}" for t in temperatures]
    else:
        nrow, labels = args.nrow or math.ceil(math.sqrt(args.n)), None
    out = Path(args.out)
    save_grid(grid, out, model.num_levels, nrow=nrow, row_labels=labels)
    result = {
        "out": str(out),
        "n": args.n,
        "temperatures": temperatures,
        "seed": args.seed,
        "run": str(run),
    }
    return result, f"wrote {len(temperatures) * args.n} samples to {out}"


def _bench(args: argparse.Namespace) -> Outcome:
    if args.mixture_inverse:
        return _bench_mixture_inverse(args)
    preset = args.preset or DEFAULT_BENCH_PRESET
    shape = [f"model.image_shape={args.image_shape}"] if args.image_shape else []
    cfg = preset_config(preset).with_overrides(shape + args.set)
    result = run_bench(
        cfg,
        batch_size=args.batch_size,
        repeats=10 if args.repeats is None else args.repeats,
        warmup=3 if args.warmup is None else args.warmup,
        sample_n=args.sample_n,
        threads=args.threads,
        seed=args.seed,
        device=args.device,
    )
    result = {"preset": preset, "overrides": shape + args.set, **result}
    return result, format_table(result)


def _bench_mixture_inverse(args: argparse.Namespace) -> Outcome:
    model_options = [
        flag
        for flag, given in (
            ("--preset", args.preset),
            ("--set", args.set),
            ("--image-shape", args.image_shape),
        )
        if given
    ]
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
    out = Path(args.out or f"runs/ablate-{args.data}")
    result = run_ablation(
        args.data,
        out,
        args.variants,
        data_dir=args.data_dir,
        overrides=args.set,
        progress=not args.no_progress,
    )
    return result, f"{markdown_table(result)}\nwrote {result['table']} and {result['json']}"


def _presets(args: argparse.Namespace) -> Outcome:
    rows = []
    for name, cfg in PRESETS.items():
        # Counting parameters needs shapes only: the meta device allocates nothing.
        with torch.device("meta"):
            parameters = sum(p.numel() for p in build_model(cfg.model).parameters())
        rows.append({"name": name, "parameters": parameters, **cfg.to_dict()})
    width = max(len(row["name"]) for row in rows)
    message = "\n".join(
        f"{row['name']:<{width}}  {row['parameters'] / 1e6:7.2f}M parameters  "
        f"{describe_model(row['model'])} on {row['data']['name']}"
        for row in rows
    )
    return {"presets": rows}, message


def _interpolate(args: argparse.Namespace) -> Outcome:
    result = write_interpolation(
        args.run,
        args.pairs,
        args.steps,
        args.out,
        spherical=args.spherical,
        ema=not args.raw,
        **_data_args(args),
    )
    kind = "spherical" if args.spherical else "linear"
    message = (
        f"wrote {len(args.pairs)} {kind} interpolation(s) of {args.steps} frames between "
        f"{result['data']} {args.split} images to {result['out']}"
    )
    return result, message


def _manipulate(args: argparse.Namespace) -> Outcome:
    if not args.alphas or not args.images:
        raise ValueError("--alphas and --images need at least one number each")
    result = write_manipulation(
        args.run,
        args.attribute,
        args.alphas,
        args.images,
        args.out,
        attr_file=args.attr_file,
        ema=not args.raw,
        **_data_args(args),
    )
    source = f"read from {result['direction']}" if result["direction_cached"] else "computed"
    message = (
        f"wrote {len(args.images)} image(s) edited along {args.attribute!r} "
        f"(direction {source}: {result['n_positive']} with, {result['n_negative']} without, "
        f"norm {result['direction_norm']:.2f}) to {result['out']}"
    )
    return result, message


def _encode(args: argparse.Namespace) -> Outcome:
    result = write_latents(
        args.run, args.out, args.n, args.start, ema=not args.raw, **_data_args(args)
    )
    message = (
        f"wrote the latents of {result['n']} {result['data']} {result['split']} images "
        f"(float64, exact) to {result['out']}"
    )
    return result, message


def _decode(args: argparse.Namespace) -> Outcome:
    result = write_decoded(args.run, args.latents, args.out, ema=not args.raw)
    return result, f"wrote {result['n']} decoded images to {result['out']}"


def _serve(args: argparse.Namespace) -> Outcome:
    try:
        from imageflows.serve import serve
    except ImportError as err:
        raise RuntimeError(
            f"imageflows serve needs Flask ({err}); pip install 'imageflows[serve]'"
        ) from None
    url = serve(
        args.run,
        args.host,
        args.port,
        attr_file=args.attr_file,
        ema=not args.raw,
        **_data_args(args),
    )
    return {"url": url, "run": args.run}, f"stopped serving {url}"


def _report(args: argparse.Namespace) -> Outcome:
    result = write_report(args.run, args.out)
    return result, f"wrote {result['out']} (open it in any browser, offline)"


def _run_config(run: Path) -> Config:
    """The config of run directory `run`, with a clear error when it is not a run."""
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no config.json)")
    return Config.load(run / "config.json")


def _new_run_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"--out {out} already holds files; continue that run with --resume {out}, "
            "or choose a new --out"
        )
    return out


def _free_run_dir(root: Path, name: str) -> Path:
    """`root/name`, or `root/name-2`, `root/name-3`, ...: the first that is missing or empty."""
    for index in range(1, 10_000):
        candidate = root / (name if index == 1 else f"{name}-{index}")
        if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
            return candidate
    raise FileExistsError(f"no free run directory {root / name}-N; pass --out")
