"""`imageflows.config`: per-model-type keys, overrides, and one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageflows.config import Config, ConfigError, ModelConfig, TrainConfig, model_keys
from imageflows.models import PRESETS

GLOW_ONLY = ["levels", "depth", "class_loss_weight"]
FLOWPP_ONLY = ["layout", "blocks", "heads", "attention", "dropout"]
DEQUANTIZER = {"dequant_couplings": 4, "dequant_blocks": 2, "dequant_context_channels": 32}


def test_each_type_has_its_own_keys() -> None:
    glow, flowpp = set(model_keys("glow")), set(model_keys("flowpp"))
    assert glow - flowpp == set(GLOW_ONLY) and flowpp - glow == set(FLOWPP_ONLY)
    assert set(DEQUANTIZER) <= glow & flowpp
    with pytest.raises(ConfigError, match="unknown model.type 'realnvp'"):
        model_keys("realnvp")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name: str, tmp_path: Path) -> None:
    cfg = PRESETS[name]
    cfg.save(tmp_path / "config.json")
    written = json.loads((tmp_path / "config.json").read_text())
    assert list(written["model"]) == model_keys(cfg.model.type)
    assert Config.load(tmp_path / "config.json") == cfg


def test_config_json_records_the_dequantizer() -> None:
    model = Config().to_dict()["model"]
    assert {key: model[key] for key in DEQUANTIZER} == DEQUANTIZER
    cfg = Config().with_overrides(["model.dequant_blocks=3", "model.dequant_couplings=8"])
    assert (cfg.model.dequant_blocks, cfg.model.dequant_couplings) == (3, 8)


@pytest.mark.parametrize(
    ("model_type", "key", "value"),
    [("glow", key, "1") for key in FLOWPP_ONLY] + [("flowpp", key, "1") for key in GLOW_ONLY],
)
def test_a_key_of_the_other_type_is_refused(model_type: str, key: str, value: str) -> None:
    base = Config(model=ModelConfig(type=model_type))
    message = rf"model\.{key} does not apply to model\.type '{model_type}'; valid keys for"
    with pytest.raises(ConfigError, match=message) as err:
        base.with_overrides([f"model.{key}={value}"])
    assert "\n" not in str(err.value)
    assert all(f"model.{k}" in str(err.value) for k in model_keys(model_type))
    raw = base.to_dict()
    raw["model"][key] = 1
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(raw)


def test_switching_the_type_drops_the_old_types_keys() -> None:
    glow = PRESETS["glow-digits"]
    flowpp = glow.with_overrides(["model.type=flowpp", "model.blocks=2"])
    assert flowpp.model.blocks == 2 and flowpp.model.hidden_channels == 64
    assert "levels" not in flowpp.to_dict()["model"]
    with pytest.raises(ConfigError, match="model.depth does not apply to model.type 'flowpp'"):
        glow.with_overrides(["model.type=flowpp", "model.depth=4"])
    with pytest.raises(ConfigError, match="model.layout does not apply"):
        ModelConfig(type="glow", layout="sq")


def test_overrides_are_coerced_and_checked() -> None:
    cfg = Config().with_overrides(
        [
            "train.lr=3e-4",
            "train.steps=1e3",
            "train.compile=yes",
            "data.dir=none",
            "model.image_shape=3,16,16",
            "train.sample_temperatures=",
        ]  # fmt: skip
    )
    assert cfg.train.lr == 3e-4 and cfg.train.steps == 1000 and cfg.train.compile is True
    assert cfg.data.dir is None and cfg.model.image_shape == (3, 16, 16)
    assert cfg.train.sample_temperatures == ()
    for item, message in [
        ("train.lr", "expected section.key=value"),
        ("optim.lr=1", "unknown config section 'optim'"),
        ("train.foo=1", "unknown config key train.foo; valid keys: train.steps"),
        ("model.foo=1", "unknown config key model.foo; valid keys for glow: model.type"),
        ("train.steps=1.5", "train.steps: cannot read '1.5' as int"),
        ("train.compile=maybe", "train.compile: cannot read 'maybe' as bool"),
        ("model.image_shape=1,8", "model.image_shape: expected 3 comma-separated values"),
        ("model.type=realnvp", "unknown model.type 'realnvp'"),
        ("train.batch_size=0", "train.batch_size must be ≥ 1, got 0"),
        ("train.precision=fp16", "train.precision must be one of fp32, bf16, got 'fp16'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Config().with_overrides([item])


def test_train_values_are_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"train.lr_backoff must be in \(0, 1\], got 0"):
        TrainConfig(lr_backoff=0.0)
    with pytest.raises(ConfigError, match="train.grad_clip must be ≥ 0"):
        TrainConfig(grad_clip=-1.0)


@pytest.mark.parametrize("run", ["glow-digits", "glow-mnist"])
def test_the_committed_runs_load(run: str) -> None:
    path = Path(__file__).parents[1] / "runs" / run / "config.json"
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    cfg = Config.load(path)
    saved, loaded = json.loads(path.read_text()), json.loads(json.dumps(cfg.to_dict()))
    # keys added since the run was saved (model.num_classes, ...) take their defaults
    assert cfg.model.type == "glow" and cfg.model.num_classes == 0
    assert saved == {name: {k: loaded[name][k] for k in keys} for name, keys in saved.items()}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("\udcff", "not valid JSON"),
        ("[1, 2]", "expected an object of sections model, data, train, got list"),
        ('{"model": 3}', "model: expected an object of keys, got int 3"),
        ('{"optim": {}}', r"unknown config section\(s\) \['optim'\]"),
        ('{"model": {"levels": "two"}}', "model.levels: expected int, got str 'two'"),
        ('{"model": {"attention": 1, "type": "flowpp"}}', "model.attention: expected bool"),
        ('{"model": {"type": 7}}', "model.type: expected str, got 7"),
        ('{"model": {"image_shape": [1, 8]}}', "model.image_shape: expected a list of 3 int"),
        ('{"model": {"layout": "sq"}}', "model.layout does not apply to model.type 'glow'"),
        ('{"train": {"lr": true}}', "train.lr: expected float, got bool True"),
        ('{"train": {"steps": -1}}', "train.steps must be ≥ 0, got -1"),
        ('{"data": {"dir": 5}}', "data.dir: expected str, got int 5"),
    ],
)
def test_a_malformed_config_file_is_a_one_line_error(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match=message) as err:
        Config.load(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_a_missing_config_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.json: no such config file"):
        Config.load(tmp_path / "nowhere.json")
