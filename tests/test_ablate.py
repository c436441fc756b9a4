"""`imageflows.ablate`: variant configs, the resumable ablation run and `imageflows ablate`."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from imageflows import ablate, cli
from imageflows.config import ConfigError
from imageflows.train import loop

from ._signals import signal_after_step

VARIANTS = ["flowpp", "glow-reverse-additive"]
TINY = [
    "train.steps=3", "train.batch_size=16", "train.init_batch_size=32", "model.depth=1",
    "model.hidden_channels=8", "model.blocks=1", "model.components=2",
    "train.sample_temperatures=",
]  # fmt: skip


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny Flow++ and a tiny Glow on digits, 3 steps each."""
    out = tmp_path_factory.mktemp("ablate") / "ablation"
    return out, ablate.run_ablation("digits", out, VARIANTS, overrides=TINY, progress=False)


def _no_training(*args: object, **kwargs: object) -> None:
    raise AssertionError("a finished variant was trained again")


def test_tables_hold_one_row_per_variant(ablation: tuple[Path, dict]) -> None:
    out, result = ablation
    assert json.loads((out / "ablation.json").read_text()) == result
    assert [row["variant"] for row in result["rows"]] == VARIANTS and result["pending"] == []
    assert result["data"] == "digits (scikit-learn)" and result["n_test"] == 360
    assert result["budget"]["steps"] == 3 and result["budget"]["batch_size"] == 16
    for row in result["rows"]:
        assert row["steps"] == 3 and row["recon_max_abs"] < 0.01
        assert 0 < row["test_bpd"] < 10 and row["train_seconds"] > 0 and row["parameters"] > 0
        assert (out / row["variant"] / "checkpoints" / "step_0000003").is_dir()
    # the variational dequantizer's context network alone outweighs the one-step Glow
    assert result["rows"][0]["parameters"] > 100_000 > result["rows"][1]["parameters"]
    table = (out / "ablation.md").read_text()
    assert table.startswith("# Ablation on digits (scikit-learn)")
    assert "| variant | what it changes | test bits/dim | parameters |" in table
    glow = result["rows"][1]
    assert "| glow-reverse-additive | channel reversal, additive coupling | " in table
    assert f"{glow['test_bpd']:.4f} | {glow['parameters']:,} |" in table
    assert "train.grad_clip 1.0 (flowpp) / 50.0 (glow)" in table  # stated, not hidden


