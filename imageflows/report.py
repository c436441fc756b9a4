"""`imageflows report`: a one-page HTML summary of a run that opens offline.

The page holds the run's summary, its bits/dim curve (train and test, redrawn from
`metrics.jsonl`), the latest sample grid and the grids of earlier evaluations, the table of test
bits/dim, and the config. Pictures are embedded as base64 PNG and the style is inline, so the one
file is the whole report.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from imageflows._io import atomic_write_text
from imageflows.bench import describe_model
from imageflows.config import Config
from imageflows.images import plot_curves
from imageflows.runs import parameter_count, run_config
from imageflows.train.checkpoint import run_step

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.png"
SAMPLES_DIR = "samples"
EARLIER_GRIDS = 6  # evaluations' sample grids shown besides the latest
_STEP_GRID = re.compile(r"^step_(\d+)\.png$")

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem;
       color: #222; }
h1 { margin-bottom: 0.2rem; } .muted { color: #666; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f3f3f3; } td.key, th.key { text-align: left; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
figure { display: inline-block; margin: 0 1rem 1rem 0; } figcaption { color: #555; }
figure.latest img { width: min(100%, 36rem); } td.key { font-family: monospace; }
"""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` file (none if it is missing); a malformed line is a
    `ValueError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON record ({err})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number}: expected an object with an integer step")
        records.append(record)
    return records


def build_report(run: str | Path) -> tuple[str, dict[str, Any]]:
    """The report page of run directory `run` and its headline numbers (JSON-ready)."""
    run = Path(run)
    config = run_config(run)
    records = read_metrics(run / METRICS_FILE)
    tests = [r for r in records if r.get("test_bpd") is not None]
    summary = {
        "run": str(run),
        "step": run_step(run),
        "parameters": parameter_count(config.model),
        "test_bpd": tests[-1]["test_bpd"] if tests else None,
        "best_test_bpd": min(r["test_bpd"] for r in tests) if tests else None,
        "evaluations": len(tests),
    }
    body = [
        f"<h1>{_e(run.name)}</h1>",
        f'<p class="muted">{_e(str(run.resolve()))} · report written '
        f"{datetime.datetime.now().isoformat(timespec='seconds')}</p>",
        _summary_table(config, summary, records),
        "<h2>Bits per dimension</h2>",
        _curve(records),
        _bpd_table(records),
        "<h2>Samples</h2>",
        _samples(run, config),
        "<h2>Config</h2>",
        _config_table(config),
    ]
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>imageflows report: {_e(run.name)}</title>\n<style>{_STYLE}</style>\n"
        "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
    return page, summary


def write_report(run: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write the report of `run` to `out` (default `RUN/report.html`) atomically; returns the
    path and the headline numbers."""
    page, summary = build_report(run)
    path = atomic_write_text(Path(out) if out else Path(run) / "report.html", page)
    return {"out": str(path), **summary}


def _e(text: Any) -> str:
    return html.escape(str(text))


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _fmt(value: Any, digits: int = 4) -> str:
    return (
        "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 3600:.2f} h"


def _summary_table(config: Config, summary: dict[str, Any], records: list[dict]) -> str:
    seconds = next((r["time"] for r in reversed(records) if r.get("time") is not None), None)
    rows = [
        ("model", describe_model(config.to_dict()["model"])),
        ("parameters", f"{summary['parameters']:,}"),
        ("data", config.data.name + (f" ({config.data.dir})" if config.data.dir else "")),
        ("steps trained (latest checkpoint)", _fmt(summary["step"])),
        ("training time", _duration(seconds)),
        ("latest test bits/dim", _fmt(summary["test_bpd"])),
        ("best test bits/dim", _fmt(summary["best_test_bpd"])),
    ]
    cells = "".join(
        f'<tr><th class="key">{_e(k)}</th><td class="key">{_e(v)}</td></tr>' for k, v in rows
    )
    return f"<table>{cells}</table>"


def _config_table(config: Config) -> str:
    rows = [
        f'<tr><td class="key">{_e(section)}.{_e(key)}</td>'
        f'<td class="key">{_e(value if isinstance(value, str) else json.dumps(value))}</td></tr>'
        for section, fields in config.to_dict().items()
        for key, value in fields.items()
    ]
    return f"<table>{''.join(rows)}</table>"


def _curve(records: list[dict]) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = plot_curves(records, Path(folder) / "bpd.png", title="bits/dim")
        return f"<figure>{_image(path, 'bits/dim curve')}</figure>"


def _bpd_table(records: list[dict]) -> str:
    """One row per evaluation: test bits/dim beside the latest training bits/dim before it."""
    rows, train_bpd = [], None
    for record in sorted(records, key=lambda r: (r["step"], "test_bpd" in r)):
        if record.get("train_bpd") is not None:
            train_bpd = record["train_bpd"]
        if record.get("test_bpd") is not None:
            cells = (record["step"], _fmt(train_bpd), _fmt(record["test_bpd"]),
                     _fmt(record.get("recon_max_abs")))  # fmt: skip
            rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    if not rows:
        return '<p class="muted">No evaluation recorded yet.</p>'
    head = "<tr><th>step</th><th>train bits/dim</th><th>test bits/dim</th>"
    head += "<th>round-trip error (levels)</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _samples(run: Path, config: Config) -> str:
    temperatures = ", ".join(f"{t:g}" for t in config.train.sample_temperatures)
    parts = []
    if (run / SAMPLES_FILE).is_file():
        caption = f"latest samples, one row per temperature ({_e(temperatures)})"
        parts.append(
            f'<figure class="latest">{_image(run / SAMPLES_FILE, "samples")}'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    grids = sorted(
        (int(m.group(1)), p)
        for p in (run / SAMPLES_DIR).glob("step_*.png")
        if (m := _STEP_GRID.match(p.name))
    )
    earlier = grids[:-1][-EARLIER_GRIDS:]
    if earlier:
        parts.append("<h3>Over training</h3>")
        for step, path in earlier:
            parts.append(
                f"<figure>{_image(path, f'samples at step {step}')}"
                f"<figcaption>step {step}</figcaption></figure>"
            )
    return "\n".join(parts) or '<p class="muted">No samples drawn yet.</p>'
