"""Geometry of the synthetic scenes (:mod:`fm21.ingest.synthetic`): primitives, their
ray intersections, the pinhole camera and the placement of objects on the floor.

World frame: metres, y up, the ground is the plane y = 0 and every primitive stands on it.
Rays are passed as component triples ``(x, y, z)`` (a tuple, or a ``(3, ...)`` array) of
values that broadcast together: primary rays share one origin (floats) and have per-pixel
directions, shadow rays have per-pixel origins and one direction (the light). Working on
separate components instead of ``(N, 3)`` arrays keeps every step a plain element-wise
ufunc on contiguous data, which is what makes the renderer fast.

``intersect`` returns the ray parameter ``t`` of the first hit in front of the origin
(``np.inf`` on a miss); ``normal`` returns the outward unit normal at surface points.
Bottom faces are never tested: they lie on the ground and no ray can reach them.

Objects are placed by rejection sampling, vectorised over candidate positions: each must
project fully inside the frame, keep clear of the others' footprints and neither hide nor
be hidden by more than half of a neighbour's projected box.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

Num = Union[float, np.ndarray]
Vec = tuple[Num, Num, Num]

EPS_T = 1e-9  # smallest accepted hit distance (origins are offset off their surface)
_TINY = 1e-12  # guards divisions by direction components that are exactly zero


@dataclass(frozen=True)
class Primitive:
    """One solid standing on the ground at ``(x, z)``.

    ``radius`` is the half-width in the ground plane (sphere radius, half the cube side,
    cylinder/cone base radius); ``height`` its vertical extent; ``angle`` the rotation of
    a cube about the vertical axis (radians).
    """

    shape: str
    x: float
    z: float
    radius: float
    height: float
    angle: float = 0.0

    @property
    def footprint_radius(self) -> float:
        """Radius of the circle on the ground that contains the primitive."""
        return self.radius * math.sqrt(2.0) if self.shape == "cube" else self.radius

    def corners(self) -> np.ndarray:
        """(8, 3) corners of a box that encloses the primitive (exact for a cube)."""
        return corner_offsets(self.shape, self.radius, self.height, self.angle) + (
            self.x, 0.0, self.z
        )

    def intersect(self, o: Vec, d: Vec) -> np.ndarray:
        """First hit distance along unit directions ``d`` from origins ``o`` (inf: miss)."""
        return _INTERSECT[self.shape](self, o, d)

    def normal(self, p: Vec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Outward unit normal at surface points ``p``."""
        return _NORMAL[self.shape](self, p)


_UNIT_CORNERS = np.array(
    [(sx, sy, sz) for sx in (-1.0, 1.0) for sy in (0.0, 1.0) for sz in (-1.0, 1.0)]
)  # (8, 3) corners of the box [-1, 1] x [0, 1] x [-1, 1]


def corner_offsets(shape: str, radius: float, height: float, angle: float) -> np.ndarray:
    """(8, 3) enclosing-box corners of a primitive standing at the origin of the ground."""
    offsets = _UNIT_CORNERS * (radius, height, radius)
    if shape == "cube":  # the cube's own corners, rotated about the vertical
        c, s = math.cos(angle), math.sin(angle)
        offsets = offsets @ np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return offsets


# ----------------------------------------------------------------------------- sphere
def _sphere_t(s: Primitive, o: Vec, d: Vec) -> np.ndarray:
    r = s.radius
    ox, oy, oz = o[0] - s.x, o[1] - r, o[2] - s.z  # origin relative to the centre
    b = ox * d[0] + oy * d[1] + oz * d[2]
    c = ox * ox + oy * oy + oz * oz - r * r
    disc = b * b - c  # |d| = 1
    t = -b - np.sqrt(np.maximum(disc, 0.0))  # near root: origins are outside
    return np.where((disc > 0.0) & (t > EPS_T), t, np.inf)


