"""Image preprocessing: RGB, resize, center crop, the model's own mean/std.

Done with Pillow and numpy so that the torch-free runtime can share it exactly.
``ImagePreprocess(cfg)(pil_image)`` returns a ``float32 [3, S, S]`` tensor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from .config import PreprocessConfig

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def load_image(path: Union[str, Path]) -> Image.Image:
    """Open an image file, apply its EXIF orientation and convert it to RGB."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(ImageOps.exif_transpose(im))


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB with transparent pixels composited on white (RGBA, LA, palette with transparency)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def resize_crop(im: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    size = cfg.image_size
    resample = _RESAMPLE[cfg.interpolation]
    if cfg.resize_mode == "squash":
        return im.resize((size, size), resample)
    w, h = im.size
    # torchvision's Resize(int) rule: the short side becomes `size`, the long side is truncated.
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), resample)
    # torchvision's CenterCrop rule: offsets rounded half to even.
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def preprocess_array(im: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """``float32 [3, S, S]`` numpy array, normalized with the model's mean/std."""
    im = resize_crop(to_rgb(im), cfg)
    x = np.asarray(im, dtype=np.float32) / 255.0
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class ImagePreprocess:
    """Callable PIL image (or path) → ``torch.float32 [3, S, S]``."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg

    def __call__(self, image: Union[Image.Image, str, Path, np.ndarray]):
        import torch

        if isinstance(image, (str, Path)):
            image = load_image(image)
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return torch.from_numpy(preprocess_array(image, self.cfg))

    def __repr__(self) -> str:
        c = self.cfg
        return (f"ImagePreprocess(size={c.image_size}, resize={c.resize_mode}, interpolation={c.interpolation}, "
                f"mean={tuple(round(v, 4) for v in c.mean)}, std={tuple(round(v, 4) for v in c.std)})")
