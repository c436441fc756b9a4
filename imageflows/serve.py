"""`imageflows serve`: a local web page to play with a run's latent space (Flask).

The page (`imageflows/web/`) calls a small JSON API; every image comes back as a PNG data URL.
The model is loaded once at startup and used by one request at a time. Every parameter is
validated (400 with a message naming it), and every request's work is capped.

    GET  /api/info                                     the run, the data, attributes, the caps
    GET  /api/sample?temperature=0.7&n=16&seed=3       decode(T · eps), eps from the seed
                    [&class=3]                         (class-conditional runs: the class, 0)
    GET  /api/image?index=5                            one image of the split
    GET  /api/interpolate?a=3&b=17&steps=9&spherical=1 frames between two images
    POST /api/edit {"image": 5, "alphas": {"3": 1.5}}  x and decode(encode(x) + Σ α · direction)

On a class-conditional run every image is encoded and decoded with its own dataset label, and
interpolation frames with the nearer endpoint's (`imageflows.latent.interpolate`).
"""

from __future__ import annotations

import base64
import ipaddress
import math
import secrets
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flask import Flask, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from imageflows.explore import Explorer
from imageflows.images import save_grid
from imageflows.latent import temperature_rows
from imageflows.models import class_rows

MAX_SAMPLES = 64  # images per sample request
MAX_STEPS = 16  # frames per interpolation
MAX_TEMPERATURE = 2.0
MAX_ALPHA = 10.0  # |α| per attribute slider
MAX_SEED = 2**31 - 1
WEB_DIR = Path(__file__).parent / "web"


def create_app(explorer: Explorer) -> Flask:
    """The Flask app serving the page and the API for `explorer`'s run and data.

    Attribute directions are computed (or read from the run's cache) here, once, so no request
    encodes the whole split.
    """
    directions = explorer.directions(explorer.usable_attributes())
    model = explorer.model
    lock = threading.Lock()  # one model, used by one request at a time
    app = Flask(__name__, static_folder=str(WEB_DIR), static_url_path="/static")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        return jsonify(error=error.description), error.code

    @app.get("/")
    def index() -> Any:
        return app.send_static_file("index.html")

    @app.get("/api/info")
    def info() -> Any:
        return jsonify(
            run=str(explorer.run),
            step=explorer.step,
            model=type(model).__name__,
            image_shape=list(model.image_shape),
            num_levels=model.num_levels,
            num_classes=model.num_classes,
            data=explorer.description,
            split=explorer.split,
            num_images=len(explorer),
            attributes=[
                {"name": name, "n_positive": d.n_positive, "n_negative": d.n_negative}
                for name, d in directions.items()
            ],
            caps={
                "samples": MAX_SAMPLES,
                "steps": MAX_STEPS,
                "temperature": MAX_TEMPERATURE,
                "alpha": MAX_ALPHA,
            },
        )

    @app.get("/api/sample")
    def sample() -> Any:
        temperature = _number(request.args, "temperature", 0.0, MAX_TEMPERATURE, default=0.7)
        n = _integer(request.args, "n", 1, MAX_SAMPLES, default=16)
        seed = _integer(request.args, "seed", 0, MAX_SEED, default=secrets.randbelow(MAX_SEED))
        if not model.num_classes and "class" in request.args:
            raise BadRequest("class applies to class-conditional runs only")
        label = None
        with lock:
            if model.num_classes:
                label = _integer(request.args, "class", 0, model.num_classes - 1, default=0)
                images = class_rows(model, [temperature], [label], n, seed)
            else:
                images = temperature_rows(model, [temperature], n, seed)
        image = _png(images, model.num_levels, nrow=math.ceil(math.sqrt(n)))
        return jsonify(image=image, temperature=temperature, n=n, seed=seed, label=label)

    @app.get("/api/image")
    def image() -> Any:
        index = _integer(request.args, "index", 0, len(explorer) - 1)
        label = explorer.label_names[int(explorer.labels[index])]
        picture = _png(explorer.images[index : index + 1], model.num_levels)
        return jsonify(image=picture, index=index, label=label)

    @app.get("/api/interpolate")
    def interpolate() -> Any:
        a = _integer(request.args, "a", 0, len(explorer) - 1)
        b = _integer(request.args, "b", 0, len(explorer) - 1)
        steps = _integer(request.args, "steps", 2, MAX_STEPS, default=9)
        spherical = _flag(request.args, "spherical")
        with lock:
            frames = explorer.interpolate([(a, b)], steps, spherical)[0]
        picture = _png(frames, model.num_levels, nrow=steps)
        return jsonify(image=picture, a=a, b=b, steps=steps, spherical=spherical)

    @app.post("/api/edit")
    def edit() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest('expected a JSON object {"image": INDEX, "alphas": {NAME: ALPHA}}')
        index = _integer(body, "image", 0, len(explorer) - 1)
        alphas = body.get("alphas", {})
        if not isinstance(alphas, dict):
            raise BadRequest(f"alphas must be an object {{NAME: ALPHA}}, got {alphas!r}")
        for name in alphas:
            if name not in directions:
                valid = ", ".join(directions)
                raise BadRequest(f"unknown attribute {name!r}; valid attributes: {valid}")
        alphas = {
            name: _as_number(value, f"alpha of {name!r}", -MAX_ALPHA, MAX_ALPHA)
            for name, value in alphas.items()
        }
        with lock:
            edited = explorer.edit(index, alphas)
        return jsonify(
            input=_png(explorer.images[index : index + 1], model.num_levels),
            image=_png(edited[None], model.num_levels),
            index=index,
            alphas=alphas,
        )

    return app


