"""Image preprocessing: RGB, resize, center crop, the model's own mean/std.

Done with Pillow and numpy so that the torch-free runtime can share it exactly.
``ImagePreprocess(cfg)(pil_image)`` returns a ``float32 [3, S, S]`` tensor.

Every image — from a file, from WebDataset bytes, as an in-memory PIL image or array —
becomes 8-bit RGB through :func:`to_rgb`, which converts images deeper than 8 bits by
their real range (Pillow's own ``convert("RGB")`` clips them: a 16-bit PNG comes out
nearly white, a float TIFF black). The rule:

* 16-bit integers (Pillow modes ``I;16*``, and ``I`` images read from 16-bit PNG, PGM or
  TIFF): ``round(v * 255 / 65535)`` — that is ``v / 257`` rounded; 65535 is white. A TIFF
  that declares 9–15 bits per sample uses ``2**bits - 1`` as white.
* 32-bit integers (``I`` from a 32-bit TIFF, or an ``I`` image of unknown origin): read as
  16-bit data when every value lies in 0..65535 (16-bit data in a 32-bit container);
  otherwise refused — 32-bit integers have no standard white level.
* 32-bit floats (``F``): 0.0 is black and 1.0 white, ``round(v * 255)``; values within
  half an 8-bit level of [0, 1] are clipped. Floats outside that range (HDR, depth maps,
  0..255 floats), NaN or infinity are refused rather than guessed at.
* Everything else (``L``, ``P``, ``RGB``, ``CMYK``, ...) is Pillow's conversion, unchanged;
  8-bit files come through bit for bit. Pillow already reduces 48/64-bit RGB(A) PNGs and
  16-bit PPMs to 8 bits per channel itself.
* Transparent pixels (alpha, palette or colour-key transparency, incl. a 16-bit grey
  PNG's ``tRNS``) are composited on white.

A refused image raises :class:`ImageDecodeError` (a ``ValueError``), which datasets count
as an unreadable image and skip, and the runtime reports as an ``ImageReadError``.
"""
from __future__ import annotations

import io
import struct
import sys
import warnings
from pathlib import Path
from typing import BinaryIO, NamedTuple, Optional, Union

import numpy as np
from PIL import Image, ImageOps

from .config import PreprocessConfig
from .errors import MobileCLIPError

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


class ImageDecodeError(MobileCLIPError, ValueError):
    """An image cannot be decoded, or its pixel values have no defined 8-bit meaning."""


# What :func:`load_image` raises for a file that is missing or not a usable image. Catch this
# tuple to skip-and-count unreadable images (``UnidentifiedImageError`` is an ``OSError``).
IMAGE_READ_ERRORS = (OSError, ValueError, Image.DecompressionBombError)

# What Pillow's decoders may raise on a malformed file besides OSError/ValueError; load_image
# turns these into ImageDecodeError so that callers need only IMAGE_READ_ERRORS.
_DECODER_ERRORS = (SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError, ZeroDivisionError)


def load_image(source: Union[str, Path, BinaryIO]) -> Image.Image:
    """Open an image (a path or a binary file object), apply its EXIF orientation and
    convert it to 8-bit RGB by the rule in this module's docstring.

    Raises one of :data:`IMAGE_READ_ERRORS`: ``FileNotFoundError`` / ``IsADirectoryError``,
    ``UnidentifiedImageError`` (not an image), ``ImageDecodeError`` (corrupt data — a JPEG whose
    scan ends before its header's size is filled too —, or a pixel range with no defined 8-bit
    meaning), ``DecompressionBombError``.
    """
    with _open(source) as im:
        out = _decode_opened(im)
        if im.format == "JPEG":
            check_jpeg_filled(out, source)
        return out


_LARGE_NOTED = []   # this process's one line about images above Pillow's warning limit


