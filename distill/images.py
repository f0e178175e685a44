"""The student's image of a sample, fast: the crop through the student's preprocessing with the data-pipeline
levers (uint8, draft decoding, decoders, torch resize), the normalizer the trainer applies on the device, and
JPEGs decoded on the training device (``data.decoder=device``)."""
from __future__ import annotations

import io
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from mobileclip.errors import ConfigError, MobileCLIPError
from mobileclip.transforms import (IMAGE_READ_ERRORS, RESAMPLE, ScaledImage, center_offsets, corner_boxes,
                                   jpeg_scan_truncated, load_image_scaled, plain_jpeg_size, read_source_bytes,
                                   resize_crop, resized_size, to_rgb)

from .augment import apply_aug, aug_box


#
# The default path decodes the whole image with Pillow, crops, and runs the student's
# ``ImagePreprocess`` (resize the short side, center crop, float32, mean/std). ``StudentImages``
# does the same with opt-in levers (see ``TrainSamples``): a uint8 result normalized later on the
# device, JPEG decoding at a reduced DCT scale when the crop is large enough, torchvision's JPEG
# decoder, torch's antialiased resize.

IMAGE_DTYPES = ("float32", "uint8")
DECODERS = ("pil", "torchvision", "simplejpeg", "device")
RESIZERS = ("pil", "torch")


def draft_scale(crop_size: tuple, cfg) -> int:
    """The largest JPEG reduction (8, 4 or 2; else 1) at which a crop of ``crop_size`` (full-resolution
    pixels) still covers at least the size it is resized to, in both dimensions: decoding at that
    scale never upsamples what the full decode would have downsampled."""
    nw, nh = resized_size(crop_size, cfg)
    w, h = crop_size
    return next((k for k in (8, 4, 2) if w >= k * nw and h >= k * nh), 1)


def _center_box(nw: int, nh: int, size: int, flip: bool) -> tuple:
    """``(left, top)`` of ``resize_crop``'s center crop; with ``flip``, where that crop of the flipped image lies in
    the unflipped one (offsets round half to even, so they are not symmetric)."""
    left, top = center_offsets(nw, nh, size)
    return (nw - size - left if flip else left), top


def _hwc_to_chw(a: np.ndarray) -> torch.Tensor:
    """``uint8 [3, H, W]`` view of an ``[H, W, 3]`` array (channels-last strides, no copy)."""
    return torch.from_numpy(a).permute(2, 0, 1)


def _pil_to_uint8(im: Image.Image) -> torch.Tensor:
    return _hwc_to_chw(np.array(im, dtype=np.uint8))


