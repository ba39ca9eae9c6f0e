"""The local generation page: its API, and a person's use of it in headless Chromium
(upload an image, type a caption, pick a target, press Generate, see the grid)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fm21.generate.page import make_app
from fm21.generate.run import open_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(tiny_workdir):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(open_run(tiny_workdir)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the page server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_api_generates_and_refuses_bad_requests(page_url):
    with httpx.Client(base_url=page_url, timeout=60) as client:
        assert client.get("/api/modalities").json()["inputs"] == {"image": "rgb", "caption": "caption"}
        ok = client.post("/api/generate", json={"caption": "a red cube", "targets": ["tok_depth"], "steps": 2})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["grid"].startswith("data:image/png;base64,") and body["random"]
        preset = client.post("/api/generate", json={"caption": "a red cube", "targets": ["tok_semseg"],
                                                     "preset": "x2rgb"})
        assert preset.status_code == 200 and preset.json()["summary"]["settings"]["preset"] == "x2rgb"
        bad = client.post("/api/generate", json={"targets": ["tok_normal"]})
        assert bad.status_code == 400 and "not trained on 'tok_normal'" in bad.json()["detail"]
        broken = client.post("/api/generate", json={"image": "data:image/png;base64,AAAA", "targets": ["tok_depth"]})
        assert broken.status_code == 400 and "cannot decode the uploaded image" in broken.json()["detail"]


@needs_chromium
def test_page_generates_a_grid_in_the_browser(page_url, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3)).astype(np.uint8)).save(photo)
    shots = Path(os.environ.get("FM21_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(page_url)
            page.get_by_text("random weights").first.wait_for(timeout=20_000)  # the page says so
            page.set_input_files("#image", str(photo))
            page.fill("#caption", "a blue ball")
            page.fill("#steps", "2")
            page.check("#targets input[value='tok_semseg']")
            page.click("#generate")
            page.wait_for_function("document.getElementById('grid').naturalWidth > 0", timeout=60_000)
            assert page.text_content("#status").startswith("done")
            width = page.evaluate("document.getElementById('grid').naturalWidth")
            assert width > 4 * 128  # in: rgb, in: caption, out: tok_depth, out: tok_semseg
            page.screenshot(path=str(shots / "generate-page.png"), full_page=True)
        finally:
            browser.close()
