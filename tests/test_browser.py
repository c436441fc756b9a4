"""One end-to-end test of `imageflows serve` in a real headless browser: Debian's chromium,
driven by Playwright (no browser download: `executable_path` points at the system binary)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from imageflows.explore import Explorer
from imageflows.serve import create_app, start_server

from ._tiny_run import copy_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)"
)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a free loopback port, served from a thread."""
    run = copy_run(tmp_path_factory.mktemp("browser") / "run")
    server = start_server(create_app(Explorer(run)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join()


def test_temperature_slider_and_sample_button(url: str, tmp_path: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            samples = page.locator("#samples")
            first = samples.get_attribute("src")
            assert first.startswith("data:image/png;base64,")
            assert samples.get_attribute("data-temperature") == "0.7"

            # Four steps of 0.05 down: the page re-renders the same noise at T = 0.5.
            page.focus("#temperature")
            for _ in range(4):
                page.keyboard.press("ArrowLeft")
            expect(page.locator("#temperature-value")).to_have_text("0.50")
            expect(samples).to_have_attribute("data-temperature", "0.5", timeout=30_000)
            slid = samples.get_attribute("src")
            assert slid != first

            seed = samples.get_attribute("data-seed")
            page.click("#sample")  # new noise at the slider's temperature
            page.wait_for_function(
                "seed => document.getElementById('samples').dataset.seed !== seed",
                arg=seed,
                timeout=30_000,
            )
            assert samples.get_attribute("data-temperature") == "0.5"
            assert samples.get_attribute("src") not in (first, slid)
            assert page.evaluate("document.getElementById('samples').naturalWidth") >= 256
            assert page.locator("#status").inner_text() == "" and not errors
            page.screenshot(path=tmp_path / "serve.png", full_page=True)
            assert (tmp_path / "serve.png").stat().st_size > 0
        finally:
            browser.close()
