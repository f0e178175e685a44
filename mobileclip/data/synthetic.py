"""Synthetic captioned images: the embedded default data (no downloads).

Each image holds one or two objects — a shape in a colour, small or large, somewhere —
on a textured background, with several differently worded captions describing it. The
class of an image (for zero-shot) is its main object's ``"<colour> <shape>"``.

* Deterministic: sample ``i`` of split ``s`` under seed ``k`` is always the same image.
* Splits: ``train``; ``val`` (same distribution, other images); ``novel`` — main object
  is one of :data:`HELDOUT_COMBOS`, colour–shape pairs that never appear in ``train`` or
  ``val`` (not even as the second object), so compositional generalisation can be measured.
* Fast: numpy only, a few thousand 64 px images per second on one core.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 225),
    "yellow": (245, 215, 35),
    "purple": (140, 50, 185),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
TEXTURES = ("plain", "striped", "checkered", "dotted", "cloudy")
# One held-out pair per colour and per shape: every colour and every shape is still seen in training.
HELDOUT_COMBOS = (("red", "star"), ("green", "ring"), ("blue", "triangle"), ("yellow", "cross"),
                  ("purple", "circle"), ("white", "square"))
SPLITS = {"train": 0, "val": 1, "novel": 2}
SIZES = {"small": (0.11, 0.15), "large": (0.2, 0.27)}

_ALL = [(c, s) for c in COLORS for s in SHAPES]
_SEEN = [cs for cs in _ALL if cs not in HELDOUT_COMBOS]


def classnames() -> list[str]:
    """All zero-shot classes, ``"<colour> <shape>"``, in a fixed order."""
    return [f"{c} {s}" for c, s in _ALL]


def heldout_classnames() -> list[str]:
    return [f"{c} {s}" for c, s in HELDOUT_COMBOS]


@dataclass
class SyntheticSample:
    image: np.ndarray  # uint8 [H, W, 3]
    captions: list[str]
    label: int  # index into classnames()
    classname: str
    objects: list[dict] = field(default_factory=list)
    texture: str = "plain"

    @property
    def caption(self) -> str:
        return self.captions[0]


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :].repeat(size, 0), c[:, None].repeat(size, 1)  # x, y in [0, 1]


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, theta: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy < r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 < r * r) & (d2 > (0.55 * r) ** 2)
    ct, st = np.cos(theta), np.sin(theta)
    u, v = dx * ct + dy * st, -dx * st + dy * ct
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8 * r
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a < 0.3 * r) & (b < r)) | ((b < 0.3 * r) & (a < r))
    if shape == "triangle":
        m = np.ones_like(dx, dtype=bool)
        for k in range(3):
            a = theta + 2 * np.pi * k / 3
            m &= dx * np.cos(a) + dy * np.sin(a) < 0.5 * r
        return m
    if shape == "star":
        ang = np.arctan2(v, u)
        return np.sqrt(dx * dx + dy * dy) < r * (0.7 + 0.3 * np.cos(5 * ang))
    raise ValueError(f"unknown shape {shape!r}")


_NOISE_TILES = 64


@lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    # Pixel noise (sigma 6) drawn once per image size from a fixed seed; sampling it per image
    # was the generator's single largest cost.
    return np.random.default_rng(12345).standard_normal((_NOISE_TILES, size, size), dtype=np.float32) * 6.0


def _background(rng: np.random.Generator, size: int, texture: str) -> np.ndarray:
    x, y = _grid(size)
    base = rng.uniform(70, 170, size=3).astype(np.float32)
    # Muted: pull towards grey so backgrounds never look like an object colour.
    base = 0.6 * base + 0.4 * base.mean()
    other = base + rng.uniform(-45, 45, size=3)
    other = np.clip(0.6 * other + 0.4 * other.mean(), 0, 255).astype(np.float32)
    if texture == "plain":
        t = np.zeros((size, size), np.float32)
    elif texture == "striped":
        phi, f = rng.uniform(0, np.pi), rng.uniform(3, 7)
        t = (np.sin(2 * np.pi * f * (x * np.cos(phi) + y * np.sin(phi))) > 0).astype(np.float32)
    elif texture == "checkered":
        f = rng.integers(3, 8)
        t = ((np.floor(x * f) + np.floor(y * f)) % 2).astype(np.float32)
    elif texture == "dotted":
        f = rng.uniform(4, 8)
        fx, fy = x * f % 1.0 - 0.5, y * f % 1.0 - 0.5
        t = (fx * fx + fy * fy < 0.06).astype(np.float32)
    elif texture == "cloudy":
        k = 8
        coarse = rng.random((k, k), dtype=np.float32)
        idx = np.minimum((np.arange(size) * k) // size, k - 1)
        t = coarse[idx][:, idx]
    else:
        raise ValueError(f"unknown texture {texture!r}")
    noise = _noise_bank(size)[rng.integers(_NOISE_TILES)]
    if rng.random() < 0.5:  # flips are free views: 4x the variety of the bank
        noise = noise[::-1]
    if rng.random() < 0.5:
        noise = noise[:, ::-1]
    t = t[..., None]
    img = t * (other - base)
    img += base
    img += noise[..., None]
    return img


_POSITIONS = {  # name -> (cx, cy) centre, jittered
    "in the center": (0.5, 0.5), "on the left": (0.27, 0.5), "on the right": (0.73, 0.5),
    "at the top": (0.5, 0.27), "at the bottom": (0.5, 0.73),
}
_PAIRS = {  # relation -> ((cx1, cy1), (cx2, cy2)) for the main and second object
    "to the left of": ((0.28, 0.5), (0.72, 0.5)), "to the right of": ((0.72, 0.5), (0.28, 0.5)),
    "above": ((0.5, 0.28), (0.5, 0.72)), "below": ((0.5, 0.72), (0.5, 0.28)),
}
_ONE = (
    "a {size} {color} {shape} {pos}",
    "a photo of a {color} {shape} on a {texture} background",
    "a {color} {shape}",
    "there is a {size} {color} {shape} {pos}",
    "{size} {color} {shape}, {texture} background",
    "an image of a {color} {shape} {pos}",
)
_TWO = (
    "a {color} {shape} {rel} a {color2} {shape2}",
    "a {size} {color} {shape} and a {color2} {shape2}",
    "a {color} {shape} next to a {color2} {shape2} on a {texture} background",
    "two shapes: a {color} {shape} {rel} a {color2} {shape2}",
)


class SyntheticGenerator:
    """``gen[i]`` → :class:`SyntheticSample`; deterministic in (seed, split, i)."""

    def __init__(self, split: str = "train", image_size: int = 64, seed: int = 0,
                 two_object_prob: float = 0.35, n_captions: int = 3) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 px, got {image_size}")
        from mobileclip import limits

        limits.check_max(image_size, limits.IMAGE_SIZE, "the synthetic image size")
        if not 0.0 <= two_object_prob <= 1.0:
            raise ValueError("two_object_prob must be within [0, 1]")
        self.split, self.image_size, self.seed = split, image_size, seed
        self.two_object_prob, self.n_captions = two_object_prob, n_captions
        self._names = classnames()

    @property
    def classnames(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, index: int) -> SyntheticSample:
        if index < 0:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        size = self.image_size
        main_pool = HELDOUT_COMBOS if self.split == "novel" else _SEEN
        color, shape = main_pool[rng.integers(len(main_pool))]
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        two = rng.random() < self.two_object_prob
        objs = []
        if two:
            rel = list(_PAIRS)[rng.integers(len(_PAIRS))]
            # The second object never uses a held-out pair, whatever the split.
            color2, shape2 = _SEEN[rng.integers(len(_SEEN))]
            while (color2, shape2) == (color, shape):
                color2, shape2 = _SEEN[rng.integers(len(_SEEN))]
            centres = _PAIRS[rel]
            objs.append(dict(color=color, shape=shape, size=("small", "large")[rng.integers(2)], centre=centres[0]))
            objs.append(dict(color=color2, shape=shape2, size="small", centre=centres[1]))
        else:
            pos = list(_POSITIONS)[rng.integers(len(_POSITIONS))]
            sz = ("small", "large")[rng.integers(2)]
            if sz == "large":  # a large object does not fit at the edge: keep it near the centre
                pos = "in the center" if pos != "in the center" and rng.random() < 0.5 else pos
            objs.append(dict(color=color, shape=shape, size=sz, centre=_POSITIONS[pos], pos=pos))

        img = _background(rng, size, texture)
        x, y = _grid(size)
        for o in reversed(objs):  # the main object is drawn last, on top
            lo, hi = SIZES[o["size"]]
            if len(objs) == 2:
                lo, hi = lo * 0.9, min(hi, 0.2)
            r = float(rng.uniform(lo, hi))
            jx, jy = rng.uniform(-0.05, 0.05, size=2)
            cx = min(max(o["centre"][0] + float(jx), r), 1 - r)
            cy = min(max(o["centre"][1] + float(jy), r), 1 - r)
            mask = _shape_mask(o["shape"], x - cx, y - cy, r, float(rng.uniform(0, 2 * np.pi)))
            img[mask] = np.asarray(COLORS[o["color"]], np.float32) * rng.uniform(0.85, 1.0)
            o.update(radius=r, cx=cx, cy=cy)

        fields = dict(color=color, shape=shape, size=objs[0]["size"], texture=texture, pos=objs[0].get("pos", ""))
        if two:
            fields.update(color2=objs[1]["color"], shape2=objs[1]["shape"], rel=rel)
        templates = _TWO if two else _ONE
        order = rng.permutation(len(templates))[: self.n_captions]
        captions = [" ".join(templates[i].format(**fields).split()) for i in order]
        name = f"{color} {shape}"
        np.clip(img, 0, 255, out=img)
        image = img.astype(np.uint8)
        return SyntheticSample(image, captions, self._names.index(name), name, objs, texture)
