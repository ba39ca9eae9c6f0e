"""The local generation page: `fm21 generate --serve --port P` (FastAPI on 127.0.0.1).

Upload an image and/or type a caption, tick the targets, press Generate: the page posts
JSON (the image as a base64 data URL, so no multipart package is needed) to
``/api/generate`` and shows the returned grid and the text outputs. Which inputs the page
offers is looked up from the model's specs: the pixels modality takes the image, the
sequence of label kind ``text`` the caption.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fm21.evaluate.presets import PRESETS
from fm21.generate.driver import GRID_FILE, Settings, generate_sample
from fm21.generate.inputs import Condition, pixels_condition, read_condition
from fm21.generate.run import GenerateError, TrainedRun
from fm21.tokenize.crops import Crop, apply_crop

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fm21 generate</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1100px}} fieldset{{margin:.5em 0}}
label{{margin-right:1em}} #grid{{max-width:100%;image-rendering:pixelated;margin-top:1em}}
.random{{color:#a40}}</style></head>
<body><h1>fm21 generate</h1>
<p>Checkpoint step {step}{random_note}</p>
<fieldset><legend>Conditions</legend>{inputs}</fieldset>
<fieldset id="targets"><legend>Targets (generated in this order, each conditioning the next)</legend>{targets}</fieldset>
<fieldset><legend>Sampling</legend>
<label>preset <select id="preset"><option value="">none: the steps and temperature here</option>{presets}</select></label>
<label>steps <input id="steps" type="number" value="8" min="1" style="width:4em"></label>
<label>temperature <input id="temperature" type="number" value="1.0" step="0.1" style="width:4em"></label>
<label>seed <input id="seed" type="number" value="0" style="width:5em"></label></fieldset>
<button id="generate">Generate</button> <span id="status"></span>
<div><img id="grid" alt=""></div><pre id="texts"></pre>
<script>
const readImage = f => new Promise((ok, bad) => {{const r = new FileReader(); r.onload = () => ok(r.result);
  r.onerror = bad; r.readAsDataURL(f);}});
document.getElementById('generate').onclick = async () => {{
  const status = document.getElementById('status');
  const body = {{targets: [...document.querySelectorAll('#targets input:checked')].map(e => e.value),
    steps: +document.getElementById('steps').value, temperature: +document.getElementById('temperature').value,
    seed: +document.getElementById('seed').value}};
  const preset = document.getElementById('preset').value;
  if (preset) body.preset = preset;
  const img = document.getElementById('image');
  if (img && img.files.length) body.image = await readImage(img.files[0]);
  const cap = document.getElementById('caption');
  if (cap && cap.value.trim()) body.caption = cap.value.trim();
  status.textContent = 'generating...';
  const r = await fetch('api/generate', {{method: 'POST', headers: {{'content-type': 'application/json'}},
    body: JSON.stringify(body)}});
  const out = await r.json();
  if (!r.ok) {{ status.textContent = 'error: ' + out.detail; return; }}
  document.getElementById('grid').src = out.grid;
  document.getElementById('texts').textContent = Object.entries(out.texts).map(([k, v]) => k + ': ' + v).join('\\n');
  status.textContent = 'done' + (out.random ? ' (random weights: ' + out.random_parts.join(', ') + ')' : '');
}};
</script></body></html>
"""


def page_inputs(run: TrainedRun) -> dict[str, str]:
    """Which modality takes the uploaded image and which the caption (None: not offered)."""
    specs = run.specs
    pixels = next((n for n, s in specs.items() if s.kind == "pixels"), None)
    caption = next((n for n, s in specs.items() if s.kind == "sequence" and s.label_kind == "text"), None)
    return {k: v for k, v in {"image": pixels, "caption": caption}.items() if v is not None}


