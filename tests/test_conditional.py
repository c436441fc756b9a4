"""Class-conditional Glow and Flow++: labels, Bayes classification, training and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from imageflows import cli
from imageflows.config import Config
from imageflows.models import FlowPlusPlus, Glow, build_model
from imageflows.train.step import make_optimizer, train_step

SHAPE = (1, 4, 4)


def tiny_glow(**kwargs: object) -> Glow:
    kwargs = {"num_classes": 2, **kwargs}
    return Glow(SHAPE, levels=1, depth=2, hidden_channels=8, num_levels=4, **kwargs)


def tiny_flowpp(**kwargs: object) -> FlowPlusPlus:
    return FlowPlusPlus(
        SHAPE, layout="2cb", hidden_channels=8, blocks=1, components=2, heads=2, dropout=0.0,
        dequantization="uniform", num_levels=4, num_classes=2, **kwargs,
    )  # fmt: skip


MODELS = {
    "glow_prior": tiny_glow,
    "glow_both": lambda: tiny_glow(class_conditioning="both", class_loss_weight=0.0),
    "flowpp_coupling": tiny_flowpp,
    "flowpp_both": lambda: tiny_flowpp(class_conditioning="both"),
}


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 4, (n, *SHAPE), generator=torch.Generator().manual_seed(seed)).byte()


def randomised(model: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter moved off its (often zero) init, so the class embedding matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.fixture(params=sorted(MODELS))
def build(request: pytest.FixtureRequest):
    return MODELS[request.param]


@pytest.fixture
def model(build) -> torch.nn.Module:
    m = build()
    x = images(16)
    m.initialize(x, labels=torch.arange(16) % 2)
    return randomised(m).double()


def test_the_marginal_is_logsumexp_over_classes_and_posteriors_are_its_softmax(model) -> None:
    x, seed = images(5, 3), 11
    per_class = torch.stack(
        [
            model.log_prob(x, c, generator=torch.Generator().manual_seed(seed))
            for c in range(model.num_classes)
        ],
        dim=1,
    )
    assert not torch.allclose(per_class[:, 0], per_class[:, 1])  # the class matters
    marginal = torch.logsumexp(per_class, 1) - math.log(model.num_classes)
    torch.testing.assert_close(
        model.class_log_probs(x, torch.Generator().manual_seed(seed)).logsumexp(1) - math.log(2),
        marginal,
    )
    predicted, posterior = model.classify(x, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(posterior.sum(1), torch.ones(5, dtype=posterior.dtype))
    torch.testing.assert_close(posterior, per_class.softmax(1))
    assert predicted.dtype == torch.int64 and torch.equal(predicted, per_class.argmax(1))


def test_round_trips_samples_and_state_dict(build, model, tmp_path: Path) -> None:
    x, labels = images(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    assert torch.equal(model.decode(model.encode(x, labels), labels), x)
    eps = model.encode(x, labels)
    assert not torch.equal(model.encode(x, 1 - labels), eps)
    samples = model.sample(7, temperature=0.5, labels=1, generator=torch.Generator())
    assert samples.shape == (7, *SHAPE) and samples.dtype == torch.uint8
    assert model.sample(3, labels=torch.tensor([0, 1, 1])).shape == (3, *SHAPE)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    rebuilt = build().double()
    rebuilt.load_state_dict(torch.load(tmp_path / "w.pt"))
    rebuilt.eval()
    g = torch.Generator().manual_seed(0)
    expected = model.log_prob(x, labels, generator=g)
    assert torch.equal(rebuilt.log_prob(x, labels, generator=torch.Generator().manual_seed(0)),
                       expected)  # fmt: skip


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, x: m.log_prob(x), ValueError, "class-conditional"),
        (lambda m, x: m.log_prob(x, torch.tensor([0, 1, 2])), ValueError, "0..1, found 2"),
        (lambda m, x: m.log_prob(x, torch.tensor([0, 1])), ValueError, "expected 3 labels"),
        (lambda m, x: m.log_prob(x, torch.zeros(3)), TypeError, "int64"),
        (lambda m, x: m.encode(x, -1), ValueError, "found -1"),
        (lambda m, x: m.sample(2, labels=torch.tensor([1])), ValueError, "expected 2 labels"),
        (lambda m, x: m.log_prob(x, torch.Generator()), TypeError, "generator="),
    ],
)
def test_bad_labels_are_clear_errors(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call(tiny_glow(), images(3))


def test_unconditional_models_refuse_labels_and_classify() -> None:
    model = tiny_glow(num_classes=0)
    assert model.num_classes == 0
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(images(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional"):
        model.classify(images(2))


def test_glow_classifier_loss_is_reported_apart_from_bits_per_dim() -> None:
    model = tiny_glow()
    x, labels = images(8), torch.arange(8) % 2
    model.initialize(x, labels=labels)
    result = train_step(model, make_optimizer(model, 1e-3), x, labels=labels)
    assert result.class_bits == pytest.approx(1.0, abs=1e-5)  # zero-initialised: log2(2) bits
    assert model.objective(x, None, labels).class_nll.shape == (8,)
    assert tiny_flowpp().objective(x, None, labels).class_nll is None
    with pytest.raises(ValueError, match="class_loss_weight=0"):
        tiny_glow(class_conditioning="coupling")


def dark_and_bright(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: pixels in {0, 1}; class 1: pixels in {2, 3} (4 levels, 4x4 images)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.randint(0, 2, (n, *SHAPE), generator=g) + 2 * labels[:, None, None, None]
    return x.byte(), labels


@pytest.mark.parametrize("build", [tiny_glow, tiny_flowpp], ids=["glow", "flowpp"])
def test_classify_separates_dark_from_bright_after_training(build) -> None:
    torch.manual_seed(0)
    model = build()
    x, labels = dark_and_bright(256, 0)
    model.initialize(x, labels=labels)
    optimizer = make_optimizer(model, 5e-3)
    for step in range(150):
        batch = torch.arange(32) + 32 * (step % 8)
        g = torch.Generator().manual_seed(step)
        train_step(model, optimizer, x[batch], g, labels=labels[batch], grad_clip=50.0)
    held_out, truth = dark_and_bright(64, 1)
    predicted, posterior = model.classify(held_out, torch.Generator().manual_seed(0))
    assert (predicted == truth).float().mean() > 0.95
    assert posterior.shape == (64, 2)


def test_config_keys_and_old_configs(tmp_path: Path) -> None:
    old = Config().to_dict()
    for key in ("num_classes", "class_conditioning", "class_loss_weight"):
        old["model"].pop(key)
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert Config.load(tmp_path / "config.json").model.num_classes == 0
    cfg = Config().with_overrides(["model.num_classes=10", "model.class_conditioning=both",
                                   "model.class_loss_weight=0"])  # fmt: skip
    model = build_model(cfg.model)
    assert model.num_classes == 10 and model.classifier is None
    with pytest.raises(ValueError, match="class_loss_weight"):
        Config().with_overrides(["model.type=flowpp", "model.class_loss_weight=0.1"])


def test_cli_train_eval_sample_conditional(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    tiny = ["train.steps=3", "train.eval_every=3", "train.checkpoint_every=3",
            "train.batch_size=16", "train.init_batch_size=32", "train.eval_images=40",
            "model.depth=1", "model.hidden_channels=8", "model.num_classes=10"]  # fmt: skip
    argv = ["train", "--out", str(run), "--no-progress"] + [f"--set={s}" for s in tiny]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "test_accuracy" in records[-1] and "train_class_bits" in records[0]
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["accuracy"] <= 1 and math.isfinite(result["bpd_marginal"])
    assert cli.main(["eval", str(run)]) == 0
    assert "Bayes-classifier accuracy" in capsys.readouterr().err
    assert cli.main(["sample", str(run), "--class", "3", "--n", "4",
                     "--out", str(tmp_path / "three.png"), "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["classes"] == [3]
    assert cli.main(["sample", str(run), "--out", str(tmp_path / "all.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == list(range(10))
    assert (tmp_path / "all.png").is_file()
    assert cli.main(["sample", str(run), "--class", "10", "--out", str(tmp_path / "x.png")]) == 2
    assert "0..9" in capsys.readouterr().err
    bad = ["train", "--out", str(tmp_path / "bad"), "--no-progress", "--set=model.num_classes=3"]
    assert cli.main(bad) == 2
    assert "10 classes" in capsys.readouterr().err


def test_serve_samples_a_class_of_a_conditional_model_only() -> None:
    from imageflows.serve import create_app

    class Stand:  # the parts of an Explorer that the sample endpoint and info use
        run, step, description, split, label_names = Path("r"), 0, "toy", "test", ["a", "b"]
        images, labels = images(2), torch.tensor([0, 1])

        def __init__(self, model: torch.nn.Module) -> None:
            self.model = model

        def __len__(self) -> int:
            return 2

        def usable_attributes(self) -> list:
            return []

        def directions(self, names: list) -> dict:
            return {}

    model = tiny_glow()
    model.initialize(images(8), labels=torch.arange(8) % 2)
    client = create_app(Stand(model.eval())).test_client()
    assert client.get("/api/info").get_json()["num_classes"] == 2
    answer = client.get("/api/sample?n=2&seed=1&class=1")
    assert answer.status_code == 200 and answer.get_json()["label"] == 1
    assert "between 0 and 1" in client.get("/api/sample?class=2").get_json()["error"]
    plain = create_app(Stand(tiny_glow(num_classes=0).eval())).test_client()
    assert plain.get("/api/info").get_json()["num_classes"] == 0
    assert plain.get("/api/sample?class=0").status_code == 400
    assert plain.get("/api/sample?n=2").get_json()["label"] is None