def _open(source) -> Image.Image:
    """``Image.open`` with Pillow's two-line DecompressionBombWarning (an image above ``MAX_IMAGE_PIXELS``, decoded
    anyway) replaced by one line per process naming the first such image; twice the limit stays an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(source)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.size[0] * im.size[1] > limit and not _LARGE_NOTED:
        _LARGE_NOTED.append(source)
        name = source if isinstance(source, (str, Path)) else "an image"
        print(f"mobileclip: note: {name} has {im.size[0]} x {im.size[1]} pixels, above Pillow's decompression-bomb "
              f"warning limit ({limit:,}); such images are decoded (from twice the limit they are skipped as "
              "unreadable); this is said once per process", file=sys.stderr)
    return im


# A JPEG whose entropy-coded scan ends before the header's size is filled decodes without an error in Pillow and
# torchvision: libjpeg fills the rest with zero coefficients (mid-grey, 128 in every channel) and only warns
# ("Corrupt JPEG data: premature end of data segment"). The filled area always reaches the last block, so a
# decoded image whose corner block is exactly that grey is decoded again strictly (simplejpeg, at 1/8 scale) to
# tell a truncated scan from a real grey corner.
_TRUNCATED_SCAN = ("premature end of data segment", "premature end of jpeg file")


def corner_boxes(w: int, h: int, block: int = 8) -> list:
    """The four corner squares ``(x, y, size)`` of a ``w x h`` image, ``block`` px a side (the image's size at
    most): where a JPEG scan cut short leaves its grey (a corner after any EXIF transpose)."""
    b = max(1, min(block, w, h))
    return [(0, 0, b), (w - b, 0, b), (0, h - b, b), (w - b, h - b, b)]


def _grey_corner(image, block: int) -> bool:
    if isinstance(image, Image.Image):
        return any(all(e == (128, 128) for e in image.crop((x, y, x + b, y + b)).getextrema())
                   for x, y, b in corner_boxes(*image.size, block))
    h, w = int(image.shape[-2]), int(image.shape[-1])   # a uint8 [3, H, W] tensor
    return any(bool((image[:, y:y + b, x:x + b] == 128).all()) for x, y, b in corner_boxes(w, h, block))


def jpeg_scan_truncated(data: bytes) -> Optional[bool]:
    """Whether libjpeg reports a JPEG's scan ending before its image is filled (None: simplejpeg, the strict
    decoder this asks, is not installed)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", min_factor=8, min_height=1, min_width=1, strict=True)
    except (ValueError, RuntimeError) as e:
        return any(m in str(e).lower() for m in _TRUNCATED_SCAN)
    return False


