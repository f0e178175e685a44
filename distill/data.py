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

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from mobileclip.errors import ConfigError, DatasetError
from mobileclip.transforms import IMAGE_READ_ERRORS, load_image, to_rgb

AUG_FIELDS = ("x0", "y0", "w", "h", "flip")


# ------------------------------------------------------------------ pair sources

class SyntheticPairs:
    def __init__(self, split: str = "train", size: int = 10000, image_size: int = 64, seed: int = 0,
                 two_object_prob: float = 0.35) -> None:
        from mobileclip.data.synthetic import SyntheticGenerator

        self.args = dict(split=split, size=size, image_size=image_size, seed=seed, two_object_prob=two_object_prob)
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

    def spec(self) -> dict:
        return {"kind": "captions", **self.args}

    def identity(self, i: int) -> str:
        """Sample ``i``'s image path (relative to the image root) and caption, for a cache's fingerprint."""
        path, caption = self.ds.items[i]
        try:
            path = Path(path).relative_to(self.ds.image_root).as_posix()
        except ValueError:
            path = str(path)
        return f"{path}\t{caption}"


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")
CAPTION_EXTS = ("txt", "caption", "json")


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
        self.index: list[tuple] = []  # (shard, image offset, image size, caption offset, caption size, ext)
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
                self.index.append((s, *files[img], *files[cap], cap))
        if not self.index:
            raise DatasetError(f"no image-caption samples in {shards!r} (looked for {IMAGE_EXTS} + .txt/.json)")
        self.n_captions = 1
        self._files: dict = {}

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.paths[shard], "rb")
        f.seek(offset)
        return f.read(size)

    def load(self, i: int):
        import io

        shard, io_, is_, co, cs, cap_ext = self.index[i]
        caption = _caption_text(self._read(shard, co, cs), cap_ext)
        if not caption:  # not UTF-8, bad JSON, no caption field, or empty: skipped and counted like a bad image
            return None, [""]
        try:
            image = load_image(io.BytesIO(self._read(shard, io_, is_)))
        except IMAGE_READ_ERRORS:
            image = None
        return image, [caption]

    def spec(self) -> dict:
        return {"kind": "webdataset", **self.args}

    def identity(self, i: int) -> str:
        """Sample ``i``'s shard, image member (offset, size) and caption bytes, for a cache's fingerprint."""
        shard, io_, is_, co, cs, _ = self.index[i]
        caption = self._read(shard, co, cs).decode("utf-8", errors="surrogateescape")
        return f"{Path(self.paths[shard]).name}@{io_}+{is_}\t{caption}"

    def __getstate__(self):  # file handles are reopened in each DataLoader worker
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
        self.files = sorted(
            (f for f in self.root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in f.relative_to(self.root).parts)),
            key=lambda f: f.relative_to(self.root).as_posix())
        if not self.files:
            raise DatasetError(f"{str(self.root)!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                               "in sub-folders too)")
        self.args = dict(root=str(self.root.resolve()))

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int):
        try:
            return load_image(self.files[i]), []
        except IMAGE_READ_ERRORS:
            return None, []

    def spec(self) -> dict:
        return {"kind": "images", **self.args}

    def identity(self, i: int) -> str:
        return self.files[i].relative_to(self.root).as_posix()


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
        self.texts = [ln.strip() for ln in read_utf8(p, "text file").splitlines() if ln.strip()]
        if not self.texts:
            raise DatasetError(f"text file {str(p)!r} holds no text (one text per line)")
        self.args = dict(path=str(p.resolve()))

    def __len__(self) -> int:
        return len(self.texts)

    def load(self, i: int):
        return None, [self.texts[i]]

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


def apply_aug(im: Image.Image, params: np.ndarray) -> Image.Image:
    """Crop (and flip) a PIL image by relative augmentation parameters."""
    x0, y0, w, h, flip = (float(v) for v in params)
    W, H = im.size
    box = (round(x0 * W), round(y0 * H), round((x0 + w) * W), round((y0 + h) * H))
    box = (box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1))
    out = to_rgb(im).crop(box)
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip >= 0.5 else out


# ------------------------------------------------------------------ training samples

