"""The specialist contract and the skeleton's oracle, classical and metadata specialists.

Batches are hand-made numpy scenes (no renderer): a ground plane in the lower half and
two square objects, with exact depth, normals, instance and semantic maps.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fm21.config import ConfigError, SpecialistConfig, load_config
from fm21.modalities import MODALITIES
from fm21.pseudolabel.specialists import SPECIALISTS, specialist_class
from fm21.pseudolabel.specialists.base import OracleInputError, OracleSpecialist, Specialist
from fm21.pseudolabel.specialists.color_palette import NUM_PALETTES
from fm21.pseudolabel.specialists.metadata import METADATA_FIELDS
from fm21.store import labels as store

S = 16
# Specialists that run without weights (oracle, classical, source text). Network-only names
# (clip, dinov2, imagebind, t5, human_pose, sam) are tested at tiny configs in tests/pseudolabel/specialists/.
NO_WEIGHTS = [n for n, cls in SPECIALISTS.items() if "none" in cls.supported_weights]
CLASSES = ["none", "ground", "cube", "sphere"]  # semantic id -> name
RED, GREEN, SKY, EARTH = (220, 30, 30), (30, 200, 40), (120, 160, 230), (90, 70, 50)


def scene(shift: int = 0) -> tuple[np.ndarray, dict, dict]:
    """One synthetic-like sample: rgb (S, S, 3), gt maps and the shard json."""
    rgb = np.empty((S, S, 3), np.uint8)
    rgb[: S // 2], rgb[S // 2 :] = SKY, EARTH
    semantic = np.zeros((S, S), np.uint8)
    semantic[S // 2 :] = 1  # ground
    instance = np.zeros((S, S), np.uint8)
    depth = np.full((S, S), 20.0, np.float32)
    # a ground plane: inverse depth is affine in the image row
    depth[S // 2 :] = 1.0 / np.linspace(0.1, 0.5, S // 2, dtype=np.float32)[:, None]
    normal = np.zeros((S, S, 3), np.float16)
    normal[S // 2 :] = (0.0, 1.0, 0.0)
    boxes = []
    for inst, (cls, color, y0, x0) in enumerate(
        [(2, RED, 4, 2 + shift), (3, GREEN, 6, 9)], start=1
    ):
        sl = (slice(y0, y0 + 5), slice(x0, x0 + 5))
        rgb[sl], semantic[sl], instance[sl], depth[sl] = color, cls, inst, 4.0 + inst
        normal[sl] = (0.0, 0.0, 1.0)
        box = [x0 / S, y0 / S, (x0 + 5) / S, (y0 + 5) / S]
        boxes.append({"box": box, "class_name": CLASSES[cls], "score": 1.0})
    gt = {"depth": depth, "normal": normal, "instance": instance, "semantic": semantic}
    caption = "A red cube and a green sphere. They sit on the ground!"
    meta = {
        "caption": caption,
        "original_size": [S * 4, S * 3],
        "synthetic": {"boxes": boxes, "objects": ["cube", "sphere"], "classes": CLASSES},
    }
    return rgb, gt, meta


def synthetic_batch() -> dict:
    samples = [scene(0), scene(3)]
    return {
        "key": ["s0", "s1"],
        "rgb": np.stack([s[0] for s in samples]),  # (B, S, S, 3)
        "gt": [s[1] for s in samples],
        "meta": [s[2] for s in samples],
    }


def real_batch(rgb: np.ndarray, meta: dict | None = None) -> dict:
    """One real-image sample: no ground truth, and no earlier columns unless added."""
    return {"key": ["r0"], "rgb": rgb[None], "gt": [None], "meta": [meta or {}]}


def make(name: str, *, image_size: int = S, **cfg) -> Specialist:
    return SPECIALISTS[name](SpecialistConfig(**cfg), image_size=image_size)


def run_in_order(batch: dict) -> tuple[dict, dict[str, Specialist]]:
    """Run every specialist, each after those it requires, adding columns to the batch."""
    produced = {f.name: n for n in NO_WEIGHTS for f in make(n).columns()}
    done: dict[str, Specialist] = {}

    def visit(name: str) -> None:
        if name in done:
            return
        for column in SPECIALISTS[name].requires:
            if column in produced:  # columns of network specialists: absent from this run
                visit(produced[column])
        done[name] = make(name)
        done[name].load()
        out = done[name](batch)
        batch.update({k: v for k, v in out.items() if k not in ("key", "rgb", "meta", "gt")})

    for name in NO_WEIGHTS:
        visit(name)
    return batch, done


# ------------------------------------------------------------------------ contract
def test_specialists_cover_the_default_modalities():
    cfg = load_config()
    used = {MODALITIES[m].specialist for m in cfg.modalities.enabled}
    assert used == set(SPECIALISTS)  # the demo enables all 19 modalities: every specialist runs
    for name, spec_cfg in cfg.pseudolabel.specialists.items():
        cls = specialist_class(name, spec_cfg.weights)
        assert cls.name == name
        cls(spec_cfg, image_size=cfg.ingest.image_size)  # flows.yaml is valid


@pytest.mark.parametrize("name", NO_WEIGHTS)
def test_outputs_match_declared_columns(name):
    batch, done = run_in_order(synthetic_batch())
    spec = done[name]
    fields = spec.columns()
    out = spec(batch)
    assert sorted(out) == sorted(f.name for f in fields)  # only its own columns
    for field in fields:
        values = out[field.name]
        assert len(values) == 2
        arr = store.encode_column(values, field)  # what the job stores
        assert arr.null_count == 0 and arr.type == field.type
        meta = {k.decode(): v.decode() for k, v in field.metadata.items()}
        assert meta["specialist"] == name and meta["weights"] == "none"
        assert meta["random"] == "false"
        assert meta["oracle"] == ("true" if spec.oracle else "false")
        if "shape" in meta:  # a dense map: decodes to (B, *shape) of its dtype
            shape = [int(x) for x in meta["shape"].strip("[]").split(",")]
            assert shape[:2] == [S, S] and meta["encoding"] != "raw"
            decoded = store.column_to_python(arr, field)
            assert decoded.shape == (2, *shape) and decoded.dtype == np.dtype(meta["dtype"])
    prov = spec.provenance()
    assert set(prov) == {"specialist", "weights", "model_id", "weights_fingerprint", "random",
                         "oracle"}
    assert prov["specialist"] == name and prov["oracle"] is spec.oracle
    no_weights_columns = {f.name for n in NO_WEIGHTS for f in make(n).columns()}
    for column in spec.requires:  # every input a no-weights run can produce was there
        assert column in batch or column not in no_weights_columns


def test_fingerprint_follows_options():
    a, b = make("canny_edge"), make("canny_edge", options={"low_threshold": 50})
    assert a.weights_fingerprint() == make("canny_edge").weights_fingerprint()
    assert a.weights_fingerprint() != b.weights_fingerprint()


def test_unknown_option_key_names_its_path():
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.canny_edge\.options\.hi"):
        make("canny_edge", options={"hi": 3})
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.depth\.options\.scale"):
        make("depth", options={"scale": 2})
    with pytest.raises(ConfigError, match=r"sam_edge\.options\.thickness"):
        make("sam_edge", options={"thickness": 3})


def test_weights_mode_without_a_network_is_rejected():
    with pytest.raises(ConfigError, match=r"pseudolabel\.specialists\.depth\.weights"):
        make("depth", weights="pretrained")


# ------------------------------------------------------------------------ oracles
def test_oracles_return_ground_truth():
    batch = synthetic_batch()
    depth = make("depth")(batch)["depth"]
    normal = make("normal")(batch)["normal"]
    seg = make("semseg")(batch)
    for i, gt in enumerate(batch["gt"]):
        np.testing.assert_allclose(depth[i].reshape(S, S), gt["depth"], rtol=1e-3)
        np.testing.assert_array_equal(normal[i].reshape(S, S, 3), gt["normal"])
        np.testing.assert_array_equal(seg["semseg"][i].reshape(S, S), gt["semantic"])
        np.testing.assert_array_equal(seg["instance"][i].reshape(S, S), gt["instance"])
    assert depth[0].dtype == np.float16 and seg["semseg"][0].dtype == np.uint8


def test_detection_oracle_reads_synthetic_boxes():
    batch = synthetic_batch()
    det = make("detection")(batch)["det"]
    for i, meta in enumerate(batch["meta"]):
        want = meta["synthetic"]["boxes"]
        assert [d["class_name"] for d in det[i]] == ["cube", "sphere"]
        for got, ref in zip(det[i], want):
            np.testing.assert_allclose(got["box"], ref["box"], atol=1e-6)
            assert got["score"] == 1.0
    # bare boxes are named by the `objects` list
    batch["meta"][0]["synthetic"]["boxes"] = [[0.1, 0.2, 0.3, 0.4]]
    bare = make("detection")(batch)["det"][0]
    assert bare[0]["class_name"] == "cube"
    np.testing.assert_allclose(bare[0]["box"], [0.1, 0.2, 0.3, 0.4], atol=1e-6)


def test_sam_oracle_gives_each_true_instance_as_a_sam_record():
    from fm21.pseudolabel.specialists.sam import decode_rle

    batch = synthetic_batch()
    out = make("sam")(batch)["sam_instances"]
    for i, gt in enumerate(batch["gt"]):
        ids = [k for k in np.unique(gt["instance"]) if k]
        assert len(out[i]) == len(ids) == 2
        areas = [r["area"] for r in out[i]]
        assert areas == sorted(areas, reverse=True)
        for rec in out[i]:
            mask = decode_rle(rec["rle"])
            (k,) = np.unique(gt["instance"][mask])  # one true instance per record, all of it
            assert mask.sum() == rec["area"] == (gt["instance"] == k).sum()
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(rec["box"], [xs.min() / S, ys.min() / S, (xs.max() + 1) / S, (ys.max() + 1) / S])
            assert rec["score"] == rec["stability_score"] == 1.0


@pytest.mark.parametrize(
    "name", [n for n, cls in SPECIALISTS.items() if issubclass(cls, OracleSpecialist)]
)
def test_oracle_on_real_image_raises_clearly(name):
    spec = make(name)
    batch = real_batch(scene()[0], {"caption": "a photo"})
    with pytest.raises(OracleInputError, match="synthetic") as err:
        spec(batch)
    assert spec.stands_in_for in str(err.value) and "'r0'" in str(err.value)


def test_caption_from_synthetic_or_alt_text_or_null():
    rgb = scene()[0]
    cap = make("caption")
    assert cap(synthetic_batch())["caption"][0].startswith("A red cube")
    assert cap(real_batch(rgb, {"caption": "  alt text "}))["caption"] == ["alt text"]
    assert cap(real_batch(rgb, {"caption": ["", "second"]}))["caption"] == ["second"]
    assert cap(real_batch(rgb, {}))["caption"] == [None]
    assert cap(real_batch(rgb, {"caption": "   "}))["caption"] == [None]


# ------------------------------------------------------------------------ classical
def test_canny_finds_a_step_and_nothing_on_flat():
    flat = np.full((S, S, 3), 128, np.uint8)
    step = flat.copy()
    step[:, S // 2 :] = 255
    step[:, : S // 2] = 0
    canny = make("canny_edge")
    out = canny(real_batch(flat))["canny_edge"][0].reshape(S, S)
    assert out.max() == 0
    edges = canny(real_batch(step))["canny_edge"][0].reshape(S, S)
    assert set(np.unique(edges)) == {0, 255}
    cols = np.nonzero(edges.any(axis=0))[0]
    assert set(cols) <= {S // 2 - 1, S // 2}  # a thin vertical line at the step
    assert edges[2:-2, cols].all(axis=0).any()  # continuous down the image
    auto = make("canny_edge", options={"auto": True})(real_batch(flat))["canny_edge"][0]
    assert auto.max() == 0


@pytest.mark.parametrize("thickness", [1, 2])
def test_sam_edge_marks_instance_boundaries(thickness):
    instance = np.zeros((S, S), np.uint8)
    instance[4:8, 4:8] = 1  # a square touching ...
    instance[4:8, 8:12] = 2  # ... a second instance
    batch = real_batch(scene()[0])
    batch["instance"] = [instance.reshape(-1)]
    edge = make("sam_edge", options={"thickness": thickness})(batch)["sam_edge"][0]
    edge = edge.reshape(S, S)
    want = np.zeros((S, S), bool)
    for y in range(S):
        for x in range(S):
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                yy, xx = y + dy, x + dx
                if not (0 <= yy < S and 0 <= xx < S) or instance[yy, xx] == instance[y, x]:
                    continue
                # thickness 1 marks the top/left side of a boundary, 2 marks both
                if thickness == 2 or dy + dx > 0:
                    want[y, x] = True
    np.testing.assert_array_equal(edge, want.astype(np.uint8) * 255)
    assert make("sam_edge")(real_batch(scene()[0]) | {"instance": [None]})["sam_edge"] == [None]


def test_color_palettes():
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    spec = make("color_palette")
    pals = spec(real_batch(noisy))["color_palette"][0]
    assert len(pals) == NUM_PALETTES
    assert [len(p) for p in pals] == [3 * k for k in range(1, NUM_PALETTES + 1)]
    again = make("color_palette")(real_batch(noisy))["color_palette"][0]
    assert all(np.array_equal(a, b) for a, b in zip(pals, again))  # deterministic
    two = np.zeros((S, S, 3), np.uint8)
    two[:, :4], two[:, 4:] = RED, GREEN  # green covers more pixels: listed first
    pals2 = spec(real_batch(two))["color_palette"][0]
    assert pals2[1].tolist() == [*GREEN, *RED]
    mean = np.rint((12 * np.array(GREEN) + 4 * np.array(RED)) / 16)  # k=1: one cluster
    assert pals2[0].tolist() == mean.astype(int).tolist()
    assert pals2[6].reshape(7, 3)[:2].tolist() == [list(GREEN), list(RED)]
    # clustered image: k-means centres land on the cluster colours
    three = two.copy()
    three[S // 2 :, 8:] = SKY
    noise = rng.integers(-3, 4, three.shape)
    jittered = np.clip(three.astype(int) + noise, 0, 255).astype(np.uint8)
    pal3 = spec(real_batch(jittered))["color_palette"][0][2].reshape(3, 3).astype(int)
    assert np.abs(pal3 - np.array([GREEN, SKY, RED])).max() <= 2


def test_color_palette_subsamples_large_images():
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    spec = make("color_palette", image_size=64, options={"max_pixels": 256})
    a = spec(real_batch(big))["color_palette"][0]
    b = spec(real_batch(big))["color_palette"][0]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------ metadata
def metadata_of(batch: dict) -> dict:
    return make("metadata")(batch)["metadata"][0]


def test_metadata_image_statistics():
    grey = np.full((S, S, 3), 100, np.uint8)
    md = metadata_of(real_batch(grey))
    assert md["entropy"] == 0.0 and md["colorfulness"] == 0.0
    assert md["brightness"] == pytest.approx(100.0) and md["contrast"] == 0.0
    assert md["saturation"] == 0.0
    half = np.zeros((S, S, 3), np.uint8)
    half[S // 2 :] = 255
    md = metadata_of(real_batch(half))
    assert md["entropy"] == pytest.approx(1.0)
    assert md["brightness"] == pytest.approx(127.5) and md["contrast"] == pytest.approx(127.5)
    assert md["colorfulness"] == 0.0
    red = np.zeros((S, S, 3), np.uint8)
    red[..., 0] = 255
    md = metadata_of(real_batch(red))
    assert md["saturation"] == pytest.approx(255.0)
    assert md["colorfulness"] == pytest.approx(0.3 * np.hypot(255, 127.5))


def test_metadata_from_labels_of_a_synthetic_scene():
    batch, _ = run_in_order(synthetic_batch())
    md = batch["metadata"][0]
    assert list(md) == [n for n, _ in METADATA_FIELDS]
    assert (md["original_width"], md["original_height"]) == (S * 4, S * 3)
    caption = batch["meta"][0]["caption"]
    assert md["caption_n_chars"] == len(caption)
    assert md["caption_n_words"] == 12 and md["caption_n_sentences"] == 2
    assert md["n_sam_instances"] == 2 and md["objectness"] == pytest.approx(50 / S**2)
    assert md["n_coco_instances"] == 2 and md["coco_instance_diversity"] == 2
    assert md["semantic_diversity"] == 3  # ground, cube, sphere
    gt = batch["gt"][0]
    assert md["walkability"] == pytest.approx((gt["semantic"] == 1).mean())
    assert 0.0 < md["geometric_complexity"] < 1.0
    assert 0.0 < md["occlusion_score"] < 0.5
    for name in ("n_humans", "watermark_score", "aesthetic_score"):  # no human-pose specialist in this run
        assert md[name] is None
    batch["human_poses"] = [[{"box": [0.1, 0.1, 0.5, 0.9]}, {"box": [0.6, 0.2, 0.9, 0.8]}], []]
    assert [m["n_humans"] for m in make("metadata")(batch)["metadata"]] == [2, 0]
    batch["sam_instances"] = [[{"area": 4}] * 3, None]  # SAM's count wins where a sample has it
    assert [m["n_sam_instances"] for m in make("metadata")(batch)["metadata"]] == [3, 2]


def test_metadata_geometry_and_occlusion_are_hand_checkable():
    batch = real_batch(scene()[0])
    normal = np.zeros((S, S, 3), np.float16)
    normal[..., 2] = 1.0
    depth = np.full((S, S), 3.0, np.float32)
    batch |= {"normal": [normal.reshape(-1)], "depth": [depth.reshape(-1)]}
    md = metadata_of(batch)
    assert md["geometric_complexity"] == pytest.approx(0.0) and md["occlusion_score"] == 0.0
    normal[:, S // 2 :, 2] = -1.0  # half the normals face away: mean normal is 0
    depth[:, S // 2 :] = 6.0  # a vertical depth cliff: two columns of pixels
    batch |= {"normal": [normal.reshape(-1)], "depth": [depth.reshape(-1)]}
    md = metadata_of(batch)
    assert md["geometric_complexity"] == pytest.approx(1.0)
    assert md["occlusion_score"] == pytest.approx(2 / S)
    plane = np.repeat(1.0 / np.linspace(0.05, 0.9, S, dtype=np.float32)[:, None], S, axis=1)
    batch["depth"] = [plane.reshape(-1)]  # a receding ground plane is no occlusion ...
    assert metadata_of(batch)["occlusion_score"] == 0.0
    plane[:4] = np.inf  # ... but the horizon against the sky is: rows 3 and 4
    batch["depth"] = [plane.reshape(-1)]
    assert metadata_of(batch)["occlusion_score"] == pytest.approx(2 / S)


def test_metadata_fields_are_null_without_their_inputs():
    batch = real_batch(scene()[0], {"caption": "only alt text"})
    batch["det"] = [[{"box": [0, 0, 1, 1], "class_name": "dog", "score": 0.3}]]
    md = metadata_of(batch)
    for name in ("original_width", "caption_n_chars", "n_sam_instances", "objectness",
                 "semantic_diversity", "walkability", "geometric_complexity",
                 "occlusion_score"):
        assert md[name] is None, name
    assert md["n_coco_instances"] == 0  # the one box is below det_min_score
    assert md["entropy"] is not None
    field = make("metadata").columns()[0]
    assert pa.array([md], type=field.type).null_count == 0
