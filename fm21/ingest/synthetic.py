"""Procedural synthetic scenes: the embedded default data source of fm21.

``render_scene(seed)`` ray-casts 2-6 primitives (spheres, cubes rotated about the
vertical, cylinders, cones) of varied colour, size and material standing on a textured
ground plane in front of a backdrop wall, lit by one directional light with Lambert
shading, Blinn-Phong highlights on shiny objects and hard shadows. Every pixel hits the
ground, an object or the wall, so depth is finite everywhere. Alongside the RGB image it
returns the exact ground truth the oracle specialists read: metric z-depth, camera-frame
normals, instance and semantic masks, boxes and a caption with spatial relations.

Everything is vectorised numpy (no per-pixel Python), deterministic by seed, and the
scene layout is sampled in normalised image coordinates, so one seed gives the same scene
at 64 px and at 224 px. Primitives, ray intersections, the camera and object placement
live in :mod:`fm21.ingest.synthetic_shapes`; the rest of the layout, shading, masks,
boxes and captions here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fm21.ingest.synthetic_shapes import (
    CLASS_COLOURS,
    COLOR_NAMES,
    FOV_DEG,
    MAX_OBJECTS,
    SEMANTIC_CLASSES,
    Camera,
    Primitive,
    SceneObject,
    sample_camera,
    sample_objects,
)

__all__ = [
    "CLASS_COLOURS", "COLOR_NAMES", "FOV_DEG", "SEMANTIC_CLASSES", "Scene", "SceneObject", "make_caption",
    "render_scene",
]

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven")
_INTROS = (
    "{list}.",
    "a scene with {list}.",
    "{count} on a checkered floor: {list}.",
    "a rendering of {list} in front of a wall.",
    "there {be} {list}.",
)
_RELATIONS = (
    "the {a} is {rel} the {b}.",
    "the {a} stands {rel} the {b}.",
    "{rel} the {b} there is the {a}.",
)

_AMBIENT = 0.3  # fraction of the albedo visible in full shadow
_SHININESS_SQUARINGS = 4  # Blinn-Phong exponent of shiny objects: 3 * 2**4 = 48
_SPECULAR = 0.55  # highlight strength of shiny objects (matte: 0)
_SHADOW_OFFSET = 1e-4  # metres: shadow rays start this far off the surface (no acne)


@dataclass(frozen=True)
class Scene:
    """One rendered scene and its exact ground truth (see the module docstring).

    ``objects`` lists every placed object (``instance_id`` 1..n); ``boxes`` and the
    caption cover only the objects with at least one visible pixel.
    """

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 z-depth in metres, finite, > 0
    normal: np.ndarray  # (H, W, 3) float32 unit normals, camera frame (x right, y down, z fwd)
    instance: np.ndarray  # (H, W) uint8, 0 = ground/backdrop, k = object with instance_id k
    semantic: np.ndarray  # (H, W) uint8 ids into SEMANTIC_CLASSES
    boxes: list[dict]
    caption: str
    objects: tuple[SceneObject, ...]
    seed: int


def render_scene(
    seed: int, size: int = 64, *, min_objects: int = 2, max_objects: int = 6,
    class_colour: float = 0.0,
) -> Scene:
    """Render the scene of ``seed`` as a ``size`` x ``size`` image with its ground truth;
    ``class_colour``: the chance that an object takes one of its shape's typical colours
    (``CLASS_COLOURS``) rather than any colour."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    rng = np.random.default_rng(seed)
    layout = sample_layout(rng, min_objects=min_objects, max_objects=max_objects,
                           class_colour=class_colour)
    cam = layout.camera
    t, ids, dirs, inv_len = _cast_primary(layout, size)
    points = cam.position[:, None, None] + t * dirs  # (3, S, S) world hit points
    normal_w = _world_normals(layout, ids, points, dirs, size)  # (3, S, S)
    rgb = _shade(layout, ids, points, normal_w, dirs, size)

    # ids: 0 wall, 1 ground, k + 1 object with instance_id k
    instance = np.where(ids >= 2, ids - 1, 0).astype(np.uint8)
    class_of_id = np.array(
        [0, 1] + [SEMANTIC_CLASSES.index(o.shape) for o in layout.objects], dtype=np.uint8
    )
    # world -> camera frame (basis rows are the camera axes), then channels last
    normal_c = (cam.basis @ normal_w.reshape(3, -1)).T.reshape(size, size, 3)
    boxes = _boxes(instance, layout.objects)
    visible = {b["instance_id"] for b in boxes}
    shown = [(o, c) for o, c in zip(layout.objects, layout.centers_cam) if o.instance_id in visible]
    caption = make_caption(rng, shown)
    return Scene(
        rgb=rgb,
        depth=(t * inv_len).astype(np.float32),
        normal=normal_c.astype(np.float32),
        instance=instance,
        semantic=np.take(class_of_id, ids),
        boxes=boxes,
        caption=caption,
        objects=layout.objects,
        seed=seed,
    )


