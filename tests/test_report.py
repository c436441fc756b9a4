"""`imageflows report`: the offline HTML summary of a run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imageflows import cli
from imageflows.report import build_report, read_metrics, write_report

from ._tiny_run import copy_run, tiny_run


def test_report_holds_the_run_offline() -> None:
    page, summary = build_report(tiny_run())
    records = read_metrics(tiny_run() / "metrics.jsonl")
    tests = [r for r in records if "test_bpd" in r]
    assert [r["step"] for r in tests] == [2, 4] and summary["evaluations"] == 2
    assert summary["step"] == 4 and summary["test_bpd"] == tests[-1]["test_bpd"]
    assert summary["parameters"] > 0 and f"{summary['parameters']:,}" in page
    for record in tests:  # the bits/dim table, one row per evaluation
        assert f"<td>{record['step']}</td>" in page and f"{record['test_bpd']:.4f}" in page
    config = '<td class="key">model.{}</td><td class="key">{}</td>'  # the config table
    assert config.format("hidden_channels", "16") in page
    assert config.format("image_shape", "[1, 8, 8]") in page
    # every picture is embedded: the curve, the latest samples, the earlier evaluation's grid
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(href|src)="(?!data:)', page) and "http" not in page


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tmp_path / "run")
    assert cli.main(["report", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(run / "report.html") and (run / "report.html").is_file()
    out = tmp_path / "deep" / "r.html"
    assert cli.main(["report", str(run), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!doctype html>") and str(out) in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_report_of_a_run_without_metrics_or_samples(tmp_path: Path) -> None:
    run = copy_run(tmp_path / "run")
    (run / "metrics.jsonl").unlink()
    (run / "samples.png").unlink()
    for grid in (run / "samples").iterdir():
        grid.unlink()
    page = write_report(run, tmp_path / "r.html")
    text = Path(page["out"]).read_text()
    assert page["test_bpd"] is None and "No evaluation recorded yet" in text
    assert "No samples drawn yet" in text


def test_malformed_metrics_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_bpd": 3.0}\n\n{"step": 2, "test_bpd": \n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: not a JSON record"):
        read_metrics(path)
    path.write_text('{"train_bpd": 3.0}\n')
    with pytest.raises(ValueError, match=r":1: expected an object with an integer step"):
        read_metrics(path)
