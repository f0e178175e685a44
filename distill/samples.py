"""What the trainer iterates: samples keyed ``(index, epoch)`` (paired, unpaired, mixed), their collation into
batches (shared memory inside workers), and the samplers that give each step its samples on each rank."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from mobileclip.errors import ConfigError

from .augment import sample_aug
from .images import DeferredJPEG, StudentImages
from .tokens import TokenTable


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
