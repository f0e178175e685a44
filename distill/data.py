"""Training data: image–caption pair sources, replayable augmentations, and the batches
the trainer consumes.

A *pair source* is indexable: ``source.load(i) -> (PIL image or None, [captions])``, with a
``spec()`` dict that rebuilds it (stored in a teacher cache's manifest). Sources:
the synthetic generator, CSV/TSV/JSONL caption files, and WebDataset ``.tar`` shards
(indexed once, then read by random access).

Augmentations are random resized crops (and optional horizontal flips) described by five
numbers relative to the image — ``x0, y0, w, h, flip`` — drawn deterministically from
``(seed, index, k)``. The teacher cache stores them, so the trainer replays the exact crop
the teacher saw; each model then applies its *own* preprocessing to the crop.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from mobileclip.data.datasets import PackedStrings, pathlib_respells
from mobileclip.errors import ConfigError, DatasetError, MobileCLIPError
from mobileclip.transforms import (IMAGE_READ_ERRORS, _RESAMPLE, ScaledImage, center_offsets, corner_boxes,
                                   jpeg_scan_truncated, load_image, load_image_scaled, plain_jpeg_size,
                                   read_source_bytes, resize_crop, resized_size, to_rgb)

AUG_FIELDS = ("x0", "y0", "w", "h", "flip")


# ------------------------------------------------------------------ pair sources

class SyntheticPairs:
    def __init__(self, split: str = "train", size: int = 10000, image_size: int = 64, seed: int = 0,
                 two_object_prob: float = 0.35) -> None:
        from mobileclip.data.synthetic import SyntheticGenerator

        self.args = dict(split=split, size=size, image_size=image_size, seed=seed, two_object_prob=two_object_prob)
        from mobileclip import limits

        limits.check_max(size, limits.SAMPLES, "the number of synthetic samples")
        self.gen = SyntheticGenerator(split, image_size, seed, two_object_prob)
        self.size = size
        self.n_captions = self.gen.n_captions

    def __len__(self) -> int:
        return self.size

    def load(self, i: int):
        s = self.gen[i]
        return Image.fromarray(s.image), s.captions

    def spec(self) -> dict:
        return {"kind": "synthetic", **self.args}

    def identity(self, i: int) -> str:
        """What a teacher cache fingerprints of sample ``i``: its index and captions (the image is
        determined by them and the spec)."""
        return f"{i}\t" + "\t".join(self.gen[i].captions)


class CaptionPairs:
    """One sample per row of a CSV/TSV/JSONL (rows may share an image)."""

    def __init__(self, path: str, image_root: Optional[str] = None) -> None:
        from mobileclip.data import CaptionDataset

        self.ds = CaptionDataset(path, image_root=image_root or None)
        self.args = dict(path=str(Path(path).resolve()), image_root=str(self.ds.image_root.resolve()))
        self.n_captions = 1

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, i: int):
        path, caption = self.ds.items[i]
        try:
            return load_image(path), [caption]
        except IMAGE_READ_ERRORS:
            return None, [caption]

    def open(self, i: int):
        """``(the image file's path, [caption])``: the encoded image, for decoders that read less than all of it."""
        path, caption = self.ds.items[i]
        return path, [caption]

    def captions(self, i: int) -> list:
        return [self.ds.items.captions[i]]

    def spec(self) -> dict:
        return {"kind": "captions", **self.args}

    def identity(self, i: int) -> str:
        """Sample ``i``'s image path (relative to the image root) and caption, for a cache's fingerprint."""
        raw, caption = self.ds.items.raw(i), self.ds.items.captions[i]
        if raw.startswith("/") or pathlib_respells(raw):  # absolute, or pathlib's normalization (rare: slow path)
            path = Path(self.ds.items.path(i))
            try:
                raw = path.relative_to(self.ds.image_root).as_posix()
            except ValueError:
                raw = str(path)
        return f"{raw}\t{caption}"  # a plain relative path: what pathlib's relative_to gave, without its interning


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")
CAPTION_EXTS = ("txt", "caption", "json")
WDS_INDEX = np.dtype([("shard", np.int32), ("image_offset", np.int64), ("image_size", np.int64),
                      ("caption_offset", np.int64), ("caption_size", np.int64), ("caption_ext", np.uint8)])


class WebDatasetPairs:
    """Image-caption pairs from WebDataset ``.tar`` shards, e.g. ``shards/{000..099}.tar``.

    Files are grouped into samples by key the way the ``webdataset`` library does
    (``base_plus_ext``: ``abc.jpg`` + ``abc.txt`` → sample ``abc``); the image is the first
    of ``jpg/jpeg/png/webp/...``, the caption a ``.txt`` (or ``.json`` with a ``caption`` /
    ``text`` field). The shards are indexed once (tar headers only: member offsets and
    sizes), so any sample can be read by position — which the teacher cache and exact
    resume need. A sample whose image cannot be decoded is skipped and counted like any
    other unreadable image; a sample without an image or caption is left out of the index.
    A caption that is not UTF-8, not valid JSON (``.json``) or empty makes its sample
    unreadable too (skipped and counted), rather than a silently garbled or empty caption.
    """

    def __init__(self, shards: str) -> None:
        import tarfile

        from braceexpand import braceexpand
        from webdataset.tariterators import base_plus_ext

        self.args = dict(shards=shards)
        self.paths = [str(Path(p).expanduser()) for p in braceexpand(shards)]
        dirs = [p for p in self.paths if Path(p).is_dir()]
        if dirs:
            raise DatasetError(f"shard {dirs[0]!r} is a directory, not a .tar file; give the shard files, "
                               f"e.g. '{dirs[0].rstrip('/')}/{{000..099}}.tar'")
        missing = [p for p in self.paths if not Path(p).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} of {len(self.paths)} shards of {shards!r} do not exist "
                               f"(first: {missing[0]})")
        rows: list[tuple] = []  # (shard, image offset, image size, caption offset, caption size, caption ext)
        self.incomplete = 0
        for s, path in enumerate(self.paths):
            groups: dict = {}
            try:
                with tarfile.open(path, "r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        key, ext = base_plus_ext(m.name)
                        if key is None:
                            continue
                        groups.setdefault(key, {})[ext.lower()] = (m.offset_data, m.size)
            except tarfile.TarError as e:
                raise DatasetError(f"shard {path!r} is not a readable tar file ({e})") from e
            for key, files in groups.items():
                img = next((e for e in IMAGE_EXTS if e in files), None)
                cap = next((e for e in CAPTION_EXTS if e in files), None)
                if img is None or cap is None:
                    self.incomplete += 1
                    continue
                rows.append((s, *files[img], *files[cap], CAPTION_EXTS.index(cap)))
            del groups
        if not rows:
            raise DatasetError(f"no image-caption samples in {shards!r} (looked for {IMAGE_EXTS} + .txt/.json)")
        # one numpy record per sample (27 bytes), not a tuple of Python ints: see PackedStrings on memory
        self.index = np.array(rows, dtype=WDS_INDEX)
        del rows
        self.n_captions = 1
        self._files: dict = {}

    def __len__(self) -> int:
        return len(self.index)

    def _entry(self, i: int) -> tuple:
        """``(shard, image offset, image size, caption offset, caption size, caption extension)`` of sample ``i``."""
        r = self.index[i]
        return (int(r["shard"]), int(r["image_offset"]), int(r["image_size"]), int(r["caption_offset"]),
                int(r["caption_size"]), CAPTION_EXTS[int(r["caption_ext"])])

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of a shard (fewer at its end), by positional reads: a file descriptor
        opened before the DataLoader forks its workers is shared with them, and so is its offset — a
        ``seek`` + ``read`` in one worker interleaved with another's reads the wrong bytes (seen as "corrupt
        JPEG data", or worse, a valid wrong caption). ``os.pread`` moves no offset."""
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.paths[shard], os.O_RDONLY | getattr(os, "O_BINARY", 0))
        chunks = []
        while size > 0:
            chunk = os.pread(fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset, size = offset + len(chunk), size - len(chunk)
        return b"".join(chunks)

    def load(self, i: int):
        src, captions = self.open(i)
        if src is None:
            return None, captions
        try:
            image = load_image(src)
        except IMAGE_READ_ERRORS:
            image = None
        return image, captions

    def open(self, i: int):
        """``(the image member's bytes as a file object, [caption])``; ``(None, [""])`` when the caption is
        unreadable (not UTF-8, bad JSON, no caption field, or empty: skipped and counted like a bad image)."""
        import io

        shard, io_, is_, co, cs, cap_ext = self._entry(i)
        caption = _caption_text(self._read(shard, co, cs), cap_ext)
        if not caption:
            return None, [""]
        return io.BytesIO(self._read(shard, io_, is_)), [caption]

    def captions(self, i: int) -> list:
        shard, _, _, co, cs, cap_ext = self._entry(i)
        return [_caption_text(self._read(shard, co, cs), cap_ext)]

    def spec(self) -> dict:
        return {"kind": "webdataset", **self.args}

    def identity(self, i: int) -> str:
        """Sample ``i``'s shard, image member (offset, size) and caption bytes, for a cache's fingerprint."""
        shard, io_, is_, co, cs, _ = self._entry(i)
        caption = self._read(shard, co, cs).decode("utf-8", errors="surrogateescape")
        return f"{Path(self.paths[shard]).name}@{io_}+{is_}\t{caption}"

    def __getstate__(self):  # file descriptors are reopened in a process that unpickles this (spawn workers)
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


def _caption_text(raw: bytes, ext: str) -> str:
    """A WebDataset caption (``.txt``/``.caption``: the text; ``.json``: its ``caption`` or
    ``text`` string), stripped; ``""`` when it is not UTF-8, not such JSON, or empty."""
    import json

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return ""
    if ext == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return ""
        text = next((obj[k] for k in ("caption", "text") if isinstance(obj, dict) and isinstance(obj.get(k), str)
                     and obj[k].strip()), "")
    return text.strip()


# ------------------------------------------------------------------ unpaired sources
#
# Same interface as the pair sources, with ``modality`` "images" (``load(i) -> (image or None, [])``,
# no captions) or "texts" (``load(i) -> (None, [text])``, no image). The teacher cache stores image
# embeddings (with replayable augmentations) for the first, text embeddings for the second.

class ImageFiles:
    """Images without captions: every image file under a folder, recursively, sorted by relative path
    (hidden files and folders left out). Unreadable files are skipped and counted like any other."""

    modality = "images"
    n_captions = 0

    def __init__(self, root: str) -> None:
        from mobileclip.data.datasets import IMAGE_EXTENSIONS

        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"image folder {str(self.root)!r} " + ("is a file; give the folder that holds the "
                                                                      "images" if self.root.exists()
                                                                      else "does not exist"))
        # a dangling symbolic link is listed too: it cannot be read, so it is skipped and counted as unreadable
        rel = sorted(f.relative_to(self.root).as_posix() for f in self.root.rglob("*")
                     if (f.is_file() or f.is_symlink() and not f.exists()) and f.suffix.lower() in IMAGE_EXTENSIONS
                     and not any(part.startswith(".") for part in f.relative_to(self.root).parts))
        self.relative = PackedStrings(rel)  # packed: see PackedStrings on memory in DataLoader workers
        del rel
        if not len(self.relative):
            raise DatasetError(f"{str(self.root)!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                               "in sub-folders too)")
        self.args = dict(root=str(self.root.resolve()))

    def __len__(self) -> int:
        return len(self.relative)

    def file(self, i: int) -> str:
        return os.path.join(self.args["root"], self.relative[i])  # a str: see _CaptionItems on pathlib

    def load(self, i: int):
        try:
            return load_image(self.file(i)), []
        except IMAGE_READ_ERRORS:
            return None, []

    def open(self, i: int):
        return self.file(i), []

    def spec(self) -> dict:
        return {"kind": "images", **self.args}

    def identity(self, i: int) -> str:
        return self.relative[i]