def test_rerun_skips_finished_variants(
    ablation: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, result = ablation
    monkeypatch.setattr(ablate, "train", _no_training)
    monkeypatch.setattr(ablate, "evaluate", _no_training)  # numbers are read back from disk
    again = ablate.run_ablation("digits", out, VARIANTS, overrides=TINY, progress=False)
    assert again == result


def test_limit_evaluates_the_first_test_images_without_training_again(
    ablation: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Path(shutil.copytree(ablation[0], tmp_path / "copy"))
    monkeypatch.setattr(ablate, "train", _no_training)
    result = ablate.run_ablation(
        "digits", out, VARIANTS, overrides=TINY, progress=False, limit=100
    )
    assert result["n_test"] == 100 and result["n_split"] == 360
    for row, full in zip(result["rows"], ablation[1]["rows"], strict=True):
        assert row["n_test"] == 100 and row["test_bpd"] != full["test_bpd"]
    table = (out / "ablation.md").read_text()
    assert "EMA weights on the first 100 of the 360 test images" in table
    with pytest.raises(ValueError, match="--limit must be a positive number of test images"):
        ablate.run_ablation("digits", out, VARIANTS, overrides=TINY, limit=0)


def test_interrupted_ablation_leaves_a_partial_table_and_resumes(
    ablation: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Path(shutil.copytree(ablation[0], tmp_path / "copy"))
    names = [VARIANTS[0], "glow-shuffle-additive"]
    monkeypatch.setattr(loop, "train_step", signal_after_step(2, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the new variant's second step
        ablate.run_ablation("digits", out, names, overrides=TINY, progress=False)
    partial = json.loads((out / "ablation.json").read_text())
    assert [row["variant"] for row in partial["rows"]] == [VARIANTS[0]]
    assert partial["pending"] == ["glow-shuffle-additive"]
    assert "Not trained yet: glow-shuffle-additive." in (out / "ablation.md").read_text()

    result = ablate.run_ablation("digits", out, names, overrides=TINY, progress=False)
    assert [row["steps"] for row in result["rows"]] == [3, 3] and result["pending"] == []
    checkpoints = sorted(p.name for p in (out / names[1] / "checkpoints").iterdir())
    assert checkpoints == ["step_0000002", "step_0000003"]  # resumed where Ctrl-C stopped it


def test_a_minutes_budget_ends_a_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spent = [*TINY, "train.minutes=1e-9"]  # spent before the first step
    result = ablate.run_ablation("digits", tmp_path, VARIANTS[1:], overrides=spent, progress=False)
    assert result["rows"][0]["steps"] == 0 and result["budget"]["minutes"] == 1e-9
    assert (
        "1e-09 minutes of training (at most 3 steps) of 16"
        in (tmp_path / "ablation.md").read_text()
    )
    monkeypatch.setattr(ablate, "train", _no_training)  # finished: a rerun reads it back
    assert (
        ablate.run_ablation("digits", tmp_path, VARIANTS[1:], overrides=spent, progress=False)
        == result
    )


def test_a_larger_budget_resumes_the_run(ablation: tuple[Path, dict], tmp_path: Path) -> None:
    out = Path(shutil.copytree(ablation[0], tmp_path / "copy"))
    more = [*TINY, "train.steps=4"]
    result = ablate.run_ablation("digits", out, VARIANTS[1:], overrides=more, progress=False)
    (row,) = result["rows"]
    assert row["steps"] == 4 and row["test_bpd"] != ablation[1]["rows"][1]["test_bpd"]
    checkpoints = sorted(p.name for p in (out / VARIANTS[1] / "checkpoints").iterdir())
    assert checkpoints == ["step_0000003", "step_0000004"]  # continued, not started again


def test_another_config_in_the_same_directory_is_refused(ablation: tuple[Path, dict]) -> None:
    with pytest.raises(ValueError, match=r"model\.hidden_channels: 8 there, 16 now"):
        ablate.run_ablation(
            "digits", ablation[0], VARIANTS[:1], overrides=[*TINY, "model.hidden_channels=16"]
        )


def test_variant_configs() -> None:
    base = ablate.variant_config("flowpp", "mnist", "DATA", ["train.steps=7"])
    assert (base.model.type, base.model.coupling, base.model.dequantization) == (
        "flowpp",
        "mixture",
        "variational",
    )
    assert base.model.attention and base.train.steps == 7 and base.data.dir == "DATA"
    for name, key, value in [
        ("flowpp-uniform", "dequantization", "uniform"),
        ("flowpp-affine", "coupling", "affine"),
        ("flowpp-noattn", "attention", False),
    ]:
        cfg = ablate.variant_config(name, "mnist", "DATA", ["train.steps=7"])
        assert getattr(cfg.model, key) == value
        assert cfg == base.with_overrides([f"model.{key}={value}"])  # nothing else changes
    glow = ablate.variant_config("glow-shuffle-additive", "cifar10")
    assert (glow.model.type, glow.model.permutation, glow.model.coupling) == (
        "glow",
        "shuffle",
        "additive",
    )
    assert glow.model.image_shape == (3, 32, 32) and glow.data.name == "cifar10"
    tiny = ablate.variant_config("flowpp", "digits")
    assert tiny.model.image_shape == (1, 8, 8) and tiny.model.num_levels == 17
    assert len(ablate.VARIANTS) == 10


def test_model_overrides_go_to_the_models_that_have_the_key() -> None:
    sizes = ["model.depth=3", "model.blocks=2", "model.hidden_channels=8"]
    glow = ablate.variant_config("glow-1x1-affine", "digits", overrides=sizes)
    flowpp = ablate.variant_config("flowpp", "digits", overrides=sizes)
    assert glow.model.depth == 3 and glow.model.hidden_channels == 8
    assert flowpp.model.blocks == 2 and flowpp.model.hidden_channels == 8
    with pytest.raises(ConfigError, match="unknown config key model.nope"):
        ablate.variant_config("flowpp", "digits", overrides=["model.nope=1"])


def test_bad_variants_and_overrides_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown ablation variant 'glow'; choose from flowpp, "):
        ablate.run_ablation("digits", tmp_path, ["glow"])
    with pytest.raises(ConfigError, match="model.coupling"):
        ablate.run_ablation("digits", tmp_path, ["flowpp"], overrides=["model.coupling=affine"])
    with pytest.raises(ConfigError, match="--data-dir"):
        ablate.run_ablation("digits", tmp_path, ["flowpp"], overrides=["data.dir=X"])
    with pytest.raises(ValueError, match="no ablation variants"):
        ablate.run_ablation("digits", tmp_path, [" "])
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_ablate_command(ablation: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    out, result = ablation
    argv = ["ablate", "--data", "digits", "--out", str(out), "--variants", ",".join(VARIANTS)]
    argv += [arg for item in TINY for arg in ("--set", item)]
    assert cli.main([*argv, "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == result
    assert cli.main([*argv, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "| glow-reverse-additive |" in captured.err
    assert cli.main(["ablate", "--out", str(out), "--variants", "nope"]) == 2
    assert "unknown ablation variant 'nope'" in capsys.readouterr().err
