"""The `imageflows` command line: one end-to-end run in a subprocess, the rest in-process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import imageflows
from imageflows import cli, runs
from imageflows.config import Config
from imageflows.models import build_model, preset_config
from imageflows.train import loop

from ._signals import signal_after_step

TINY = [
    "--set", "train.steps=4", "--set", "train.eval_every=2", "--set", "train.checkpoint_every=2",
    "--set", "model.depth=2", "--set", "model.hidden_channels=16", "--no-progress",
]  # fmt: skip
EVAL_KEYS = {"bpd", "bpd_median", "bpd_p1", "bpd_p99", "n", "iw_samples", "roundtrip_failures"}
EVAL_KEYS |= {"roundtrip_failures_float32", "recon_max_abs", "data", "run", "step"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run on digits (4 steps)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", "--preset", "glow-digits", "--out", str(out), *TINY]) == 0
    return out


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(imageflows.__file__).parents[1])}
    argv = [sys.executable, "-m", "imageflows", "train", "--preset", "glow-digits"]
    done = subprocess.run(
        [*argv, "--out", "run", *TINY], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # without --json everything human goes to stderr
    assert "test bits/dim" in done.stderr and "run/samples.png" in done.stderr
    run = tmp_path / "run"
    assert (run / "config.json").is_file() and (run / "model.safetensors").is_file()

    argv = ["train", "--resume", str(run), "--set", "train.steps=6", "--no-progress", "--json"]
    assert cli.main(argv) == 0
    summary = _json(capsys)
    assert summary["steps"] == 6 and Config.load(run / "config.json").train.steps == 6

    assert cli.main(["eval", str(run), "--json"]) == 0
    result = _json(capsys)
    assert EVAL_KEYS <= set(result)
    assert math.isfinite(result["bpd"]) and 0 < result["bpd"] < 8
    assert result["n"] == 360 and result["iw_samples"] == 1 and result["step"] == 6
    assert result["recon_max_abs"] < 0.01 and result["roundtrip_failures"] == 0
    assert "digits" in result["data"]
    # Same EMA weights, split, seed and batches as the run's final evaluation.
    assert result["bpd"] == pytest.approx(summary["test_bpd"], abs=1e-9)

    out = tmp_path / "s.png"
    argv = ["sample", str(run), "--n", "4", "--temperatures", "0,0.7", "--out", str(out)]
    assert cli.main(argv) == 0
    assert out.is_file() and str(out) in capsys.readouterr().err
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > picture.height  # 2 rows of 4


@pytest.fixture
def train_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Config, Path, bool]]:
    """Replaces the `train` behind `imageflows train` by a recorder of its arguments."""
    calls = []

    def fake_train(cfg: Config, workdir: Path, resume: bool, progress: bool) -> dict:
        calls.append((cfg, workdir, resume))
        summary = {"steps": 1, "stopped": None, "test_bpd": 1.5, "test_step": 1}
        summary |= {"wall_seconds": 0.1, "samples": "x.png"}
        return {**summary, "run_dir": str(workdir)}

    monkeypatch.setattr(runs, "train", fake_train)
    return calls


def test_default_train_job_never_overwrites(
    train_calls: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "glow-digits").mkdir(parents=True)
    (tmp_path / "runs" / "glow-digits" / "config.json").write_text("{}")
    (tmp_path / "runs" / "glow-digits-2").mkdir()  # empty: free to use
    assert cli.main(["train"]) == 0
    cfg, workdir, resume = train_calls[0]
    assert cfg == preset_config("glow-digits") and cfg.data.name == "digits" and not resume
    assert workdir == Path("runs/glow-digits-2")
    assert "test bits/dim 1.5000" in capsys.readouterr().err


def test_train_data_flags_and_sets_reach_the_config(train_calls: list, tmp_path: Path) -> None:
    argv = ["train", "--preset", "glow-mnist", "--data", "folder", "--data-dir", "/d"]
    assert cli.main([*argv, "--out", str(tmp_path / "r"), "--set", "train.lr=3e-4"]) == 0
    cfg, workdir, _ = train_calls[0]
    assert cfg.data.name == "folder" and cfg.data.dir == "/d" and workdir == tmp_path / "r"
    assert cfg.train.lr == 3e-4 and cfg.model.image_shape == (1, 28, 28)


def test_unknown_set_key_lists_valid_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--out", str(tmp_path / "r"), "--set", "model.nope=1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("imageflows: error: ") and err.count("\n") == 1
    assert "model.nope" in err and "model.depth" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_multi_line_errors_print_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken_train(*args: object, **kwargs: object) -> dict:
        raise RuntimeError("weights do not fit:\n  missing a\n  missing b")

    monkeypatch.setattr(runs, "train", broken_train)
    assert cli.main(["train", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert (
        err == "imageflows: error: weights do not fit: [2 more lines: rerun with "
        "IMAGEFLOWS_TRACEBACK=1]\n"
    )
    monkeypatch.setenv("IMAGEFLOWS_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="missing b"):
        cli.main(["train", "--out", str(tmp_path / "r")])


def test_a_spent_minutes_budget_stops_and_says_how_to_continue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = ["train", "--preset", "glow-digits", "--out", str(run), *TINY]
    assert cli.main([*argv, "--set", "train.minutes=1e-9"]) == 0
    err = capsys.readouterr().err
    assert "test bits/dim" in err and "after 0 steps" in err  # evaluated where it stopped
    assert f"stopped early by train.minutes; continue: imageflows train --resume {run}" in err
    assert (run / "checkpoints" / "step_0000000").is_dir()
    # the budget is the run's, across resumes: a resume within it trains no further
    resume = ["train", "--resume", str(run), "--no-progress", "--json"]
    assert cli.main(resume) == 0
    assert _json(capsys)["steps"] == 0
    assert cli.main([*resume, "--set", "train.minutes=0"]) == 0
    summary = _json(capsys)
    assert summary["steps"] == 4 and summary["stopped"] is None


def test_a_signal_reports_the_checkpoint_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(loop, "train_step", signal_after_step(3, signal.SIGTERM))
    run = tmp_path / "run"
    assert cli.main(["train", "--preset", "glow-digits", "--out", str(run), *TINY]) == 130
    err = capsys.readouterr().err  # a signal skips the evaluation: the last one is step 2's
    assert "test bits/dim" in err and "at step 2 (the last evaluation); 3 steps in" in err
    assert f"stopped early by a signal; continue: imageflows train --resume {run}" in err
    assert (run / "checkpoints" / "step_0000003").is_dir()


def test_train_refuses_a_non_empty_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    assert cli.main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


def test_resume_rejects_flags_that_would_change_the_run(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["train", "--resume", str(run_dir), "--preset", "glow-mnist"]) == 2
    assert "--preset" in capsys.readouterr().err


def test_eval_of_a_missing_run_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["eval", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"imageflows: error: {tmp_path / 'nope'}: no such run directory\n"
    assert cli.main(["eval", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_eval_human_output_and_raw_weights(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["eval", str(run_dir), "--batch-size", "100"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("test bits/dim ") and "on 360 images of digits" in captured.err
    assert cli.main(["eval", str(run_dir), "--raw", "--split", "train", "--json"]) == 0
    result = _json(capsys)
    assert result["weights"] == "raw" and result["n"] == 1437 and result["step"] == 4


def test_eval_iw_samples(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", str(run_dir), "--iw-samples", "2", "--json"]) == 0
    result = _json(capsys)
    assert result["iw_samples"] == 2 and math.isfinite(result["bpd"]) and result["bpd"] > 0
    assert cli.main(["eval", str(run_dir), "--iw-samples", "0"]) == 2


def test_eval_limit_takes_the_first_images(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["eval", str(run_dir), "--limit", "50", "--json"]) == 0
    first = _json(capsys)
    assert first["n"] == 50 and math.isfinite(first["bpd"])
    assert cli.main(["eval", str(run_dir), "--limit", "100000", "--json"]) == 0
    assert _json(capsys)["n"] == 360  # no more than the split holds
    assert cli.main(["eval", str(run_dir), "--limit", "0"]) == 2
    assert capsys.readouterr().err == "imageflows: error: --limit must be at least 1, got 0\n"


def test_eval_of_another_shape_needs_convert(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Colour 16x16 images against the 1x8x8 digits model: refused with a message naming
    --convert, then evaluated after the stated conversion."""
    for index in range(3):
        folder = tmp_path / "test" / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = [(40 * index + 7 * i) % 256 for i in range(16 * 16 * 3)]
        Image.frombytes("RGB", (16, 16), bytes(pixels)).save(folder / f"{index}.png")
    argv = ["eval", str(run_dir), "--data", "folder", "--data-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "3x16x16" in err and "1x8x8" in err and "--convert" in err and err.count("\n") == 1
    assert cli.main([*argv, "--convert", "--json"]) == 0
    result = _json(capsys)
    assert result["n"] == 3 and "as 1x8x8" in result["data"] and math.isfinite(result["bpd"])
    assert result["roundtrip_failures"] == 0


def test_sample_single_temperature(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deep" / "t.png"
    argv = ["sample", str(run_dir), "--n", "6", "--temperature", "0.5", "--nrow", "6"]
    assert cli.main([*argv, "--out", str(out), "--json"]) == 0
    result = _json(capsys)
    assert result["out"] == str(out) and result["temperatures"] == [0.5] and out.is_file()
    argv = ["sample", str(run_dir), "--temperatures", "0,1", "--nrow", "2"]
    assert cli.main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    assert "--nrow" in capsys.readouterr().err


def test_presets_lists_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["presets", "--json"]) == 0
    rows = {row["name"]: row for row in _json(capsys)["presets"]}
    assert {"glow-digits", "glow-mnist", "glow-cifar10"} <= set(rows)
    model = build_model(preset_config("glow-digits").model)
    assert rows["glow-digits"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert cli.main(["presets"]) == 0
    assert "glow-cifar10" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sample", "RUN", "--temperature", "1", "--temperatures", "0,1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not allowed with" in err[0] and err[0].startswith("imageflows: ")


def test_encode_then_decode_gives_the_images_back(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from imageflows.data import load_dataset
    from imageflows.latents_file import read_latents
    from imageflows.train import load

    latents, png = tmp_path / "z.pt", tmp_path / "x.png"
    assert (
        cli.main(
            ["encode", str(run_dir), "--n", "8", "--start", "2", "--out", str(latents), "--json"]
        )
        == 0
    )
    result = _json(capsys)
    assert result["n"] == 8 and result["shape"] == [8, 1, 8, 8]
    eps = read_latents(latents)
    assert eps.dtype == torch.float64 and eps.shape == (8, 1, 8, 8)
    assert cli.main(["decode", str(run_dir), str(latents), "--out", str(png)]) == 0
    images = load_dataset("digits", "test").images[2:10]
    assert torch.equal(load(run_dir).double().decode(eps), images)  # exact codes
    assert Image.open(png).size[0] >= 8 * 8
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a latents file")
    assert cli.main(["decode", str(run_dir), str(bad), "--out", str(png)]) == 2
    assert "not a readable latents file" in capsys.readouterr().err
    assert cli.main(["encode", str(run_dir), "--n", "0", "--out", str(latents)]) == 2


def test_sample_defaults_to_8_per_temperature_and_caps_the_picture(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "grid.png"
    assert cli.main(["sample", str(run_dir), "--temperatures", "0,0.5,1", "--out", str(out)]) == 0
    assert "wrote 24 samples" in capsys.readouterr().err
    with Image.open(out) as picture:
        assert picture.width < 400  # 8 digits a row (64 a row made it ~1950 px wide)
    assert cli.main(["sample", str(run_dir), "--n", "100000000", "--out", str(out)]) == 2
    assert "at most 4096" in capsys.readouterr().err
