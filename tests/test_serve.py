"""The web app of `imageflows serve`, in-process through Flask's test client."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image

from imageflows.explore import Explorer
from imageflows.serve import MAX_SAMPLES, MAX_STEPS, create_app

from ._tiny_run import copy_run


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    run = copy_run(tmp_path_factory.mktemp("serve") / "run")
    return create_app(Explorer(run)).test_client()


def _picture(data_url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    picture = Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix) :])))
    assert picture.format == "PNG"
    return picture


def _error(client: FlaskClient, url: str, *words: str, json: object = None) -> None:
    """`url` answers 400 with a JSON message holding each of `words`."""
    response = client.post(url, json=json) if json is not None else client.get(url)
    assert response.status_code == 400, (url, response.get_data(as_text=True))
    message = response.get_json()["error"]
    for word in words:
        assert word in message, (url, message)


def test_page_and_info(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and b'id="temperature"' in page.data
    assert client.get("/static/app.js").status_code == 200
    info = client.get("/api/info").get_json()
    assert info["num_images"] == 360 and info["split"] == "test" and info["step"] == 4
    assert [a["name"] for a in info["attributes"]] == [str(d) for d in range(10)]
    assert info["caps"]["samples"] == MAX_SAMPLES and info["caps"]["steps"] == MAX_STEPS


def test_sample(client: FlaskClient) -> None:
    response = client.get("/api/sample?temperature=0.5&n=4&seed=11")
    assert response.status_code == 200
    body = response.get_json()
    assert (body["temperature"], body["n"], body["seed"]) == (0.5, 4, 11)
    assert _picture(body["image"]).width >= 256
    again = client.get("/api/sample?temperature=0.5&n=4&seed=11").get_json()
    assert again["image"] == body["image"]  # the seed fixes the noise
    other = client.get("/api/sample?temperature=0&n=4&seed=11").get_json()
    assert other["image"] != body["image"]
    assert client.get("/api/sample").get_json()["n"] == 16  # defaults, a fresh seed


def test_sample_validation(client: FlaskClient) -> None:
    _error(client, "/api/sample?temperature=abc", "temperature must be a number", "'abc'")
    _error(client, "/api/sample?temperature=1e9", "temperature must be between 0 and 2", "1e9")
    _error(client, "/api/sample?temperature=nan", "temperature")
    _error(client, "/api/sample?temperature=-0.1", "temperature")
    _error(client, f"/api/sample?n={MAX_SAMPLES + 1}", f"n must be between 1 and {MAX_SAMPLES}")
    _error(client, "/api/sample?n=0", "n must be between")
    _error(client, "/api/sample?n=2.5", "n must be an integer")
    _error(client, "/api/sample?seed=-1", "seed must be between")


def test_dataset_image_and_interpolation(client: FlaskClient) -> None:
    body = client.get("/api/image?index=359").get_json()
    assert body["index"] == 359 and body["label"] in [str(d) for d in range(10)]
    _picture(body["image"])
    _error(client, "/api/image?index=360", "index must be between 0 and 359", "360")
    _error(client, "/api/image?index=-1", "index must be between")
    _error(client, "/api/image?index=x", "index must be an integer")
    _error(client, "/api/image", "missing parameter index")

    body = client.get("/api/interpolate?a=3&b=17&steps=5&spherical=1").get_json()
    assert (body["a"], body["b"], body["steps"], body["spherical"]) == (3, 17, 5, True)
    wide = _picture(body["image"])
    narrow = _picture(client.get("/api/interpolate?a=3&b=17&steps=2").get_json()["image"])
    assert wide.width / wide.height > narrow.width / narrow.height  # one row of 5 frames vs 2
    _error(client, f"/api/interpolate?a=0&b=1&steps={MAX_STEPS + 1}", "steps must be between 2")
    _error(client, "/api/interpolate?a=0&b=1&steps=1", "steps")
    _error(client, "/api/interpolate?a=0&b=360", "b must be between 0 and 359")
    _error(client, "/api/interpolate?a=0&b=1&spherical=maybe", "spherical must be")


def test_edit(client: FlaskClient) -> None:
    response = client.post("/api/edit", json={"image": 2, "alphas": {"3": 1.5, "7": -1}})
    assert response.status_code == 200
    body = response.get_json()
    assert body["index"] == 2 and body["alphas"] == {"3": 1.5, "7": -1.0}
    assert _picture(body["image"]).size == _picture(body["input"]).size
    assert body["image"] != body["input"]
    unedited = client.post("/api/edit", json={"image": 2, "alphas": {"3": 0}}).get_json()
    assert unedited["image"] == unedited["input"]  # alpha 0 reproduces the input exactly
    assert client.post("/api/edit", json={"image": 2}).get_json()["image"] == unedited["input"]


def test_edit_validation(client: FlaskClient) -> None:
    _error(client, "/api/edit", "unknown attribute 'smile'", "valid attributes: 0, 1", json={
        "image": 0, "alphas": {"smile": 1}})  # fmt: skip
    _error(client, "/api/edit", "alpha of '3' must be between -10 and 10", json={
        "image": 0, "alphas": {"3": 1e9}})  # fmt: skip
    _error(
        client,
        "/api/edit",
        "alpha of '3' must be a number",
        json={"image": 0, "alphas": {"3": "x"}},
    )
    _error(client, "/api/edit", "image must be between 0 and 359", json={"image": 360})
    _error(client, "/api/edit", "image must be an integer", json={"image": True})
    response = client.post(
        "/api/edit", data='{"image": Infinity}', content_type="application/json"
    )
    assert (
        response.status_code == 400 and "image must be an integer" in response.get_json()["error"]
    )
    _error(client, "/api/edit", "alphas must be an object", json={"image": 0, "alphas": [1]})
    _error(client, "/api/edit", "expected a JSON object", json=[1, 2])
    response = client.post("/api/edit", data="not json", content_type="application/json")
    assert response.status_code == 400 and "JSON object" in response.get_json()["error"]
    assert client.get("/api/edit").status_code == 405
    missing = client.get("/api/nope")
    assert missing.status_code == 404 and "error" in missing.get_json()


def test_directions_are_computed_once_at_startup(tmp_path: Path) -> None:
    run = copy_run(tmp_path / "run")
    create_app(Explorer(run))
    assert len(list((run / "directions").glob("digits-test-*-step4.safetensors"))) == 10
