"""Datasets for evaluation: an image folder, a caption file, and the synthetic generator.

Unreadable images never crash a run: ``__getitem__`` returns ``None`` for the image,
:func:`collate_skip` drops such items from the batch and records them, and the
evaluators report how many were skipped and which.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError
from ..transforms import load_image
from .synthetic import SyntheticGenerator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
IMAGE_KEYS = ("image", "filepath", "image_path", "file", "path", "img")
CAPTION_KEYS = ("caption", "text", "title", "captions")


def _try_load(path: Path) -> Optional[Image.Image]:
    try:
        return load_image(path)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
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
        if not self.root.is_dir():
            raise DatasetError(f"image folder {str(self.root)!r} does not exist or is not a directory")
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
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
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


class CaptionDataset(torch.utils.data.Dataset):
    """Image–caption pairs from a CSV, TSV or JSONL file; items are ``(image or None, caption, path)``.

    The image column is one of ``image, filepath, image_path, file, path, img``; the caption
    column one of ``caption, text, title``. Relative image paths are resolved against
    ``image_root`` (default: the file's folder). Several rows may share an image.
    """

    def __init__(self, path: Union[str, Path], image_root: Union[str, Path, None] = None,
                 transform: Optional[Callable] = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise DatasetError(f"caption file {str(self.path)!r} does not exist")
        self.image_root = Path(image_root).expanduser() if image_root else self.path.parent
        rows = self._read_rows()
        if not rows:
            raise DatasetError(f"{str(self.path)!r} has no rows")
        cols = list(rows[0].keys())
        img_key = next((k for k in IMAGE_KEYS if k in cols), None)
        cap_key = next((k for k in CAPTION_KEYS if k in cols), None)
        if img_key is None or cap_key is None:
            raise DatasetError(
                f"{str(self.path)!r} has columns {cols}; need an image column (one of {list(IMAGE_KEYS)}) "
                f"and a caption column (one of {list(CAPTION_KEYS)})"
            )
        self.items: list[tuple[Path, str]] = []
        for n, row in enumerate(rows, start=1):
            img, cap = row.get(img_key), row.get(cap_key)
            if not img or cap is None:
                raise DatasetError(f"{str(self.path)!r} row {n}: empty {img_key!r} or {cap_key!r}")
            caps = cap if isinstance(cap, list) else [cap]
            p = Path(img)
            p = p if p.is_absolute() else self.image_root / p
            self.items.extend((p, str(c)) for c in caps)
        self.transform = transform

    def _read_rows(self) -> list[dict]:
        suffix = self.path.suffix.lower()
        text = self.path.read_text(encoding="utf-8")
        if suffix in (".jsonl", ".json"):
            rows = []
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DatasetError(f"{str(self.path)!r} line {n} is not valid JSON: {e}") from e
            return rows
        if suffix in (".csv", ".tsv"):
            delim = "\t" if suffix == ".tsv" else ","
            return list(csv.DictReader(text.splitlines(), delimiter=delim))
        raise DatasetError(f"{str(self.path)!r}: unsupported caption file type {suffix!r}; use .csv, .tsv or .jsonl")

    @property
    def image_paths(self) -> list[str]:
        return [str(p) for p, _ in self.items]

    @property
    def captions(self) -> list[str]:
        return [c for _, c in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, caption = self.items[i]
        im = _try_load(path)
        if im is not None and self.transform is not None:
            im = self.transform(im)
        return im, caption, str(path)


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
                    two_object_prob: float = 0.0, fmt: str = "png") -> dict:
    """Write ``n`` synthetic images as an image folder (``out/<class>/<i>.png``) plus
    ``out/captions.csv`` (``image,caption``). Returns a summary dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = SyntheticGenerator(split, image_size, seed, two_object_prob)
    rows = []
    for i in range(n):
        s = gen[i]
        rel = Path(s.classname.replace(" ", "_")) / f"{split}_{i:06d}.{fmt}"
        (out / rel.parent).mkdir(exist_ok=True)
        Image.fromarray(s.image).save(out / rel)
        rows.append((rel.as_posix(), s.caption))
    tmp = out / ".captions.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    tmp.replace(out / "captions.csv")
    return {"root": str(out), "images": n, "split": split, "classes": len({r[0].split("/")[0] for r in rows})}
