"""Builders for the odd inputs the ingest tests feed in (generated per test, never committed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 160, 0)


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def halves(width: int, height: int, left: tuple, right: tuple) -> Image.Image:
    """Left half ``left``, right half ``right`` (RGB)."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = left
    arr[:, width // 2 :] = right
    return Image.fromarray(arr, "RGB")


def rgba_half_transparent() -> bytes:
    """Left half fully transparent red (-> white), right half opaque blue."""
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[:, :20] = (255, 0, 0, 0)
    arr[:, 20:] = (0, 0, 255, 255)
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def palette_with_transparency() -> bytes:
    """Palette PNG: index 0 transparent (left half), index 1 green (right half)."""
    idx = np.zeros((32, 32), np.uint8)
    idx[:, 16:] = 1
    im = Image.fromarray(idx, "L").convert("P")
    im.putpalette([0, 0, 0, *GREEN] + [0] * (256 - 2) * 3)
    return encode(im, "PNG", transparency=0)


def gray16_gradient() -> bytes:
    """16-bit gray values 1000..10213: all-white if clipped at 255, dark if divided by 257."""
    arr = (np.arange(64 * 48).reshape(48, 64) * 3 + 1000).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def exif_rotated_jpeg() -> bytes:
    """Stored 80x40, left half red / right half blue, EXIF orientation 6 (display rotated
    90 degrees clockwise): displayed 40x80 with red on top and blue at the bottom."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(halves(80, 40, RED, BLUE), "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), GREEN)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def float_tiff() -> bytes:
    arr = np.linspace(-1.0, 3.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    return encode(Image.fromarray(arr, "F"), "TIFF")


def truncated_jpeg() -> bytes:
    data = encode(noise_rgb(64, 64, seed=3), "JPEG", quality=90)
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    data = bytearray(encode(noise_rgb(64, 64, seed=4), "PNG"))
    mid = len(data) // 2
    data[mid : mid + 16] = b"\x00" * 16
    return bytes(data)


# relative path -> (bytes, expected reject category or None when accepted)
def mixed_folder_files() -> dict[str, tuple[bytes, str | None]]:
    rng = np.random.default_rng(7)
    return {
        "good.jpg": (encode(noise_rgb(80, 60), "JPEG", quality=90), None),
        "alpha.png": (rgba_half_transparent(), None),
        "palette_trns.png": (palette_with_transparency(), None),
        "cmyk.jpg": (encode(Image.new("CMYK", (48, 48), (0, 255, 255, 0)), "JPEG"), None),
        "gray16.png": (gray16_gradient(), None),
        "gray.png": (encode(Image.new("L", (40, 30), 128), "PNG"), None),
        "onebit.png": (encode(Image.new("1", (40, 30), 1), "PNG"), None),
        "photos/exif_rot.jpg": (exif_rotated_jpeg(), None),
        "photos/png_named.jpg": (encode(noise_rgb(50, 50, seed=1), "PNG"), None),
        "photos/deeper/anim.gif": (animated_gif(), None),
        "photos/deeper/float.tif": (float_tiff(), None),
        "photos/deeper/tiny.png": (encode(noise_rgb(4, 4), "PNG"), "too small"),
        "huge.png": (encode(Image.new("RGB", (250, 250), BLUE), "PNG"), "too large"),
        "empty.jpg": (b"", "empty"),
        "broken/truncated.jpg": (truncated_jpeg(), "truncated"),
        "broken/corrupt.png": (corrupt_png(), "corrupt"),
        "broken/random.bin": (rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), "not an image"),
        "notes.txt": (b"just some text, not pixels\n", "not an image"),
        ".DS_Store": (b"\x00\x00\x00\x01Bud1" + b"\x00" * 64, "not an image"),
    }


@pytest.fixture
def mixed_folder(tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path / "images"
    expected = {}
    for rel, (data, category) in mixed_folder_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = category
    return root, expected


# ------------------------------------------------------------------------------ webdataset
def write_img2dataset_shard(path: Path, samples: list[dict]) -> None:
    """``samples``: {"__key__", and any of "jpg", "png", "txt", "json"} as bytes/str/dict."""
    with wds.TarWriter(str(path), encoder=False) as sink:
        for sample in samples:
            out = {}
            for k, v in sample.items():
                if isinstance(v, dict):
                    v = json.dumps(v)
                out[k] = v.encode() if isinstance(v, str) and k != "__key__" else v
            sink.write(out)


def img2dataset_samples(prefix: str, num: int, *, seed: int) -> list[dict]:
    """Good samples: a jpg + json (url, caption); even ones also carry a ``.txt`` caption."""
    samples = []
    for i in range(num):
        key = f"{prefix}{i:04d}"
        sample = {
            "__key__": key,
            "jpg": encode(noise_rgb(48, 40, seed=seed + i), "JPEG", quality=85),
            "json": {"url": f"https://example.com/{key}.jpg", "caption": f"json caption {key}"},
        }
        if i % 2 == 0:
            sample["txt"] = f"a photo number {i}"
        samples.append(sample)
    return samples


@pytest.fixture
def img2dataset_dir(tmp_path: Path) -> Path:
    """Two img2dataset-style shards ``part-00000.tar``, ``part-00001.tar``.

    part-00000: ``a0000..a0005`` good (captions), ``a0006`` without an image member,
    ``a0007`` with corrupt jpg bytes, ``sub/a0008`` (a slash in the key).
    part-00001: ``b0000..b0002`` good and a second ``a0000`` (a duplicate key).
    """
    root = tmp_path / "wds"
    root.mkdir()
    first = img2dataset_samples("a", 6, seed=10)
    first.append({"__key__": "a0006", "txt": "caption without an image", "json": {"url": "u"}})
    first.append({"__key__": "a0007", "jpg": b"\xff\xd8 definitely not a jpeg", "txt": "bad"})
    first.append({"__key__": "sub/a0008", "png": encode(noise_rgb(30, 30, seed=99), "PNG")})
    write_img2dataset_shard(root / "part-00000.tar", first)
    second = img2dataset_samples("b", 3, seed=20)
    second.append({"__key__": "a0000", "jpg": encode(noise_rgb(40, 40, seed=5), "JPEG")})
    write_img2dataset_shard(root / "part-00001.tar", second)
    return root
