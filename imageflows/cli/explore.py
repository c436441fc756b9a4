"""`imageflows interpolate`, `manipulate`, `serve`, `encode`, `decode` and `report`: look into
a trained run, its latent space and its training record."""

from __future__ import annotations

import argparse

from imageflows.explore import write_interpolation, write_manipulation
from imageflows.latents_file import write_decoded, write_latents
from imageflows.report import write_report

from .arguments import Command, Outcome, add_raw, add_run_data, floats, ints, pairs, run_data

# Options whose values may start with "-" ("--alphas -2,-1,0"), see `imageflows.cli.main`.
NEGATIVE_VALUE_OPTIONS = ("--alphas",)
ATTR_FILE_HELP = "CelebA-style attribute file (list_attr_celeba.txt) for a folder dataset"
INTERPOLATE_DESCRIPTION = """\
Decoded frames between the latents of pairs of dataset images. On a class-conditional run each
endpoint is encoded with its own label and every frame is decoded with --class C if given, else
with the nearer endpoint's label (A's for t <= 1/2, B's after; one label throughout when A and
B share it). Without --class the end frames are the images themselves."""


def add_commands(command: Command) -> None:
    """Register this group's subcommands."""
    interpolate = command(
        "interpolate", _interpolate, "interpolate between the latents of real images"
    )
    interpolate.description = INTERPOLATE_DESCRIPTION
    add_run_data(interpolate)
    interpolate.add_argument(
        "--pairs",
        type=pairs,
        required=True,
        metavar="A:B,...",
        help="image indices of the split to join, one grid row per pair, e.g. 3:17,5:8",
    )
    interpolate.add_argument(
        "--steps", type=int, default=9, help="frames per row, endpoints included (default 9)"
    )
    interpolate.add_argument(
        "--spherical", action="store_true", help="spherical (slerp) instead of linear paths"
    )
    _add_class(
        interpolate,
        "decode every frame as class C (default: the nearer endpoint's label)",
    )
    interpolate.add_argument(
        "--out", default="interpolation.png", help="PNG to write (default interpolation.png)"
    )

    manipulate = command(
        "manipulate", _manipulate, "edit real images along an attribute direction"
    )
    add_run_data(manipulate)
    manipulate.add_argument(
        "--attribute",
        required=True,
        help="a class name of the dataset (e.g. 3 for a digit) or an --attr-file column",
    )
    manipulate.add_argument(
        "--alphas",
        type=floats,
        default=[-2.0, -1.0, 0.0, 1.0, 2.0],
        metavar="A1,A2,...",
        help="multiples of the direction, one grid row each (default -2,-1,0,1,2)",
    )
    manipulate.add_argument(
        "--images",
        type=ints,
        default=[0, 1, 2, 3],
        metavar="I1,I2,...",
        help="image indices of the split to edit, one grid column each (default 0,1,2,3)",
    )
    manipulate.add_argument("--attr-file", help=ATTR_FILE_HELP)
    manipulate.add_argument(
        "--out", default="manipulation.png", help="PNG to write (default manipulation.png)"
    )

    serve = command("serve", _serve, "a local web page to explore a run's latents")
    add_run_data(serve)
    serve.add_argument("--attr-file", help=ATTR_FILE_HELP)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; the app has no login)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")

    encode = command("encode", _encode, "encode dataset images into a latents file")
    add_run_data(encode)
    encode.add_argument("--n", type=int, default=64, help="images to encode (default 64)")
    encode.add_argument("--start", type=int, default=0, help="index of the first image")
    encode.add_argument("--out", default="latents.pt", help="file to write (latents.pt)")

    decode = command("decode", _decode, "decode a latents file into a PNG grid")
    decode.add_argument("run", metavar="RUN", help="run directory")
    decode.add_argument("latents", metavar="LATENTS", help="a file written by encode")
    _add_class(
        decode,
        "decode every latent as class C (default: the labels stored by encode)",
    )
    decode.add_argument("--out", default="decoded.png", help="PNG to write (decoded.png)")
    add_raw(decode)

    report = command("report", _report, "a one-page offline HTML summary of a run")
    report.add_argument("run", metavar="RUN", help="run directory")
    report.add_argument("--out", help="HTML file to write (default RUN/report.html)")


def _add_class(parser: argparse.ArgumentParser, what: str) -> None:
    """`--class C` into `args.decode_class`: the class decoded to, on class-conditional runs."""
    parser.add_argument(
        "--class",
        dest="decode_class",
        type=int,
        metavar="C",
        help=f"class-conditional runs: {what}",
    )


def _interpolate(args: argparse.Namespace) -> Outcome:
    result = write_interpolation(
        args.run,
        args.pairs,
        args.steps,
        args.out,
        spherical=args.spherical,
        decode_class=args.decode_class,
        **run_data(args),
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
        **run_data(args),
    )
    source = f"read from {result['direction']}" if result["direction_cached"] else "computed"
    message = (
        f"wrote {len(args.images)} image(s) edited along {args.attribute!r} "
        f"(direction {source}: {result['n_positive']} with, {result['n_negative']} without, "
        f"norm {result['direction_norm']:.2f}) to {result['out']}"
    )
    return result, message


def _serve(args: argparse.Namespace) -> Outcome:
    try:
        from imageflows.serve import serve
    except ImportError as err:
        raise RuntimeError(
            f"imageflows serve needs Flask ({err}); pip install 'imageflows[serve]'"
        ) from None
    url = serve(args.run, args.host, args.port, attr_file=args.attr_file, **run_data(args))
    return {"url": url, "run": args.run}, f"stopped serving {url}"


def _encode(args: argparse.Namespace) -> Outcome:
    result = write_latents(args.run, args.out, args.n, args.start, **run_data(args))
    given = ", each given its label" if result["conditioned"] else ""
    message = (
        f"wrote the latents of {result['n']} {result['data']} {result['split']} images "
        f"(float64, exact{given}) to {result['out']}"
    )
    return result, message


def _decode(args: argparse.Namespace) -> Outcome:
    result = write_decoded(
        args.run, args.latents, args.out, ema=not args.raw, decode_class=args.decode_class
    )
    as_class = f" as class {args.decode_class}" if args.decode_class is not None else ""
    return result, f"wrote {result['n']} decoded images{as_class} to {result['out']}"


def _report(args: argparse.Namespace) -> Outcome:
    result = write_report(args.run, args.out)
    return result, f"wrote {result['out']} (open it in any browser, offline)"