class TrainSamples(torch.utils.data.Dataset):
    """What the trainer reads for sample ``i`` at step-dependent augmentation/caption choice.

    Items are dicts (or ``None`` for an unreadable image, dropped by :func:`collate_train`):

    * ``image`` — the student's input for the chosen augmentation, ``tokens`` — the chosen
      caption through the student's tokenizer;
    * with a ``cache``: ``t_image`` / ``t_text`` — cached teacher embeddings ``[T, Dt]``;
    * with online ``teachers``: ``t_inputs_<k>`` / ``t_tokens_<k>`` — the same crop and
      caption through teacher k's own preprocessing and tokenizer.
    """

    def __init__(self, source, student_preprocess: Callable, student_tokenizer: Callable, seed: int,
                 aug: dict, cache=None, teachers: Sequence = ()) -> None:
        self.source, self.pp, self.tok = source, student_preprocess, student_tokenizer
        self.seed, self.aug, self.cache, self.teachers = seed, aug, cache, list(teachers)

    def __len__(self) -> int:
        return len(self.source)

    def choice(self, i: int, epoch: int) -> tuple[int, int]:
        """Which augmentation and which caption sample ``i`` uses in ``epoch``."""
        rng = np.random.default_rng([self.seed, 7, epoch, i])
        n_aug = self.cache.augs if self.cache is not None else 1 << 30
        return int(rng.integers(n_aug)), int(rng.integers(1 << 30))

    def __getitem__(self, key):
        i, epoch = key
        im, captions = self.source.load(i)
        if im is None or (self.cache is not None and not self.cache.ok(i)):
            return {"skip": i}
        k, c = self.choice(i, epoch)
        caption = captions[c % len(captions)]
        if self.cache is not None:
            params = self.cache.aug(i, k)
        else:
            params = sample_aug(self.seed + 1000 * epoch, i, 0, self.aug["scale"], self.aug["ratio"],
                                self.aug["flip_prob"], im.size[0] / im.size[1])
        crop = apply_aug(im, params)
        item = {"index": i, "image": self.pp(crop), "tokens": self.tok([caption])[0]}
        if self.cache is not None:
            item["t_image"] = torch.from_numpy(self.cache.image_embedding(i, k).astype(np.float32))
            item["t_text"] = torch.from_numpy(self.cache.text_embedding(i, c % len(captions)).astype(np.float32))
        for t, teacher in enumerate(self.teachers):
            item[f"t_inputs_{t}"] = teacher.preprocess(crop)
            item[f"t_tokens_{t}"] = teacher.tokenizer([caption])[0]
        return item


class UnpairedSamples(torch.utils.data.Dataset):
    """Items of an unpaired teacher cache, keyed ``(index, epoch)`` like :class:`TrainSamples`.

    * images (``cache.modality == "images"``): ``ui_index``, ``ui_image`` — the student's input for one
      of the cached augmentations (chosen by ``(seed, epoch, index)``) — and ``ui_t_image``, the
      teachers' cached embeddings of that crop;
    * texts: ``ut_index``, ``ut_tokens`` and ``ut_t_text``.

    An unreadable image gives ``{"skip": "image-only <index>"}``.
    """

    def __init__(self, source, cache, student_preprocess: Callable, student_tokenizer: Callable, seed: int) -> None:
        self.source, self.cache, self.pp, self.tok, self.seed = source, cache, student_preprocess, student_tokenizer, seed
        self.images = cache.modality == "images"

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        i, epoch = key
        im, texts = self.source.load(i)
        if not self.images:
            emb = self.cache.text_embedding(i, 0).astype(np.float32)
            return {"ut_index": i, "ut_tokens": self.tok([texts[0]])[0], "ut_t_text": torch.from_numpy(emb)}
        if im is None or not self.cache.ok(i):
            return {"skip": f"image-only {i}"}
        k = int(np.random.default_rng([self.seed, 13, epoch, i]).integers(self.cache.augs))
        crop = apply_aug(im, self.cache.aug(i, k))
        return {"ui_index": i, "ui_image": self.pp(crop),
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
    the items that have it."""
    kept = [x for x in items if "skip" not in x]
    batch = {"skipped": [x["skip"] for x in items if "skip" in x]}
    for key in dict.fromkeys(k for x in kept for k in x):
        vals = [x[key] for x in kept if key in x]
        batch[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return batch


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

    def indices_for_step(self, step: int) -> list:
        epoch, pos = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n)
        glob = perm[pos * self.b:(pos + 1) * self.b]
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