def _sphere_n(s: Primitive, p: Vec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inv = 1.0 / s.radius
    return (p[0] - s.x) * inv, (p[1] - s.radius) * inv, (p[2] - s.z) * inv


# ----------------------------------------------------------------------------- cube
def _to_local(s: Primitive, px: Num, pz: Num) -> tuple[Num, Num]:
    """World (x, z) offsets -> the cube's own frame (rotation by -angle about y)."""
    c, sn = math.cos(s.angle), math.sin(s.angle)
    return c * px + sn * pz, -sn * px + c * pz


def _safe(q: Num) -> Num:
    return np.copysign(np.maximum(np.abs(q), _TINY), q)


def _cube_t(s: Primitive, o: Vec, d: Vec) -> np.ndarray:
    half_h = 0.5 * s.height
    lx, lz = _to_local(s, o[0] - s.x, o[2] - s.z)
    dlx, dlz = _to_local(s, d[0], d[2])
    t_near: Num = -np.inf
    t_far: Num = np.inf
    # slab test on the three axes of the box frame
    for p, q, half in ((lx, dlx, s.radius), (o[1] - half_h, d[1], half_h), (lz, dlz, s.radius)):
        inv = 1.0 / _safe(q)
        t1 = (-half - p) * inv
        t2 = (half - p) * inv
        t_near = np.maximum(t_near, np.minimum(t1, t2))
        t_far = np.minimum(t_far, np.maximum(t1, t2))
    return np.where((t_far >= t_near) & (t_near > EPS_T), t_near, np.inf)


def _cube_n(s: Primitive, p: Vec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    half_h = 0.5 * s.height
    lx, lz = _to_local(s, p[0] - s.x, p[2] - s.z)
    ly = p[1] - half_h
    # the face hit is the axis where the point sits furthest out relative to the half-size
    ax, ay, az = np.abs(lx) / s.radius, np.abs(ly) / half_h, np.abs(lz) / s.radius
    on_x = (ax >= ay) & (ax >= az)
    on_y = ~on_x & (ay >= az)
    on_z = ~on_x & ~on_y
    nlx = np.where(on_x, np.sign(lx), 0.0)
    nly = np.where(on_y, np.sign(ly), 0.0)
    nlz = np.where(on_z, np.sign(lz), 0.0)
    c, sn = math.cos(s.angle), math.sin(s.angle)
    return c * nlx - sn * nlz, nly, sn * nlx + c * nlz  # back to the world frame


# ----------------------------------------------------------------------------- cylinder
def _cylinder_t(s: Primitive, o: Vec, d: Vec) -> np.ndarray:
    r, h = s.radius, s.height
    ox, oz = o[0] - s.x, o[2] - s.z
    a = d[0] * d[0] + d[2] * d[2]
    b = ox * d[0] + oz * d[2]
    c = ox * ox + oz * oz - r * r
    disc = b * b - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / np.maximum(a, _TINY)
    y = o[1] + t_side * d[1]
    side = (disc > 0.0) & (t_side > EPS_T) & (y >= 0.0) & (y <= h)
    # top cap, reachable only from above (rays through the bottom would start underground)
    t_cap = (h - o[1]) / _safe(d[1])
    cx, cz = ox + t_cap * d[0], oz + t_cap * d[2]
    cap = (d[1] < 0.0) & (t_cap > EPS_T) & (cx * cx + cz * cz <= r * r)
    return np.minimum(np.where(side, t_side, np.inf), np.where(cap, t_cap, np.inf))


def _cylinder_n(s: Primitive, p: Vec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    on_cap = p[1] >= s.height - 1e-7
    inv = 1.0 / s.radius
    nx = np.where(on_cap, 0.0, (p[0] - s.x) * inv)
    nz = np.where(on_cap, 0.0, (p[2] - s.z) * inv)
    return nx, np.where(on_cap, 1.0, 0.0), nz


# ----------------------------------------------------------------------------- cone
def _cone_t(s: Primitive, o: Vec, d: Vec) -> np.ndarray:
    """Apex at (x, height, z), base circle of ``radius`` on the ground."""
    k = (s.radius / s.height) ** 2
    ox, oy, oz = o[0] - s.x, o[1] - s.height, o[2] - s.z  # relative to the apex
    # x^2 + z^2 = k y^2 is a double cone; only its lower nappe with -h <= y <= 0 is solid
    a = d[0] * d[0] + d[2] * d[2] - k * d[1] * d[1]
    b = ox * d[0] + oz * d[2] - k * oy * d[1]
    c = ox * ox + oz * oz - k * oy * oy
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0.0))
    a = _safe(a)
    t1, t2 = (-b - sq) / a, (-b + sq) / a
    t_lo, t_hi = np.minimum(t1, t2), np.maximum(t1, t2)
    y_lo, y_hi = oy + t_lo * d[1], oy + t_hi * d[1]
    ok_lo = (t_lo > EPS_T) & (y_lo <= 0.0) & (y_lo >= -s.height)
    ok_hi = (t_hi > EPS_T) & (y_hi <= 0.0) & (y_hi >= -s.height)
    t = np.where(ok_lo, t_lo, np.where(ok_hi, t_hi, np.inf))
    return np.where(disc > 0.0, t, np.inf)


def _cone_n(s: Primitive, p: Vec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = (s.radius / s.height) ** 2
    gx, gy, gz = p[0] - s.x, -k * (p[1] - s.height), p[2] - s.z  # gradient of x²+z²-k y²
    inv = 1.0 / np.maximum(np.sqrt(gx * gx + gy * gy + gz * gz), _TINY)
    return gx * inv, gy * inv, gz * inv


_INTERSECT: dict[str, Callable[[Primitive, Vec, Vec], np.ndarray]] = {
    "sphere": _sphere_t,
    "cube": _cube_t,
    "cylinder": _cylinder_t,
    "cone": _cone_t,
}
_NORMAL: dict[str, Callable[[Primitive, Vec], tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
    "sphere": _sphere_n,
    "cube": _cube_n,
    "cylinder": _cylinder_n,
    "cone": _cone_n,
}
SHAPES: tuple[str, ...] = tuple(_INTERSECT)


# ============================================================================= scene layout
SEMANTIC_CLASSES: tuple[str, ...] = ("background", "ground") + SHAPES  # 0: the backdrop wall
_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (45, 160, 65),
    "blue": (45, 85, 215),
    "yellow": (235, 205, 45),
    "purple": (135, 65, 180),
    "cyan": (45, 195, 205),
    "orange": (240, 135, 35),
    "pink": (240, 130, 180),
    "brown": (130, 80, 45),
    "white": (235, 235, 235),
}
COLOR_NAMES: tuple[str, ...] = tuple(_PALETTE)
# Each shape's typical colours, used with probability ``class_colour`` (default 0: every
# colour equally likely for every shape). In photos a class predicts its colours (grass is
# green, sky blue); with independent colours no condition but the image itself tells an
# object's colour, so X -> RGB cannot beat the mean image under PSNR (docs/evaluation.md).
CLASS_COLOURS: dict[str, tuple[str, ...]] = {
    "sphere": ("red", "orange"),
    "cube": ("blue", "cyan"),
    "cylinder": ("green", "yellow"),
    "cone": ("purple", "pink"),
}
MAX_OBJECTS = 7  # the most that reliably fit the visible floor without hiding each other

FOV_DEG = 54.0  # field of view of the pinhole camera (square images: vertical = horizontal)
_PLACEMENT_TRIES = 64  # candidate positions drawn per object
_ROUNDS = 4  # batches of objects drawn before settling for fewer than asked ...
_MAX_ATTEMPTS = 16  # ... and fresh layouts tried before giving up on min_objects
_MARGIN = 0.02  # objects' projected boxes stay this far (image fraction) inside the frame
_MAX_HIDDEN = 0.35  # largest fraction of a farther object's box a nearer one may cover


@dataclass(frozen=True)
class SceneObject:
    shape: str  # a SEMANTIC_CLASSES name
    color_name: str
    color: tuple[int, int, int]  # base albedo, 0-255
    material: str  # "matte" | "shiny"
    size: str  # "small" | "large" (for captions)
    instance_id: int  # 1..n, matches Scene.instance


@dataclass(frozen=True, eq=False)
class Camera:
    """Pinhole camera; ``basis`` rows are its x (right), y (down), z (forward) in the world."""

    position: np.ndarray  # (3,)
    basis: np.ndarray  # (3, 3)
    focal: float  # focal length in units of the image side

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points -> (N, 2) normalised image coords (u right, v down), (N,) z."""
        cam = (points - self.position) @ self.basis.T  # (N, 3) camera frame
        z = cam[:, 2]
        return 0.5 + self.focal * cam[:, :2] / np.maximum(z, 1e-6)[:, None], z


def sample_camera(rng: np.random.Generator) -> Camera:
    """A camera 1.9-2.5 m above the ground at the origin, looking down +z, slightly turned."""
    height = rng.uniform(1.9, 2.5)
    pitch = math.radians(rng.uniform(20.0, 28.0))  # looking down
    yaw = math.radians(rng.uniform(-10.0, 10.0))
    sy, cy, sp, cp = math.sin(yaw), math.cos(yaw), math.sin(pitch), math.cos(pitch)
    fwd = np.array([sy * cp, -sp, cy * cp])
    down = np.array([-sy * sp, -cp, -cy * sp])  # orthogonal to fwd, mostly -y
    right = np.array([-cy, 0.0, sy])  # down x fwd: right-handed, right x down = forward
    focal = 0.5 / math.tan(math.radians(FOV_DEG / 2))
    return Camera(np.array([0.0, height, 0.0]), np.stack([right, down, fwd]), focal)


def _sample_dims(rng: np.random.Generator, shape: str, large: bool) -> tuple[float, float, float]:
    """(radius, height, angle) of a primitive; large ones are about twice as big."""
    lo, hi = {"sphere": (0.3, 0.4), "cube": (0.28, 0.36), "cylinder": (0.25, 0.34),
              "cone": (0.3, 0.4)}[shape]
    radius = rng.uniform(lo, hi) * (1.75 if large else 1.0)
    if shape in ("sphere", "cube"):
        height = 2.0 * radius
    else:
        height = radius * rng.uniform(1.6, 2.8)
    angle = rng.uniform(0.0, math.pi / 2) if shape == "cube" else 0.0
    return radius, height, angle


@dataclass(frozen=True)
class _Candidates:
    """T candidate ground positions for each of B objects, with their projections."""

    xz: np.ndarray  # (B, T, 2) world ground positions
    foot: np.ndarray  # (B,) footprint radii
    rects: np.ndarray  # (B, T, 4) projected boxes (u0, v0, u1, v1), normalised
    depth: np.ndarray  # (B, T) camera z of the object centres
    ok: np.ndarray  # (B, T) in view, clear of the wall


def _candidates(
    rng: np.random.Generator, camera: Camera, prims: list[Primitive], *, wall_z: float
) -> _Candidates:
    """Draw and project candidate positions for all objects of a batch at once."""
    cam, num = camera, len(prims)
    # ground pixels u in [0.1, 0.9], v in [0.45, 0.88], centred on the principal point
    uv = rng.random((num, _PLACEMENT_TRIES, 2)) * (0.8, 0.43) + (-0.4, -0.05)
    d = uv @ (cam.basis[:2] / cam.focal) + cam.basis[2]  # (B, T, 3) world ray dirs
    xz = cam.position[::2] - cam.position[1] * d[..., ::2] / d[..., 1:2]  # (B, T, 2) on y = 0
    # corners in the camera frame: rotated offsets (8, B, 1, 3) + rotated bases (B, T, 3);
    # corners lead so that reductions over them are element-wise (fast) in numpy
    base = xz @ cam.basis[:, ::2].T - cam.basis @ cam.position  # (B, T, 3)
    offsets = np.stack([corner_offsets(p.shape, p.radius, p.height, p.angle) for p in prims],
                       axis=1) @ cam.basis.T  # (8, B, 3)
    corners = offsets[:, :, None] + base[None]  # (8, B, T, 3)
    z = corners[..., 2]
    uv_c = corners[..., :2] / np.maximum(z, 1e-6)[..., None]  # (8, B, T, 2), still / focal
    rects = 0.5 + cam.focal * np.concatenate([uv_c.min(axis=0), uv_c.max(axis=0)], axis=-1)
    depth = base[..., 2] + offsets[..., 2].mean(axis=0)[:, None]  # (B, T)
    foot = np.array([p.footprint_radius for p in prims])
    ok = (xz[..., 1] + foot[:, None] <= wall_z - 1.0) & (z.min(axis=0) > 1e-3)
    ok &= (rects[..., :2].min(axis=-1) >= _MARGIN) & (rects[..., 2:].max(axis=-1) <= 1 - _MARGIN)
    return _Candidates(xz, foot, rects, depth, ok)


def _first_fit(
    cand: _Candidates, b: int, placed: list[tuple[Primitive, tuple, float]]
) -> int | None:
    """Index of the first candidate of object ``b`` that neither interpenetrates nor hides
    (or is hidden by) an already placed object; None if there is none."""
    ok = cand.ok[b]
    if placed:
        q_xz = np.array([(q.x, q.z) for q, _, _ in placed])  # (P, 2)
        q_foot = np.array([q.footprint_radius for q, _, _ in placed])
        gap = np.linalg.norm(cand.xz[b][:, None] - q_xz, axis=-1) - q_foot - cand.foot[b]
        ok = ok & (gap >= 0.08).all(axis=1)  # (T, P) -> (T,)
        hidden = _hidden_fraction(cand.rects[b], cand.depth[b], placed)
        ok &= (hidden <= _MAX_HIDDEN).all(axis=1)
    hits = np.flatnonzero(ok)
    return int(hits[0]) if hits.size else None


def _hidden_fraction(
    rects: np.ndarray, depth: np.ndarray, placed: list[tuple[Primitive, tuple, float]]
) -> np.ndarray:
    """(T, P) fraction of the farther rect of each (candidate, placed) pair the nearer covers."""
    q_rects = np.array([r for _, r, _ in placed])  # (P, 4)
    q_depth = np.array([dq for _, _, dq in placed])  # (P,)
    a, b = rects[:, None], q_rects[None]  # (T, 1, 4), (1, P, 4)
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])  # (T, 1)
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # (1, P)
    far_area = np.where(depth[:, None] < q_depth[None], area_b, area_a)
    return np.maximum(w, 0.0) * np.maximum(h, 0.0) / np.maximum(far_area, 1e-12)


def sample_objects(
    rng: np.random.Generator, camera: Camera, *, num: int, min_objects: int, wall_z: float,
    class_colour: float = 0.0,
) -> tuple[list[SceneObject], list[tuple[Primitive, tuple, float]]]:
    """Sample and place ``num`` objects, or at least ``min_objects`` when the floor is
    crowded; each (shape, colour) pair occurs at most once so that captions can name
    objects unambiguously. An object takes one of its shape's ``CLASS_COLOURS`` with
    probability ``class_colour`` (0 draws no extra random number: scenes are unchanged)."""
    for attempt in range(_MAX_ATTEMPTS):
        # a greedy layout can block itself: start over with smaller objects
        objects, placed = _place_rounds(rng, camera, num=num, wall_z=wall_z,
                                        large_p=0.4 / (1 + 2 * attempt), class_colour=class_colour)
        if len(placed) >= min_objects:
            return objects, placed
    raise RuntimeError(f"could not place {min_objects} objects; lower min_objects")


def _place_rounds(
    rng: np.random.Generator, camera: Camera, *, num: int, wall_z: float, large_p: float,
    class_colour: float,
) -> tuple[list[SceneObject], list[tuple[Primitive, tuple, float]]]:
    """Up to ``_ROUNDS`` batches of random objects, each placed first-fit if it has room."""
    objects: list[SceneObject] = []
    placed: list[tuple[Primitive, tuple, float]] = []
    for _ in range(_ROUNDS):
        batch = num - len(placed) + 2  # two spares replace objects that find no room
        shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=batch)]
        large = rng.random(batch) < large_p
        shiny = rng.random(batch) < 0.5
        prims = [Primitive(sh, 0.0, 0.0, *_sample_dims(rng, sh, bool(lg)))
                 for sh, lg in zip(shapes, large)]
        cand = _candidates(rng, camera, prims, wall_z=wall_z)
        for b, prim in enumerate(prims):
            i = _first_fit(cand, b, placed)
            if i is None:
                continue
            x, z = (float(v) for v in cand.xz[b, i])
            placed.append((dataclasses.replace(prim, x=x, z=z),
                           tuple(float(v) for v in cand.rects[b, i]), float(cand.depth[b, i])))
            used = {o.color_name for o in objects if o.shape == prim.shape}
            free = [c for c in COLOR_NAMES if c not in used]
            typical = [c for c in CLASS_COLOURS[prim.shape] if c not in used]
            if class_colour > 0.0 and typical and rng.random() < class_colour:
                free = typical
            color = free[rng.integers(len(free))]
            objects.append(SceneObject(
                prim.shape, color, _PALETTE[color], "shiny" if shiny[b] else "matte",
                "large" if large[b] else "small", len(objects) + 1,
            ))
            if len(placed) == num:
                return objects, placed
    return objects, placed
