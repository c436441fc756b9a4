"""Out-of-distribution scores, their AUROC/AUPR, the synthetic sets, `score` and `ood`."""

from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from imageflows import cli, ood
from imageflows.data import CONVERSION_RULE, load_dataset
from imageflows.metrics import score_images
from imageflows.ood import experiment
from imageflows.train import load

TINY = [
    "--set", "train.steps=4", "--set", "train.eval_every=2", "--set", "train.checkpoint_every=2",
    "--set", "model.depth=2", "--set", "model.hidden_channels=16", "--no-progress",
]  # fmt: skip


def _train(out: Path, *extra: str) -> Path:
    assert cli.main(["train", "--preset", "glow-digits", "--out", str(out), *TINY, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run on digits (4 steps)."""
    return _train(tmp_path_factory.mktemp("ood") / "run")


@pytest.fixture(scope="module")
def background_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny run, of another seed, as the background model."""
    return _train(tmp_path_factory.mktemp("ood") / "background", "--set", "train.seed=1")


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image-folder tree of 12 random 16x16 RGB PNG images in two classes."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for i in range(12):
        path = root / "test" / ("ab"[i % 2]) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


# The scores and their rating.


def test_auroc_aupr_known_values() -> None:
    auroc, aupr = ood.auroc_aupr(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.5, 3.0]))
    # 5 of the 6 (in, OOD) pairs are ordered; ranked 3 (OOD), 2, 1.5 (OOD): AP = ½·1 + ½·⅔
    assert auroc == pytest.approx(5 / 6) and aupr == pytest.approx(5 / 6)
    assert ood.auroc_aupr(torch.zeros(4), torch.ones(3)) == (1.0, 1.0)
    auroc, aupr = ood.auroc_aupr(torch.ones(4), torch.zeros(3))
    assert auroc == 0.0 and aupr == pytest.approx(3 / 7)  # AP of the worst order: the base rate


def test_auroc_aupr_match_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(0)
    inside = torch.randn(200, generator=generator, dtype=torch.float64)
    outside = torch.randn(150, generator=generator, dtype=torch.float64) + 0.7
    labels = np.r_[np.zeros(200), np.ones(150)]
    scores = np.r_[inside.numpy(), outside.numpy()]
    auroc, aupr = ood.auroc_aupr(inside, outside)
    assert 0.6 < auroc < 0.9
    assert auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert aupr == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_auroc_non_finite_is_most_ood() -> None:
    inside, outside = torch.tensor([1.0, 2.0]), torch.tensor([math.inf, math.nan])
    assert ood.auroc_aupr(inside, outside) == (1.0, 1.0)
    with pytest.raises(ValueError, match="both"):
        ood.auroc_aupr(torch.zeros(0), torch.ones(2))