class TextLines:
    """Texts without images: one per line of a UTF-8 text file; blank lines are left out."""

    modality = "texts"
    n_captions = 1

    def __init__(self, path: str) -> None:
        from mobileclip.data.datasets import read_utf8

        p = Path(path).expanduser()
        if p.is_dir():
            raise DatasetError(f"text file {str(p)!r} is a directory; give a UTF-8 text file with one text per line")
        if not p.is_file():
            raise DatasetError(f"text file {str(p)!r} does not exist")
        self.texts = PackedStrings(ln.strip() for ln in read_utf8(p, "text file").splitlines() if ln.strip())
        if not len(self.texts):
            raise DatasetError(f"text file {str(p)!r} holds no text (one text per line)")
        self.args = dict(path=str(p.resolve()))

    def __len__(self) -> int:
        return len(self.texts)

    def load(self, i: int):
        return None, [self.texts[i]]

    def captions(self, i: int) -> list:
        return [self.texts[i]]

    def spec(self) -> dict:
        return {"kind": "texts", **self.args}

    def identity(self, i: int) -> str:
        return self.texts[i]


class SyntheticImages(SyntheticPairs):
    """The synthetic generator's images without their captions (e.g. the ``novel`` split: colour-shape
    pairs the paired training data never shows)."""

    modality = "images"

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.n_captions = 0

    def load(self, i: int):
        return Image.fromarray(self.gen[i].image), []

    def spec(self) -> dict:
        return {"kind": "synthetic-images", **self.args}

    def identity(self, i: int) -> str:
        return str(i)