def normalize_cpu(image: torch.Tensor, cfg) -> torch.Tensor:
    """``uint8 [3, S, S]`` → ``float32`` normalized with ``cfg``'s mean/std: ``ImagePreprocess``'s numpy operations
    (so the results are equal), single-threaded — torch's thread pool costs more than the work on one image."""
    x = np.asarray(image.permute(1, 2, 0).numpy(), dtype=np.float32) / 255.0
    x = (x - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class DeferredJPEG(NamedTuple):
    """A student image left for the training device to decode (``decoder="device"``): a plain colour JPEG's
    bytes (``uint8 [n]``) and ``geom`` = ``(left, top, right, bottom)`` of the augmentation crop in the full image,
    the size it is resized to ``(width, height)``, the ``(left, top)`` of the center square in that, the flip
    (0/1), and the full image's ``(width, height)``. :func:`collate_train` packs them, :func:`decode_deferred`
    decodes them."""
    data: torch.Tensor
    geom: tuple


def _resize_crop_chw(img: torch.Tensor, box: tuple, nw: int, nh: int, left: int, top: int, size: int, flip: bool,
                     mode: str) -> torch.Tensor:
    """``uint8 [3, size, size]``: ``box`` of a ``uint8 [3, H, W]`` image resized to ``nw x nh`` by torch's
    antialiased resampling, its ``(left, top)`` square, flipped. On the CPU torch's uint8 kernel (channels-last in
    and out); on CUDA, whose antialiased kernels take floating point, in float32, rounded."""
    crop = img[:, box[1]:box[3], box[0]:box[2]]
    if (nw, nh) != (crop.shape[2], crop.shape[1]):
        if crop.device.type == "cpu":
            crop = torch.nn.functional.interpolate(crop[None].contiguous(memory_format=torch.channels_last),
                                                   size=(nh, nw), mode=mode, antialias=True, align_corners=False)[0]
        else:
            x = torch.nn.functional.interpolate(crop[None].float(), size=(nh, nw), mode=mode, antialias=True,
                                                align_corners=False)[0]
            crop = x.round_().clamp_(0, 255).to(torch.uint8)
    out = crop[:, top:top + size, left:left + size]
    return out.flip(-1) if flip else out


class StudentImages:
    """Sample ``i``'s augmentation crop through the student's preprocessing, with the levers of
    :class:`TrainSamples` (``image_dtype``, ``draft``, ``decoder``, ``resize``)."""

    def __init__(self, preprocess: Callable, image_dtype: str = "float32", draft: bool = False,
                 decoder: str = "pil", resize: str = "pil") -> None:
        if image_dtype not in IMAGE_DTYPES:
            raise ConfigError(f"image_dtype must be one of {IMAGE_DTYPES}, got {image_dtype!r}")
        if decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if resize not in RESIZERS:
            raise ConfigError(f"resize must be one of {RESIZERS}, got {resize!r}")
        if decoder == "device":
            if image_dtype != "uint8":
                raise ConfigError("decoder='device' leaves JPEGs for the training device to decode, which gives uint8 "
                                  "images: set image_dtype='uint8'")
            if draft:
                raise ConfigError("draft decoding happens on the CPU; it does not combine with decoder='device'")
            try:
                import torchvision.io
            except ImportError as e:
                raise ConfigError(f"decoder='device' decodes with torchvision.io.decode_jpeg ({e}); install "
                                  "torchvision") from e
            if not hasattr(torchvision.io, "decode_jpeg"):
                raise ConfigError("decoder='device' needs torchvision.io.decode_jpeg, which this torchvision lacks")
            resize = "torch"  # the device resizes with torch; the images it cannot take are resized so in workers
        self.pp, self.image_dtype, self.draft, self.decoder, self.resize = (preprocess, image_dtype, bool(draft),
                                                                             decoder, resize)
        self.cfg = getattr(preprocess, "cfg", None)
        self.fast = self.draft or decoder != "pil" or resize != "pil"
        if (self.fast or image_dtype != "float32") and self.cfg is None:
            raise ConfigError("image_dtype='uint8', draft, decoder and resize need the student's ImagePreprocess "
                              f"(with its cfg), not {preprocess!r}")
        if resize == "torch" and self.cfg.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"resize='torch' resamples bilinear or bicubic like Pillow, not "
                              f"{self.cfg.interpolation!r}; use resize='pil'")
        self.reduced = 0  # images this process decoded at a reduced JPEG scale (draft)
        self.decoded = 0
        self.deferred = 0  # JPEGs this process left for the device to decode

    def from_crop(self, crop: Image.Image) -> torch.Tensor:
        """The default path's result for a PIL crop: float32 through the preprocess, or its uint8 image."""
        if self.image_dtype == "float32":
            return self.pp(crop)
        return _pil_to_uint8(resize_crop(to_rgb(crop), self.cfg))

    def load(self, source, i: int, params_for: Callable, need_crop: bool = False):
        """``(student image or None when unreadable, captions, the PIL crop or None)``; ``params_for(width,
        height)`` gives the augmentation of the full-resolution oriented image. The fast levers apply unless
        ``need_crop`` (online teachers preprocess the full-resolution crop themselves) or the source is in
        memory (the synthetic generator: nothing to decode faster); otherwise the default path runs and the
        crop comes back too."""
        opener = getattr(source, "open", None)
        if opener is None or not self.fast or need_crop:
            im, captions = source.load(i)
            if im is None:
                return None, captions, None
            crop = apply_aug(im, params_for(*im.size))
            return self.from_crop(crop), captions, crop
        src, captions = opener(i)
        if src is None:
            return None, captions, None
        if self.decoder == "device":
            try:
                data = read_source_bytes(src)
            except OSError:
                return None, captions, None
            full = plain_jpeg_size(data)
            if full is not None:
                params = params_for(*full)
                box = aug_box(params, full)
                nw, nh = resized_size(_box_size(box), self.cfg)
                flip = float(params[4]) >= 0.5
                left, top = _center_box(nw, nh, self.cfg.image_size, flip)
                self.deferred += 1
                return DeferredJPEG(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                    (*box, nw, nh, left, top, int(flip), *full)), captions, None
            src = io.BytesIO(data)  # anything else is decoded here by Pillow
        chosen = {}

        def choose(w: int, h: int) -> int:
            chosen["size"], chosen["params"] = (w, h), params_for(w, h)
            return draft_scale(_box_size(aug_box(chosen["params"], (w, h))), self.cfg) if self.draft else 1

        try:
            scaled = load_image_scaled(src, choose, "pil" if self.decoder == "device" else self.decoder)
        except IMAGE_READ_ERRORS:
            return None, captions, None
        self.decoded += 1
        self.reduced += scaled.scale > 1
        # choose() ran for JPEGs only (other formats: the decoded size), and with the header's orientation
        params = chosen["params"] if chosen.get("size") == tuple(scaled.full_size) else params_for(*scaled.full_size)
        image = self._crop_resize(scaled, params)
        if self.image_dtype == "float32":
            image = normalize_cpu(image, self.cfg)
        return image, captions, None

    def _crop_resize(self, scaled: ScaledImage, params: np.ndarray) -> torch.Tensor:
        """``uint8 [3, S, S]``: the crop of ``params`` resized and center-cropped as ``resize_crop`` does."""
        cfg, img = self.cfg, scaled.image
        box = aug_box(params, scaled.full_size)
        flip = float(params[4]) >= 0.5
        size = cfg.image_size
        if isinstance(img, torch.Tensor) and self.resize == "pil":  # torchvision's decode, Pillow's resize
            img = Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB")
        if scaled.scale == 1 and isinstance(img, Image.Image) and self.resize == "pil":  # exactly the default path
            return _pil_to_uint8(resize_crop(apply_aug(img, params), cfg))
        nw, nh = resized_size(_box_size(box), cfg)
        left, top = _center_box(nw, nh, size, flip)
        if scaled.scale > 1:  # Pillow resamples the reduced image's region of the crop's center square directly
            k, (ox, oy) = scaled.scale, scaled.offset
            sx, sy = (box[2] - box[0]) / k / nw, (box[3] - box[1]) / k / nh
            bx, by = box[0] / k + ox, box[1] / k + oy
            out = img.resize((size, size), RESAMPLE[cfg.interpolation], box=(bx + left * sx, by + top * sy,
                                                                 bx + (left + size) * sx, by + (top + size) * sy))
            return _pil_to_uint8(out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out)
        if isinstance(img, Image.Image):
            img = _hwc_to_chw(np.array(img, dtype=np.uint8))
        return _resize_crop_chw(img, box, nw, nh, left, top, size, flip, cfg.interpolation)


