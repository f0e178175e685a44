"""What a teacher sees of a training crop: exactly what the student sees, at the teacher's resolution.

The student sees an augmentation crop through its own preprocessing: with ``resize_mode="shortest"``
(every zoo student) the crop's centre square, with ``"squash"`` the whole crop. That region is the
*view*. A teacher's own eval transform would crop it a second time: open_clip's ``Resize(224) +
CenterCrop(224)`` happens to keep a square view whole, but timm's (``crop_pct`` 0.875: ``Resize(256) +
CenterCrop(224)``) keeps only 77 % of it, so the teacher would embed another picture than the one the
student is trained to match. :func:`teacher_view` reads the teacher's resize interpolation, input size
and mean/std out of its transform and resamples the view straight to its input size — no second crop.
A transform it cannot read (a ``py:`` teacher's own function) gets the view and crops as it likes;
:func:`measure_view` probes any transform and reports the fraction of the view it covers, which the
teacher cache records (``teachers[i].view``).
"""
from __future__ import annotations

import types
from typing import Callable, Optional

import numpy as np
from PIL import Image

from .transforms import RESAMPLE, ImagePreprocess

VIEW_REGIONS = ("center", "squash")   # the student's resize_mode "shortest" sees the centre square; "squash" all


def region_for(resize_mode: str) -> str:
    """The view region of a student with this ``resize_mode``."""
    return "squash" if resize_mode == "squash" else "center"


def view_box(size: tuple, region: str) -> tuple:
    """``(left, top, right, bottom)`` in float pixels of the view of a crop of ``size`` = ``(width, height)``."""
    w, h = size
    if region == "squash":
        return 0.0, 0.0, float(w), float(h)
    if region != "center":
        raise ValueError(f"view region must be one of {VIEW_REGIONS}, got {region!r}")
    s = float(min(w, h))
    return (w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2


class TeacherView:
    """Crop → the teacher's input tensor: the view resampled to ``size`` x ``size`` with ``interpolation``, scaled to
    [0, 1] and normalized with ``mean``/``std`` (as ToTensor + Normalize do)."""

    exact = True

    def __init__(self, size: int, interpolation: str, mean, std, described_from: str) -> None:
        self.size, self.interpolation = int(size), interpolation
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)
        self.described_from = described_from

    def __call__(self, crop: Image.Image, region: str = "center"):
        import torch

        im = crop if crop.mode == "RGB" else crop.convert("RGB")
        out = im.resize((self.size, self.size), RESAMPLE[self.interpolation], box=view_box(im.size, region))
        x = (np.asarray(out, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def describe(self) -> str:
        return (f"the view resized to {self.size}x{self.size} ({self.interpolation}), normalized as the teacher's "
                f"{self.described_from}; no second crop")


class OwnPreprocessView:
    """A transform :func:`teacher_view` cannot read: it gets the view (cut out of the crop) and does what it does."""

    exact = False

    def __init__(self, preprocess: Callable) -> None:
        self.preprocess = preprocess

    def __call__(self, crop: Image.Image, region: str = "center"):
        box = view_box(crop.size, region)
        return self.preprocess(crop.crop(tuple(int(round(v)) for v in box)))

    def describe(self) -> str:
        return f"the view through the teacher's own preprocess ({type(self.preprocess).__name__}, not readable here)"


_RGB_NAMES = ("MaybeConvertMode", "_convert_to_rgb", "convert_to_rgb", "ConvertRGB", "ToRGB")
_TO_TENSOR = ("ToTensor", "MaybeToTensor")


def _interp_name(mode) -> Optional[str]:
    name = str(getattr(mode, "value", mode)).lower()
    return name if name in RESAMPLE else None


def teacher_view(preprocess: Callable):
    """A :class:`TeacherView` for a transform whose resize, input size and normalization can be read (this
    toolkit's :class:`ImagePreprocess`; a torchvision ``Compose`` of Resize, CenterCrop, ToTensor, Normalize and
    RGB conversion, as open_clip and timm build them), else an :class:`OwnPreprocessView`."""
    if isinstance(preprocess, ImagePreprocess):
        c = preprocess.cfg
        return TeacherView(c.image_size, c.interpolation, c.mean, c.std, repr(preprocess))
    steps = getattr(preprocess, "transforms", None)
    if not isinstance(steps, (list, tuple)):
        return OwnPreprocessView(preprocess)
    size = interp = None
    mean, std, tensor = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False
    for t in steps:
        name = t.__name__ if isinstance(t, (types.FunctionType, types.LambdaType)) else type(t).__name__
        if name == "Resize":
            sz = getattr(t, "size", None)
            sz = sz[0] if isinstance(sz, (list, tuple)) and len(sz) == 1 else sz
            if isinstance(sz, (list, tuple)):
                if len(sz) != 2 or sz[0] != sz[1]:
                    return OwnPreprocessView(preprocess)
                sz = sz[0]
            interp = _interp_name(getattr(t, "interpolation", None))
            if not isinstance(sz, int) or interp is None or getattr(t, "max_size", None) is not None:
                return OwnPreprocessView(preprocess)
            size = sz
        elif name == "CenterCrop":
            sz = getattr(t, "size", None)
            sz = (sz, sz) if isinstance(sz, int) else tuple(sz)
            if size is None or len(sz) != 2 or sz[0] != sz[1] or sz[0] > size:
                return OwnPreprocessView(preprocess)
            size = sz[0]   # the crop's size is the input size; the view is resampled to it directly
        elif name in _TO_TENSOR:
            tensor = True
        elif name == "Normalize":
            mean = tuple(float(v) for v in np.asarray(t.mean, dtype=np.float64).reshape(-1))
            std = tuple(float(v) for v in np.asarray(t.std, dtype=np.float64).reshape(-1))
            if len(mean) == 1:
                mean, std = mean * 3, std * 3
        elif any(k.lower() in name.lower() for k in _RGB_NAMES):
            continue   # crops are RGB already
        else:
            return OwnPreprocessView(preprocess)
    if size is None or interp is None or not tensor:
        return OwnPreprocessView(preprocess)
    return TeacherView(size, interp, mean, std, "transform " + " + ".join(type(t).__name__ for t in steps))


def measure_view(fn: Callable, region: str = "center", probe: int = 448) -> list:
    """The fraction ``[x, y]`` of the view that ``fn(crop, region)`` covers, measured: a square crop whose red
    channel ramps with x and green with y goes through ``fn``, and the ramp is read back at the output's first and
    last columns (rows), after undoing its normalization with a black and a white crop. 1.0 is the whole view; a
    timm transform with ``crop_pct`` 0.875 reads 0.875."""
    ramp = (np.arange(probe, dtype=np.float64) + 0.5) / probe
    rgb = np.zeros((probe, probe, 3), np.uint8)
    rgb[:, :, 0] = np.round(ramp[None, :] * 255)
    rgb[:, :, 1] = np.round(ramp[:, None] * 255)
    rgb[:, :, 2] = 128
    outs = [np.asarray(fn(Image.fromarray(a, "RGB"), region), dtype=np.float64) for a in (
        rgb, np.zeros_like(rgb), np.full_like(rgb, 255))]
    x, black, white = outs
    span = []
    for ch, axis in ((0, 1), (1, 0)):
        v = (x[ch] - black[ch]) / np.where(np.abs(white[ch] - black[ch]) < 1e-12, 1.0, white[ch] - black[ch])
        lines = v.mean(axis=1 - axis)   # per column (x) or per row (y)
        n = lines.shape[0]
        span.append(round(float((lines[-1] - lines[0]) * n / max(n - 1, 1)), 3))
    return span