class SyntheticTexts(SyntheticPairs):
    """The synthetic generator's captions without their images (each sample's first caption)."""

    modality = "texts"

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.n_captions = 1

    def load(self, i: int):
        return None, [self.gen[i].captions[0]]

    def spec(self) -> dict:
        return {"kind": "synthetic-texts", **self.args}

    def identity(self, i: int) -> str:
        return f"{i}\t{self.gen[i].captions[0]}"


SOURCE_KINDS = {"synthetic": SyntheticPairs, "captions": CaptionPairs, "webdataset": WebDatasetPairs,
                "images": ImageFiles, "texts": TextLines, "synthetic-images": SyntheticImages,
                "synthetic-texts": SyntheticTexts}


def modality(source) -> str:
    """``"pairs"``, ``"images"`` (no captions) or ``"texts"`` (no images)."""
    return getattr(source, "modality", "pairs")


def source_from_spec(spec: dict):
    kind = spec.get("kind")
    args = {k: v for k, v in spec.items() if k != "kind"}
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"unknown data source kind {kind!r}; known: {sorted(SOURCE_KINDS)}")
    return SOURCE_KINDS[kind](**args)


# ------------------------------------------------------------------ augmentations

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


# ------------------------------------------------------------------ the student's image, fast
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
            out = img.resize((size, size), _RESAMPLE[cfg.interpolation], box=(bx + left * sx, by + top * sy,
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


# ------------------------------------------------------------------ captions, tokenized once

class TokenTable:
    """Every caption of a source through a tokenizer once, stored compactly, so that a sample's tokens are a lookup.

    Built from ``source.captions(i)`` (caption files, WebDataset shards — one pass over the caption members —
    and text files): unique captions are tokenized once, in batches; each one's ids up to its last non-zero
    (the end token) are kept in one ``uint16`` array (``int32`` when the vocabulary needs it), with offsets.
    ``table[i, c]`` is exactly ``tokenizer([caption c of sample i])[0]`` (the padding is zeros). About
    ``2 x tokens + 12`` bytes per unique caption plus 12 bytes per sample; the arrays are shared by the
    DataLoader workers (forked) without copies.

    A source without ``captions(i)`` (the synthetic generator renders an image to know its captions) gets a
    memo instead: each distinct caption is tokenized once per process, up to ``memo_limit`` of them.

    With ``store`` (a folder; ``data.token_cache``), the table is kept on disk, one sub-folder per caption set and
    tokenizer (the name is a digest of every caption in order and of the tokenizer: its class, settings, vocabulary
    file and the versions of the code that tokenizes), so the next run — and the other ranks — read it instead of
    tokenizing (open_clip's tokenizer takes ~70 µs a caption: ~12 minutes for 10 million). Its files' sha256 are
    checked when read, every row's structure too, and the captions are tokenized again and compared: all of
    them up to ``FULL_CHECK_MAX``, a fresh random ``SAMPLE`` beyond; a damaged table is refused, named.
    ``self.loaded`` says whether it was read from the store.
    """

    def __init__(self, source, tokenizer: Callable, batch: int = 1024, memo_limit: int = 200_000,
                 store: str = "") -> None:
        self.tok, self.memo_limit, self.memo = tokenizer, memo_limit, {}
        self.n = len(source)
        self.loaded = False
        get = getattr(source, "captions", None)
        self.precomputed = get is not None
        if not self.precomputed:
            return
        ids: dict = {}
        starts = np.zeros(self.n + 1, dtype=np.int64)
        caption_ids = []
        digest = hashlib.sha256() if store else None  # names a stored table: computed only when storing
        for i in range(self.n):
            caps = get(i)
            for c in caps:
                caption_ids.append(ids.setdefault(c, len(ids)))
                if digest is not None:
                    digest.update(c.encode("utf-8", "surrogatepass") + b"\x00")
            if digest is not None:
                digest.update(b"\x01")
            starts[i + 1] = starts[i] + len(caps)
        self.starts, self.caption_ids = starts, np.asarray(caption_ids, dtype=np.int32)
        uniques = list(ids)
        del ids
        fingerprint = tokenizer_fingerprint(tokenizer) if store else None
        folder = None
        if fingerprint is not None:
            key = hashlib.sha256(json.dumps({"captions": digest.hexdigest(), "tokenizer": fingerprint},
                                            sort_keys=True).encode()).hexdigest()
            folder = Path(store).expanduser() / f"tokens-{key[:24]}"
            from .cache import CacheError

            for what, p in (("data.token_cache", folder.parent), ("the table's folder", folder)):
                if p.exists() and not p.is_dir():
                    raise CacheError(f"{what} {str(p)!r} is a file, not a folder; the pre-tokenized captions are "
                                     "kept in a folder - remove the file or choose another data.token_cache")
            if folder.is_dir():
                self._load(folder, uniques)
                return
        self._tokenize(uniques, tokenizer, batch)
        if folder is not None:
            self._save(folder, {"captions_sha256": digest.hexdigest(), "tokenizer": fingerprint,
                                "samples": self.n, "captions": len(uniques)})

    def _tokenize(self, uniques: list, tokenizer: Callable, batch: int) -> None:
        rows, lengths = [], np.zeros(len(uniques), dtype=np.int64)
        self.context_length, dtype = 0, torch.int64
        for b in range(0, len(uniques), batch):
            t = tokenizer(uniques[b:b + batch])
            self.context_length, dtype = t.shape[1], t.dtype
            a = t.numpy()
            nz = a != 0
            n = np.where(nz.any(1), a.shape[1] - np.argmax(nz[:, ::-1], axis=1), 0)  # up to the last non-zero
            lengths[b:b + len(a)] = n
            rows.append(a[np.arange(a.shape[1]) < n[:, None]])  # the rows, trimmed and concatenated
        self.dtype = dtype
        flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        del rows
        store = np.uint16 if flat.size == 0 or (flat.min() >= 0 and flat.max() < 1 << 16) else np.int32
        if store is np.int32 and (flat.min() < -(1 << 31) or flat.max() >= 1 << 31):
            store = np.int64
        self.tokens = flat.astype(store)
        self.offsets = np.zeros(len(uniques) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])

    _FILES = ("tokens", "offsets")

    def _save(self, folder: Path, meta: dict) -> None:
        """Write the table (atomically: a finished folder or none; the first process to finish wins)."""
        from mobileclip.files import atomic_write_json, temp_dir_for
        from mobileclip.hashing import sha256_file

        tmp = temp_dir_for(folder)
        try:
            for name in self._FILES:
                np.save(tmp / f"{name}.npy", getattr(self, name))
            meta = {**meta, "context_length": self.context_length, "dtype": str(self.dtype).replace("torch.", ""),
                    "sha256": {f"{n}.npy": sha256_file(tmp / f"{n}.npy") for n in self._FILES}}
            atomic_write_json(tmp / "table.json", meta)
            try:
                os.replace(tmp, folder)
            except OSError:
                if not folder.is_dir():  # not another process (rank) storing the same table first: a real failure
                    raise
        finally:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    def _load(self, folder: Path, uniques: list) -> None:
        """Read a stored table, refusing one whose files do not match their recorded sha256 or whose rows are not
        what the tokenizer gives today."""
        from mobileclip.hashing import sha256_file

        from .cache import CacheError

        def refuse(what: str):
            raise CacheError(f"pre-tokenized captions {str(folder)!r}: {what}; delete that folder and it is "
                                      "built again")

        try:
            meta = json.loads((folder / "table.json").read_text())
            for name in self._FILES:
                f = folder / f"{name}.npy"
                if sha256_file(f) != meta["sha256"][f"{name}.npy"]:
                    refuse(f"{name}.npy does not match its recorded sha256 (damaged or edited)")
            tokens, offsets = (np.load(folder / f"{n}.npy", mmap_mode="r") for n in self._FILES)
            context_length, dtype = int(meta["context_length"]), getattr(torch, meta["dtype"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            refuse(f"unreadable ({type(e).__name__}: {e})")
        if offsets.shape != (len(uniques) + 1,) or int(offsets[-1]) != len(tokens):
            refuse(f"holds {offsets.shape[0] - 1} captions, the data {len(uniques)}")
        problem = self._row_problem(tokens, offsets, context_length)
        if problem:
            refuse(problem)
        self.tokens, self.offsets, self.context_length, self.dtype = tokens, offsets, context_length, dtype
        self.loaded = True
        n = len(uniques)
        if n <= self.FULL_CHECK_MAX:   # small: every caption tokenized again (what building it costs)
            probe = range(n)
        else:   # the first and last captions and a fresh random sample (os.urandom) at every load
            rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
            probe = sorted({0, n - 1, *rng.choice(n, min(self.SAMPLE, n), replace=False).tolist()})
        probe = np.asarray(list(probe), dtype=np.int64)
        for b in range(0, len(probe), 1024):   # the tokenizer today, against the stored rows (whole chunks at once)
            chunk = probe[b:b + 1024]
            want = self.tok([uniques[u] for u in chunk.tolist()])
            got = self._rows(chunk)
            if want.dtype != self.dtype or tuple(want.shape) != got.shape:
                refuse(f"captions are tokenized to {tuple(want.shape)} {want.dtype} today, {got.shape} {self.dtype} "
                       "when it was stored")
            diff = np.flatnonzero((want.numpy().astype(np.int64) != got).any(axis=1))
            if len(diff):
                refuse(f"caption {uniques[int(chunk[diff[0]])]!r} is tokenized differently today")

    # A stored table's rows are checked when it is read: all of them for structure (start token first, end
    # token last, a length within the context, ids within the vocabulary: numpy over the whole table), and
    # their ids against the tokenizer for every caption of a table of up to FULL_CHECK_MAX captions, for
    # SAMPLE random ones (and the first and last) of a larger one (README: what a re-signed table can do).
    FULL_CHECK_MAX = 50_000
    SAMPLE = 1_000

    def _row_problem(self, tokens: np.ndarray, offsets: np.ndarray, context_length: int) -> Optional[str]:
        """What is wrong with the rows of a stored table, as the tokenizer's own start/end tokens and vocabulary
        define them (None: nothing found, or the tokenizer does not say)."""
        empty = self.tok([""])[0]
        ends = empty[empty != 0].tolist()
        if len(ends) != 2 or not len(offsets) > 1:
            return None
        sot, eot = ends
        lengths = np.diff(offsets)
        if lengths.min() < 2 or lengths.max() > context_length:
            i = int(np.argmax((lengths < 2) | (lengths > context_length)))
            return f"caption {i}'s row holds {int(lengths[i])} ids (2 to {context_length} expected)"
        for what, at, want in (("start", offsets[:-1], sot), ("end", offsets[1:] - 1, eot)):
            bad = np.flatnonzero(np.asarray(tokens[at]) != want)
            if len(bad):
                return f"{len(bad)} caption rows do not {what} with the {what} token (first: caption {int(bad[0])})"
        vocab = getattr(self.tok, "vocab_size", None)
        if isinstance(vocab, int) and len(tokens) and int(np.max(tokens)) >= vocab:
            return f"it holds id {int(np.max(tokens))}, outside the tokenizer's vocabulary of {vocab}"
        return None

    @property
    def nbytes(self) -> int:
        if not self.precomputed:
            return 0
        return self.tokens.nbytes + self.offsets.nbytes + self.starts.nbytes + self.caption_ids.nbytes

    def count(self, i: int) -> int:
        return int(self.starts[i + 1] - self.starts[i]) if self.precomputed else 0

    def get(self, i: int, c: int, caption: str) -> torch.Tensor:
        """Tokens of caption ``c`` of sample ``i`` (``caption``: its text, used by the memo)."""
        if not self.precomputed:
            t = self.memo.get(caption)
            if t is None:
                t = self.tok([caption])[0]
                if len(self.memo) < self.memo_limit:
                    self.memo[caption] = t
            return t.clone()
        return self._row(int(self.caption_ids[self.starts[i] + c]))

    def _rows(self, us: np.ndarray) -> np.ndarray:
        """Unique captions ``us``' stored ids, padded with zeros: ``int64 [len(us), context_length]``."""
        starts = np.asarray(self.offsets[us], dtype=np.int64)
        lengths = np.asarray(self.offsets[us + 1], dtype=np.int64) - starts
        cols = np.arange(self.context_length)
        inside = cols[None, :] < lengths[:, None]
        at = np.minimum(starts[:, None] + cols[None, :], max(len(self.tokens) - 1, 0))
        return np.where(inside, np.asarray(self.tokens)[at].astype(np.int64) if len(self.tokens) else 0, 0)

    def _row(self, u: int) -> torch.Tensor:
        """Unique caption ``u``'s stored ids, padded as the tokenizer pads them."""
        ids = self.tokens[self.offsets[u]:self.offsets[u + 1]]
        out = torch.zeros(self.context_length, dtype=self.dtype)
        out[:len(ids)] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        return out


def tokenizer_fingerprint(tok) -> Optional[dict]:
    """What a tokenizer's output depends on, for naming a stored :class:`TokenTable`: its class and settings, the
    sha256 of its vocabulary file, and the versions of open_clip and ftfy (the CLIP tokenizer's text cleaning); None
    when the vocabulary cannot be pinned (then the table is not stored)."""
    from importlib.metadata import PackageNotFoundError, version

    from mobileclip.hashing import sha256_file

    vocab = getattr(tok, "vocab_path", None)
    if vocab is None or not Path(vocab).is_file():
        return None

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {"class": f"{type(tok).__module__}.{type(tok).__qualname__}", "repr": repr(tok),
            "context_length": getattr(tok, "context_length", None), "vocab_sha256": sha256_file(vocab),
            "open_clip": ver("open_clip_torch"), "ftfy": ver("ftfy")}


# ------------------------------------------------------------------ training samples

class TrainSamples(torch.utils.data.Dataset):
    """What the trainer reads for sample ``i`` at step-dependent augmentation/caption choice.

    Items are dicts (or ``None`` for an unreadable image, dropped by :func:`collate_train`):

    * ``image`` — the student's input for the chosen augmentation, ``tokens`` — the chosen
      caption through the student's tokenizer;
    * with a ``cache``: ``t_image`` / ``t_text`` — cached teacher embeddings ``[T, Dt]``;
    * with online ``teachers``: ``t_inputs_<k>`` / ``t_tokens_<k>`` — the student's view of the same
      crop at teacher k's input size and normalization (:mod:`mobileclip.views`), and the caption
      through teacher k's tokenizer.

    Data-pipeline levers (keyword options; these defaults are the plain path, while ``mobileclip distill``'s
    ``data.*`` defaults are the fastest exact one: uint8, pre-tokenized, simplejpeg):

    * ``image_dtype="uint8"``: ``image`` is the student's ``uint8 [3, S, S]`` image before
      normalization (a channels-last view); the trainer normalizes the batch on the device with
      :class:`ImageNormalizer` (equal to the float32 CPU preprocess). 4x less to collate, pass between
      processes, pin and copy. Exact.
    * ``pretokenize=True``: captions are tokenized once, at construction (:class:`TokenTable`), not per
      sample. Exact. ``token_cache=DIR`` (implies it) keeps the table on disk for the next run and the other ranks.
    * ``draft=True``: a JPEG is decoded at 1/2, 1/4 or 1/8 scale by its DCT when the augmentation crop,
      so reduced, still covers the size the student resizes it to (:func:`draft_scale`); the crop is then
      resampled from the reduced image. Slightly different pixels (quantified in
      ``tests/test_data_pipeline.py``); images too small for it are decoded as before.
    * ``decoder="torchvision"``: JPEGs decoded by ``torchvision.io.decode_jpeg`` (the same libjpeg-turbo;
      bit-identical on the tests); other formats, EXIF-rotated and unreadable JPEGs go through Pillow.
      ``decoder="simplejpeg"``: colour JPEGs decoded by ``simplejpeg`` (libjpeg-turbo with Pillow's settings:
      bit-identical, the fastest here); grayscale JPEGs and the rest as for torchvision.
    * ``resize="torch"``: the crop resized by torch's antialiased uint8 resampling instead of Pillow's: a
      fraction of a percent of the pixels differ by 1 level.
    * ``decoder="device"`` (with ``image_dtype="uint8"``): a plain colour JPEG comes back as a
      :class:`DeferredJPEG` (its bytes and crop geometry), decoded, cropped and resized on the training device
      by :func:`decode_deferred` (the trainer's ``to_device``); other files are decoded here, resized by torch.

    ``draft``, ``decoder`` and ``resize`` act only without online ``teachers`` (these need the full-resolution
    crop, which the default path gives them). An unreadable image is skipped and counted on every path.
    """

    def __init__(self, source, student_preprocess: Callable, student_tokenizer: Callable, seed: int,
                 aug: dict, cache=None, teachers: Sequence = (), *, image_dtype: str = "float32",
                 pretokenize: bool = False, draft: bool = False, decoder: str = "pil", resize: str = "pil",
                 token_cache: str = "") -> None:
        self.source, self.pp, self.tok = source, student_preprocess, student_tokenizer
        self.seed, self.aug, self.cache, self.teachers = seed, aug, cache, list(teachers)
        if self.teachers:   # online teachers embed the student's view of the crop (mobileclip.views)
            from mobileclip.views import region_for, teacher_view

            self.views = [teacher_view(t.preprocess) for t in self.teachers]
            self.region = region_for(getattr(getattr(student_preprocess, "cfg", None), "resize_mode", "shortest"))
        self.images = StudentImages(student_preprocess, image_dtype, draft, decoder, resize)
        self.tokens = (TokenTable(source, student_tokenizer, store=token_cache) if pretokenize or token_cache
                       else None)

    def __len__(self) -> int:
        return len(self.source)

    def choice(self, i: int, epoch: int) -> tuple[int, int]:
        """Which augmentation and which caption sample ``i`` uses in ``epoch``."""
        rng = np.random.default_rng([self.seed, 7, epoch, i])
        n_aug = self.cache.augs if self.cache is not None else 1 << 30
        return int(rng.integers(n_aug)), int(rng.integers(1 << 30))

    def __getitem__(self, key):
        i, epoch = key
        k, c = self.choice(i, epoch)

        def params_for(w: int, h: int) -> np.ndarray:
            if self.cache is not None:
                return self.cache.aug(i, k)
            return sample_aug(self.seed + 1000 * epoch, i, 0, self.aug["scale"], self.aug["ratio"],
                              self.aug["flip_prob"], w / h)

        if self.cache is not None and not self.cache.ok(i):
            return {"skip": i}
        image, captions, crop = self.images.load(self.source, i, params_for, need_crop=bool(self.teachers))
        if image is None:
            return {"skip": i}
        c = c % len(captions)
        caption = captions[c]
        tokens = self.tokens.get(i, c, caption) if self.tokens is not None else self.tok([caption])[0]
        item = {"index": i, "image": image, "tokens": tokens}
        if self.cache is not None:
            item["t_image"] = torch.from_numpy(self.cache.image_embedding(i, k).astype(np.float32))
            item["t_text"] = torch.from_numpy(self.cache.text_embedding(i, c).astype(np.float32))
        for t, teacher in enumerate(self.teachers):
            item[f"t_inputs_{t}"] = self.views[t](crop, self.region)
            item[f"t_tokens_{t}"] = teacher.tokenizer([caption])[0]
        return item


class UnpairedSamples(torch.utils.data.Dataset):
    """Items of an unpaired teacher cache, keyed ``(index, epoch)`` like :class:`TrainSamples`.

    * images (``cache.modality == "images"``): ``ui_index``, ``ui_image`` — the student's input for one
      of the cached augmentations (chosen by ``(seed, epoch, index)``) — and ``ui_t_image``, the
      teachers' cached embeddings of that crop;
    * texts: ``ut_index``, ``ut_tokens`` and ``ut_t_text``.

    An unreadable image gives ``{"skip": "image-only <index>"}``. The keyword options are
    :class:`TrainSamples`' levers (``ui_image`` is uint8 with ``image_dtype="uint8"``; ``pretokenize`` applies to
    the texts).
    """

    def __init__(self, source, cache, student_preprocess: Callable, student_tokenizer: Callable, seed: int, *,
                 image_dtype: str = "float32", pretokenize: bool = False, draft: bool = False, decoder: str = "pil",
                 resize: str = "pil", token_cache: str = "") -> None:
        self.source, self.cache, self.pp, self.tok, self.seed = source, cache, student_preprocess, student_tokenizer, seed
        self.images = cache.modality == "images"
        self.student = StudentImages(student_preprocess, image_dtype, draft, decoder, resize)
        self.tokens = (TokenTable(source, student_tokenizer, store=token_cache)
                       if (pretokenize or token_cache) and not self.images else None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        i, epoch = key
        if not self.images:
            _, texts = self.source.load(i)
            emb = self.cache.text_embedding(i, 0).astype(np.float32)
            tokens = self.tokens.get(i, 0, texts[0]) if self.tokens is not None else self.tok([texts[0]])[0]
            return {"ut_index": i, "ut_tokens": tokens, "ut_t_text": torch.from_numpy(emb)}
        k = int(np.random.default_rng([self.seed, 13, epoch, i]).integers(self.cache.augs))
        image = self.student.load(self.source, i, lambda w, h: self.cache.aug(i, k))[0] if self.cache.ok(i) else None
        if image is None:
            return {"skip": f"image-only {i}"}
        return {"ui_index": i, "ui_image": image,
                "ui_t_image": torch.from_numpy(self.cache.image_embedding(i, k).astype(np.float32))}


class MixedSamples(torch.utils.data.Dataset):
    """Paired samples and unpaired parts behind one dataset: key ``(part, index, epoch)``, part 0 the
    paired :class:`TrainSamples`, then each :class:`UnpairedSamples`."""

    def __init__(self, parts: Sequence) -> None:
        self.parts = list(parts)

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, key):
        part, i, epoch = key
        return self.parts[part][(i, epoch)]


def collate_train(items: list) -> dict:
    """Stack readable items; unreadable ones are dropped and their indices returned. Items of different
    parts (paired, ``ui_*`` image-only, ``ut_*`` text-only) have different keys; each key is stacked over
    the items that have it.

    In a DataLoader worker, tensors are stacked straight into shared memory (as torch's default collate
    does), which saves a copy when the batch is passed to the main process. uint8 ``[3, H, W]`` images
    (``image_dtype="uint8"``) are copied by numpy into an ``[N, H, W, 3]`` buffer and returned as its
    ``[N, 3, H, W]`` view (channels-last strides): torch's strided uint8 copies are several times slower.
    """
    kept = [x for x in items if "skip" not in x]
    batch = {"skipped": [x["skip"] for x in items if "skip" in x]}
    for key in dict.fromkeys(k for x in kept for k in x):
        vals = [x[key] for x in kept if key in x]
        if any(isinstance(v, DeferredJPEG) for v in vals):
            batch.update(_stack_deferred(key, vals))
        else:
            batch[key] = _stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return batch


def _stack_deferred(key: str, vals: list) -> dict:
    """Images of which some are :class:`DeferredJPEG`. No pixel batch is made here (the device allocates it):
    ``key + "_jpeg"`` holds all the JPEG bytes in one tensor (one shared-memory block to pass between processes,
    not one per image) and ``key + "_jpeg_geom"`` an ``int64 [M, 14]`` table (row, offset and length in those
    bytes, then the :class:`DeferredJPEG` geometry); the images decoded here, if any, are ``key + "_cpu"``
    (``uint8 [K, 3, S, S]``, channels-last) with their rows in ``key + "_cpu_rows"``."""
    deferred = [(j, v) for j, v in enumerate(vals) if isinstance(v, DeferredJPEG)]
    decoded = [(j, v) for j, v in enumerate(vals) if not isinstance(v, DeferredJPEG)]
    lengths = [len(v.data) for _, v in deferred]
    flat = _empty((sum(lengths),), torch.uint8)
    geom = _empty((len(deferred), 14), torch.int64)
    f, g, pos = flat.numpy(), geom.numpy(), 0
    for r, ((j, v), n) in enumerate(zip(deferred, lengths)):
        f[pos:pos + n] = v.data.numpy()
        g[r] = (j, pos, n, *v.geom)
        pos += n
    out = {key + "_jpeg": flat, key + "_jpeg_geom": geom}
    if decoded:
        out[key + "_cpu"] = _stack([v for _, v in decoded])
        out[key + "_cpu_rows"] = torch.tensor([j for j, _ in decoded], dtype=torch.int64)
    return out


def pop_deferred(batch: dict) -> dict:
    """Take the deferred-JPEG entries out of a collated batch: ``{image key: entries}`` for
    :func:`decode_deferred`. The bytes stay on the CPU (``torchvision.io.decode_jpeg`` reads its input from host
    memory whatever the device)."""
    keys = [k[:-len("_jpeg")] for k in batch if k.endswith("_jpeg")]
    return {k: {part: batch.pop(k + part) for part in ("_jpeg", "_jpeg_geom", "_cpu", "_cpu_rows") if k + part in batch}
            for k in keys}


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


def _empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor, in shared memory inside a DataLoader worker."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _stack(vals: list) -> torch.Tensor:
    x = vals[0]
    if x.dtype == torch.uint8 and x.dim() == 3 and x.shape[0] in (1, 3, 4) and \
            all(v.shape == x.shape for v in vals):
        out = _empty((len(vals), x.shape[1], x.shape[2], x.shape[0]), torch.uint8)
        o = out.numpy()
        for j, v in enumerate(vals):
            o[j] = v.permute(1, 2, 0).numpy()
        return out.permute(0, 3, 1, 2)
    if all(v.shape == x.shape for v in vals):
        return torch.stack(vals, out=_empty((len(vals), *x.shape), x.dtype))
    return torch.stack(vals)


class StepBatches(torch.utils.data.Sampler):
    """Yields, for each optimizer step from ``start_step``, this rank's list of ``(index, epoch)``.

    The global batch of step ``s`` is a slice of a permutation seeded by ``(seed, epoch)``,
    so the data a step sees depends only on the step number: resuming at step ``k`` replays
    exactly what an uninterrupted run would have seen.
    """

    def __init__(self, n: int, global_batch: int, steps: int, seed: int, rank: int = 0, world: int = 1,
                 start_step: int = 0, stream: int = 11, what: str = "the dataset") -> None:
        if global_batch > n:
            raise ConfigError(f"batch size {global_batch} is larger than {what} ({n} samples)")
        if global_batch % world:
            raise ConfigError(f"batch size {global_batch} of {what} is not divisible by the {world} processes")
        self.n, self.b, self.steps, self.seed, self.stream = n, global_batch, steps, seed, stream
        self.rank, self.world, self.start = rank, world, start_step
        self.per_epoch = n // global_batch  # drop the ragged tail of each epoch
        self._perm = (None, None)  # (epoch, its permutation): drawn once per epoch, not once per step

    def permutation(self, epoch: int) -> np.ndarray:
        """The global order of ``epoch``. Drawing it is O(n) — 0.9 s for 10 million samples, which per step
        would cap training at about one step per second whatever the workers do — so the current epoch's is kept
        (8 bytes per sample)."""
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n))
        return self._perm[1]

    def indices_for_step(self, step: int) -> list:
        epoch, pos = divmod(step, self.per_epoch)
        glob = self.permutation(epoch)[pos * self.b:(pos + 1) * self.b]
        per = self.b // self.world
        return [(int(i), epoch) for i in glob[self.rank * per:(self.rank + 1) * per]]

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield self.indices_for_step(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class MixedStepBatches(torch.utils.data.Sampler):
    """:class:`StepBatches` for paired data plus unpaired parts: each step's list holds ``(0, i, epoch)``
    for its paired samples, then ``(p, j, epoch_p)`` for each unpaired part ``p``, every part drawn from
    its own step-seeded permutation (its own epochs), so a step's data still depends only on its number."""

    def __init__(self, parts: Sequence[tuple], steps: int, seed: int, rank: int = 0, world: int = 1,
                 start_step: int = 0) -> None:
        """``parts``: ``(number of samples, global count per step, name)`` per part, paired first."""
        self.samplers = [StepBatches(n, b, steps, seed, rank, world, start_step, stream=11 + 2 * p, what=name)
                         for p, (n, b, name) in enumerate(parts)]
        self.steps, self.start = steps, start_step

    def indices_for_step(self, step: int) -> list:
        return [(p, i, e) for p, s in enumerate(self.samplers) for i, e in s.indices_for_step(step)]

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield self.indices_for_step(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)
