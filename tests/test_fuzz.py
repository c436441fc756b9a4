"""Malformed input, thrown at the CLI and at the web page's API (a fixed seed, bounded).

Each case takes a command that works and breaks exactly one of its inputs: a value of the wrong
type or range, a missing, truncated or garbage file, an unknown key, an index out of range.
Every case must end in one line of error (exit status 2; HTTP 400 with a JSON message) and
leave every file on disk as it was.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from imageflows.cli import main
from imageflows.explore import Explorer
from imageflows.serve import create_app

from ._files import snapshot
from ._tiny_run import copy_run

SEED, CLI_CASES, WEB_CASES = 0, 240, 200

NUMBERS = ["-1", "abc", "", "nan", "1e309", "99999999999", "0x1F", "1,2", "--"]
INDICES = ["-1", "100000", "x", "", "1.5", "3:", ":4", "0:999999", "a:b", "1,,2", "0:1:2"]
TEMPERATURES = ["-1", "nan", "inf", "x", "", "1e9", "0,,1", "0,x"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good run, broken copies of it, and broken files, all under one root."""
    root = tmp_path_factory.mktemp("fuzz")
    run = copy_run(root / "run")
    assert main(["encode", str(run), "--n", "4", "--out", str(root / "good.pt")]) == 0
    broken = {}
    for name, damage in {
        "config-garbage": lambda r: (r / "config.json").write_bytes(b"\x00\xff{not json"),
        "config-number": lambda r: (r / "config.json").write_text('{"model": 3}'),
        "config-unknown-key": lambda r: (r / "config.json").write_text('{"model": {"wings": 2}}'),
        "weights-truncated": lambda r: (r / "model.safetensors").write_bytes(
            (r / "model.safetensors").read_bytes()[:100]
        ),
        "weights-missing": lambda r: (r / "model.safetensors").unlink(),
        "weights-garbage": lambda r: (r / "model.safetensors").write_bytes(b"garbage" * 50),
    }.items():
        broken[name] = Path(shutil.copytree(run, root / name))
        damage(broken[name])
    (root / "truncated.pt").write_bytes((root / "good.pt").read_bytes()[:64])
    (root / "garbage.pt").write_bytes(b"not a torch file")
    torch.save({"eps": "a string"}, root / "wrong-kind.pt")
    return {"root": root, "run": run, **broken}


def cli_case(rng: random.Random, w: dict[str, Path]) -> list[str]:
    """One command with exactly one bad input."""
    run, root = str(w["run"]), w["root"]
    damaged = rng.choice([k for k in w if k.startswith(("config-", "weights-"))])
    out = str(root / "out" / "never.png")
    kind = rng.choice(
        ["bad-run", "eval", "sample", "interpolate", "manipulate", "encode", "decode", "resume"]
    )
    if kind == "bad-run":  # `report` reads no weights: it fails on a broken config only
        reads_weights = damaged.startswith("weights-")
        command = rng.choice(["eval", "sample", "encode", *([] if reads_weights else ["report"])])
        extra = {"sample": ["--out", out], "encode": ["--out", str(root / "o.pt")]}
        return [command, str(w[damaged]), *extra.get(command, [])]
    if kind == "eval":
        flag, values = rng.choice(
            [("--batch-size", ["0", "-1", "x", "", "1.5", "nan"]),
             ("--iw-samples", ["0", "-1", "x", "99999999999"]), ("--seed", ["x", "", "1.5"]),
             ("--split", ["nope", "", "../x"]), ("--data", ["nope", "mnist", ""])]
        )  # fmt: skip
        return ["eval", run, flag, rng.choice(values)]
    if kind == "sample":
        flag, values = rng.choice(
            [("--n", NUMBERS), ("--temperature", TEMPERATURES[:5]),
             ("--temperatures", TEMPERATURES), ("--nrow", ["0", "-2", "x"]),
             ("--seed", ["x", "", "1.5"])]
        )  # fmt: skip
        return ["sample", run, flag, rng.choice(values), "--out", out]
    if kind == "interpolate":
        flag, values = rng.choice([("--pairs", INDICES), ("--steps", ["1", "0", "-3", "x", ""])])
        return ["interpolate", run, flag, rng.choice(values), "--out", out]
    if kind == "manipulate":
        flag, values = rng.choice(
            [("--attribute", ["not-a-class", "", "99"]), ("--images", INDICES),
             ("--alphas", ["x", "", "1,,2", "nan"]), ("--attr-file", [str(root / "missing.txt")])]
        )  # fmt: skip
        args = ["--attribute", "3"] if flag != "--attribute" else []
        return ["manipulate", run, *args, flag, rng.choice(values), "--out", out]
    if kind == "encode":
        flag, values = rng.choice([("--n", ["0", "-1", "x", "1.5"]), ("--start", INDICES)])
        return ["encode", run, flag, rng.choice(values), "--out", str(root / "o.pt")]
    if kind == "decode":
        latents = rng.choice(["truncated.pt", "garbage.pt", "wrong-kind.pt", "missing.pt"])
        return ["decode", run, str(root / latents), "--out", out]
    key = rng.choice(
        ["model.depth=4", "model.wings=2", "train.lr=abc", "train.steps=-5", "nonsense",
         "data.name=mnist", "train.batch_size=0", "model.layout=4cb", "train.seed=x"]
    )  # fmt: skip
    return ["train", "--resume", run, "--set", key]