# ---------------------------------------------------------------------------- layout
@dataclass(frozen=True, eq=False)
class Texture:
    color: np.ndarray  # (3,) base albedo in 0..1
    tile: float  # metres per checker tile / stripe period
    contrast: float  # relative brightness swing of the pattern


@dataclass(frozen=True, eq=False)
class Layout:
    """Everything sampled for one scene; rendering it at any size is deterministic."""

    camera: Camera
    light: np.ndarray  # (3,) unit vector towards the (directional) light
    wall_z: float  # the backdrop is the plane z = wall_z, facing the camera
    ground: Texture
    wall: Texture
    prims: tuple[Primitive, ...]
    objects: tuple[SceneObject, ...]
    rects: tuple[tuple[float, float, float, float], ...]  # projected boxes (u0, v0, u1, v1)
    centers_cam: tuple[tuple[float, float], ...]  # camera-frame (x, z) of object centres


def sample_layout(
    rng: np.random.Generator, *, min_objects: int, max_objects: int, class_colour: float = 0.0
) -> Layout:
    """Sample camera, light, textures and objects of one scene from ``rng``."""
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
                         f"got {min_objects}, {max_objects}")
    camera = sample_camera(rng)
    # light from the camera's side (z < 0) so shadows fall behind objects, in view
    azim, elev = np.radians(rng.uniform(-60.0, 60.0)), np.radians(rng.uniform(35.0, 60.0))
    light = np.array([np.sin(azim) * np.cos(elev), np.sin(elev), -np.cos(azim) * np.cos(elev)])
    wall_z = float(rng.uniform(11.0, 14.0))
    ground = Texture(rng.uniform(0.42, 0.62) * rng.uniform(0.85, 1.15, 3),
                     float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.06, 0.16)))
    wall = Texture(rng.uniform(0.55, 0.8) * rng.uniform(0.8, 1.2, 3),
                   float(rng.uniform(0.8, 2.0)), float(rng.uniform(0.0, 0.04)))
    num = int(rng.integers(min_objects, max_objects + 1))
    objects, placed = sample_objects(rng, camera, num=num, min_objects=min_objects, wall_z=wall_z,
                                     class_colour=class_colour)
    prims = tuple(p for p, _, _ in placed)
    centers = np.array([[p.x, p.height / 2, p.z] for p in prims])  # (n, 3)
    cam_xyz = (centers - camera.position) @ camera.basis.T  # (n, 3) camera frame
    return Layout(
        camera=camera,
        light=light,
        wall_z=wall_z,
        ground=ground,
        wall=wall,
        prims=prims,
        objects=tuple(objects),
        rects=tuple(r for _, r, _ in placed),
        centers_cam=tuple((float(c[0]), float(c[2])) for c in cam_xyz),
    )


# ---------------------------------------------------------------------------- rays
@lru_cache(maxsize=8)
def _camera_rays(size: int, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit pixel-centre rays in the camera frame (3, S*S) and their z = t -> depth (S, S)."""
    c = ((np.arange(size) + 0.5) / size - 0.5) / focal  # (S,)
    xc, yc = np.meshgrid(c, c)  # (S, S): xc varies along columns, yc along rows
    inv_len = 1.0 / np.sqrt(xc * xc + yc * yc + 1.0)
    rays = np.stack([xc * inv_len, yc * inv_len, inv_len]).reshape(3, -1)  # (3, S*S)
    for a in (rays, inv_len):
        a.setflags(write=False)
    return rays, inv_len


def _cast_primary(
    layout: Layout, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit per pixel: distance ``t`` (S, S), surface id (S, S), unit world dirs
    (3, S, S) and the factor turning ``t`` into z-depth (S, S)."""
    cam = layout.camera
    rays, inv_len = _camera_rays(size, cam.focal)
    dirs = (cam.basis.T @ rays).reshape(3, size, size)  # camera -> world frame
    ox, oy, oz = (float(v) for v in cam.position)
    # every ray points away from the camera in z (fov + pitch < 90 deg), so the wall is hit
    t = (layout.wall_z - oz) / dirs[2]
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[1] < 0.0, -oy / dirs[1], np.inf)
    ground = t_ground < t
    t = np.where(ground, t_ground, t)
    ids = ground.astype(np.intp)  # 0 wall, 1 ground, k + 2 the k-th primitive
    for k, prim in enumerate(layout.prims):
        # only the pixels inside the projected bounding box of the object can hit it
        rows, cols = _pixel_rect(layout.rects[k], size)
        t_obj = prim.intersect((ox, oy, oz), dirs[:, rows, cols])
        closer = t_obj < t[rows, cols]
        np.copyto(t[rows, cols], t_obj, where=closer)
        np.copyto(ids[rows, cols], k + 2, where=closer)
    return t, ids, dirs, inv_len


