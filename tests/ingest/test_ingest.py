"""Ingest: sources -> webdataset shards + rejects.jsonl (folder, webdataset, synthetic)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from fm21.config import IngestConfig, SyntheticConfig
from fm21.ingest import units as units_module
from fm21.ingest.normalize import REJECT_CATEGORIES, RejectedInput, normalize_image
from fm21.ingest.sources import folder_key
from fm21.ingest.stage import SCENE_SEED_STRIDE, run_ingest
from fm21.ingest.synthetic import SEMANTIC_CLASSES, render_scene
from fm21.store.layout import Workdir

JSON_FIELDS = {"key", "source", "source_path", "url", "original_size", "original_mode",
               "exif_transposed", "caption"}
STAGE_FILES = ["rejects.jsonl", "shards"]  # nothing else is left in <workdir>/ingest


def ingest_cfg(**overrides) -> IngestConfig:
    base = {"image_size": 32, "samples_per_shard": 4, "min_side": 16, "max_pixels": 200 * 200}
    return IngestConfig(**{**base, **overrides})


def read_shards(workdir: Workdir) -> dict[str, dict]:
    """key -> {"image": RGB array, "meta": dict, raw members...}, read with webdataset."""
    urls = [str(p) for p in workdir.shard_paths()]
    out: dict[str, dict] = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        key = sample["__key__"]
        assert key not in out, f"duplicate key {key}"
        image = Image.open(io.BytesIO(sample["png"]))
        assert image.format == "PNG"
        out[key] = {**sample, "mode": image.mode, "image": np.asarray(image),
                    "meta": json.loads(sample["json"])}
    return out


def read_rejects(workdir: Workdir) -> list[dict]:
    return [json.loads(line) for line in workdir.rejects.read_text().splitlines()]


def category(reason: str) -> str:
    name = reason.split(":", 1)[0]
    assert name in REJECT_CATEGORIES and len(reason) > len(name) + 2, reason  # "cat: detail"
    return name


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# ------------------------------------------------------------------------------ folder
def test_folder_every_file_is_accepted_or_rejected_with_its_reason(mixed_folder, tmp_path):
    root, expected = mixed_folder
    workdir = Workdir(tmp_path / "run")
    summary = run_ingest(ingest_cfg(source="folder", path=str(root)), workdir=workdir, seed=0)

    want_rejected = {rel: cat for rel, cat in expected.items() if cat is not None}
    assert summary["inputs"] == len(expected) == summary["accepted"] + summary["rejected"]
    assert summary["rejected"] == len(want_rejected)
    # one shard per unit of 4 inputs that has an accepted one (rejects leave shards short)
    assert summary["shards"] == len(workdir.shard_paths()) <= summary["units"] == -(-summary["inputs"] // 4)
    rejects = read_rejects(workdir)
    assert {r["source_path"]: category(r["reason"]) for r in rejects} == want_rejected
    assert all(r["stage"] == "ingest" for r in rejects)
    assert sum(summary["rejected_by_reason"].values()) == summary["rejected"]

    samples = read_shards(workdir)
    by_path = {s["meta"]["source_path"]: s for s in samples.values()}
    assert set(by_path) == {rel for rel, cat in expected.items() if cat is None}
    for rel, sample in by_path.items():
        assert sample["mode"] == "RGB" and sample["image"].shape == (32, 32, 3)
        assert JSON_FIELDS <= set(sample["meta"]) and sample["meta"]["source"] == "folder"
        assert sample["__key__"] == sample["meta"]["key"] == folder_key(rel)
        assert "." not in sample["__key__"] and "/" not in sample["__key__"]
    assert by_path["cmyk.jpg"]["meta"]["original_mode"] == "CMYK"
    assert by_path["photos/png_named.jpg"]["meta"]["original_format"] == "PNG"
    assert by_path["good.jpg"]["meta"]["original_size"] == [80, 60]


def test_a_plugin_registered_by_another_library_does_not_change_the_reason(monkeypatch):
    """A Pillow plugin that claims any bytes (as some libraries register, or TGA, which has
    no magic number) must not turn "not an image" into "corrupt" in one process only."""
    from PIL import ImageFile

    class Greedy(ImageFile.ImageFile):  # "identifies" any bytes as a 64x64 raw RGB image
        format = "GREEDY"

        def _open(self) -> None:
            self._size, self._mode = (64, 64), "RGB"
            self.tile = [ImageFile._Tile("raw", (0, 0, 64, 64), 0, ("RGB", 0, 1))]

    def accept_anything(prefix: bytes) -> bool:
        return True

    Image.init()
    monkeypatch.setitem(Image.OPEN, "GREEDY", (Greedy, accept_anything))
    monkeypatch.setattr(Image, "ID", ["GREEDY", *Image.ID])
    with pytest.raises(RejectedInput, match="^not an image"):
        normalize_image(b"just some text, not pixels\n", image_size=32, min_side=8, max_pixels=10**6)


def test_an_image_open_patched_by_another_library_is_bypassed(monkeypatch):
    """ultralytics replaces PIL.Image.open process-wide with a wrapper that, on a file Pillow
    cannot identify, tries to install pi-heif (offline: ModuleNotFoundError). Ingest must give
    the same reason in such a process as anywhere else (and never trigger an install)."""
    namespace = {"_image_open": Image.open, "Image": Image}  # the wrapper's module globals
    exec("def image_open(fp, *args, **kwargs):\n"
         "    try:\n"
         "        return _image_open(fp, *args, **kwargs)\n"
         "    except Image.UnidentifiedImageError:\n"
         "        raise ModuleNotFoundError(\"No module named 'pi_heif'\")\n", namespace)
    monkeypatch.setattr(Image, "open", namespace["image_open"])
    with pytest.raises(RejectedInput, match="^not an image"):
        normalize_image(b"just some text, not pixels\n", image_size=32, min_side=8, max_pixels=10**6)


def test_folder_odd_modes_are_converted_faithfully(mixed_folder, tmp_path):
    root, _ = mixed_folder
    workdir = Workdir(tmp_path / "run")
    run_ingest(ingest_cfg(source="folder", path=str(root)), workdir=workdir, seed=0)
    img = {s["meta"]["source_path"]: s["image"].astype(int) for s in read_shards(workdir).values()}

    # EXIF orientation 6: the stored left (red) half is displayed on top
    rot = read_shards(workdir)[folder_key("photos/exif_rot.jpg")]["meta"]
    assert rot["exif_transposed"] is True and rot["original_size"] == [40, 80]
    rotated = img["photos/exif_rot.jpg"]
    top, bottom = rotated[:12].mean((0, 1)), rotated[-12:].mean((0, 1))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60
    # transparent pixels are composited onto white, opaque ones kept
    assert (img["alpha.png"][:, :12] > 245).all()
    assert (np.abs(img["alpha.png"][:, -12:] - [0, 0, 255]) < 10).all()
    assert (img["palette_trns.png"][:, :12] > 245).all()
    assert (np.abs(img["palette_trns.png"][:, -12:] - [0, 160, 0]) < 10).all()
    # 16-bit and float gray are scaled by their range: a full 0..255 gradient, not clipped
    for rel in ("gray16.png", "photos/deeper/float.tif"):
        gray = img[rel]
        assert gray.min() < 30 and gray.max() > 225 and gray.std() > 40, rel
        assert (gray[..., 0] == gray[..., 1]).all()
    assert np.abs(img["cmyk.jpg"].mean((0, 1)) - [255, 0, 0]).max() < 40  # C=0 M=Y=255: red
    assert np.abs(img["photos/deeper/anim.gif"].mean((0, 1)) - [255, 0, 0]).max() < 5  # frame 0
    assert (np.abs(img["gray.png"] - 128) <= 1).all() and (img["onebit.png"] == 255).all()


def test_folder_keys_and_shards_are_stable_and_reruns_replace_the_store(mixed_folder, tmp_path):
    root, _ = mixed_folder
    cfg = ingest_cfg(source="folder", path=str(root))
    first, second = Workdir(tmp_path / "one"), Workdir(tmp_path / "two")
    run_ingest(cfg, workdir=first, seed=0)
    run_ingest(cfg, workdir=second, seed=5)
    assert [p.read_bytes() for p in first.shard_paths()] == [
        p.read_bytes() for p in second.shard_paths()
    ]
    # a rerun with bigger shards replaces the old store entirely
    (first.stage_dir("ingest") / ".staging-killedrun").mkdir()  # left by a killed run
    summary = run_ingest(cfg.model_copy(update={"samples_per_shard": 100}), workdir=first, seed=0)
    assert summary["shards"] == 1 and len(first.shard_paths()) == 1
    assert set(read_shards(first)) == set(read_shards(second))
    assert sorted(p.name for p in first.stage_dir("ingest").iterdir()) == STAGE_FILES


def test_a_failing_run_leaves_the_previous_store_untouched(mixed_folder, tmp_path, monkeypatch):
    root, _ = mixed_folder
    cfg = ingest_cfg(source="folder", path=str(root))
    workdir = Workdir(tmp_path / "run")
    run_ingest(cfg, workdir=workdir, seed=0)
    before = {p.name: p.read_bytes() for p in workdir.shard_paths()}
    rejects_before = workdir.rejects.read_bytes()

    calls = {"n": 0}
    real_decode = units_module.decode_input

    def dying_decode(raw, cfg):  # the process "dies" after a few samples
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_decode(raw, cfg)

    monkeypatch.setattr(units_module, "decode_input", dying_decode)
    smaller = cfg.model_copy(update={"samples_per_shard": 1})
    with pytest.raises(KeyboardInterrupt):
        run_ingest(smaller, workdir=workdir, seed=0)
    assert {p.name: p.read_bytes() for p in workdir.shard_paths()} == before
    assert workdir.rejects.read_bytes() == rejects_before
    # the killed run's staging folder stays, for a resume of the same config
    names = sorted(p.name for p in workdir.stage_dir("ingest").iterdir())
    assert names[1:] == STAGE_FILES and names[0].startswith(".staging-")
    done = len(list((workdir.stage_dir("ingest") / names[0]).glob("units/unit-*.json")))
    monkeypatch.setattr(units_module, "decode_input", real_decode)
    summary = run_ingest(smaller, workdir=workdir, seed=0)
    assert done >= 2 and summary["new_units"] == summary["units"] - done  # resumed, not restarted
    assert sorted(p.name for p in workdir.stage_dir("ingest").iterdir()) == STAGE_FILES


def test_a_folder_of_only_broken_files_completes_with_no_shards(tmp_path):
    root = tmp_path / "junk"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "y.jpg").write_bytes(b"")
    workdir = Workdir(tmp_path / "run")
    summary = run_ingest(ingest_cfg(source="folder", path=str(root)), workdir=workdir, seed=0)
    assert (summary["inputs"], summary["accepted"], summary["rejected"]) == (2, 0, 2)
    assert summary["shards"] == 0 and workdir.shards_dir.is_dir() and not workdir.shard_paths()
    assert [r["source_path"] for r in read_rejects(workdir)] == ["a/x.png", "y.jpg"]


# ------------------------------------------------------------------------------ normalize
def test_normalize_rejects_before_decoding_and_guards_decompression_bombs(monkeypatch):
    big = encode(Image.new("RGB", (300, 200), "white"), "PNG")
    with pytest.raises(RejectedInput, match=r"^too large: 300x200 > 50000 pixels$"):
        normalize_image(big, image_size=32, min_side=16, max_pixels=50_000)
    with pytest.raises(RejectedInput, match=r"^too small: 12x40 < 16$"):
        normalize_image(encode(Image.new("RGB", (12, 40)), "PNG"), image_size=32, min_side=16,
                        max_pixels=10**8)
    # Pillow's own guard (past 2x MAX_IMAGE_PIXELS) is reported, not raised
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(RejectedInput) as err:
        normalize_image(big, image_size=32, min_side=16, max_pixels=10**8)
    assert err.value.category == "too large"


def test_normalize_resizes_short_side_then_centre_crops():
    # 120x60: left third red, middle third green, right third blue -> crop is the middle
    arr = np.zeros((60, 120, 3), np.uint8)
    arr[:, :40], arr[:, 40:80], arr[:, 80:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    out = normalize_image(encode(Image.fromarray(arr), "PNG"), image_size=30, min_side=16,
                          max_pixels=10**8)
    pixels = np.asarray(out.image).astype(int)
    assert out.image.mode == "RGB" and out.image.size == (30, 30)
    assert out.original_size == (120, 60) and out.exif_transposed is False
    assert np.abs(pixels[:, 7:23] - [0, 255, 0]).max() <= 2  # Lanczos rings at the edges
    assert pixels[:, 0, 0].mean() > 100 and pixels[:, -1, 2].mean() > 100  # red/blue edges


# ------------------------------------------------------------------------------ webdataset
def test_webdataset_source_keeps_captions_urls_and_dedupes_keys(img2dataset_dir, tmp_path):
    workdir = Workdir(tmp_path / "run")
    pattern = str(img2dataset_dir / "part-{00000..00001}.tar")
    summary = run_ingest(ingest_cfg(source="webdataset", path=pattern), workdir=workdir, seed=0)
    assert summary["inputs"] == 13 == summary["accepted"] + summary["rejected"]
    assert summary["rejected_by_reason"] == {"no image in sample": 1, "not an image": 1}
    rejects = {r["key"]: category(r["reason"]) for r in read_rejects(workdir)}
    assert rejects == {"a0006": "no image in sample", "a0007": "not an image"}

    samples = read_shards(workdir)
    expected_keys = {f"a{i:04d}" for i in range(6)} | {"b0000", "b0001", "b0002"}
    assert set(samples) == expected_keys | {"sub_a0008", "a0000-dup1"}
    meta = {key: s["meta"] for key, s in samples.items()}
    assert meta["a0000"]["caption"] == "a photo number 0"  # .txt wins over json caption
    assert meta["a0001"]["caption"] == "json caption a0001"
    assert meta["a0001"]["url"] == "https://example.com/a0001.jpg"
    assert meta["sub_a0008"]["caption"] is None and meta["sub_a0008"]["source_key"] == "sub/a0008"
    assert meta["a0000-dup1"]["shard"].endswith("part-00001.tar")
    assert all(JSON_FIELDS <= set(m) and m["source"] == "webdataset" for m in meta.values())
    assert all(s["image"].shape == (32, 32, 3) for s in samples.values())


def _truncate(src: Path, dst: Path, *, member: str, into_data: bool) -> None:
    """Copy ``src`` cut in the middle of ``member``'s data, or right before its header."""
    with tarfile.open(src) as tar:
        info = tar.getmember(member)
    cut = info.offset_data + info.size // 2 if into_data else info.offset
    dst.write_bytes(src.read_bytes()[:cut])