def check_jpeg_filled(image, source, scale: int = 1) -> None:
    """Refuse (:class:`ImageDecodeError`) a decoded JPEG whose scan ended before its size was filled (see above).
    ``image``: the decoded pixels (PIL, or ``uint8 [3, H, W]``) at ``1 / scale``; ``source``: its path, file
    object or bytes, read again only when a corner is that grey."""
    if not _grey_corner(image, max(1, 8 // scale)):
        return
    if hasattr(source, "seek") and not isinstance(source, io.BytesIO):
        source.seek(0)
    data = source if isinstance(source, (bytes, bytearray)) else read_source_bytes(source)
    if jpeg_scan_truncated(bytes(data)):
        raise ImageDecodeError("corrupt JPEG data: the scan ends before the image its header declares is filled "
                               "(libjpeg would fill the rest with grey)")


def _decode_opened(im: Image.Image) -> Image.Image:
    """:func:`load_image`'s work on an opened image (its header read, its pixels not yet)."""
    try:
        im.load()
        bits = _declared_bits(im)  # before exif_transpose: a transposed image loses the file's format and tags
        # in place: no copy of the pixels when there is nothing to transpose (the file is closed by
        # the caller's `with`; the decoded pixels stay)
        ImageOps.exif_transpose(im, in_place=True)
    except _DECODER_ERRORS as e:
        raise ImageDecodeError(f"corrupt image data ({type(e).__name__}: {e})") from e
    return to_rgb(im, bits=bits)


# EXIF orientation -> (width and height swapped, oriented x reversed, oriented y reversed) relative to
# the stored pixels: the transposes of ImageOps.exif_transpose.
_ORIENTATIONS = {1: (False, False, False), 2: (False, True, False), 3: (False, True, True), 4: (False, False, True),
                 5: (True, False, False), 6: (True, True, False), 7: (True, True, True), 8: (True, False, True)}
JPEG_SCALES = (8, 4, 2)  # the reductions a JPEG decodes at by its DCT (Pillow's draft mode), largest first


class ScaledImage(NamedTuple):
    """An image decoded for cropping, possibly at a reduced scale.

    ``image`` is 8-bit RGB with the EXIF orientation applied: a PIL image, or a ``uint8 [3, H, W]``
    tensor (``decoder="torchvision"``). It shows the full-resolution image of ``full_size``
    (width, height, oriented) at ``1 / scale``: a point ``(x, y)`` of the full image (continuous
    pixel coordinates) lies at ``(x / scale + offset[0], y / scale + offset[1])`` in ``image``. The
    offset is non-zero only when the orientation reverses an axis whose length is not a multiple
    of ``scale`` (the reduced image's partial last block then comes first).
    """
    image: object
    full_size: tuple
    scale: int = 1
    offset: tuple = (0.0, 0.0)


def load_image_scaled(source: Union[str, Path, BinaryIO], choose_scale=None, decoder: str = "pil") -> ScaledImage:
    """Like :func:`load_image`, decoding less when the caller needs less.

    * ``choose_scale(width, height) -> int`` is called with the full-resolution, EXIF-oriented size
      once the header is read and before any pixel is decoded; for a JPEG its answer (1, 2, 4 or 8)
      is the reduction to decode at by the DCT (Pillow's ``draft``: several times cheaper, and
      slightly different pixels from a full decode followed by a resize). Other formats decode at
      full size whatever it answers.
    * ``decoder="torchvision"``: a JPEG decoded at full size (RGB or grayscale, no EXIF rotation) is
      decoded by ``torchvision.io.decode_jpeg`` into a ``uint8 [3, H, W]`` tensor — the same
      libjpeg-turbo as Pillow's, bit-identical on the tests, without Pillow's copies. Anything else,
      and any JPEG torchvision refuses, goes through Pillow (a corrupt file then raises as usual).
    * ``decoder="simplejpeg"``: the same for colour JPEGs through the ``simplejpeg`` package
      (libjpeg-turbo with Pillow's decoding settings: bit-identical, and faster than both).

    Raises what :func:`load_image` raises (:data:`IMAGE_READ_ERRORS`).
    """
    if decoder not in ("pil", "torchvision", "simplejpeg"):
        raise ValueError(f"decoder must be 'pil', 'torchvision' or 'simplejpeg', got {decoder!r}")
    data = None
    original = source
    if decoder != "pil":
        data = read_source_bytes(source)
        if decoder == "simplejpeg":
            fast = _plain_colour_jpeg(data, choose_scale)
            if fast is not None:
                return fast
        source = io.BytesIO(data)
    with _open(source) as im:
        out = _load_scaled(im, choose_scale, decoder, data)
        if im.format == "JPEG":
            check_jpeg_filled(out.image, data if data is not None else original, out.scale)
        return out


def _load_scaled(im: Image.Image, choose_scale, decoder: str, data: Optional[bytes]) -> ScaledImage:
    """:func:`load_image_scaled`'s work on an opened image."""
    if im.format != "JPEG":
        out = _decode_opened(im)
        return ScaledImage(out, out.size)
    try:
        orientation = im.getexif().get(0x0112, 1)
    except _DECODER_ERRORS + (OSError, ValueError):
        orientation = 1  # exif_transpose will meet the same broken EXIF; let the full decode decide
    swap, rev_x, rev_y = _ORIENTATIONS.get(orientation, (False, False, False))
    w0, h0 = im.size
    full = (h0, w0) if swap else (w0, h0)
    k = int(choose_scale(*full)) if choose_scale is not None else 1
    if k > 1 and k in JPEG_SCALES and orientation in _ORIENTATIONS:
        try:
            im.draft(None, (w0 // k, h0 // k))
        except _DECODER_ERRORS as e:
            raise ImageDecodeError(f"corrupt image data ({type(e).__name__}: {e})") from e
        scale = next((s for s in (8, 4, 2, 1) if im.size == (-(-w0 // s), -(-h0 // s))), 1)
        if scale > 1:
            stored = im.size
            out = _decode_opened(im)  # transposes `im` in place
            if out.size != ((stored[1], stored[0]) if swap else stored):  # orientation read differently
                raise ImageDecodeError("EXIF orientation changed while decoding")
            wr, hr = out.size
            fw, fh = full
            off = (wr - fw / scale if rev_x else 0.0, hr - fh / scale if rev_y else 0.0)
            return ScaledImage(out, full, scale, off)
    if data is not None and orientation == 1 and im.mode in ("RGB", "L"):
        if decoder == "simplejpeg":   # colour JPEGs only: a grayscale one goes through Pillow
            tensor = _decode_jpeg_simplejpeg(data) if im.mode == "RGB" else None
        else:
            tensor = _decode_jpeg_torchvision(data)
        if tensor is not None and tuple(tensor.shape[1:]) == (h0, w0):
            return ScaledImage(tensor, full)
    out = _decode_opened(im)
    return ScaledImage(out, out.size)


def read_source_bytes(source: Union[str, Path, BinaryIO]) -> bytes:
    """The encoded bytes of an image source (a path, or a binary file object), without making a ``pathlib.Path``
    of a ``str``: pathlib interns every path component it parses (``sys.intern``, never freed), so a Path per
    sample grows each DataLoader worker by every file name it reads (~40 B per sample, measured)."""
    if isinstance(source, io.BytesIO):
        return source.getvalue()
    if hasattr(source, "read"):
        return source.read()
    with open(source, "rb") as f:
        return f.read()


def _has_app1(data: bytes) -> Optional[bool]:
    """Whether a JPEG's header has an APP1 segment (EXIF or XMP: where Pillow reads an orientation from), by
    walking its marker segments up to the scan; None when they cannot be walked (not a JPEG, truncated, odd)."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xE1:
            return True
        if marker == 0xDA:  # start of scan: the header is over
            return False
        if marker == 0xD9 or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            return None
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def plain_jpeg_size(data: bytes) -> Optional[tuple]:
    """``(width, height)`` of a *plain colour JPEG* — one that any JPEG decoder turns into the image Pillow shows:
    colour (YCbCr or RGB), no APP1 segment (so no EXIF or XMP orientation), within Pillow's decompression-bomb
    limit, and not visibly truncated (it ends with the end-of-image marker). None for anything else (which then
    goes through Pillow and its errors). Reads the header with simplejpeg when installed, else Pillow's."""
    if _has_app1(data) is not False or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
    try:
        if simplejpeg is not None:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            colour = colorspace in ("YCbCr", "RGB")
        else:
            with Image.open(io.BytesIO(data)) as im:
                (w, h), colour = im.size, im.format == "JPEG" and im.mode == "RGB"
    except (ValueError, RuntimeError, OSError, Image.DecompressionBombError):
        return None
    if not colour or not w or not h or (Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS):
        return None
    return w, h


def _plain_colour_jpeg(data: bytes, choose_scale) -> Optional[ScaledImage]:
    """``decoder="simplejpeg"`` without Pillow's header parse (a tenth of the decode time), for a plain colour
    JPEG (:func:`plain_jpeg_size`) decoded at full scale; its pixels are what the Pillow path gives (the same
    libjpeg-turbo settings). None for anything else, or without simplejpeg, which then takes the Pillow path (and
    its errors)."""
    size = plain_jpeg_size(data)
    if size is None:
        return None
    w, h = size
    if choose_scale is not None and int(choose_scale(w, h)) in JPEG_SCALES:  # a draft decode: Pillow's
        return None
    tensor = _decode_jpeg_simplejpeg(data)
    if tensor is None or tuple(tensor.shape) != (3, h, w):
        return None
    return ScaledImage(tensor, (w, h))


def _decode_jpeg_simplejpeg(data: bytes):
    """``uint8 [3, H, W]`` (a channels-last view) decoded by simplejpeg — libjpeg-turbo with Pillow's
    settings (accurate integer DCT, fancy upsampling), so bit-equal to Pillow, without its copies —
    or None when simplejpeg is missing or refuses the data."""
    try:
        import simplejpeg
        import torch
    except ImportError:
        return None
    try:
        a = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
    except (ValueError, RuntimeError):
        return None
    return torch.from_numpy(a).permute(2, 0, 1)


def _decode_jpeg_torchvision(data: bytes):
    """``uint8 [3, H, W]`` (a channels-last view), or None when torchvision is missing or refuses the data."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                           apply_exif_orientation=False)
    except (RuntimeError, ValueError):
        return None


def _declared_bits(im: Image.Image) -> Optional[int]:
    """Bits per sample of an integer image deeper than 8 bits, as its file declares it (or None)."""
    if im.mode != "I" and not im.mode.startswith("I;16"):
        return None
    if im.format == "TIFF":  # a 12-bit TIFF opens as I;16 with values 0..4095: trust BitsPerSample
        bps = getattr(im, "tag_v2", {}).get(258)
        if isinstance(bps, (tuple, list)):
            bps = bps[0] if bps else None
        if isinstance(bps, int) and bps > 8:
            return bps
    if im.mode.startswith("I;16") or im.format in ("PNG", "PPM"):
        return 16  # PNG has no 32-bit samples; Pillow scales PGM's maxval to 65535
    return None


def _deep_to_8bit(im: Image.Image, bits: Optional[int]) -> Image.Image:
    """An ``I;16*``, ``I`` or ``F`` image as ``L`` (or ``LA`` with a colour-key transparency)."""
    a = np.asarray(im)
    if a.size == 0:
        return Image.new("L", im.size)
    if im.mode == "F":
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ImageDecodeError("float image has NaN or infinite pixel values; save it as an 8- or 16-bit image")
        lo, hi = float(a.min()), float(a.max())
        tol = 0.5 / 255  # within half an 8-bit level of [0, 1], a value rounds to 0 or 255 anyway
        if lo < -tol or hi > 1 + tol:
            raise ImageDecodeError(
                f"float image values span [{lo:.6g}, {hi:.6g}], but float images must lie in [0, 1] (0 black, "
                "1 white); scale it to [0, 1] or save it as an 8- or 16-bit integer image")
        out = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        a = a.astype(np.int64)
        lo, hi = int(a.min()), int(a.max())
        white = (1 << bits) - 1 if bits is not None and 8 < bits <= 16 else 65535
        if lo < 0 or hi > white:
            what = f"{bits}-bit" if bits is not None and 8 < bits <= 16 else "32-bit"
            raise ImageDecodeError(
                f"{what} integer image values span [{lo}, {hi}], outside 0..{white}: there is no standard white "
                "level for them; save it as an 8- or 16-bit image")
        # round(v * 255 / white) in integers; white is odd, so there are no ties to break
        out = ((a * 510 + white) // (2 * white)).astype(np.uint8)
    gray = Image.fromarray(out, "L")
    key = im.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        alpha = np.where(np.asarray(im) == key, 0, 255).astype(np.uint8)
        return Image.merge("LA", (gray, Image.fromarray(alpha, "L")))
    return gray


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info


def to_rgb(im: Image.Image, bits: Optional[int] = None) -> Image.Image:
    """8-bit RGB, converting deeper images by their real range (see the module docstring)
    and compositing transparent pixels on white. ``bits``: the bits per sample the image's
    file declared, when the image no longer carries it (:func:`load_image` passes it)."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _deep_to_8bit(im, bits if bits is not None else _declared_bits(im))
    if _has_alpha(im):
        if im.mode == "La":  # premultiplied; Pillow converts it to LA only
            im = im.convert("LA")
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def array_to_image(a: np.ndarray) -> Image.Image:
    """A numpy image as a PIL image. ``uint16`` arrays (HW, or HWC with 1, 3 or 4 channels)
    are 16-bit data (65535 white) and become 8-bit by the same rule as 16-bit files; other
    dtypes go to ``Image.fromarray`` as they are."""
    if a.dtype == np.uint16 and a.ndim == 3 and a.shape[2] in (3, 4):
        out = ((a.astype(np.int64) * 510 + 65535) // (2 * 65535)).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(out), "RGB" if a.shape[2] == 3 else "RGBA")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(a))


def resized_size(crop_size: tuple, cfg: PreprocessConfig) -> tuple:
    """``(width, height)`` an image of ``crop_size`` is resized to by :func:`resize_crop` before its center crop."""
    size = cfg.image_size
    if cfg.resize_mode == "squash":
        return size, size
    w, h = crop_size
    # torchvision's Resize(int) rule: the short side becomes `size`, the long side is truncated.
    return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def center_offsets(nw: int, nh: int, size: int) -> tuple:
    """``(left, top)`` of the ``size`` square cropped from the center of ``nw x nh`` (torchvision's CenterCrop
    rule: offsets rounded half to even)."""
    return int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))


def resize_crop(im: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    size = cfg.image_size
    resample = RESAMPLE[cfg.interpolation]
    if cfg.resize_mode == "squash":
        return im.resize((size, size), resample)
    nw, nh = resized_size(im.size, cfg)
    if (nw, nh) != im.size:
        im = im.resize((nw, nh), resample)
    left, top = center_offsets(nw, nh, size)
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
            image = array_to_image(image)
        return torch.from_numpy(preprocess_array(image, self.cfg))

    def __repr__(self) -> str:
        c = self.cfg
        return (f"ImagePreprocess(size={c.image_size}, resize={c.resize_mode}, interpolation={c.interpolation}, "
                f"mean={tuple(round(v, 4) for v in c.mean)}, std={tuple(round(v, 4) for v in c.std)})")