def _box_size(box: tuple) -> tuple:
    return box[2] - box[0], box[3] - box[1]


class ImageNormalizer:
    """uint8 images → the student's float32 input: ``(x / 255 - mean) / std`` with float32 operations in the
    order of ``ImagePreprocess``, so a batch normalized on the device equals the float32 CPU preprocess.

    ``normalizer(batch)`` takes ``uint8 [..., 3, H, W]`` on any device (any strides, e.g. the channels-last
    batches of :func:`collate_train`) and returns float32 there, in ``memory_format``; float tensors are returned
    unchanged, so it can be applied to every image batch whatever ``image_dtype`` the dataset used.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device=None,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        def const(v):
            return torch.tensor(v, dtype=torch.float32, device=device).reshape(-1, 1, 1)

        self.mean, self.std = const(list(mean)), const(list(std))
        # a tensor, not a Python number: CUDA divides by a CPU scalar as a multiplication by its reciprocal
        self.scale = torch.full((1, 1, 1), 255.0, dtype=torch.float32, device=device)
        self.memory_format = memory_format

    @classmethod
    def for_preprocess(cls, preprocess, device=None, **kw) -> "ImageNormalizer":
        cfg = preprocess.cfg if hasattr(preprocess, "cfg") else preprocess
        return cls(cfg.mean, cfg.std, device, **kw)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        dev = images.device
        if self.mean.device != dev:
            self.mean, self.std, self.scale = self.mean.to(dev), self.std.to(dev), self.scale.to(dev)
        x = images.to(torch.float32, memory_format=self.memory_format)
        return x.div_(self.scale).sub_(self.mean).div_(self.std)


def normalize_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8 [..., 3, H, W]`` → float32 ``(x / 255 - mean) / std`` on the images' device
    (see :class:`ImageNormalizer`)."""
    return ImageNormalizer(mean, std, images.device)(images)


DEVICE_DECODE_PIXELS = 64 << 20  # decoded at once on the device: 64 Mpx, 192 MB of RGB


