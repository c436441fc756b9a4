"""The latent tools on a class-conditional run: encode/decode (latents files), interpolate,
manipulate and serve, on a hand-made tiny conditional Glow over digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from imageflows import cli
from imageflows.config import Config, DataConfig, ModelConfig
from imageflows.data import load_dataset
from imageflows.explore import Explorer
from imageflows.latent import class_labels, interpolate, nearer_endpoint_labels
from imageflows.latents_file import read_latents_file
from imageflows.models import build_model
from imageflows.serve import create_app
from imageflows.train import load

TINY = {"image_shape": (1, 8, 8), "num_levels": 17, "depth": 1, "hidden_channels": 8}


def make_run(path: Path, num_classes: int) -> Path:
    """A run directory (config and EMA weights, no checkpoints) of a tiny Glow on digits whose
    parameters are moved off their init, so that the class changes what a latent decodes to."""
    cfg = ModelConfig(**TINY, num_classes=num_classes, class_loss_weight=0.0)
    Config(model=cfg, data=DataConfig(name="digits")).save(path / "config.json")
    model = build_model(cfg)
    train = load_dataset("digits", "train")
    labels = train.labels[:128] if num_classes else None
    model.initialize(train.images[:128], labels=labels)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, path / "model.safetensors")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("cond"), num_classes=10)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("plain"), num_classes=0)


@pytest.fixture(scope="module")
def digits() -> object:
    return load_dataset("digits", "test")


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert cli.main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == 2
    return capsys.readouterr().err


def test_the_label_rule() -> None:
    model = build_model(ModelConfig(**TINY, num_classes=10, class_loss_weight=0.0))
    plain = build_model(ModelConfig(**TINY))
    labels = torch.tensor([3, 4])
    assert class_labels(plain, labels, 2) is None  # dataset labels are data only
    assert torch.equal(class_labels(model, labels, 2), labels)
    assert torch.equal(class_labels(model, labels, 2, override=7), torch.tensor([7, 7]))
    assert torch.equal(class_labels(model, 5, 3), torch.tensor([5, 5, 5]))
    with pytest.raises(ValueError, match="needs a class-conditional run"):
        class_labels(plain, None, 2, override=1)
    with pytest.raises(ValueError, match=r"--class 10: the run's model has classes 0\.\.9"):
        class_labels(model, labels, 2, override=10)
    with pytest.raises(ValueError, match="the file has no labels; pass --class C"):
        class_labels(model, None, 2, source="the file")
    with pytest.raises(ValueError, match="expected 3 labels"):
        class_labels(model, labels, 3)
    frames = nearer_endpoint_labels(torch.tensor([1, 2]), torch.tensor([5, 2]), steps=5)
    assert frames.tolist() == [[1, 1, 1, 5, 5], [2, 2, 2, 2, 2]]


def test_encode_decode_round_trip_with_stored_labels_and_another_class(
    run: Path, digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latents = tmp_path / "z.pt"
    result = _main(capsys, "encode", str(run), "--n", "12", "--start", "3", "--out", str(latents))
    assert result["conditioned"] is True and result["shape"] == [12, 1, 8, 8]
    stored = read_latents_file(latents)
    truth = digits.images[3:15]
    assert torch.equal(stored.labels, digits.labels[3:15])
    model = load(run).double()
    assert torch.equal(model.decode(stored.eps, stored.labels), truth)  # exact codes
    assert not torch.equal(model.encode(truth, (stored.labels + 1) % 10), stored.eps)

    decoded = _main(capsys, "decode", str(run), str(latents), "--out", str(tmp_path / "x.png"))
    assert decoded["labels"] == digits.labels[3:15].tolist()
    shifted = _main(
        capsys, "decode", str(run), str(latents), "--class", "7", "--out", str(tmp_path / "7.png")
    )
    assert shifted["labels"] == [7] * 12
    as_seven = model.decode(stored.eps, 7)
    assert not torch.equal(as_seven, truth)  # same style, another class
    assert (tmp_path / "x.png").read_bytes() != (tmp_path / "7.png").read_bytes()

    err = _fails(capsys, "decode", str(run), str(latents), "--class", "10", "--out", "x.png")
    assert "classes 0..9" in err


def test_decode_errors(
    run: Path, plain_run: Path, digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain.pt"
    result = _main(capsys, "encode", str(plain_run), "--n", "4", "--out", str(plain))
    assert result["conditioned"] is False and read_latents_file(plain).labels is None
    out = str(tmp_path / "x.png")
    assert "needs a class-conditional run" in _fails(
        capsys, "decode", str(plain_run), str(plain), "--class", "3", "--out", out
    )
    err = _fails(capsys, "decode", str(run), str(plain), "--out", out)
    assert "class-conditional (10 classes)" in err and "encoded without labels" in err
    assert "pass --class C" in err
    assert cli.main(["decode", str(run), str(plain), "--class", "2", "--out", out]) == 0

    # A format-1 file (before this change) still reads, unconditioned; later formats do not.
    eps = load(plain_run).double().encode(digits.images[:4])
    old = {"format": "imageflows-latents-1", "eps": eps, "labels": digits.labels[:4]}
    torch.save(old, tmp_path / "old.pt")
    assert read_latents_file(tmp_path / "old.pt").labels is None
    assert cli.main(["decode", str(plain_run), str(tmp_path / "old.pt"), "--out", out]) == 0
    bad = {
        "newer.pt": ({**old, "format": "imageflows-latents-9"}, "newer than this imageflows"),
        "nolabels.pt": (
            {**old, "format": "imageflows-latents-2", "conditioned": True, "labels": None},
            "conditioned latents need 'labels', int64 [4]",
        ),
        "shortlabels.pt": (
            {**old, "format": "imageflows-latents-2", "conditioned": True,
             "labels": torch.tensor([1, 2])},
            "int64 [4]",
        ),
        "negative.pt": (
            {**old, "format": "imageflows-latents-2", "conditioned": True,
             "labels": torch.tensor([1, -2, 0, 0])},
            "found -2",
        ),
        "flag.pt": (
            {**old, "format": "imageflows-latents-2", "conditioned": "yes"}, "true or false"
        ),
        "eps.pt": ({**old, "eps": torch.zeros(4, 8, 8)}, "'eps' must be a float tensor"),
    }  # fmt: skip
    for name, (payload, message) in bad.items():
        torch.save(payload, tmp_path / name)
        err = _fails(capsys, "decode", str(run), str(tmp_path / name), "--out", out)
        assert message in err and name in err, (name, err)


def test_interpolate_on_a_conditional_run(
    run: Path, plain_run: Path, digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = 0, 1
    assert digits.labels[a] != digits.labels[b]
    model = load(run)
    frames = interpolate(model, digits.images[[a]], digits.images[[b]], steps=5,
                         labels_a=digits.labels[[a]], labels_b=digits.labels[[b]])  # fmt: skip
    assert torch.equal(frames[0, 0], digits.images[a])  # the ends are the images
    assert torch.equal(frames[0, -1], digits.images[b])
    one = interpolate(model, digits.images[a], digits.images[b], 3,
                      labels_a=digits.labels[a], labels_b=digits.labels[b])  # fmt: skip
    assert torch.equal(one, frames[0, [0, 2, 4]])  # the same path, unbatched

    out = tmp_path / "i.png"
    result = _main(capsys, "interpolate", str(run), "--pairs", f"{a}:{b},3:4", "--steps", "5",
                   "--out", str(out))  # fmt: skip
    assert out.is_file() and result["class"] is None
    assert result["labels"][0] == [str(int(digits.labels[a])), str(int(digits.labels[b]))]
    result = _main(capsys, "interpolate", str(run), "--pairs", f"{a}:{b}", "--class", "4",
                   "--out", str(out))  # fmt: skip
    assert result["class"] == 4
    assert "needs a class-conditional run" in _fails(
        capsys, "interpolate", str(plain_run), "--pairs", "0:1", "--class", "4", "--out", str(out)
    )


def test_manipulate_on_a_conditional_run(
    run: Path, digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.png"
    result = _main(capsys, "manipulate", str(run), "--attribute", "3", "--alphas", "0,1.5",
                   "--images", "0,1,2", "--out", str(out))  # fmt: skip
    assert out.is_file() and result["n_positive"] == 37 and result["n_negative"] == 323
    edited = Explorer(run).manipulate([0, 1, 2], "3", [0.0, 1.5])
    assert torch.equal(edited[0], digits.images[:3])  # α = 0: each image with its own label


def test_serve_starts_on_a_conditional_run(run: Path, digits) -> None:
    client = create_app(Explorer(run)).test_client()
    assert client.get("/api/info").get_json()["num_classes"] == 10
    assert client.get("/api/sample?n=2&seed=1&class=3").status_code == 200
    answer = client.get("/api/interpolate?a=0&b=1&steps=4")
    assert answer.status_code == 200, answer.get_json()
    answer = client.post("/api/edit", json={"image": 2, "alphas": {"3": 0}})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["image"] == answer.get_json()["input"]  # exact reconstruction
    answer = client.post("/api/edit", json={"image": 2, "alphas": {"3": 1.5}})
    assert answer.status_code == 200, answer.get_json()


def test_an_unconditional_run_takes_no_class(plain_run: Path) -> None:
    explorer = Explorer(plain_run)
    frames = explorer.interpolate([(0, 1)], 3)
    assert torch.equal(frames[0, 0], explorer.images[0])
    with pytest.raises(ValueError, match="needs a class-conditional run"):
        explorer.interpolate([(0, 1)], 3, decode_class=2)
