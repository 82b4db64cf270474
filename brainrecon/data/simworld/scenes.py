"""Procedural scenes: 1-3 coloured objects over a textured background, with captions.

A scene is sampled from a seed as a plain description (categories, colours,
sizes, positions, depth order, background), rendered deterministically with
PIL at twice the output size and box-downsampled (anti-aliasing), and
described by several template captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon",
              "crescent", "arrow", "house", "heart")
COLOURS = {"red": (220, 40, 40), "orange": (240, 140, 30), "yellow": (235, 215, 40), "green": (50, 170, 60),
           "cyan": (40, 200, 210), "blue": (40, 80, 220), "purple": (150, 60, 190), "white": (240, 240, 240)}
SIZES = {"small": 0.16, "medium": 0.24, "large": 0.34}  # object radius as a fraction of the image width
BACKGROUND_KINDS = ("plain", "gradient", "striped", "checkered", "speckled")
BACKGROUND_COLOURS = {"grey": (110, 110, 110), "beige": (170, 155, 120), "navy": (30, 40, 80),
                      "forest": (35, 70, 45), "brown": (90, 60, 40), "black": (20, 20, 20)}
PATTERNS = ("plain", "striped")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class SceneObject:
    category: str
    colour: str
    size: str
    pattern: str
    x: float  # centre, fraction of width (0 = left)
    y: float  # centre, fraction of height (0 = top)
    angle: float  # rotation in degrees
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # back to front: later objects occlude earlier ones
    background: str
    background_colour: str
    background_rgb: tuple[int, int, int]
    background_angle: float
    texture_seed: int

    def to_dict(self) -> dict:
        """As ``dataclasses.asdict`` gives it (same keys, order and values), without its deep copies."""
        return {**vars(self), "objects": [dict(vars(obj)) for obj in self.objects]}


def _jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    jitter = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(min(255, max(0, c + j))) for c, j in zip(rgb, jitter.tolist()))


def _pick(rng: np.random.Generator, options, p=None):
    return options[int(rng.choice(len(options), p=p)) if p is not None else int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator) -> Scene:
    n_objects = _pick(rng, (1, 2, 3), p=[0.35, 0.4, 0.25])
    objects = []
    for _ in range(n_objects):
        colour = _pick(rng, tuple(COLOURS))
        objects.append(SceneObject(
            category=_pick(rng, CATEGORIES), colour=colour, size=_pick(rng, tuple(SIZES)),
            pattern=_pick(rng, PATTERNS, p=[0.75, 0.25]), x=float(rng.uniform(0.2, 0.8)),
            y=float(rng.uniform(0.2, 0.8)), angle=float(rng.uniform(0, 360)),
            rgb=_jitter_rgb(rng, COLOURS[colour], 18)))
    bg_colour = _pick(rng, tuple(BACKGROUND_COLOURS))
    return Scene(objects=tuple(objects), background=_pick(rng, BACKGROUND_KINDS), background_colour=bg_colour,
                 background_rgb=_jitter_rgb(rng, BACKGROUND_COLOURS[bg_colour], 12),
                 background_angle=float(rng.uniform(0, 180)), texture_seed=int(rng.integers(2 ** 31)))


# -- rendering -------------------------------------------------------------------------------------


def _polygon(category: str) -> np.ndarray | None:
    """Outline in unit coordinates (radius ~1) for polygonal categories; None for drawn ones."""
    def regular(k, phase=-math.pi / 2):
        t = phase + 2 * math.pi * np.arange(k) / k
        return np.stack([np.cos(t), np.sin(t)], 1)

    if category == "square":
        return regular(4, math.pi / 4) * 1.15
    if category == "triangle":
        return regular(3) * 1.1
    if category == "hexagon":
        return regular(6)
    if category == "diamond":
        return regular(4) * np.array([0.65, 1.05])
    if category == "star":
        t = -math.pi / 2 + math.pi * np.arange(10) / 5
        r = np.where(np.arange(10) % 2 == 0, 1.1, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if category == "cross":
        a, b = 0.32, 1.0
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a],
                         [-b, a], [-b, -a], [-a, -a]])
    if category == "arrow":
        return np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.75], [1, 0], [0.2, 0.75], [0.2, 0.3], [-1, 0.3]])
    if category == "house":
        return np.array([[-0.8, 0.9], [0.8, 0.9], [0.8, -0.1], [0, -0.95], [-0.8, -0.1]])
    if category == "heart":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -y], 1) / 16.0
    return None


def _object_mask(obj: SceneObject, size: int) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, radius = obj.x * size, obj.y * size, SIZES[obj.size] * size
    box = lambda r, dx=0.0: [cx + dx - r, cy - r, cx + dx + r, cy + r]  # noqa: E731
    if obj.category == "circle":
        draw.ellipse(box(radius), fill=255)
    elif obj.category == "ring":
        draw.ellipse(box(radius), fill=255)
        draw.ellipse(box(radius * 0.55), fill=0)
    elif obj.category == "crescent":
        draw.ellipse(box(radius), fill=255)
        draw.ellipse(box(radius * 0.85, dx=radius * 0.45), fill=0)
        mask = mask.rotate(obj.angle, center=(cx, cy))
    else:
        points = _polygon(obj.category)
        a = math.radians(obj.angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        xy = points @ rot.T * radius + np.array([cx, cy])
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255)
    return np.asarray(mask) > 127


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (fractions of the width) and the stripe pattern used for striped objects."""
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx + yy) // max(2, size // 16)) % 2 == 0
    return yy / size, xx / size, stripes


