"""The files of an OOD comparison: `scores.csv`, `summary.json`, one histogram PNG per score
and a self-contained `index.html` (pictures embedded as base64, style inline).

The folder is built beside `out` under a temporary name and renamed into place, so `out`
never holds half of it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from imageflows._io import atomic_write, atomic_write_text, fsync_dir

SCORES_FILE = "scores.csv"
SUMMARY_FILE = "summary.json"
INDEX_FILE = "index.html"
TITLES = {
    "bpd": "bits/dim",
    "complexity": "complexity-corrected bits/dim (Serrà et al. 2020)",
    "likelihood_ratio": "likelihood ratio, bits/dim − background's (Ren et al. 2019)",
    "typicality": "typicality, |batch mean bits/dim − train mean| (Nalisnick et al. 2019)",
}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem;
       color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f3f3f3; } .key { text-align: left; } .muted { color: #666; }
img { max-width: 100%; } figure { display: inline-block; margin: 0 1rem 1rem 0; }
"""


def check_out_dir(out: str | Path) -> Path:
    """`out` if it is missing or an empty folder, else `FileExistsError`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; choose a new one")
    return out


def write_scores_csv(path: str | Path, columns: dict[str, list]) -> Path:
    """Write equally long `columns` as a CSV table with a header row, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(zip(*columns.values(), strict=True))
    return atomic_write_text(path, buffer.getvalue())


def write_ood_outputs(
    out: Path,
    rows: dict[str, dict[str, list]],
    summary: dict[str, Any],
    histograms: dict[str, tuple[Tensor, Tensor]],
) -> Path:
    """Fill folder `out` (missing or empty): `scores.csv` (the `rows` of each set, a column
    `set` naming it), `summary.json`, `hist_<score>.png` per score of `histograms` (its
    in-distribution and OOD values) and `index.html`."""
    out = check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        sets = [(name, columns) for name, columns in rows.items()]
        table = {"set": [name for name, columns in sets for _ in columns["index"]]}
        for key in sets[0][1]:
            table[key] = [value for _, columns in sets for value in columns[key]]
        write_scores_csv(tmp / SCORES_FILE, table)
        atomic_write_text(tmp / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        figures = {}
        for name, (inside, outside) in histograms.items():
            rate = summary["scores"][name]
            title = f"{TITLES[name]}\nAUROC {rate['auroc']:.3f}, AUPR {rate['aupr']:.3f}"
            figures[name] = plot_histogram(tmp / f"hist_{name}.png", inside, outside, title)
        atomic_write_text(tmp / INDEX_FILE, index_page(summary, figures))
        os.replace(tmp, out)  # an empty `out` is replaced whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    return out


def plot_histogram(path: Path, inside: Tensor, outside: Tensor, title: str) -> Path:
    """Histograms of the finite in-distribution and OOD scores on shared bins, as a PNG."""
    # imported here: matplotlib adds ~30 MiB and 0.3 s to every process, most never plot
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = [v[torch.isfinite(v)].double().numpy() for v in (inside, outside)]
    figure = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(figure)  # a non-interactive canvas: no display, no pyplot state
    axes = figure.add_subplot()
    joined = torch.cat([torch.from_numpy(v) for v in values])
    if len(joined):
        low, high = joined.min().item(), joined.max().item()
        bins = torch.linspace(low, high if high > low else low + 1, 41).numpy()
        for v, label in zip(values, ("in-distribution", "OOD"), strict=True):
            axes.hist(v, bins=bins, alpha=0.55, density=True, label=f"{label} ({len(v)})")
        axes.legend()
    axes.set_title(title, fontsize=9)
    axes.set_ylabel("density")
    figure.tight_layout()
    return atomic_write(path, lambda f: figure.savefig(f, format="png"))


def index_page(summary: dict[str, Any], figures: dict[str, Path]) -> str:
    """The HTML page of `summary`'s table and the histogram PNGs `figures`, embedded."""
    head = "<tr><th class='key'>score</th><th>AUROC</th><th>AUPR</th><th>in</th><th>OOD</th></tr>"
    rows = "".join(
        f"<tr><td class='key'>{_e(TITLES[name])}</td><td>{rate['auroc']:.4f}</td>"
        f"<td>{rate['aupr']:.4f}</td><td>{rate['n_in']}</td><td>{rate['n_ood']}</td></tr>"
        for name, rate in summary["scores"].items()
    )
    facts = [
        ("run", f"{summary['run']} (step {summary['step']})"),
        ("in-distribution", _set_line(summary["in_distribution"])),
        ("OOD (positive class)", _set_line(summary["ood"])),
        (
            "training reference",
            f"{_set_line(summary['train_reference'])}, mean bits/dim "
            f"{summary['train_reference']['mean_bpd']:.4f}",
        ),  # fmt: skip
        ("conversion rule", summary["conversion"] or "none: every set in the model's shape"),
        ("typicality batch", summary["typicality_batch"]),
    ]
    if summary["background"] is not None:
        facts.insert(1, ("background run", summary["background"]))
    fact_rows = "".join(
        f"<tr><th class='key'>{_e(k)}</th><td class='key'>{_e(v)}</td></tr>" for k, v in facts
    )
    pictures = "".join(
        f"<figure><img alt='{_e(name)} histogram' src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode()}'></figure>"
        for name, path in figures.items()
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>imageflows ood: {_e(summary['run'])}</title>\n<style>{_STYLE}</style>\n"
        "</head>\n<body>\n<h1>Out-of-distribution detection</h1>\n"
        f"<table>{fact_rows}</table>\n<h2>Scores</h2>\n"
        "<p class='muted'>OOD is the positive class; a higher score means more OOD; "
        "typicality counts batches, the other scores images.</p>\n"
        f"<table>{head}{rows}</table>\n<h2>Histograms</h2>\n{pictures}\n</body>\n</html>\n"
    )


def _set_line(part: dict[str, Any]) -> str:
    return f"{part['description']}, {part['split']}, {part['n']} images"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
