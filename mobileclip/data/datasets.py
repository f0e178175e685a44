"""Datasets for evaluation: an image folder, a caption file, and the synthetic generator.

Unreadable images never crash a run: ``__getitem__`` returns ``None`` for the image,
:func:`collate_skip` drops such items from the batch and records them, and the
evaluators report how many were skipped and which. Images are read by
:func:`mobileclip.transforms.load_image` (16-bit and float images by their real range).
A malformed caption file, by contrast, is refused up front with a :class:`DatasetError`
naming the file and line: a wrong caption cannot be detected later.
"""
from __future__ import annotations

import csv
import io
import json
import os
from array import array
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

from ..errors import DatasetError
from ..transforms import IMAGE_READ_ERRORS, load_image
from .synthetic import SyntheticGenerator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
IMAGE_KEYS = ("image", "filepath", "image_path", "file", "path", "img")
CAPTION_KEYS = ("caption", "text", "title", "captions")


def _try_load(path: Path) -> Optional[Image.Image]:
    try:
        return load_image(path)
    except IMAGE_READ_ERRORS:
        return None


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/<class name>/<image>``; classes are the sub-folder names, sorted.

    Items are ``(image tensor or None, label, path)``. Underscores in folder names become
    spaces in :attr:`classnames` (``red_circle`` → ``red circle``). Pass ``classnames`` to
    score against a larger label set than the folders present (labels then index into it).
    """

    def __init__(self, root: Union[str, Path], transform: Optional[Callable] = None,
                 classnames: Optional[list] = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DatasetError(f"image folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise DatasetError(f"image folder {str(self.root)!r} is a file, not a folder; give the folder that "
                               "holds one sub-folder of images per class (root/<class>/<image files>)")
        class_dirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise DatasetError(f"{str(self.root)!r} has no class sub-folders; expected root/<class>/<image files>")
        folder_names = [d.name.replace("_", " ") for d in class_dirs]
        self.classnames = list(classnames) if classnames is not None else folder_names
        missing = [n for n in folder_names if n not in self.classnames]
        if missing:
            raise DatasetError(f"class folders {missing} of {str(self.root)!r} are not among the given class names")
        self.samples: list[tuple[Path, int]] = []
        for name, d in zip(folder_names, class_dirs):
            label = self.classnames.index(name)
            for f in sorted(d.rglob("*")):
                # a dangling symbolic link is kept: it fails to load, so it is counted as unreadable
                if (f.is_file() or f.is_symlink() and not f.exists()) and f.suffix.lower() in IMAGE_EXTENSIONS:
                    self.samples.append((f, label))
        if not self.samples:
            raise DatasetError(
                f"{str(self.root)!r} has {len(class_dirs)} class folders but no images in them "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        im = _try_load(path)
        if im is not None and self.transform is not None:
            im = self.transform(im)
        return im, label, str(path)


def read_utf8(path: Path, what: str) -> str:
    """A text file's contents (a UTF-8 BOM is allowed); :class:`DatasetError` if it is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{what} {str(path)!r} cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DatasetError(f"{what} {str(path)!r} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}, "
                           f"byte offset {e.start}); save it as UTF-8") from None


class PackedStrings:
    """A list of strings stored as two numpy arrays (the UTF-8 bytes, and offsets): about the strings' own
    bytes + 8 per string, against ~100 for a Python ``str`` in a list. No Python object per entry also means
    that a forked DataLoader worker reading them leaves the parent's pages shared: reading a Python list
    touches every element's reference count, and the kernel then copies each page into every worker
    (PyTorch's "copy-on-read"; 450 MB per worker per million caption-file rows, measured). Strings that are
    not valid UTF-8 (file names) round-trip through ``surrogateescape``."""

    def __init__(self, strings=()) -> None:
        """From any iterable of strings, read once, without holding them all (see :meth:`append`)."""
        self._buf, self._ends = bytearray(), array("q")
        for x in strings:
            self.append(x)
        self._seal()

    def append(self, x: str) -> None:
        """Add a string while building (strings are encoded as they come: no Python object per entry is kept)."""
        if self._buf is None:
            raise TypeError("PackedStrings are sealed once built; make a new one")
        self._buf += x.encode("utf-8", "surrogateescape")
        self._ends.append(len(self._buf))

    def _seal(self) -> "PackedStrings":
        self.offsets = np.zeros(len(self._ends) + 1, dtype=np.int64)
        self.offsets[1:] = np.frombuffer(self._ends, dtype=np.int64) if len(self._ends) else []
        self.data = np.frombuffer(self._buf, dtype=np.uint8)  # a view: the bytes are not copied again
        self._buf = self._ends = None
        return self

    @classmethod
    def building(cls) -> "PackedStrings":
        """An empty table to :meth:`append` to, then :meth:`seal`."""
        out = cls.__new__(cls)
        out._buf, out._ends = bytearray(), array("q")
        return out

    def seal(self) -> "PackedStrings":
        """Finish building: the strings appended so far become the table."""
        return self._seal()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} strings")
        i %= len(self)
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.offsets.nbytes


