"""A command that fails leaves the run directory byte-identical (no half-written config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageflows.cli import main
from imageflows.config import RESUMABLE, Config

from ._files import snapshot
from ._tiny_run import copy_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_run(tmp_path_factory.mktemp("integrity") / "run")


FAILING = [
    ["train", "--resume", "{run}", "--set", "model.depth=4"],
    ["train", "--resume", "{run}", "--set", "model.coupling=additive"],
    ["train", "--resume", "{run}", "--set", "train.batch_size=7"],
    ["train", "--resume", "{run}", "--set", "train.seed=3"],
    ["train", "--resume", "{run}", "--set", "data.name=mnist"],
    ["train", "--resume", "{run}", "--set", "train.nonsense=1"],
    ["train", "--resume", "{run}", "--set", "train.steps=-1"],
    ["sample", "{run}", "--n", "0", "--out", "{run}/samples-new.png"],
    ["sample", "{run}", "--temperature", "-1", "--out", "{run}/samples-new.png"],
    ["manipulate", "{run}", "--attribute", "not-a-class", "--out", "{run}/edit.png"],
    ["interpolate", "{run}", "--pairs", "0:100000", "--out", "{run}/interp.png"],
    ["eval", "{run}", "--batch-size", "0"],
]


@pytest.mark.parametrize("argv", FAILING, ids=lambda argv: " ".join(argv[:4]))
def test_a_failing_command_changes_nothing_in_the_run(
    run: Path, argv: list[str], capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(run)
    assert main([arg.format(run=run) for arg in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imageflows: error: ")
    assert snapshot(run) == before


def test_resume_names_the_refused_keys_and_those_that_may_change(
    run: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["train", "--resume", str(run), "--set", "model.depth=4"]) == 2
    err = capsys.readouterr().err
    assert "cannot change model.depth when resuming" in err
    assert all(key in err for key in RESUMABLE)


def test_every_resumable_key_is_a_config_key() -> None:
    keys = {f"{section}.{key}" for section, values in Config().to_dict().items() for key in values}
    assert set(RESUMABLE) <= keys


def test_a_model_config_the_model_rejects_leaves_no_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--no-progress", "--set", "model.num_classes=10",
            "--set", "model.class_conditioning=both"]  # fmt: skip
    assert main(argv) == 2
    assert "class_loss_weight=0" in capsys.readouterr().err
    assert not out.exists()
