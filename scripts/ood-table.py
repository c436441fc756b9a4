"""The README's out-of-distribution table: `imageflows ood` for each shipped model against
every other set of its shape that this machine has, with the background run of each.

    python scripts/ood-table.py MNIST_DIR CIFAR10_JPEG_DIR OUT_DIR docs/bench/ood.json [--limit N]

Each row is one `imageflows ood RUN --data D --data-dir DIR --ood-data B [--ood-data-dir DIR2]
[--convert] --background RUN2 --limit N --out OUT_DIR/NAME` (the call `imageflows.ood.run_ood`
makes); its AUROC and AUPR per score, and the two sets' mean bits/dim, go to the JSON file
(rows already there and not run again are kept; `--only NAME,...` runs a subset) and to a
Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from statistics import fmean

from imageflows import ood

SCORES = ("bpd", "complexity", "likelihood_ratio", "typicality")


def experiments(mnist: str, cifar: str) -> list[dict]:
    """(run, its data, background, OOD set) for both directions of the paradox."""
    mnist_model = {"run": "runs/glow-mnist", "data": "mnist", "data_dir": mnist,
                   "background": "runs/glow-mnist-background"}  # fmt: skip
    cifar_model = {"run": "runs/glow-cifar10-small", "data": "folder", "data_dir": cifar,
                   "background": "runs/glow-cifar10-background"}  # fmt: skip
    rows = [
        {**mnist_model, "name": "mnist-vs-cifar10", "ood_data": "folder", "ood_data_dir": cifar,
         "convert": True},
        {**cifar_model, "name": "cifar10-vs-mnist", "ood_data": "mnist", "ood_data_dir": mnist,
         "convert": True},
        {**mnist_model, "name": "mnist-vs-digits", "ood_data": "digits", "convert": True},
        {**cifar_model, "name": "cifar10-vs-digits", "ood_data": "digits", "convert": True},
    ]  # fmt: skip
    for model, prefix in ((mnist_model, "mnist"), (cifar_model, "cifar10")):
        for synthetic in ("noise", "constant", "inverted"):
            rows.append({**model, "name": f"{prefix}-vs-{synthetic}", "ood_data": synthetic})
    return rows


def mean_bpd(scores_csv: Path) -> dict[str, float]:
    with scores_csv.open() as file:
        rows = list(csv.DictReader(file))
    return {
        part: fmean(float(row["bpd"]) for row in rows if row["set"] == part)
        for part in ("in", "ood")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mnist_dir")
    parser.add_argument("cifar_dir")
    parser.add_argument("out_dir")
    parser.add_argument("json_out")
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--only", help="comma-separated row names to run (default all)")
    args = parser.parse_args()
    only = args.only.split(",") if args.only else None
    results = json.loads(Path(args.json_out).read_text()) if Path(args.json_out).is_file() else {}
    for row in experiments(args.mnist_dir, args.cifar_dir):
        name = row.pop("name")
        if only is not None and name not in only:
            continue
        out = Path(args.out_dir) / name
        summary = ood.run_ood(out=out, limit=args.limit, **row)
        results[name] = {
            "run": row["run"],
            "background": row["background"],
            "in_distribution": summary["in_distribution"]["description"],
            "ood": summary["ood"]["description"],
            "mean_bpd": mean_bpd(out / "scores.csv"),
            "scores": {key: summary["scores"][key] for key in SCORES if key in summary["scores"]},
        }
        print(name, json.dumps(results[name]), flush=True)
    Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n")
    print("\n| model | OOD set | mean bits/dim in / OOD | " + " | ".join(SCORES) + " |")
    print("|---" * (3 + len(SCORES)) + "|")
    for result in results.values():
        auroc = [f"{result['scores'][k]['auroc']:.4f}" if k in result["scores"] else "—"
                 for k in SCORES]  # fmt: skip
        means = result["mean_bpd"]
        print(f"| {result['run']} | {result['ood']} | {means['in']:.3f} / {means['ood']:.3f} | "
              + " | ".join(auroc) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