def test_cli_fuzz(world: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    rng = random.Random(SEED)
    before = snapshot(world["root"])
    for _ in range(CLI_CASES):
        argv = cli_case(rng, world)
        status = main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 2, argv
        assert len(lines) == 1 and lines[-1].startswith("imageflows: error: "), (argv, lines)
        assert snapshot(world["root"]) == before, argv


def web_case(rng: random.Random, num_images: int, attribute: str) -> tuple[str, object]:
    """A GET URL or a POST body to /api/edit with exactly one bad input."""
    kind = rng.choice(["sample", "image", "interpolate", "edit"])
    if kind == "sample":
        name = rng.choice(["temperature", "n", "seed"])
        values = {"temperature": TEMPERATURES[:6], "n": ["0", "-3", "x", "100000", "1.5", ""],
                  "seed": ["-1", "x", "1e30", "1.5"]}[name]  # fmt: skip
        return f"/api/sample?{name}={rng.choice(values)}", None
    if kind == "image":
        return f"/api/image?index={rng.choice(['-1', str(num_images), 'x', '', '1e3'])}", None
    if kind == "interpolate":
        good = {"a": "0", "b": "1", "steps": "5"}
        name = rng.choice(list(good))
        good[name] = rng.choice(
            ["-1", str(num_images), "x", ""] if name != "steps" else ["1", "x", "10000"]
        )
        return "/api/interpolate?" + "&".join(f"{k}={v}" for k, v in good.items()), None
    body = rng.choice(
        [None, [], "text", 3, {"image": "x"}, {"image": -1}, {"image": num_images},
         {"image": 0, "alphas": []}, {"image": 0, "alphas": {"wings": 1}},
         {"image": 0, "alphas": {attribute: "x"}}, {"image": 0, "alphas": {attribute: 1e9}},
         {"image": 0, "alphas": {attribute: None}}, {"alphas": {attribute: 1}}]
    )  # fmt: skip
    return "/api/edit", ["__none__"] if body is None else body


def test_web_api_fuzz(world: dict[str, Path]) -> None:
    explorer = Explorer(world["run"])
    client = create_app(explorer).test_client()
    attribute = client.get("/api/info").get_json()["attributes"][0]["name"]
    rng = random.Random(SEED)
    before = snapshot(world["root"])
    for _ in range(WEB_CASES):
        url, body = web_case(rng, len(explorer), attribute)
        if url == "/api/edit":
            data = b"{not json" if body == ["__none__"] else None
            response = (
                client.post(url, data=data, content_type="application/json")
                if data is not None
                else client.post(url, json=body)
            )
        else:
            response = client.get(url)
        assert response.status_code == 400, (url, body, response.get_data(as_text=True))
        message = response.get_json()["error"]
        assert isinstance(message, str) and message and "\n" not in message, (url, message)
        assert snapshot(world["root"]) == before, (url, body)