def decode_deferred(batch: dict, key: str, entries: dict, device, size: int, interpolation: str,
                    max_pixels: int = DEVICE_DECODE_PIXELS) -> None:
    """Make ``batch[key]``, ``uint8 [N, 3, size, size]`` (channels-last) on ``device``: the deferred JPEGs decoded
    there (nvJPEG on CUDA through ``torchvision.io.decode_jpeg``; libjpeg-turbo on the CPU), cropped, resized and
    flipped as the worker would have, and the rows the workers decoded copied in. A JPEG the decoder refuses drops
    its sample from the batch (every per-sample key of its group) and adds it to ``batch["skipped"]``, like any
    unreadable image. JPEGs are decoded in groups of at most ``max_pixels`` pixels together (one larger image
    alone), so that a batch of large images cannot take the device's memory at once.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    flat, geom = entries["_jpeg"], entries["_jpeg_geom"]
    rows = geom.tolist()
    cpu_rows = entries["_cpu_rows"].tolist() if "_cpu_rows" in entries else []
    n = len(rows) + len(cpu_rows)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8, device=device).contiguous(
        memory_format=torch.channels_last)
    if cpu_rows:
        images[cpu_rows] = entries["_cpu"].to(device, non_blocking=True)
    batch[key] = images
    if not rows:
        return
    groups, pixels = [[]], 0
    for g in rows:
        px = g[12] * g[13]
        if groups[-1] and pixels + px > max_pixels:
            groups.append([])
            pixels = 0
        groups[-1].append(g)
        pixels += px
    bad = []
    for group in groups:
        datas = [flat[o:o + m] for _, o, m, *_ in group]
        try:
            decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=images.device)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError:  # one bad JPEG fails the batched call: decode one by one to find it (counted)
            batch["device_decode_fallbacks"] = batch.get("device_decode_fallbacks", 0) + 1
            decoded = []
            for d in datas:
                try:
                    decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=images.device))
                except torch.cuda.OutOfMemoryError:
                    raise
                except RuntimeError as e:   # a bad JPEG, or a device decoder that cannot decode a good one
                    if _decodes_on_cpu(d):
                        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                        raise DeviceDecodeError(
                            f"data.decoder=device: {images.device} failed on a JPEG that libjpeg decodes on the CPU "
                            f"({type(e).__name__}: {first}); the device's decoder (torchvision's nvJPEG) is not "
                            "usable here - use data.decoder=simplejpeg or pil") from e
                    decoded.append(None)
        grey = _grey_corners([img if img is not None and tuple(img.shape) == (3, g[13], g[12]) else None
                              for img, g in zip(decoded, group)])
        for k, (img, (row, _, _, l, t, r, b, nw, nh, left, top, flip, w, h)) in enumerate(zip(decoded, group)):
            if img is None or tuple(img.shape) != (3, h, w):
                bad.append(row)
                continue
            if grey[k] and jpeg_scan_truncated(bytes(datas[k].numpy())):   # see mobileclip.transforms
                bad.append(row)
                continue
            images[row] = _resize_crop_chw(img, (l, t, r, b), nw, nh, left, top, size, bool(flip), interpolation)
        del decoded
    if bad:
        _drop_rows(batch, key, bad)


class DeviceDecodeError(MobileCLIPError):
    """The training device's JPEG decoder fails on data the CPU decodes: the decoder, not the image, is at fault."""


def _decodes_on_cpu(data: torch.Tensor) -> bool:
    """Whether libjpeg (torchvision on the CPU) decodes these JPEG bytes: tells a bad image from a bad decoder."""
    from torchvision.io import ImageReadMode
    from torchvision.io.image import decode_jpeg

    try:
        decode_jpeg(data, mode=ImageReadMode.RGB, device="cpu")
    except RuntimeError:
        return False
    return True


def _grey_corners(images: list) -> list:
    """For each decoded ``uint8 [3, H, W]`` image (or None), whether a corner 8 x 8 block is exactly mid-grey, the
    mark of a JPEG scan that ended early (:func:`mobileclip.transforms.check_jpeg_filled`): one device sync."""
    flags, at = [], []
    for k, img in enumerate(images):
        if img is None:
            continue
        h, w = img.shape[-2:]
        corners = torch.stack([img[:, y:y + b, x:x + b] for x, y, b in corner_boxes(int(w), int(h))])
        flags.append((corners == 128).flatten(1).all(1).any())
        at.append(k)
    out = [False] * len(images)
    for k, f in zip(at, torch.stack(flags).cpu().tolist() if flags else []):
        out[k] = bool(f)
    return out


def _drop_rows(batch: dict, key: str, rows: list) -> None:
    """Remove ``rows`` from every per-sample entry of ``key``'s group (paired keys, or the ``ui_`` image-only ones),
    recording the samples in ``batch["skipped"]``; the group's keys go when no row is left."""
    prefix = "ui_" if key.startswith("ui_") else ""
    n = batch[key].shape[0]
    group = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n
             and (k.startswith("ui_") if prefix else not k.startswith(("ui_", "ut_")))]
    ids = batch[prefix + "index"].tolist()
    batch["skipped"] = list(batch["skipped"]) + [f"image-only {ids[r]}" if prefix else ids[r] for r in rows]
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows] = False
    for k in group:
        if keep.any():
            batch[k] = batch[k][keep.to(batch[k].device)]
        else:
            del batch[k]