def _world_normals(
    layout: Layout, ids: np.ndarray, points: np.ndarray, dirs: np.ndarray, size: int
) -> np.ndarray:
    """Unit world normals (3, S, S) that face the camera."""
    normal = np.zeros((3, size, size))
    normal[1] = ids == 1  # ground: +y
    normal[2] = (ids == 0) * -1.0  # wall: towards the camera (-z)
    for k, prim in enumerate(layout.prims):
        rows, cols = _pixel_rect(layout.rects[k], size)
        mine = ids[rows, cols] == k + 2
        np.copyto(normal[:, rows, cols], prim.normal(points[:, rows, cols]), where=mine)
    # outward normals of closed solids already face the viewer; the flip is a safety net
    facing = (normal * dirs).sum(axis=0) > 0.0
    return np.where(facing, -normal, normal)


# ---------------------------------------------------------------------------- shading
def _albedo(layout: Layout, ids: np.ndarray, points: tuple) -> list[np.ndarray]:
    """Per-pixel base colour in 0..1 as 3 channel planes (S, S): objects, checker ground,
    striped wall. Channel planes with ``np.take`` are several times faster than ``(S, S, 3)``
    fancy indexing at these sizes."""
    px, py, pz = points
    g, w = layout.ground, layout.wall
    # +-1 checker parity from floors only (float % and sin are slow)
    s = np.floor(px / g.tile) + np.floor(pz / g.tile)
    checker = 4.0 * np.floor(s * 0.5) - 2.0 * s + 1.0  # +1 on even tiles, -1 on odd ones
    # fade the checker with distance: far tiles shrink below a pixel and would alias
    fade = np.exp((layout.camera.position[2] - pz) * (1.0 / 8.0))
    ground = 1.0 + g.contrast * checker * fade
    stripes = px / w.tile
    stripes = (2.0 * (stripes - 2.0 * np.floor(stripes * 0.5)) >= 2.0) * (2.0 * w.contrast)
    wall = 1.1 - w.contrast - 0.35 * np.clip(py * (1.0 / 6.0), 0.0, 1.0) + stripes
    pattern = np.where(ids == 1, ground, np.where(ids == 0, wall, 1.0))  # (S, S)
    lut = np.array([w.color, g.color] + [np.array(o.color) / 255.0 for o in layout.objects])
    return [np.take(lut[:, c], ids) * pattern for c in range(3)]


def _pixel_rect(rect: tuple[float, float, float, float], size: int) -> tuple[slice, slice]:
    """Conservative (rows, cols) slices of a normalised rect on a size x size image."""
    u0, v0, u1, v1 = rect
    cols = slice(max(int(math.floor(u0 * size)) - 1, 0), min(int(math.ceil(u1 * size)) + 1, size))
    rows = slice(max(int(math.floor(v0 * size)) - 1, 0), min(int(math.ceil(v1 * size)) + 1, size))
    return rows, cols


def _shadow_rects(layout: Layout) -> list[tuple[float, float, float, float]]:
    """Projected rects of the volumes the primitives can shadow.

    A point at height y >= 0 shadowed by a primitive is one of its points moved along
    -light by at most height / light_y: it lies in the hull of the enclosing box and that
    box moved by the full reach. With the light on the camera's side the hull stays in
    front of the camera, so its projection is bounded by its 16 projected corners.
    """
    camera, prims, light = layout.camera, layout.prims, layout.light
    corners = np.stack([p.corners() for p in prims])  # (P, 8, 3)
    reach = np.array([p.height for p in prims]) / light[1]  # farthest shadow along -light
    hull = np.concatenate([corners, corners - reach[:, None, None] * light], axis=1)  # (P, 16, 3)
    uv, z = camera.project(hull.reshape(-1, 3))
    uv, z = uv.reshape(len(prims), 16, 2), z.reshape(len(prims), 16)
    rects = np.concatenate([uv.min(axis=1), uv.max(axis=1)], axis=1)  # (P, 4)
    rects[(z <= 1e-3).any(axis=1)] = (0.0, 0.0, 1.0, 1.0)  # reaches behind the camera: all
    return [tuple(float(v) for v in r) for r in rects]


