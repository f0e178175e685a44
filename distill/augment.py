"""Replayable augmentations: random resized crops (and optional horizontal flips) described by five numbers
relative to the image — ``x0, y0, w, h, flip`` — drawn deterministically from ``(seed, index, k)``. The teacher
cache stores them, so the trainer replays the exact crop the teacher saw; each model then applies its *own*
preprocessing to the crop."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from mobileclip.transforms import to_rgb


AUG_FIELDS = ("x0", "y0", "w", "h", "flip")


def sample_aug(seed: int, index: int, k: int, scale: Sequence[float], ratio: Sequence[float],
               flip_prob: float, aspect: float) -> np.ndarray:
    """RandomResizedCrop-style box (relative coordinates) + flip flag for augmentation k of
    sample ``index``; ``aspect`` is the image's width / height."""
    rng = np.random.default_rng([seed, index, k])
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(*log_r))
        # relative w, h such that (w*W)/(h*H) = r and w*h = area
        w = math.sqrt(area * r / aspect)
        h = math.sqrt(area * aspect / r)
        if 0 < w <= 1 and 0 < h <= 1:
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            break
    else:  # fall back to the whole image
        x0, y0, w, h = 0.0, 0.0, 1.0, 1.0
    flip = float(rng.random() < flip_prob)
    return np.array([x0, y0, w, h, flip], dtype=np.float32)


def aug_box(params: np.ndarray, size: tuple) -> tuple:
    """The pixel box ``(left, top, right, bottom)`` that augmentation ``params`` crop from an image of ``size``."""
    x0, y0, w, h = (float(v) for v in params[:4])
    W, H = size
    box = (round(x0 * W), round(y0 * H), round((x0 + w) * W), round((y0 + h) * H))
    return (box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1))


def apply_aug(im: Image.Image, params: np.ndarray) -> Image.Image:
    """Crop (and flip) a PIL image by relative augmentation parameters."""
    out = to_rgb(im).crop(aug_box(params, im.size))
    return out.transpose(Image.FLIP_LEFT_RIGHT) if float(params[4]) >= 0.5 else out


