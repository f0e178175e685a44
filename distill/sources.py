"""Where training pairs come from: indexable *pair sources* (``source.load(i) -> (PIL image or None,
[captions])``, with a ``spec()`` dict that rebuilds them, stored in a teacher cache's manifest) — the synthetic
generator, CSV/TSV/JSONL caption files, WebDataset ``.tar`` shards (indexed once, then read by random access) — and
the unpaired sources of images alone or texts alone."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from mobileclip.data.datasets import PackedStrings, pathlib_respells
from mobileclip.errors import ConfigError, DatasetError
from mobileclip.transforms import IMAGE_READ_ERRORS, load_image


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