def pathlib_respells(raw: str) -> bool:
    """Whether ``pathlib`` would spell the ``/``-separated path ``raw`` differently: redundant separators or ``.``
    parts (which it drops). Such paths take pathlib's slow road; every other one is joined as a string."""
    parts = raw.split("/")
    return "" in parts[1:] or "." in parts


class _CaptionItems:
    """``(image path, caption)`` per caption-file row, packed (:class:`PackedStrings`); relative paths are
    resolved against the image root when read. Paths come back as ``str``: a ``pathlib.Path`` per sample
    would intern every file name in the reading process for good (pathlib ``sys.intern``\ s path parts)."""

    def __init__(self, root: Path, paths: PackedStrings, captions: PackedStrings) -> None:
        self.root, self.paths, self.captions = root, paths, captions
        self._root = os.fspath(root)

    def __len__(self) -> int:
        return len(self.captions)

    def raw(self, i: int) -> str:
        """Row ``i``'s image path as the caption file gives it."""
        return self.paths[i]

    def path(self, i: int) -> str:
        """Row ``i``'s image path, as pathlib would spell ``image root / path`` (an absolute path stays itself)."""
        raw = self.paths[i]
        if pathlib_respells(raw):  # rare
            return str(self.root / raw)
        return os.path.join(self._root, raw)

    def __getitem__(self, i: int) -> tuple:
        return self.path(i), self.captions[i]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class CaptionDataset(torch.utils.data.Dataset):
    """Image–caption pairs from a CSV, TSV or JSONL file; items are ``(image or None, caption, path)``.

    The image column is one of ``image, filepath, image_path, file, path, img``; the caption
    column one of ``caption, text, title, captions`` (CSV/TSV headers match ignoring case and
    surrounding spaces). Relative image paths are resolved against ``image_root`` (default:
    the file's folder). Several rows may share an image; a JSONL caption may be a list of
    captions. The file must be UTF-8 (a BOM is fine). Refused with a :class:`DatasetError`
    naming the line: invalid JSON, a line that is not an object, a missing, empty or
    non-string image path or caption, a CSV row with more fields than the header (an
    unquoted comma in a caption).
    """

    def __init__(self, path: Union[str, Path], image_root: Union[str, Path, None] = None,
                 transform: Optional[Callable] = None) -> None:
        self.path = Path(path).expanduser()
        name = str(self.path)
        if not self.path.exists():
            raise DatasetError(f"caption file {name!r} does not exist")
        if self.path.is_dir():
            raise DatasetError(f"caption file {name!r} is a directory; give a .csv, .tsv or .jsonl file "
                               "with an image and a caption column")
        suffix = self.path.suffix.lower()
        if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
            raise DatasetError(f"{name!r}: unsupported caption file type {suffix!r}; use .csv, .tsv or .jsonl")
        if image_root:
            self.image_root = Path(image_root).expanduser()
            if not self.image_root.is_dir():
                raise DatasetError(f"image root {str(self.image_root)!r} "
                                   + ("is a file, not a folder" if self.image_root.exists() else "does not exist"))
        else:
            self.image_root = self.path.parent
        text = read_utf8(self.path, "caption file")
        # rows are read, checked and packed one at a time: no list of parsed rows (peak memory ~ the final table)
        rows = self._json_rows(text) if suffix in (".jsonl", ".json") else self._csv_rows(text, suffix)
        paths, captions, n_rows = PackedStrings.building(), PackedStrings.building(), 0
        for where, row, img_key, cap_key in rows:
            n_rows += 1
            img, cap = row.get(img_key), row.get(cap_key)
            if not isinstance(img, str) or not img.strip():
                raise DatasetError(f"{name!r} {where}: the image path ({img_key!r}) is "
                                   + _describe(img) + "; every row needs the path of an image file")
            caps = cap if isinstance(cap, list) and cap else [cap]
            bad = [c for c in caps if not isinstance(c, str) or not c.strip()]
            if bad:
                raise DatasetError(f"{name!r} {where}: the caption ({cap_key!r}) is " + _describe(bad[0])
                                   + "; every row needs a non-empty text caption")
            for c in caps:
                paths.append(img)
                captions.append(c)
        del rows, text
        if not n_rows:
            raise DatasetError(f"caption file {name!r} has no rows")
        self.items = _CaptionItems(self.image_root, paths.seal(), captions.seal())
        self.transform = transform

    def _csv_rows(self, text: str, suffix: str):
        """Yields ``(where, row, image key, caption key)``, one row at a time."""
        name = str(self.path)
        delim = "\t" if suffix == ".tsv" else ","
        # newline="" keeps quoted newlines inside a field; splitlines() would also split on
        # characters such as U+2028 or U+0085 inside a caption.
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
        try:
            header = next(reader, None)
            if header is None:
                return
            cols = [c.strip() for c in header]
            lower = [c.lower() for c in cols]
            img_i = next((lower.index(k) for k in IMAGE_KEYS if k in lower), None)
            cap_i = next((lower.index(k) for k in CAPTION_KEYS if k in lower), None)
            if img_i is None or cap_i is None:
                hint = ""
                if len(cols) == 1 and delim == "," and "\t" in cols[0]:
                    hint = " (it looks tab-separated: name it .tsv)"
                elif len(cols) == 1 and delim == "\t" and "," in cols[0]:
                    hint = " (it looks comma-separated: name it .csv)"
                raise DatasetError(
                    f"{name!r} has columns {cols}; need an image column (one of {list(IMAGE_KEYS)}) and a caption "
                    f"column (one of {list(CAPTION_KEYS)}) in its first line{hint}")
            line = reader.line_num
            for fields in reader:
                start, line = line + 1, reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # a blank line
                if len(fields) > len(cols):
                    raise DatasetError(
                        f"{name!r} line {start} has {len(fields)} fields but the header has {len(cols)}; quote "
                        f"captions that contain the separator {delim!r}, e.g. \"a cat{delim} sitting\"")
                row = {cols[i]: fields[i] if i < len(fields) else None for i in (img_i, cap_i)}
                yield f"line {start}", row, cols[img_i], cols[cap_i]
        except csv.Error as e:
            raise DatasetError(f"{name!r} line {reader.line_num} is not valid {suffix[1:].upper()}: {e}") from None

    def _json_rows(self, text: str):
        """Yields ``(where, object, image key, caption key)``; JSON Lines one line at a time."""
        name = str(self.path)
        if self.path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one JSON array of objects
            try:
                objs = json.loads(text)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{name!r} is not valid JSON: {e}") from None
            entries = ((f"item [{i}]", obj) for i, obj in enumerate(objs))
        else:
            entries = self._json_lines(text)
        for where, obj in entries:
            if not isinstance(obj, dict):
                raise DatasetError(f"{name!r} {where} is a JSON {type(obj).__name__}, not an object such as "
                                   '{"image": "a.jpg", "caption": "a cat"}')
            img_key = next((k for k in IMAGE_KEYS if k in obj), None)
            cap_key = next((k for k in CAPTION_KEYS if k in obj), None)
            if img_key is None or cap_key is None:
                raise DatasetError(
                    f"{name!r} {where} has keys {list(obj)}; need an image key (one of {list(IMAGE_KEYS)}) and a "
                    f"caption key (one of {list(CAPTION_KEYS)})")
            yield where, obj, img_key, cap_key

    def _json_lines(self, text: str):
        # JSON Lines are separated by '\n' only (splitlines() would also split on U+2028 in a caption); a StringIO
        # with newline="\n" splits on '\n' alone, one line at a time.
        for n, line in enumerate(io.StringIO(text, newline="\n"), start=1):
            if line.strip():
                try:
                    yield f"line {n}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{str(self.path)!r} line {n} is not valid JSON: {e}") from None

    @property
    def image_paths(self) -> list[str]:
        return [self.items.path(i) for i in range(len(self.items))]

    @property
    def captions(self) -> list[str]:
        return list(self.items.captions)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, caption = self.items[i]
        im = _try_load(path)
        if im is not None and self.transform is not None:
            im = self.transform(im)
        return im, caption, str(path)