@pytest.mark.parametrize("into_data", [True, False], ids=["mid-member", "at-header"])
def test_truncated_shard_yields_readable_samples_and_one_reject(img2dataset_dir, tmp_path,
                                                                into_data):
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    # a0003's members are jpg, json, txt (sorted); cut inside/before its json
    _truncate(img2dataset_dir / "part-00000.tar", cut_dir / "part-00000.tar",
              member="a0003.json", into_data=into_data)
    shutil.copy(img2dataset_dir / "part-00001.tar", cut_dir / "part-00001.tar")
    workdir = Workdir(tmp_path / "run")
    summary = run_ingest(ingest_cfg(source="webdataset", path=str(cut_dir)), workdir=workdir,
                         seed=0)

    assert set(read_shards(workdir)) == {"a0000", "a0001", "a0002", "b0000", "b0001", "b0002",
                                         "a0000-dup1"}
    assert summary["inputs"] == summary["accepted"] + summary["rejected"] == 8
    (reject,) = read_rejects(workdir)
    assert category(reject["reason"]) == "truncated shard" and reject["key"] == "a0003"
    assert reject["shard"].endswith("part-00000.tar")


# ------------------------------------------------------------------------------ synthetic
def test_synthetic_source_round_trips_png_json_and_ground_truth(tmp_path):
    cfg = ingest_cfg(samples_per_shard=2,
                     synthetic=SyntheticConfig(num_samples=5, min_objects=2, max_objects=3))
    workdir = Workdir(tmp_path / "run")
    summary = run_ingest(cfg, workdir=workdir, seed=7)
    assert summary == {**summary, "inputs": 5, "accepted": 5, "rejected": 0, "shards": 3}
    assert workdir.rejects.read_text() == ""

    samples = read_shards(workdir)
    assert sorted(samples) == [f"syn0007-{i:07d}" for i in range(5)]
    scene = render_scene(7 * SCENE_SEED_STRIDE + 3, 32, min_objects=2, max_objects=3)
    sample = samples["syn0007-0000003"]
    assert np.array_equal(sample["image"], scene.rgb)  # lossless, never resized
    gt = np.load(io.BytesIO(sample["gt.npz"]))
    assert gt["depth"].dtype == np.float32 and gt["depth"].shape == (32, 32)
    assert gt["normal"].dtype == np.float16 and gt["normal"].shape == (32, 32, 3)
    assert gt["instance"].dtype == np.uint8 and gt["semantic"].dtype == np.uint8
    assert np.array_equal(gt["depth"], scene.depth)
    assert np.array_equal(gt["semantic"], scene.semantic)
    assert np.array_equal(gt["instance"], scene.instance)
    meta = sample["meta"]
    assert JSON_FIELDS <= set(meta) and meta["caption"] == scene.caption
    assert meta["synthetic"]["classes"] == list(SEMANTIC_CLASSES)
    assert len(meta["synthetic"]["boxes"]) == len(scene.boxes)
    assert len(meta["synthetic"]["objects"]) == len(scene.objects)
    first_shards = [p.read_bytes() for p in workdir.shard_paths()]
    run_ingest(cfg, workdir=Workdir(tmp_path / "again"), seed=7)
    assert [p.read_bytes() for p in Workdir(tmp_path / "again").shard_paths()] == first_shards