@lru_cache(maxsize=8)
def _checkers(size: int) -> np.ndarray:
    """The checkered background's shade, the same for every scene of a size."""
    yy, xx, _ = _grid(size)
    return 0.3 * np.sign(np.sin(2 * math.pi * 4 * xx) * np.sin(2 * math.pi * 4 * yy))


def _background(scene: Scene, size: int) -> np.ndarray:
    """The background canvas, float64 (size, size, 3). Each kind computes only the grids it reads."""
    base = np.asarray(scene.background_rgb, dtype=np.float32)
    kind = scene.background
    if kind == "plain":  # base * (1 + 0), exactly; clipping cannot move a colour already in 0..255
        return np.tile(base.astype(np.float64), (size, size, 1))
    yy, xx, _ = _grid(size)
    if kind in ("gradient", "striped"):
        a = math.radians(scene.background_angle)
        along = xx * math.cos(a) + yy * math.sin(a)
        shade = (along - along.mean()) * 1.2 if kind == "gradient" else 0.35 * np.sign(np.sin(2 * math.pi * 6 * along))
    elif kind == "checkered":
        shade = _checkers(size)
    else:  # speckled: smooth random texture, each noise value repeated over a 4 x 4 block
        noise = np.random.default_rng(scene.texture_seed).normal(size=(size // 4, size // 4))
        shade = 0.3 * noise.repeat(4, axis=0).repeat(4, axis=1)[:size, :size]
    canvas = (1 + shade)[..., None] * base
    return np.clip(canvas, 0, 255, out=canvas)


def _downsample(canvas: np.ndarray) -> np.ndarray:
    """Mean of each 2 x 2 block, summed in the order ``ndarray.mean(axis=(1, 3))`` sums them (so the
    bytes of every world stay as they were), at a quarter of its cost."""
    half = canvas.reshape(canvas.shape[0] // 2, 2, canvas.shape[1] // 2, 2, canvas.shape[2])
    total = half[:, 0, :, 0] + half[:, 0, :, 1]
    total += half[:, 1, :, 0]
    total += half[:, 1, :, 1]
    return np.divide(total, 4, out=total)


@dataclass(frozen=True)
class RenderedScene:
    image: np.ndarray  # uint8 (size, size, 3)
    visible_area: np.ndarray  # per object: visible fraction of the image area
    occluded: np.ndarray  # per object: fraction of the object hidden by objects in front
    occluder: np.ndarray  # per object: index of the object in front hiding most of it, or -1


def render_scene(scene: Scene, size: int) -> RenderedScene:
    """Render deterministically at twice the size, then box-downsample (anti-aliasing)."""
    big = 2 * size
    canvas = _background(scene, big)
    masks = [_object_mask(obj, big) for obj in scene.objects]
    for obj, mask in zip(scene.objects, masks):
        colour = np.asarray(obj.rgb, dtype=np.float32)
        if obj.pattern == "striped":
            dark = _grid(big)[2][mask][:, None]
            canvas[mask] = np.where(dark, colour * 0.55, colour)
        else:
            canvas[mask] = colour
    visible, occluded, occluder = [], [], []
    for i, mask in enumerate(masks):
        covered = np.zeros_like(mask)
        overlaps = [(mask & later).sum() for later in masks[i + 1:]]
        for later in masks[i + 1:]:
            covered |= later
        shown = (mask & ~covered).sum()
        visible.append(shown / mask.size)
        occluded.append(1.0 - shown / max(1, mask.sum()))
        occluder.append(i + 1 + int(np.argmax(overlaps)) if overlaps and max(overlaps) > 0 else -1)
    return RenderedScene(np.round(_downsample(canvas)).astype(np.uint8), np.asarray(visible, np.float32),
                         np.asarray(occluded, np.float32), np.asarray(occluder, np.int64))


# -- semantics and captions ----------------------------------------------------------------------

SEMANTIC_FEATURES = ([f"category:{c}" for c in CATEGORIES] + [f"colour:{c}" for c in COLOURS]
                     + [f"count:{n}" for n in (1, 2, 3)] + [f"background:{b}" for b in BACKGROUND_KINDS]
                     + ["pattern:striped"])


def semantic_features(scene: Scene, visible: np.ndarray) -> np.ndarray:
    """What a scene is about, weighted by how much of each object is visible (for high-level voxels)."""
    feats = np.zeros(len(SEMANTIC_FEATURES), dtype=np.float32)
    index = {name: i for i, name in enumerate(SEMANTIC_FEATURES)}
    for obj, area in zip(scene.objects, visible.tolist()):
        salience = min(2.0, math.sqrt(area / 0.05))  # ~1 for a medium object in full view
        feats[index[f"category:{obj.category}"]] += salience
        feats[index[f"colour:{obj.colour}"]] += salience
        if obj.pattern == "striped":
            feats[index["pattern:striped"]] += salience
    feats[index[f"count:{len(scene.objects)}"]] = 1.0
    feats[index[f"background:{scene.background}"]] = 1.0
    return feats


def _where(obj: SceneObject) -> str:
    horizontal = "left" if obj.x < 0.4 else "right" if obj.x > 0.6 else ""
    vertical = "top" if obj.y < 0.4 else "bottom" if obj.y > 0.6 else ""
    if horizontal and vertical:
        return f"at the {vertical} {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return f"on the {horizontal}" if horizontal else "in the centre"


def _noun(obj: SceneObject, with_size: bool = True) -> str:
    words = ([obj.size] if with_size else []) + [obj.colour] + (["striped"] if obj.pattern == "striped" else [])
    return " ".join(words + [obj.category])


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def captions(scene: Scene, rendered: RenderedScene) -> list[str]:
    """Four captions generated from the description: full, counting, relational and short."""
    objs = scene.objects
    background = {"plain": f"plain {scene.background_colour}", "gradient": f"{scene.background_colour} gradient",
                  "striped": f"{scene.background_colour} striped", "checkered": f"{scene.background_colour} checkered",
                  "speckled": f"speckled {scene.background_colour}"}[scene.background]
    full = _join([f"{_article(_noun(o))} {_where(o)}" for o in objs]) + f" on {_article(background)} background"
    n = len(objs)
    count = (f"{NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}: " + _join([_article(o.category) for o in objs])
             + f", over {_article(background)} background")
    if n == 1:
        relation = f"a single {_noun(objs[0], with_size=False)} {_where(objs[0])}"
    else:
        hidden = [i for i in range(n - 1) if rendered.occluded[i] > 0.15]
        if hidden:
            back, front = objs[hidden[0]], objs[int(rendered.occluder[hidden[0]])]
            relation = (f"{_article(_noun(back, False))} partly hidden behind "
                        f"{_article(_noun(front, False))}")
        else:
            left, right = sorted(objs[:2], key=lambda o: o.x)
            relation = f"{_article(_noun(left, False))} to the left of {_article(_noun(right, False))}"
    short = _join([f"{o.colour} {o.category}" for o in objs])
    return [s[0].upper() + s[1:] for s in (full, count, relation, short)]