def _describe(value) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return "empty" if not value.strip() else repr(value)
    if isinstance(value, list) and not value:
        return "an empty list"
    return f"{value!r} (of type {type(value).__name__}, not a string)"


class SyntheticDataset(torch.utils.data.Dataset):
    """The synthetic generator as a dataset: items ``(image tensor, caption, label)``.

    ``transform`` receives a PIL image (the model's preprocess); without it the image is a
    ``uint8 [H, W, 3]`` array.
    """

    def __init__(self, split: str = "train", size: int = 1000, image_size: int = 64, seed: int = 0,
                 transform: Optional[Callable] = None, two_object_prob: float = 0.35, caption_index: int = 0) -> None:
        self.gen = SyntheticGenerator(split, image_size, seed, two_object_prob)
        self.size, self.transform, self.caption_index = size, transform, caption_index
        self.classnames = self.gen.classnames

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        if not 0 <= i < self.size:
            raise IndexError(i)
        s = self.gen[i]
        im = Image.fromarray(s.image) if self.transform is not None else s.image
        if self.transform is not None:
            im = self.transform(im)
        return im, s.captions[self.caption_index % len(s.captions)], s.label


def collate_skip(batch: list):
    """Stack a batch of ``(image, target, key)`` items, dropping those whose image is ``None``.

    Returns ``(images or None, targets, keys, skipped_keys)``; ``targets`` is a tensor for
    integer labels and a list otherwise. Skipped keys travel with the batch (not through
    shared state) so they are counted even when the DataLoader uses worker processes.
    """
    kept = [b for b in batch if b[0] is not None]
    skipped = [str(b[2]) for b in batch if b[0] is None]
    if not kept:
        return None, [], [], skipped
    images = torch.stack([b[0] for b in kept])
    targets = [b[1] for b in kept]
    if all(isinstance(t, (int, np.integer)) for t in targets):
        targets = torch.as_tensor(targets)
    return images, targets, [b[2] for b in kept], skipped