def render_page(run: TrainedRun) -> str:
    inputs = page_inputs(run)
    fields = []
    if "image" in inputs:
        name = html.escape(inputs["image"])
        fields.append(f'<label>image ({name}) <input id="image" type="file" accept="image/*"></label>')
    if "caption" in inputs:
        name = html.escape(inputs["caption"])
        fields.append(f'<label>caption ({name}) <input id="caption" type="text" size="40"></label>')
    targets = "".join(f'<label><input type="checkbox" value="{html.escape(n)}"{" checked" if i == 0 else ""}> '
                      f'{html.escape(n)}</label>'
                      for i, n in enumerate(n for n, s in run.specs.items() if s.can_be_target))
    parts = run.random_parts(list(run.specs))
    note = f' <span class="random">[random weights: {html.escape(", ".join(parts))}]</span>' if parts else ""
    presets = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}: {html.escape(p.description)}</option>'
                      for n, p in PRESETS.items())
    return PAGE.format(step=run.step, random_note=note, inputs="".join(fields) or "(none)", targets=targets,
                       presets=presets)


def _data_url_image(url: str, size: int) -> np.ndarray:
    try:
        raw = base64.b64decode(url.split(",", 1)[-1], validate=False)
        img = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many types on corrupt bytes
        raise GenerateError(f"cannot decode the uploaded image: {err}") from None
    s = min(img.shape[:2])
    img = img[(img.shape[0] - s) // 2:(img.shape[0] - s) // 2 + s, (img.shape[1] - s) // 2:(img.shape[1] - s) // 2 + s]
    return apply_crop(img, Crop(0, 0, s, s, False), kind="rgb", out_size=size)


def make_app(run: TrainedRun) -> Any:
    """The FastAPI app: ``/`` (the page), ``/api/modalities``, ``/api/generate``."""
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="fm21 generate")
    lock = threading.Lock()  # one generation at a time: the model is shared

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return render_page(run)

    @app.get("/api/modalities")
    def modalities() -> dict:
        return {"inputs": page_inputs(run), "targets": [n for n, s in run.specs.items() if s.can_be_target]}

    @app.post("/api/generate")
    def generate(body: dict = Body(...)) -> dict:
        try:
            return _generate(run, body, lock)
        except GenerateError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None

    return app


def _generate(run: TrainedRun, body: dict, lock: threading.Lock) -> dict:
    inputs = page_inputs(run)
    conditions: list[Condition] = []
    if body.get("image") and "image" in inputs:
        spec = run.specs[inputs["image"]]
        conditions.append(pixels_condition(spec, _data_url_image(body["image"], spec.resolution), source="upload"))
    if body.get("caption") and "caption" in inputs:
        conditions.append(read_condition(run, inputs["caption"], str(body["caption"])))
    try:
        if body.get("preset"):  # the reference's decoding per target (the page's steps/temperature unused)
            settings = Settings(seed=int(body.get("seed", 0)), preset=str(body["preset"]))
        else:
            settings = Settings(num_steps=int(body.get("steps", 8)), temperature=float(body.get("temperature", 1.0)),
                                seed=int(body.get("seed", 0)))
    except (TypeError, ValueError) as err:
        raise GenerateError(f"bad sampling setting: {err}") from None
    targets = [str(t) for t in body.get("targets") or []]
    with lock, tempfile.TemporaryDirectory(prefix="fm21-generate-") as tmp:
        summary = generate_sample(run, conditions, targets, settings, Path(tmp), title="page")
        grid = base64.b64encode((Path(tmp) / GRID_FILE).read_bytes()).decode()
    texts = {n: o["text"] for n, o in summary["outputs"].items() if "text" in o}
    return {"grid": f"data:image/png;base64,{grid}", "texts": texts, "random": summary["random"],
            "random_parts": summary["random_parts"], "summary": json.loads(json.dumps(summary, default=str))}


def serve(run: TrainedRun, *, port: int, host: str = "127.0.0.1") -> None:
    """Serve the page until Ctrl-C (loopback only by default)."""
    import uvicorn

    uvicorn.run(make_app(run), host=host, port=port, log_level="warning")
