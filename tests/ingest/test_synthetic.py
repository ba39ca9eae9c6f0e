"""The procedural scene renderer: determinism, array contracts and geometric truth."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fm21.config import SyntheticConfig
from fm21.ingest.synthetic import (
    CLASS_COLOURS,
    COLOR_NAMES,
    FOV_DEG,
    SEMANTIC_CLASSES,
    Scene,
    render_scene,
)

SIZE = 48
SEEDS = range(12)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [render_scene(seed, SIZE) for seed in SEEDS]


def _view_dirs(size: int) -> np.ndarray:
    """(H, W, 3) unit pixel-centre rays in the camera frame (x right, y down, z forward)."""
    focal = 0.5 / math.tan(math.radians(FOV_DEG / 2))  # in units of the image side
    c = ((np.arange(size) + 0.5) / size - 0.5) / focal
    xc, yc = np.meshgrid(c, c)
    d = np.stack([xc, yc, np.ones_like(xc)], axis=-1)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _camera_points(scene: Scene) -> np.ndarray:
    """(H, W, 3) camera-frame 3D points unprojected from the z-depth."""
    size = scene.depth.shape[0]
    d = _view_dirs(size)
    return d / d[..., 2:] * scene.depth[..., None].astype(np.float64)


def test_same_seed_is_bit_identical_and_seeds_differ() -> None:
    a, b = render_scene(7, 32), render_scene(7, 32)
    for name in ("rgb", "depth", "normal", "instance", "semantic"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert (a.boxes, a.caption, a.objects, a.seed) == (b.boxes, b.caption, b.objects, b.seed)
    c = render_scene(8, 32)
    assert not np.array_equal(a.rgb, c.rgb)
    assert a.objects != c.objects


def test_layout_does_not_depend_on_resolution() -> None:
    small, large = render_scene(3, 32), render_scene(3, 96)
    assert small.objects == large.objects
    # the same geometry: depth at 96 px subsampled at the 32 px pixel centres
    assert np.allclose(small.depth, large.depth[1::3, 1::3], rtol=1e-5)


def test_arrays_have_the_documented_shapes_dtypes_and_ranges(scenes: list[Scene]) -> None:
    for s in scenes:
        assert s.rgb.shape == (SIZE, SIZE, 3) and s.rgb.dtype == np.uint8
        assert s.depth.shape == (SIZE, SIZE) and s.depth.dtype == np.float32
        assert s.normal.shape == (SIZE, SIZE, 3) and s.normal.dtype == np.float32
        assert s.instance.shape == s.semantic.shape == (SIZE, SIZE)
        assert s.instance.dtype == s.semantic.dtype == np.uint8
        assert s.semantic.max() < len(SEMANTIC_CLASSES)
        assert s.instance.max() <= len(s.objects)
        assert 2 <= len(s.objects) <= 6
        assert s.rgb.std() > 10.0  # shaded and textured, not flat
        # every scene shows the backdrop, the ground and at least one object
        assert {0, 1} <= set(np.unique(s.semantic).tolist())
        assert s.instance.max() >= 1


def test_object_attributes_come_from_the_vocabularies(scenes: list[Scene]) -> None:
    for s in scenes:
        assert [o.instance_id for o in s.objects] == list(range(1, len(s.objects) + 1))
        for o in s.objects:
            assert o.shape in SEMANTIC_CLASSES[2:]
            assert o.color_name in COLOR_NAMES
            assert o.material in ("matte", "shiny") and o.size in ("small", "large")
            assert len(o.color) == 3 and all(0 <= c <= 255 for c in o.color)
        pairs = [(o.shape, o.color_name) for o in s.objects]
        assert len(set(pairs)) == len(pairs)  # captions can name each object unambiguously


def test_depth_is_finite_and_positive_everywhere(scenes: list[Scene]) -> None:
    for s in scenes:
        assert np.isfinite(s.depth).all()
        assert s.depth.min() > 0.5  # nothing touches the lens
        assert s.depth.max() < 50.0  # the backdrop closes the scene


def test_normals_are_unit_and_face_the_camera(scenes: list[Scene]) -> None:
    view = _view_dirs(SIZE)
    for s in scenes:
        assert np.allclose(np.linalg.norm(s.normal, axis=-1), 1.0, atol=1e-5)
        assert ((s.normal * view).sum(axis=-1) < 1e-6).all()


def test_ground_normals_point_up_and_match_the_depth(scenes: list[Scene]) -> None:
    for s in scenes:
        ground = s.semantic == SEMANTIC_CLASSES.index("ground")
        n = s.normal[ground]  # (N, 3): one plane, so one normal
        assert (n[:, 1] < -0.8).all()  # up is -y in the camera frame (OpenCV, camera tilted)
        assert np.allclose(n, n[0], atol=1e-5)
        # the unprojected ground points all lie on the plane n . p = -camera height
        offsets = _camera_points(s)[ground] @ n[0].astype(np.float64)
        assert offsets.std() < 1e-3 and -3.0 < offsets.mean() < -1.5


def test_boxes_match_the_instance_masks(scenes: list[Scene]) -> None:
    for s in scenes:
        visible = set(np.unique(s.instance).tolist()) - {0}
        assert {b["instance_id"] for b in s.boxes} == visible
        shapes = {o.instance_id: o.shape for o in s.objects}
        for b in s.boxes:
            rows, cols = np.nonzero(s.instance == b["instance_id"])
            tight = [cols.min() / SIZE, rows.min() / SIZE, (cols.max() + 1) / SIZE,
                     (rows.max() + 1) / SIZE]
            assert b["box"] == pytest.approx(tight)
            assert b["class_name"] == shapes[b["instance_id"]] and b["score"] == 1.0


def test_objects_are_mostly_visible(scenes: list[Scene]) -> None:
    objects = sum(len(s.objects) for s in scenes)
    boxed = sum(len(s.boxes) for s in scenes)
    assert boxed >= 0.95 * objects
    for s in scenes:
        for b in s.boxes:  # no box is cut by the image border
            x0, y0, x1, y1 = b["box"]
            assert 0.0 < x0 < x1 < 1.0 and 0.0 < y0 < y1 < 1.0


def test_semantic_ids_agree_with_instances(scenes: list[Scene]) -> None:
    for s in scenes:
        assert set(np.unique(s.semantic[s.instance == 0]).tolist()) <= {0, 1}
        for o in s.objects:
            mask = s.instance == o.instance_id
            assert (s.semantic[mask] == SEMANTIC_CLASSES.index(o.shape)).all()


def test_caption_names_exactly_the_visible_objects(scenes: list[Scene]) -> None:
    for s in scenes:
        caption = s.caption
        assert caption == caption.lower() and caption.endswith(".")
        visible = {b["instance_id"] for b in s.boxes}
        # the first sentence lists the objects: "a small red shiny sphere, ... and a ..."
        listed = re.split(r", |\band\b", caption.split(". ")[0])
        for o in s.objects:
            described = any(set(p.split()) >= {o.color_name, o.shape} for p in listed)
            assert described == (o.instance_id in visible), (caption, o)
        # relations name objects as "the <colour> <shape>", always visible ones
        shapes = "|".join(SEMANTIC_CLASSES[2:])
        named = re.findall(rf"\bthe ([a-z]+) ({shapes})\b", caption)
        shown = {(o.color_name, o.shape) for o in s.objects if o.instance_id in visible}
        assert named and set(named) <= shown


def test_sphere_is_in_front_of_the_ground_behind_it() -> None:
    checked = 0
    for seed in range(40):
        s = render_scene(seed, 64)
        for o in s.objects:
            mask = s.instance == o.instance_id
            if o.shape != "sphere" or mask.sum() < 12:
                continue
            rows, cols = np.nonzero(mask)
            r, c = int(round(rows.mean())), int(round(cols.mean()))
            above = np.nonzero(s.instance[:r, c] == 0)[0]  # background seen above the sphere
            assert above.size
            assert s.depth[r, c] < s.depth[above[-1], c]
            # at its centre a sphere faces the camera: normal ~ -view direction
            assert s.normal[r, c, 2] < -0.7
            checked += 1
        if checked >= 3:
            break
    assert checked >= 3


def test_object_count_bounds_are_respected() -> None:
    for seed in range(4):
        assert len(render_scene(seed, 16, min_objects=6, max_objects=6).objects) == 6
        assert len(render_scene(seed, 16, min_objects=1, max_objects=1).objects) == 1
    with pytest.raises(ValueError):
        render_scene(0, 32, min_objects=3, max_objects=2)
    with pytest.raises(ValueError):
        render_scene(0, 32, min_objects=2, max_objects=99)  # more than fit the floor
    with pytest.raises(ValueError):
        render_scene(0, 4)


def test_bounding_rect_culling_changes_no_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Primary and shadow rays are only cast inside projected bounding rects; casting
    them over the whole frame instead must give the same image and ground truth."""
    import fm21.ingest.synthetic as synthetic

    culled = [render_scene(seed, 40) for seed in range(6)]
    monkeypatch.setattr(synthetic, "_pixel_rect", lambda rect, size: (slice(None), slice(None)))
    for a in culled:
        b = render_scene(a.seed, 40)
        for name in ("rgb", "depth", "normal", "instance"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (a.seed, name)


def _relations(caption: str) -> set[tuple[str, str, str]]:
    """(subject, relation, object) triples of the relation sentences of a caption."""
    rel = "to the left of|to the right of|in front of|behind"
    found = set()
    for sentence in caption.split(". ")[1:]:
        m = re.fullmatch(rf"the (\w+ \w+) (?:is|stands) ({rel}) the (\w+ \w+)\.?", sentence)
        if m:
            found.add((m[1], m[2], m[3]))
            continue
        m = re.fullmatch(rf"({rel}) the (\w+ \w+) there is the (\w+ \w+)\.?", sentence)
        assert m, sentence
        found.add((m[3], m[1], m[2]))
    return found


def test_caption_relations_follow_the_geometry() -> None:
    from fm21.ingest.synthetic import SceneObject, make_caption

    red = SceneObject("sphere", "red", (200, 40, 40), "shiny", "small", 1)
    blue = SceneObject("cube", "blue", (45, 85, 215), "matte", "large", 2)
    green = SceneObject("cone", "green", (45, 160, 65), "matte", "small", 3)
    # camera-frame centres (x, z): red left of blue side by side; green far behind blue
    layout = [(red, (-2.0, 5.0)), (blue, (2.0, 5.0)), (green, (2.2, 9.0))]
    truth = {
        ("red sphere", "blue cube"): "to the left of",
        ("blue cube", "red sphere"): "to the right of",
        ("green cone", "blue cube"): "behind",
        ("blue cube", "green cone"): "in front of",
        ("red sphere", "green cone"): "to the left of",
        ("green cone", "red sphere"): "to the right of",
    }
    seen = set()
    for seed in range(30):
        caption = make_caption(np.random.default_rng(seed), layout)
        for subject, rel, obj in _relations(caption):
            assert truth[(subject, obj)] == rel, caption
            seen.add(rel)
    assert seen == {"to the left of", "to the right of", "behind", "in front of"}
    # only the objects passed in (the visible ones) are named
    caption = make_caption(np.random.default_rng(0), layout[:2])
    assert "green" not in caption and "cone" not in caption
    assert "red" in caption and "blue cube" in caption


def test_class_colour_ties_colours_to_shapes_and_zero_changes_nothing() -> None:
    default = render_scene(11, 32)
    zero = render_scene(11, 32, class_colour=0.0)
    assert np.array_equal(default.rgb, zero.rgb) and default.objects == zero.objects
    # always typical where the shape's typical colours are not yet taken in the scene
    typical = untypical = 0
    for seed in range(40):
        seen: dict[str, set[str]] = {}
        for obj in render_scene(seed, 32, class_colour=1.0).objects:
            free = set(CLASS_COLOURS[obj.shape]) - seen.setdefault(obj.shape, set())
            if free:
                assert obj.color_name in free, (seed, obj)
            typical += obj.color_name in CLASS_COLOURS[obj.shape]
            untypical += obj.color_name not in CLASS_COLOURS[obj.shape]
            seen[obj.shape].add(obj.color_name)
    assert typical > 5 * untypical
    # the default scenes: about 2 of 10 colours are a shape's typical ones
    typical_share = np.mean([o.color_name in CLASS_COLOURS[o.shape]
                             for s in range(40) for o in render_scene(s, 32).objects])
    assert typical_share < 0.4


def test_class_colour_stays_out_of_the_config_dump_at_its_default() -> None:
    # stores built before the option keep their ingest fingerprint
    assert "class_colour" not in SyntheticConfig().model_dump()
    assert SyntheticConfig(class_colour=0.8).model_dump()["class_colour"] == 0.8
    assert SyntheticConfig(class_colour=0.8).scene_options() == {
        "min_objects": 2, "max_objects": 6, "class_colour": 0.8}
    with pytest.raises(ValueError, match="class_colour"):
        SyntheticConfig(class_colour=1.5)