def write_synthetic(out: Union[str, Path], n: int, split: str = "val", image_size: int = 64, seed: int = 0,
                    two_object_prob: float = 0.0, fmt: str = "png", overwrite: bool = False) -> dict:
    """Write ``n`` synthetic images as an image folder (``out/<class>/<i>.png``) plus
    ``out/captions.csv`` (``image,caption``). Returns a summary dict.

    An existing ``out/captions.csv`` is never replaced by a different one: that is a
    :class:`DatasetError` (choose another ``out``, delete the file, or pass
    ``overwrite=True``). Re-running with the same arguments, which rewrites the same
    captions and images, is allowed.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {str(out)!r} is a file, not a folder; choose a folder for the synthetic images")
    from mobileclip import limits

    limits.check_max(n, limits.SAMPLES, "--n")
    gen = SyntheticGenerator(split, image_size, seed, two_object_prob)

    def rel_path(s, i: int) -> Path:
        return Path(s.classname.replace(" ", "_")) / f"{split}_{i:06d}.{fmt}"

    target = out / "captions.csv"
    if target.is_dir():
        raise DatasetError(f"{str(target)!r} is a directory; choose another --out or remove it")
    if target.exists() and not overwrite:
        same = target.is_file() and target.read_bytes() == _captions_csv(
            [(rel_path(s, i).as_posix(), s.caption) for i, s in enumerate(gen[i] for i in range(n))])
        if not same:
            raise DatasetError(f"{str(target)!r} already exists and would be overwritten with other captions; "
                               "choose another --out or delete it (from Python: overwrite=True)")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        s = gen[i]
        rel = rel_path(s, i)
        (out / rel.parent).mkdir(exist_ok=True)
        Image.fromarray(s.image).save(out / rel)
        rows.append((rel.as_posix(), s.caption))
    tmp = out / ".captions.csv.tmp"
    tmp.write_bytes(_captions_csv(rows))
    tmp.replace(target)
    return {"root": str(out), "images": n, "split": split, "classes": len({r[0].split("/")[0] for r in rows})}


def _captions_csv(rows: list) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["image", "caption"])
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")