def _shadowed(
    layout: Layout, points: np.ndarray, normal: np.ndarray, lit: np.ndarray, size: int
) -> np.ndarray:
    """(S, S) bool: surface point faces the light but a primitive blocks it."""
    shadow = np.zeros(lit.shape, dtype=bool)
    light = tuple(float(v) for v in layout.light)
    for prim, rect in zip(layout.prims, _shadow_rects(layout)):
        # only points inside the object's projected shadow volume can be blocked by it
        rows, cols = _pixel_rect(rect, size)
        origin = points[:, rows, cols] + _SHADOW_OFFSET * normal[:, rows, cols]  # (3, h, w)
        blocked = prim.intersect(origin, light) < np.inf
        shadow[rows, cols] |= blocked & lit[rows, cols]
    return shadow


def _shade(
    layout: Layout, ids: np.ndarray, points: np.ndarray, normal: np.ndarray, dirs: np.ndarray,
    size: int,
) -> np.ndarray:
    """Lambert + Blinn-Phong with hard shadows -> (S, S, 3) uint8."""
    light = layout.light[:, None, None]  # (3, 1, 1)
    n_dot_l = (normal * light).sum(axis=0)  # (S, S)
    lit = n_dot_l > 0.0
    direct = np.where(lit & ~_shadowed(layout, points, normal, lit, size), n_dot_l, 0.0)
    # Blinn-Phong half vector between the light and the viewer (-dirs)
    half = light - dirs  # (3, S, S)
    n_dot_h = (normal * half).sum(axis=0) / np.sqrt((half * half).sum(axis=0))
    ks = np.array([0.0, 0.0] + [_SPECULAR * (o.material == "shiny") for o in layout.objects])
    spec = np.maximum(n_dot_h, 0.0)
    spec = spec * spec * spec
    for _ in range(_SHININESS_SQUARINGS):  # repeated squaring: much faster than np.power
        spec *= spec
    spec *= np.take(ks, ids) * (direct > 0.0)
    shade = _AMBIENT + (1.0 - _AMBIENT) * direct
    rgb = np.stack([a * shade + spec for a in _albedo(layout, ids, points)], axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # (S, S, 3)


# ---------------------------------------------------------------------------- boxes
def _boxes(instance: np.ndarray, objects: tuple[SceneObject, ...]) -> list[dict]:
    """Normalised [x0, y0, x1, y1] (pixel edges) of each object's visible mask."""
    h, w = instance.shape
    boxes = []
    for obj in objects:
        mask = instance == obj.instance_id
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:  # fully occluded: no box, not in the caption
            continue
        box = [cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h]
        boxes.append(
            {
                "box": [float(v) for v in box],
                "class_name": obj.shape,
                "instance_id": obj.instance_id,
                "score": 1.0,
            }
        )
    return boxes


# ---------------------------------------------------------------------------- caption
def _phrase(obj: SceneObject, rng: np.random.Generator) -> str:
    """'a small red shiny sphere' (material and colour order varies)."""
    first, second = (obj.color_name, obj.material)
    if rng.random() < 0.5:
        first, second = second, first
    article = "an" if obj.size[0] in "aeiou" else "a"
    return f"{article} {obj.size} {first} {second} {obj.shape}"


def _relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where centre ``a`` lies relative to ``b``, both camera-frame (x, z)."""
    dx, dz = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= 0.6 * abs(dz):  # mostly side by side in the image
        return "to the left of" if dx < 0 else "to the right of"
    return "in front of" if dz < 0 else "behind"


def make_caption(
    rng: np.random.Generator, visible: list[tuple[SceneObject, tuple[float, float]]]
) -> str:
    """Caption of the visible objects (with camera-frame centres): a listing + relations."""
    if not visible:
        return "an empty floor in front of a wall."
    phrases = [_phrase(o, rng) for o, _ in visible]
    listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    n = len(visible)
    count = f"{_NUMBER_WORDS[n]} object" + ("s" if n > 1 else "")
    intro = _INTROS[rng.integers(len(_INTROS))]
    sentences = [intro.format(list=listing, count=count, be="is" if n == 1 else "are")]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]  # each unordered pair once
    num_rel = min(len(pairs), int(rng.integers(1, 4)))
    for p in rng.choice(len(pairs), size=num_rel, replace=False) if pairs else ():
        i, j = pairs[p] if rng.random() < 0.5 else pairs[p][::-1]
        (a, ca), (b, cb) = visible[i], visible[j]
        template = _RELATIONS[rng.integers(len(_RELATIONS))]
        sentences.append(template.format(
            a=f"{a.color_name} {a.shape}", b=f"{b.color_name} {b.shape}", rel=_relation(ca, cb)
        ))
    return " ".join(sentences)