@pytest.mark.parametrize(("shape", "levels"), [((1, 8, 8), 17), ((3, 10, 12), 256)])
def test_png_bits_per_dim_is_pillows_length(shape: tuple[int, int, int], levels: int) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, levels, (3, *shape), generator=generator).to(torch.uint8)
    images[0] = 0  # a constant image compresses far below the noise
    bits = ood.png_bits_per_dim(images, levels)
    expected = []
    for image in images.numpy():
        pixels = np.floor(image.astype(np.float64) * 255 / (levels - 1) + 0.5).astype(np.uint8)
        picture = pixels[0] if shape[0] == 1 else pixels.transpose(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG", compress_level=9)
        expected.append(8 * len(buffer.getvalue()) / math.prod(shape))
    assert bits.dtype == torch.float64 and bits.tolist() == pytest.approx(expected, abs=1e-12)
    assert bits[0] < bits[1]


def test_complexity_and_likelihood_ratio_subtract() -> None:
    bpd, other = torch.tensor([3.0, 5.0]), torch.tensor([1.0, 1.5])
    assert ood.complexity_corrected(bpd, other).tolist() == [2.0, 3.5]
    assert ood.likelihood_ratio(bpd, other).tolist() == [2.0, 3.5]


def test_typicality_scores_known_values() -> None:
    # Batches of 2: means 2.0, 2.0 are typical; means 3, 1 are 1 bit/dim off either way.
    inside = ood.typicality_scores(
        torch.tensor([1.9, 2.1, 2.0, 2.0, 7.0], dtype=torch.float64), 2.0, 2
    )
    outside = ood.typicality_scores(
        torch.tensor([3.0, 3.0, 1.0, 1.0], dtype=torch.float64), 2.0, 2
    )
    assert inside.tolist() == pytest.approx([0.0, 0.0])  # the 5th image's batch is incomplete
    assert outside.tolist() == pytest.approx([1.0, 1.0])
    assert ood.auroc_aupr(inside, outside) == (1.0, 1.0)
    single = ood.typicality_scores(torch.tensor([1.0, 4.0]), 2.0, 1)
    assert single.tolist() == pytest.approx([1.0, 2.0])
    with pytest.raises(ValueError, match="at least 1"):
        ood.typicality_scores(torch.ones(4), 2.0, 0)


# The synthetic sets.


def test_synthetic_sets() -> None:
    reference = load_dataset("digits", "test")
    noise = ood.synthetic_set("noise", 50, reference, seed=3)
    assert noise.images.shape == (50, 1, 8, 8) and noise.images.dtype == torch.uint8
    assert noise.num_levels == 17 and int(noise.images.max()) == 16 and noise.images.min() == 0
    assert torch.equal(noise.images, ood.synthetic_set("noise", 50, reference, seed=3).images)
    assert not torch.equal(noise.images, ood.synthetic_set("noise", 50, reference, 4).images)

    constant = ood.synthetic_set("constant", 17, reference)
    flat = constant.images.flatten(1)
    assert (flat == flat[:, :1]).all() and flat[:, 0].tolist() == list(range(17))
    assert ood.synthetic_set("constant", 3, reference).images[:, 0, 0, 0].tolist() == [0, 8, 16]

    inverted = ood.synthetic_set("inverted", 10, reference)
    assert torch.equal(inverted.images.long(), 16 - reference.images[:10].long())
    assert torch.equal(inverted.labels, reference.labels[:10])
    with pytest.raises(ValueError, match="unknown synthetic"):
        ood.synthetic_set("stripes", 5, reference)


def test_perturb_and_write_image_folder(tmp_path: Path) -> None:
    digits = load_dataset("digits", "test")
    perturbed = ood.perturb(digits, 0.2, seed=1)
    changed = (perturbed.images != digits.images).double().mean().item()
    assert 0.15 < changed < 0.2  # a replacement keeps the level with probability 1/17
    assert torch.equal(perturbed.images, ood.perturb(digits, 0.2, seed=1).images)
    assert torch.equal(ood.perturb(digits, 0.0).images, digits.images)
    part = digits.subset(range(20))
    ood.write_image_folder(part, tmp_path, "train")
    back = load_dataset("folder", "train", tmp_path)
    names = [part.label_names[label] for label in part.labels]
    rank = [names[:i].count(name) for i, name in enumerate(names)]  # round-robin over classes
    order = sorted(range(20), key=lambda i: (rank[i], names[i]))
    assert back.num_levels == 256 and back.image_shape == (1, 8, 8)
    expected = (part.images[order].long() * 255 + 8) // 16
    assert torch.equal(back.images.long(), expected)
    with pytest.raises(FileExistsError):
        ood.write_image_folder(part, tmp_path, "train")


# The commands, end to end.


def test_score_command(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "scores.csv"
    argv = ["score", str(run_dir), "--data", "digits", "--limit", "30", "--out", str(out)]
    assert cli.main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = _csv(out)
    assert list(rows[0]) == ["index", "label", "bpd", "roundtrip_error"]
    assert result["n"] == len(rows) == 30 and result["conversion"] is None
    test = load_dataset("digits", "test")
    expected = score_images(load(run_dir), test.images[:30], 500, 0)
    assert [float(r["bpd"]) for r in rows] == pytest.approx(expected.bpd.tolist(), abs=1e-12)
    assert [int(r["label"]) for r in rows] == test.labels[:30].tolist()
    assert result["bpd"] == pytest.approx(expected.bpd.mean().item())


def test_score_command_class_conditional(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load(run_dir)
    model.num_classes = 3

    def classify(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = torch.softmax(x.flatten(1)[:, :3].double(), dim=1)
        return posterior.argmax(1), posterior

    model.classify = classify
    monkeypatch.setattr(experiment, "load", lambda run: model)
    given = []

    def score_images_given(*args: object, labels: torch.Tensor, **kwargs: object) -> object:
        given.append(labels)  # the stand-in's flow is unconditional: score it without them
        model.num_classes = 0
        try:
            return score_images(*args, **kwargs)
        finally:
            model.num_classes = 3

    monkeypatch.setattr(experiment, "score_images", score_images_given)
    out = tmp_path / "scores.csv"
    assert cli.main(["score", str(run_dir), "--limit", "7", "--out", str(out)]) == 0
    rows = _csv(out)
    assert list(rows[0])[4:] == ["predicted", "posterior_0", "posterior_1", "posterior_2"]
    predicted, posterior = classify(load_dataset("digits", "test").images[:7])
    assert [int(r["predicted"]) for r in rows] == predicted.tolist()
    assert [float(r["posterior_2"]) for r in rows] == pytest.approx(posterior[:, 2].tolist())
    assert torch.equal(given[0], predicted)  # digits' labels 0..9 are no classes of 3


def test_ood_command(
    run_dir: Path, background_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "noise"
    argv = ["ood", str(run_dir), "--ood-data", "noise", "--limit", "40", "--out", str(out)]
    argv += ["--background", str(background_dir), "--typicality-batch", "4", "--json"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"out": str(out), **json.loads((out / "summary.json").read_text())}
    names = ["bpd", "complexity", "likelihood_ratio", "typicality"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.html", "scores.csv", "summary.json", *(f"hist_{n}.png" for n in names)]
    )
    assert list(summary["scores"]) == names
    assert summary["scores"]["bpd"]["auroc"] > 0.5  # noise is less likely than digits
    assert summary["scores"]["typicality"]["n_in"] == 10  # 40 images in batches of 4
    assert summary["in_distribution"]["n"] == summary["ood"]["n"] == 40
    assert summary["conversion"] is None and summary["background"] == str(background_dir)

    rows = _csv(out / "scores.csv")
    assert [r["set"] for r in rows] == ["in"] * 40 + ["ood"] * 40
    bpd = torch.tensor([float(r["bpd"]) for r in rows], dtype=torch.float64)
    for score, rule in [("complexity", "png_bpd"), ("likelihood_ratio", "background_bpd")]:
        other = torch.tensor([float(r[rule]) for r in rows], dtype=torch.float64)
        assert [float(r[score]) for r in rows] == pytest.approx((bpd - other).tolist())
    background = score_images(load(background_dir), load_dataset("digits", "test").images[:40])
    assert [float(r["background_bpd"]) for r in rows[:40]] == pytest.approx(
        background.bpd.tolist(), abs=1e-12
    )
    train_mean = summary["train_reference"]["mean_bpd"]
    first = abs(bpd[:4].mean().item() - train_mean)
    assert float(rows[0]["typicality"]) == pytest.approx(first)
    for auroc, aupr in [ood.auroc_aupr(
        torch.tensor([float(r[name]) for r in rows[:40]]),
        torch.tensor([float(r[name]) for r in rows[40:]]),
    ) for name in names[:3]]:  # fmt: skip
        assert (auroc, aupr) in [(s["auroc"], s["aupr"]) for s in summary["scores"].values()]
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "Ren et al." in page


def test_ood_command_converts_a_folder(
    run_dir: Path, folder_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "folder"
    argv = ["ood", str(run_dir), "--ood-data", "folder", "--ood-data-dir", str(folder_data)]
    argv += ["--limit", "12", "--out", str(out), "--json"]
    assert cli.main(argv) == 2
    assert "pass --convert" in capsys.readouterr().err and not out.exists()
    assert cli.main([*argv, "--convert"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["conversion"] == CONVERSION_RULE
    assert summary["ood"]["conversion"] == CONVERSION_RULE
    assert summary["in_distribution"]["conversion"] is None
    assert "as 1x8x8" in summary["ood"]["description"]
    assert summary["ood"]["n"] == 12 and "likelihood_ratio" not in summary["scores"]
    assert html.escape(CONVERSION_RULE) in (out / "index.html").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ood-data", "stripes"], "unknown dataset 'stripes'"),
        (["--ood-data", "noise", "--typicality-batch", "0"], "--typicality-batch must be"),
        (["--ood-data", "noise", "--limit", "0"], "--limit must be at least 1"),
        (["--ood-data", "noise", "--typicality-batch", "50"], "needs at least as many"),
        (["--ood-data", "noise", "--background", "missing"], "no such run directory"),
    ],
)
def test_ood_command_errors(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    assert cli.main(["ood", str(run_dir), "--limit", "20", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imageflows: error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_ood_and_score_refuse_bad_places(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert cli.main(["ood", str(run_dir), "--ood-data", "noise", "--out", str(taken)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    missing = tmp_path / "no-run"
    assert (
        cli.main(["ood", str(missing), "--ood-data", "noise", "--out", str(tmp_path / "o")]) == 2
    )
    assert "no such run directory" in capsys.readouterr().err
    assert cli.main(["score", str(missing), "--out", str(tmp_path / "s.csv")]) == 2
    assert cli.main(["score", str(run_dir), "--limit", "0", "--out", str(tmp_path / "s.csv")]) == 2
    assert (
        cli.main(["score", str(run_dir), "--data", "nope", "--out", str(tmp_path / "s.csv")]) == 2
    )
    assert "valid names" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
