"""The toy world: six primitives in seven colours, their captions, and exact signed distance functions.

Everything here is ground truth. It makes the training images of the embedded toy-world prior and
scores generated assets afterwards; generation itself never reads it.

Geometry follows :mod:`threed.cameras`: +Y up, the front faces +Z, every object centred at the
origin and inside a sphere of radius 0.7 (the scene box is [-1, 1]^3). The signed distance
functions are exact (negative inside); most follow Inigo Quilez's catalogue of distance functions
(https://iquilezles.org/articles/distfunctions/). Surface samplers draw points uniformly by area,
independently of the distance functions, so each can check the other.

Colours are fixed linear albedos in [0, 1]:

========  ====================
name      RGB
========  ====================
red       (0.85, 0.12, 0.10)
green     (0.15, 0.65, 0.20)
blue      (0.12, 0.25, 0.85)
yellow    (0.95, 0.85, 0.10)
orange    (0.98, 0.50, 0.05)
purple    (0.55, 0.20, 0.75)
white     (0.95, 0.95, 0.95)
========  ====================

Captions: ``"a red cube"``, ``"an orange cone"``, the asymmetric family ``"a blue cube with a
yellow front"`` (the faces whose outward normal points within 45 degrees of +Z take the second
colour; on a cube that is exactly the +Z face), and two-object scenes ``"a red cube and a blue
sphere"`` (side by side along X, each scaled down). :func:`view_caption` adds DreamFusion's
view-dependent suffix (``", front view"``...), the same text threed's prompt processor appends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from threed.errors import ThreedError

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (0.98, 0.50, 0.05),
    "purple": (0.55, 0.20, 0.75),
    "white": (0.95, 0.95, 0.95),
}
"""Albedo of every colour word (linear RGB in [0, 1])."""

VIEW_LABELS = ("front", "side", "back", "overhead")
"""The view labels of :meth:`threed.cameras.Cameras.view_labels`."""

FRONT_COS = math.cos(math.radians(45.0))
"""A surface point is on the painted front when its outward normal is within 45 degrees of +Z."""

PAIR_OFFSET = 0.38
"""Two-object scenes: the objects sit at x = -PAIR_OFFSET and x = +PAIR_OFFSET ..."""
PAIR_SCALE = 0.55
"""... each scaled by PAIR_SCALE, so the pair still fits the unit scene box."""

SdfFn = Callable[[Tensor], Tensor]

# Dimensions of the primitives (scene units).
CUBE_HALF = 0.38
SPHERE_RADIUS = 0.52
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.36, 0.42
CONE_RADIUS, CONE_HALF_HEIGHT = 0.45, 0.45
TORUS_MAJOR, TORUS_MINOR = 0.42, 0.16
PYRAMID_HALF_BASE, PYRAMID_BASE_Y, PYRAMID_HEIGHT = 0.40, -0.40, 0.85


def _length_xz(p: Tensor) -> Tensor:
    return torch.sqrt(p[..., 0] ** 2 + p[..., 2] ** 2)


def sdf_cube(p: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N"]:
    """Axis-aligned cube of half extent :data:`CUBE_HALF`."""
    q = p.abs() - CUBE_HALF
    return q.clamp(min=0.0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0.0)


def sdf_sphere(p: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N"]:
    """Sphere of radius :data:`SPHERE_RADIUS`."""
    return p.norm(dim=-1) - SPHERE_RADIUS


def sdf_cylinder(p: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N"]:
    """Capped cylinder around the Y axis."""
    d = torch.stack([_length_xz(p) - CYLINDER_RADIUS, p[..., 1].abs() - CYLINDER_HALF_HEIGHT], dim=-1)
    return d.amax(dim=-1).clamp(max=0.0) + d.clamp(min=0.0).norm(dim=-1)


def sdf_cone(p: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N"]:
    """Cone around the Y axis, base at y = -h, apex at y = +h (Quilez's exact capped cone with r2 = 0)."""
    h, r1, r2 = CONE_HALF_HEIGHT, CONE_RADIUS, 0.0
    qx, qy = _length_xz(p), p[..., 1]
    k1x, k1y = r2, h
    k2x, k2y = r2 - r1, 2.0 * h
    ca_x = qx - torch.minimum(qx, torch.where(qy < 0.0, torch.full_like(qx, r1), torch.full_like(qx, r2)))
    ca_y = qy.abs() - h
    f = (((k1x - qx) * k2x + (k1y - qy) * k2y) / (k2x ** 2 + k2y ** 2)).clamp(0.0, 1.0)
    cb_x = qx - k1x + k2x * f
    cb_y = qy - k1y + k2y * f
    sign = torch.where((cb_x < 0.0) & (ca_y < 0.0), -1.0, 1.0)
    return sign * torch.sqrt(torch.minimum(ca_x ** 2 + ca_y ** 2, cb_x ** 2 + cb_y ** 2))


def sdf_torus(p: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N"]:
    """Torus lying flat (axis +Y)."""
    return torch.sqrt((_length_xz(p) - TORUS_MAJOR) ** 2 + p[..., 1] ** 2) - TORUS_MINOR


def sdf_pyramid(p: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N"]:
    """Square pyramid, apex up, from a unit-base pyramid scaled by its base side.

    Quilez's pyramid gives the distance to the nearest side triangle; on its own it misses the base
    (it overestimates below the base and inside). Taking the minimum with the distance to the base
    square outside, and the nearest face plane inside (the solid is convex), makes it exact.
    """
    s = 2.0 * PYRAMID_HALF_BASE
    h = PYRAMID_HEIGHT / s
    m2 = h * h + 0.25
    q = (p - p.new_tensor([0.0, PYRAMID_BASE_Y, 0.0])) / s
    ax, py, az = q[..., 0].abs(), q[..., 1], q[..., 2].abs()
    swap = az > ax
    px, pz = torch.where(swap, az, ax) - 0.5, torch.where(swap, ax, az) - 0.5
    qx, qy, qz = pz, h * py - 0.5 * px, h * px + 0.5 * py
    s_ = (-qx).clamp(min=0.0)
    t = ((qy - 0.5 * pz) / (m2 + 0.25)).clamp(0.0, 1.0)
    a = m2 * (qx + s_) ** 2 + qy ** 2
    b = m2 * (qx + 0.5 * t) ** 2 + (qy - m2 * t) ** 2
    d2 = torch.where(torch.minimum(qy, -qx * m2 - qy * 0.5) > 0.0, torch.zeros_like(a), torch.minimum(a, b))
    to_side = torch.sqrt((d2 + qz ** 2) / m2)
    to_base = torch.sqrt(px.clamp(min=0.0) ** 2 + py ** 2 + pz.clamp(min=0.0) ** 2)
    side_plane = qz / math.sqrt(m2)  # signed distance to the nearest side's plane (folded to the +X face)
    inside = (side_plane < 0.0) & (py > 0.0)
    return s * torch.where(inside, torch.maximum(side_plane, -py), torch.minimum(to_side, to_base))


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator)


def _by_area(areas: Sequence[float], n: int, generator: torch.Generator | None) -> Tensor:
    """Which part of a surface each of ``n`` samples lands on, proportional to the parts' areas."""
    return torch.multinomial(torch.tensor(areas, dtype=torch.float64), n, replacement=True, generator=generator)


def _rotate_y_quarter(v: Tensor, k: Tensor) -> Tensor:
    """Rotate vectors about +Y by k * 90 degrees (k integer per row)."""
    ang = k.to(v.dtype) * (math.pi / 2)
    c, s = torch.cos(ang), torch.sin(ang)
    return torch.stack([c * v[:, 0] + s * v[:, 2], v[:, 1], -s * v[:, 0] + c * v[:, 2]], dim=-1)


def sample_cube(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    face = torch.randint(0, 6, (n,), generator=generator)
    axis, sign = face // 2, (face % 2).float() * 2 - 1
    uv = (torch.rand(n, 3, generator=generator) * 2 - 1) * CUBE_HALF
    normal = torch.zeros(n, 3)
    normal[torch.arange(n), axis] = sign
    pts = torch.where(normal != 0, normal * CUBE_HALF, uv)
    return pts, normal


def sample_sphere(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    normal = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    return normal * SPHERE_RADIUS, normal


def sample_cylinder(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    r, h = CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT
    part = _by_area([math.pi * r * r, math.pi * r * r, 2 * math.pi * r * 2 * h], n, generator)
    phi = 2 * math.pi * _uniform(n, generator)
    rho = r * torch.sqrt(_uniform(n, generator))
    y = (2 * _uniform(n, generator) - 1) * h
    cap_sign = torch.where(part == 0, 1.0, -1.0)
    side = part == 2
    rad = torch.where(side, torch.full_like(rho, r), rho)
    pts = torch.stack([rad * torch.cos(phi), torch.where(side, y, cap_sign * h), rad * torch.sin(phi)], dim=-1)
    normal = torch.where(side[:, None], torch.stack([torch.cos(phi), torch.zeros_like(phi), torch.sin(phi)], -1),
                         torch.stack([torch.zeros_like(phi), cap_sign, torch.zeros_like(phi)], -1))
    return pts, normal


def sample_cone(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    r, h = CONE_RADIUS, CONE_HALF_HEIGHT
    slant = math.hypot(r, 2 * h)
    part = _by_area([math.pi * r * r, math.pi * r * slant], n, generator)
    phi = 2 * math.pi * _uniform(n, generator)
    base_rho = r * torch.sqrt(_uniform(n, generator))
    u = torch.sqrt(_uniform(n, generator))  # fraction of the way from apex to rim: area grows linearly with it
    side = part == 1
    rho = torch.where(side, r * u, base_rho)
    y = torch.where(side, h - 2 * h * u, torch.full_like(u, -h))
    pts = torch.stack([rho * torch.cos(phi), y, rho * torch.sin(phi)], dim=-1)
    side_n = torch.nn.functional.normalize(
        torch.stack([2 * h * torch.cos(phi), torch.full_like(phi, r), 2 * h * torch.sin(phi)], -1), dim=-1)
    base_n = torch.tensor([0.0, -1.0, 0.0]).expand(n, 3)
    return pts, torch.where(side[:, None], side_n, base_n)


def sample_torus(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    big, small = TORUS_MAJOR, TORUS_MINOR
    thetas = []
    while sum(t.numel() for t in thetas) < n:
        theta = 2 * math.pi * _uniform(2 * n, generator)
        keep = _uniform(2 * n, generator) * (big + small) < big + small * torch.cos(theta)  # area ~ R + r cos
        thetas.append(theta[keep])
    theta = torch.cat(thetas)[:n]
    phi = 2 * math.pi * _uniform(n, generator)
    normal = torch.stack([torch.cos(theta) * torch.cos(phi), torch.sin(theta), torch.cos(theta) * torch.sin(phi)], -1)
    centre = torch.stack([big * torch.cos(phi), torch.zeros_like(phi), big * torch.sin(phi)], -1)
    return centre + small * normal, normal


def sample_pyramid(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    b, y0, height = PYRAMID_HALF_BASE, PYRAMID_BASE_Y, PYRAMID_HEIGHT
    tri_area = 0.5 * 2 * b * math.hypot(height, b)
    part = _by_area([4 * b * b] + [tri_area] * 4, n, generator)
    uv = torch.rand(n, 2, generator=generator)
    flip = uv.sum(-1) > 1
    uv = torch.where(flip[:, None], 1 - uv, uv)
    a, p1, apex = torch.tensor([-b, y0, b]), torch.tensor([b, y0, b]), torch.tensor([0.0, y0 + height, 0.0])
    tri = a + uv[:, :1] * (p1 - a) + uv[:, 1:] * (apex - a)  # the +Z face
    tri_n = torch.nn.functional.normalize(torch.tensor([0.0, b, height]), dim=0).expand(n, 3)
    k = (part - 1).clamp(min=0)
    tri, tri_n = _rotate_y_quarter(tri, k), _rotate_y_quarter(tri_n, k)
    base = torch.stack([(torch.rand(n, generator=generator) * 2 - 1) * b, torch.full((n,), y0),
                        (torch.rand(n, generator=generator) * 2 - 1) * b], -1)
    is_base = (part == 0)[:, None]
    return torch.where(is_base, base, tri), torch.where(is_base, torch.tensor([0.0, -1.0, 0.0]), tri_n)


@dataclass(frozen=True)
class Primitive:
    """One toy-world shape: exact SDF, area-uniform surface sampler, enclosed volume and surface area,
    a point inside."""

    name: str
    sdf: SdfFn
    sample: Callable[..., tuple[Tensor, Tensor]]
    volume: float
    area: float
    interior_point: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The origin, except for the torus (whose hole holds the origin)."""


PRIMITIVES: dict[str, Primitive] = {p.name: p for p in (
    Primitive("cube", sdf_cube, sample_cube, (2 * CUBE_HALF) ** 3, 6 * (2 * CUBE_HALF) ** 2),
    Primitive("sphere", sdf_sphere, sample_sphere, 4 / 3 * math.pi * SPHERE_RADIUS ** 3,
              4 * math.pi * SPHERE_RADIUS ** 2),
    Primitive("cylinder", sdf_cylinder, sample_cylinder, math.pi * CYLINDER_RADIUS ** 2 * 2 * CYLINDER_HALF_HEIGHT,
              2 * math.pi * CYLINDER_RADIUS * (CYLINDER_RADIUS + 2 * CYLINDER_HALF_HEIGHT)),
    Primitive("cone", sdf_cone, sample_cone, math.pi * CONE_RADIUS ** 2 * 2 * CONE_HALF_HEIGHT / 3,
              math.pi * CONE_RADIUS * (CONE_RADIUS + math.hypot(CONE_RADIUS, 2 * CONE_HALF_HEIGHT))),
    Primitive("torus", sdf_torus, sample_torus, 2 * math.pi ** 2 * TORUS_MAJOR * TORUS_MINOR ** 2,
              4 * math.pi ** 2 * TORUS_MAJOR * TORUS_MINOR, (TORUS_MAJOR, 0.0, 0.0)),
    Primitive("pyramid", sdf_pyramid, sample_pyramid, (2 * PYRAMID_HALF_BASE) ** 2 * PYRAMID_HEIGHT / 3,
              (2 * PYRAMID_HALF_BASE) ** 2 + 4 * PYRAMID_HALF_BASE * math.hypot(PYRAMID_HEIGHT, PYRAMID_HALF_BASE)),
)}
SHAPES: tuple[str, ...] = tuple(PRIMITIVES)
"""Shape words, in a fixed order."""


def _known_words() -> str:
    return f"shapes: {', '.join(SHAPES)}; colours: {', '.join(COLOURS)}"


def _primitive(shape: str) -> Primitive:
    if shape not in PRIMITIVES:
        raise ThreedError(f"unknown toy-world shape {shape!r}; known {_known_words()}")
    return PRIMITIVES[shape]


def ground_truth(shape: str) -> SdfFn:
    """The exact signed distance function of a shape (points ``*N x 3`` -> ``*N``, negative inside)."""
    return _primitive(shape).sdf


def sample_surface(shape: str, n: int, generator: torch.Generator | None = None
                   ) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"]]:
    """``n`` points drawn uniformly by area on a shape's surface, and their outward unit normals."""
    return _primitive(shape).sample(n, generator)


def colour_rgb(name: str) -> tuple[float, float, float]:
    """The albedo of a colour word."""
    if name not in COLOURS:
        raise ThreedError(f"unknown toy-world colour {name!r}; known {_known_words()}")
    return COLOURS[name]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class SceneObject:
    """One coloured primitive, optionally with a differently coloured front, placed by offset and scale."""

    shape: str
    colour: str
    front_colour: str | None = None
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def __post_init__(self):
        _primitive(self.shape)
        colour_rgb(self.colour)
        if self.front_colour is not None:
            colour_rgb(self.front_colour)

    def phrase(self) -> str:
        text = f"{article(self.colour)} {self.colour} {self.shape}"
        if self.front_colour is not None:
            text += f" with {article(self.front_colour)} {self.front_colour} front"
        return text

    def sdf(self, p: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N"]:
        local = (p - p.new_tensor(self.offset)) / self.scale
        return PRIMITIVES[self.shape].sdf(local) * self.scale

    @property
    def area(self) -> float:
        """Surface area in scene units."""
        return PRIMITIVES[self.shape].area * self.scale ** 2

    def sample_surface(self, n: int, generator: torch.Generator | None = None
                       ) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"]]:
        """``n`` area-uniform points on the placed object's surface, and their outward unit normals."""
        points, normals = PRIMITIVES[self.shape].sample(n, generator)
        return points * self.scale + points.new_tensor(self.offset), normals

    def albedo(self, normal: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        base = normal.new_tensor(COLOURS[self.colour]).expand(normal.shape[0], 3)
        if self.front_colour is None:
            return base
        front = normal.new_tensor(COLOURS[self.front_colour]).expand_as(base)
        return torch.where(normal[:, 2:3] > FRONT_COS, front, base)


@dataclass(frozen=True)
class Scene:
    """A toy-world scene: one object at the origin, or two side by side."""

    objects: tuple[SceneObject, ...]

    @classmethod
    def single(cls, shape: str, colour: str, front_colour: str | None = None) -> "Scene":
        return cls((SceneObject(shape, colour, front_colour),))

    @classmethod
    def pair(cls, first: SceneObject, second: SceneObject) -> "Scene":
        """Two objects side by side along X (first at -X), each scaled by :data:`PAIR_SCALE`."""
        return cls((SceneObject(first.shape, first.colour, first.front_colour, (-PAIR_OFFSET, 0.0, 0.0), PAIR_SCALE),
                    SceneObject(second.shape, second.colour, second.front_colour, (PAIR_OFFSET, 0.0, 0.0), PAIR_SCALE)))

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase() for o in self.objects)

    def uncoloured(self) -> "Scene":
        """The same shapes in the same places, all white: a key for what depends on geometry alone."""
        return Scene(tuple(SceneObject(o.shape, "white", None, o.offset, o.scale) for o in self.objects))

    @property
    def radius(self) -> float:
        """Radius of a sphere at the origin that holds the whole scene."""
        return max(math.sqrt(sum(c * c for c in o.offset)) + 0.7 * o.scale for o in self.objects)

    def sample_surface(self, n: int, generator: torch.Generator | None = None
                       ) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"], Tensor]:
        """``n`` area-uniform points on the whole scene's surface (each object gets its share of the area),
        their outward unit normals, and the index of the object each lies on."""
        which = _by_area([o.area for o in self.objects], n, generator)
        points, normals = torch.zeros(n, 3), torch.zeros(n, 3)
        for k, obj in enumerate(self.objects):
            sel = which == k
            points[sel], normals[sel] = obj.sample_surface(int(sel.sum()), generator)
        return points, normals, which

    def object_sdfs(self, p: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N K"]:
        return torch.stack([o.sdf(p) for o in self.objects], dim=-1)

    def sdf(self, p: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N"]:
        """Exact SDF outside (union of exact SDFs); a bound inside where two objects overlap."""
        if len(self.objects) == 1:  # torch's min over a dimension of size 1 costs as much as the SDF itself
            return self.objects[0].sdf(p)
        return self.object_sdfs(p).amin(dim=-1)

    def albedo(self, p: Float[Tensor, "N 3"], normal: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Albedo of surface points (each takes the colour of the nearest object)."""
        nearest = self.object_sdfs(p).argmin(dim=-1)
        out = torch.zeros_like(p)
        for k, obj in enumerate(self.objects):
            sel = nearest == k
            out[sel] = obj.albedo(normal[sel])
        return out


def view_suffix(label: str) -> str:
    """DreamFusion's view-dependent prompt suffix, e.g. ``", front view"`` (as threed's prompt processor appends)."""
    if label not in VIEW_LABELS:
        raise ValueError(f"unknown view label {label!r}; choose one of {', '.join(VIEW_LABELS)}")
    return f", {label} view"


def view_caption(caption: str, label: str | None) -> str:
    """``caption`` with its view suffix; ``label=None`` leaves it bare."""
    return caption if label is None else caption + view_suffix(label)


def catalogue(held_out: Sequence[str] = (), asymmetric: bool = True, pairs: bool = False) -> list[Scene]:
    """Every toy-world scene of the chosen families, minus the ``held_out`` captions.

    Families: every shape x colour; cubes with a front of another colour (``asymmetric``); and
    ``pairs`` of two different single objects (a large family, 42 x 41 scenes).
    """
    singles = [Scene.single(s, c) for s in SHAPES for c in COLOURS]
    scenes = list(singles)
    if asymmetric:
        scenes += [Scene.single("cube", c, f) for c in COLOURS for f in COLOURS if f != c]
    if pairs:
        scenes += [Scene.pair(a.objects[0], b.objects[0]) for a in singles for b in singles if a != b]
    held = set(held_out)
    unknown = held - {s.caption for s in scenes}
    if unknown:
        raise ThreedError(f"held-out captions {sorted(unknown)} are not toy-world scenes (e.g. 'a purple torus')")
    return [s for s in scenes if s.caption not in held]


_SUFFIX = re.compile(r",\s*(front|side|back|overhead)\s+view\s*$")


def parse_prompt(prompt: str) -> Scene:
    """The scene a toy-world prompt describes, e.g. ``"a red cube"`` or ``"a blue cube with a yellow front"``.

    A trailing view suffix (``", front view"``) is ignored. Raises :class:`ThreedError` that names
    the word it could not read and the words the toy world knows.
    """
    text = _SUFFIX.sub("", prompt.strip().lower())
    text = re.sub(r"[.!]+$", "", text).strip()
    example = "e.g. 'a red cube', 'a blue cube with a yellow front', 'a red cube and a green sphere'"
    objects = []
    for part in text.split(" and "):
        words = part.split()
        for w in words:
            if w not in COLOURS and w not in PRIMITIVES and w not in ("a", "an", "with", "front"):
                raise ThreedError(f"unknown word {w!r} in prompt {prompt!r}; the toy world knows {_known_words()} "
                                  f"({example})")
        if len(words) == 3 and words[0] in ("a", "an"):
            front = None
        elif len(words) == 7 and words[0] in ("a", "an") and words[3] == "with" and words[4] in ("a", "an") \
                and words[6] == "front":
            front = words[5]
        else:
            raise ThreedError(f"cannot read {part!r} in prompt {prompt!r}; write 'a <colour> <shape>' with "
                              f"optional ' with a <colour> front', {_known_words()} ({example})")
        colour, shape = words[1], words[2]
        if colour not in COLOURS or shape not in PRIMITIVES or (front is not None and front not in COLOURS):
            raise ThreedError(f"cannot read {part!r} in prompt {prompt!r}: expected a colour then a shape; "
                              f"{_known_words()} ({example})")
        objects.append(SceneObject(shape, colour, front))
    if len(objects) == 1:
        return Scene(tuple(objects))
    if len(objects) == 2:
        return Scene.pair(*objects)
    raise ThreedError(f"prompt {prompt!r} names {len(objects)} objects; the toy world holds one or two ({example})")