def _number(
    args: Mapping[str, Any], name: str, low: float, high: float, default: float | None = None
) -> float:
    """Parameter `name` as a float in [low, high], else 400 naming it."""
    return _as_number(_required(args, name, default), name, low, high)


def _as_number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:  # NaN fails too
        raise BadRequest(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def _integer(
    args: Mapping[str, Any], name: str, low: int, high: int, default: int | None = None
) -> int:
    """Parameter `name` as an integer in [low, high], else 400 naming it."""
    value = _required(args, name, default)
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        raise BadRequest(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    if not low <= number <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {value!r}")
    return number


def _flag(args: Mapping[str, Any], name: str) -> bool:
    value = str(args.get(name, "0")).lower()
    if value not in ("0", "1", "true", "false"):
        raise BadRequest(f"{name} must be 0, 1, true or false, got {value!r}")
    return value in ("1", "true")


def _required(args: Mapping[str, Any], name: str, default: Any) -> Any:
    if name in args:
        return args[name]
    if default is None:
        raise BadRequest(f"missing parameter {name}")
    return default


def _png(images: torch.Tensor, num_levels: int, nrow: int | None = None) -> str:
    """A grid of uint8 images `[B, C, H, W]` as a PNG data URL."""
    with tempfile.TemporaryDirectory() as folder:
        path = save_grid(images.cpu(), Path(folder) / "grid.png", num_levels, nrow=nrow)
        data = path.read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def start_server(app: Flask, host: str = "127.0.0.1", port: int = 8000) -> BaseWSGIServer:
    """A threaded WSGI server for `app` bound to `host:port` (port 0: a free one); call its
    `serve_forever()` (e.g. in a thread) and `shutdown()`."""
    return make_server(host, port, app, threaded=True)


def serve(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    data: str | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    attr_file: str | Path | None = None,
    ema: bool = True,
) -> str:
    """Load the run once and serve the page until interrupted; returns the URL it served."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    explorer = Explorer(run, data, data_dir, split, attr_file, ema)
    print(f"computing attribute directions on {explorer.description} {split} ...", file=sys.stderr)
    app = create_app(explorer)
    server = start_server(app, host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{server.server_port}/"
    if not _is_loopback(host):
        print(
            f"warning: serving on {host}, reachable from other machines; the page has no login",
            file=sys.stderr,
        )
    print(f"serving {explorer.run} at {url} (Ctrl-C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return url


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
