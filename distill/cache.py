"""The teacher-embedding cache ("reinforced dataset", after MobileCLIP's DataCompDR).

``build_cache`` runs one or several teachers once over a dataset with K augmentations per
image and stores, per shard of ``shard_size`` samples, memory-mappable ``.npy`` arrays:

    cache/
      manifest.json            teachers (spec, embed dim, logit scale), dataset spec, K, shards
      shard_00000/aug.npy      float32 [S, K, 5]   crop box (x0, y0, w, h) + flip, relative
      shard_00000/ok.npy       bool    [S]         False where the image could not be read
      shard_00000/img_0.npy    float16 [S, K, D0]  teacher 0's normalized image embeddings
      shard_00000/txt_0.npy    float16 [S, C, D0]  teacher 0's normalized caption embeddings
      ...                      img_1.npy, txt_1.npy for a second teacher
      shard_00000/sha256.json  the sha256 of each array file of the shard

A cache of *unpaired* data (``manifest["modality"]``) holds one side only: images without
captions (``aug``, ``ok``, ``img_<t>``; ``captions`` is 0) or texts without images (``ok``,
``txt_<t>`` with one text per sample; ``augs`` is 1). The trainer checks that such caches
were built by the same teachers as the paired cache it trains from.

The manifest fingerprints what the embeddings depend on: each teacher's weights (a sha256 of
its state dict), preprocessing and tokenizer; the dataset (a sha256 per shard over every
sample's path and captions); K, the crop/flip settings and the seed. Resuming a build, or
training from the cache, with anything that differs is refused, naming what differs. Every
shard's arrays are checked against their checksums and the manifest's counts the first time
a process opens them.

A shard is written to a temporary directory and renamed into place when complete, so a
killed run resumes by skipping the shards that exist. Under ``torchrun`` rank r builds
shards r, r+W, r+2W, ... The trainer reads the arrays through :class:`TeacherCache` and
never runs a teacher.
"""
from __future__ import annotations


import hashlib
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from mobileclip.files import atomic_write_json, disk_full, remove_stale_temps, replace_dir, temp_dir_for
from mobileclip.hashing import sha256_file
from mobileclip.errors import ConfigError, MobileCLIPError, TeacherError
from mobileclip.precision import autocast, resolve_precision
from mobileclip.scales import scale_problem

from .augment import apply_aug, sample_aug
from .sources import modality

FORMAT_VERSION = 3
# What changed in each format, for the message that refuses an older cache.
FORMAT_CHANGES = {3: "teachers now embed exactly the student's view of each crop (no second crop by their own eval "
                     "transform) and their similarity multiplier is recorded as `scale`"}
# Recorded in a manifest by the data kind it reads, and required when it is read: WebDataset members are read
# by position (os.pread) since 2026-12-01; caches of shards built before may hold embeddings of the wrong images.
SHARD_READS = {"webdataset": {"shard_reads": "positional"}}


class CacheError(MobileCLIPError):
    """A teacher cache is missing, incomplete, or does not match the request."""


def _shard_dir(root: Path, s: int) -> Path:
    return root / f"shard_{s:05d}"


def _address_free(text: str) -> str:
    """A repr without the memory addresses of its objects (they differ from run to run)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def teacher_fingerprint(teacher, device, region: str = "center") -> dict:
    """What a teacher's cached embeddings depend on: its weights, preprocessing (and what it makes of the student's
    view: :mod:`mobileclip.views`) and tokenizer; and its similarity multiplier."""
    from mobileclip.hashing import state_sha256
    from mobileclip.views import measure_view, teacher_view

    tok = teacher.tokenizer
    view = teacher_view(teacher.preprocess)
    return {"name": teacher.name, "embed_dim": teacher_dim(teacher, device),
            "scale": float(teacher.scale), "scale_from": getattr(teacher, "scale_from", "given"),
            "weights_sha256": state_sha256(teacher.state_dict()),
            "preprocess": _address_free(repr(teacher.preprocess)),
            "view": {"transform": _address_free(view.describe()), "exact": view.exact,
                     "covers": measure_view(view, region)},
            "tokenizer": _address_free(f"{type(tok).__name__} context_length="
                                       f"{getattr(tok, 'context_length', None)}")}


def dataset_digests(source, shard_size: int, progress: bool = False) -> list:
    """One sha256 per shard over its samples' identities (path or key, and captions), in order."""
    n = len(source)
    out = []
    bar = tqdm(total=n, desc="fingerprint dataset", unit="sample", disable=not progress or n < 5000)
    for lo in range(0, n, shard_size):
        h = hashlib.sha256()
        for i in range(lo, min(n, lo + shard_size)):
            h.update(source.identity(i).encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        out.append(h.hexdigest())
        bar.update(min(n, lo + shard_size) - lo)
    bar.close()
    return out


def check_cache_args(augs, shard_size, batch_size, scale, ratio, flip_prob) -> None:
    from mobileclip import limits

    if not isinstance(augs, int) or augs < 1:
        raise ConfigError(f"--augs must be at least 1, got {augs}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    limits.check_max(augs, limits.AUGS, "--augs")
    limits.check_max(shard_size, limits.SHARD, "--shard-size")
    limits.check_max(batch_size, limits.BATCH, "--batch-size")
    lo, hi = (float(v) for v in scale)
    if not (0 < lo <= hi <= 1):
        raise ConfigError(f"--scale is the range of crop areas as fractions of the image: 0 < low <= high <= 1, "
                          f"got {lo} {hi}")
    rlo, rhi = (float(v) for v in ratio)
    if not (0 < rlo <= rhi and math.isfinite(rhi)):
        raise ConfigError(f"the crop aspect ratio range needs 0 < low <= high, got {rlo} {rhi}")
    if not 0 <= float(flip_prob) <= 1:
        raise ConfigError(f"--flip-prob must be within [0, 1], got {flip_prob}")


def build_cache(teachers: Sequence, source, out: Union[str, Path], augs: int = 4, shard_size: int = 1024,
                batch_size: int = 64, seed: int = 0, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                flip_prob: float = 0.5, device: Union[str, torch.device] = "cpu", rank: int = 0, world: int = 1,
                num_workers: int = 0, progress: bool = True, precision: str = "auto", view: str = "center") -> dict:
    """Run ``teachers`` (loaded :class:`~mobileclip.teachers.Teacher` objects) over ``source``.

    Each teacher embeds exactly the student's *view* of each augmentation crop (``view``: ``center``, the crop's
    centre square, which students with ``resize_mode="shortest"`` see — every zoo student; ``squash``, the whole
    crop), resampled to its input size with its own interpolation and normalization (:mod:`mobileclip.views`). The
    manifest records, per teacher, how and what fraction of the view it covers (``view.covers``; 1.0 unless its
    transform could not be read and crops again). The trainer refuses a student whose view differs.

    ``precision``: ``auto`` runs the teachers in bf16 autocast on CUDA (fp32 on the CPU), ``fp32``
    in full fp32 everywhere (no TF32), ``bf16``/``fp16`` in that autocast. It is recorded in the
    manifest (``teacher_precision``): a resumed build in another precision is refused.

    Returns the manifest. Existing complete shards are kept (resume) after their checksums are
    checked; a manifest that disagrees with this request (other teacher weights, dataset
    samples, K, augmentation settings, seed) is a :class:`CacheError` naming what differs.
    """
    from mobileclip.teachers import Teacher

    check_cache_args(augs, shard_size, batch_size, scale, ratio, flip_prob)
    if not teachers:
        raise ConfigError("build_cache needs at least one teacher")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CacheError(f"--out {str(out)!r} is a file; give a directory for the cache")
    n = len(source)
    if n == 0:
        raise ConfigError("the dataset has no samples; nothing to cache")
    kind = modality(source)
    if kind == "texts":
        augs = 1   # texts have no augmentations
    n_shards = (n + shard_size - 1) // shard_size
    device = torch.device(device)
    for t in teachers:
        if not isinstance(t, Teacher):
            raise ConfigError(f"build_cache takes loaded teachers (mobileclip.load_teacher), got {type(t).__name__}")
    precision = resolve_precision(precision, device)
    from mobileclip.views import VIEW_REGIONS

    if view not in VIEW_REGIONS:
        raise ConfigError(f"view must be one of {VIEW_REGIONS} (the student's resize_mode 'shortest' sees the crop's "
                          f"centre square, 'squash' the whole crop), got {view!r}")
    if kind != "texts":   # each batch embeds batch_size x augs crops at each teacher's input size
        from mobileclip.limits import check_batch_pixels

        sizes = [int(t.image_size) for t in teachers if t.image_size]
        if sizes:
            check_batch_pixels(batch_size * augs, max(sizes), "--batch-size",
                               per=f" (--batch-size {batch_size} x --augs {augs} crops)")
    teachers = [t.to(device) for t in teachers]
    meta = [teacher_fingerprint(t, device, view) for t in teachers]
    if kind == "texts":   # texts have no view
        for m in meta:
            m["view"] = None
    if progress and kind != "texts":
        for t, m in zip(teachers, meta):
            cov = m["view"]["covers"]
            if min(cov) < 0.99:
                print(f"cache-teacher: teacher {t.name!r} covers only {cov[0]:.0%} x {cov[1]:.0%} of the student's view "
                      f"(its transform could not be read: {m['view']['transform']}); recorded in the manifest")
    digests = dataset_digests(source, shard_size, progress)
    manifest = {
        "format_version": FORMAT_VERSION, "modality": kind, "teachers": meta, "dataset": source.spec(),
        "num_samples": n,
        "dataset_sha256": hashlib.sha256("".join(digests).encode()).hexdigest(), "dataset_shards": digests,
        "augs": augs, "captions": source.n_captions, "shard_size": shard_size, "num_shards": n_shards,
        "teacher_precision": precision, **SHARD_READS.get(source.spec().get("kind"), {}),
        "view": view if kind != "texts" else None,
        "seed": seed, "aug": {"scale": [float(v) for v in scale], "ratio": [float(v) for v in ratio],
                              "flip_prob": float(flip_prob)},
    }
    mpath = out / "manifest.json"
    made_out, wrote_manifest = not out.exists(), False
    if out.is_dir():
        remove_stale_temps(out)   # shards a killed run was writing
    if mpath.exists():
        old = read_manifest(out)
        diff = manifest_differences(old, manifest)
        if diff:
            raise CacheError(f"{str(out)!r} holds a cache built from something else: {'; '.join(diff)}. Resume with "
                             "the same teachers, data and settings, or use another --out (or delete it)")
    elif rank == 0:
        try:
            atomic_write_json(mpath, manifest)
            wrote_manifest = True
        except OSError as e:
            raise disk_full(e, mpath) from e

    todo = []
    for s in range(rank, n_shards, world):
        if _shard_dir(out, s).is_dir():
            _verify_shard(out, manifest, s)   # a resumed build trusts only shards that check out
        else:
            todo.append(s)
    bar = tqdm(total=len(todo) * shard_size, desc=f"cache-teacher (rank {rank})", unit="img", disable=not progress)
    t0, done = time.time(), 0
    skipped = 0
    try:
        for s in todo:
            lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
            arrays = _build_shard(teachers, source, range(lo, hi), augs, seed, scale, ratio, flip_prob, device,
                                  batch_size, num_workers, precision, view)
            skipped += int((~arrays["ok"]).sum())
            tmp = temp_dir_for(_shard_dir(out, s))
            try:
                for name, arr in arrays.items():
                    np.save(tmp / f"{name}.npy", arr)
                atomic_write_json(tmp / CHECKSUMS, {f"{k}.npy": sha256_file(tmp / f"{k}.npy") for k in arrays})
                replace_dir(tmp, _shard_dir(out, s))
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise disk_full(e, _shard_dir(out, s)) from e
            done += hi - lo
            bar.update(hi - lo)
    except TeacherError:
        # a teacher returned what no cache may hold (NaN, wrong sizes) before any shard was written: leave nothing,
        # so the corrected command starts afresh instead of meeting a manifest of the refused teacher
        if wrote_manifest and not any(_shard_dir(out, s).is_dir() for s in range(n_shards)):
            if made_out:
                shutil.rmtree(out, ignore_errors=True)
            else:
                mpath.unlink(missing_ok=True)
        raise
    finally:
        bar.close()   # before any error line, so it does not land on the bar
    manifest["skipped_images_this_run"] = skipped
    if progress:
        print(f"cache-teacher: {done} samples in {time.time() - t0:.1f} s, {skipped} unreadable images skipped")
    return manifest


CHECKSUMS = "sha256.json"
_TEACHER_KEYS = ("weights_sha256", "name", "embed_dim", "scale", "preprocess", "view", "tokenizer")


def manifest_differences(old: dict, new: dict) -> list:
    """What differs between a cache's manifest and a request (empty: the same cache)."""
    diff = teacher_differences(old.get("teachers", []), new["teachers"])
    if old.get("num_samples") != new["num_samples"]:
        diff.append(f"the dataset has {new['num_samples']} samples, the cache {old.get('num_samples')}")
    elif old.get("dataset_shards") != new["dataset_shards"]:
        od, nd = old.get("dataset_shards") or [], new["dataset_shards"]
        s = next((i for i, (a, b) in enumerate(zip(od, nd)) if a != b), 0)
        size = new["shard_size"]
        diff.append(f"the dataset's samples differ (paths or captions edited or reordered), first in samples "
                    f"{s * size}..{min(new['num_samples'], (s + 1) * size) - 1} (shard {s})")
    for k in ("modality", "dataset", "augs", "captions", "shard_size", "seed", "aug", "teacher_precision",
              "shard_reads", "view"):
        # caches built before the precision was recorded ran their teachers in fp32
        a, b = _jsonable(old.get(k, "fp32" if k == "teacher_precision" else None)), _jsonable(new.get(k))
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):   # name the keys that differ, not two long dicts
            diff += [f"{k} {sub}: {_short(a.get(sub))} in the cache, {_short(b.get(sub))} now"
                     for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub)]
        else:
            diff.append(f"{k}: {_short(a)} in the cache, {_short(b)} now")
    return diff


def teacher_differences(ot: list, nt: list, here: str = "in the cache", there: str = "now") -> list:
    """What differs between two lists of teacher fingerprints (empty: the same teachers)."""
    if len(ot) != len(nt):
        return [f"{len(ot)} teacher(s) {here}, {len(nt)} {there}"]
    diff = []
    for i, (a, b) in enumerate(zip(ot, nt)):
        for k in _TEACHER_KEYS:
            if k == "view" and (a.get(k) is None or b.get(k) is None):
                continue   # a cache of texts: its teachers saw no image
            if _jsonable(a.get(k)) != _jsonable(b.get(k)):
                what = "weights (sha256 of the state dict)" if k == "weights_sha256" else k
                diff.append(f"teacher {i} {what}: {_short(a.get(k))} {here}, {_short(b.get(k))} {there}")
    return diff


def _jsonable(x):
    return json.loads(json.dumps(x))


def _short(x) -> str:
    s = json.dumps(x)
    return s if len(s) <= 80 else s[:77] + "..."


def read_manifest(root: Path) -> dict:
    """A cache's manifest, checked for the keys and types the reader relies on."""
    mpath = root / "manifest.json"
    try:
        m = json.loads(mpath.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CacheError(f"{str(mpath)!r} is not UTF-8 text; rebuild the cache with `mobileclip cache-teacher`") from e
    except json.JSONDecodeError as e:
        raise CacheError(f"{str(mpath)!r} is not valid JSON ({e}); rebuild the cache with "
                         "`mobileclip cache-teacher`") from e
    except OSError as e:
        raise CacheError(f"cannot read {str(mpath)!r}: {e.strerror or e}") from e
    if not isinstance(m, dict):
        raise CacheError(f"{str(mpath)!r} must hold a JSON object; rebuild the cache")
    if m.get("format_version") != FORMAT_VERSION:
        old = m.get("format_version")
        why = FORMAT_CHANGES.get(FORMAT_VERSION) if isinstance(old, int) and old == FORMAT_VERSION - 1 else \
            "caches are now fingerprinted"
        extra = ""
        for i, t in enumerate(m.get("teachers") or []):
            ls = t.get("logit_scale") if isinstance(t, dict) else None
            if isinstance(ls, (int, float)) and not isinstance(ls, bool) and scale_problem(ls):
                extra = (f"; its teacher {i}'s scale {ls:.6g} is also outside [1, 100] (a scale exponentiated twice: "
                         "every KD target of that cache was one-hot)")
                break
        raise CacheError(f"{str(mpath)!r}: cache format {old!r}, this version reads {FORMAT_VERSION} ({why}){extra}; "
                         "rebuild it with `mobileclip cache-teacher`")

    def bad(key, what):
        raise CacheError(f"{str(mpath)!r}: {key} {what}; the manifest was edited or damaged — rebuild the cache")

    kind_of_data = m.get("dataset", {}).get("kind") if isinstance(m.get("dataset"), dict) else None
    for key, value in SHARD_READS.get(kind_of_data, {}).items():
        if m.get(key) != value:
            raise CacheError(f"{str(mpath)!r} was built from WebDataset shards before their members were read by "
                             "position: cache-teacher's loader workers could then read other samples' images (a "
                             "race on a shared file offset), so its embeddings may belong to the wrong images; "
                             "rebuild it with `mobileclip cache-teacher`")

    kind = m.setdefault("modality", "pairs")
    if kind not in ("pairs", "images", "texts"):
        bad("modality", f"must be 'pairs', 'images' or 'texts', got {json.dumps(kind)}")
    for key in ("num_samples", "augs", "captions", "shard_size", "num_shards"):
        v = m.get(key)
        low = 0 if (key, kind) == ("captions", "images") else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            bad(key, f"must be {'an integer >= 0' if low == 0 else 'a positive integer'}, got {json.dumps(v)}")
    if m["num_shards"] != -(-m["num_samples"] // m["shard_size"]):
        bad("num_shards", f"is {m['num_shards']}, but {m['num_samples']} samples in shards of {m['shard_size']} "
                          f"make {-(-m['num_samples'] // m['shard_size'])}")
    shards = m.get("dataset_shards")
    if not isinstance(shards, list) or len(shards) != m["num_shards"]:
        bad("dataset_shards", f"must list one digest per shard ({m['num_shards']})")
    teachers = m.get("teachers")
    if not isinstance(teachers, list) or not teachers:
        bad("teachers", "must be a non-empty list")
    for i, t in enumerate(teachers):
        if not isinstance(t, dict):
            bad(f"teachers[{i}]", "must be an object")
        d, sc = t.get("embed_dim"), t.get("scale")
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            bad(f"teachers[{i}].embed_dim", f"must be a positive integer, got {json.dumps(d)}")
        problem = scale_problem(sc, f"teachers[{i}].scale")
        if problem:
            raise CacheError(f"{str(mpath)!r}: {problem}. The teacher was built or recorded with a wrong scale, so "
                             "its similarity distributions would be wrong: fix the teacher's scale (Teacher(scale=...), "
                             "cache-teacher --teacher-scale) and rebuild the cache")
    if m["modality"] != "texts" and m.get("view") not in ("center", "squash"):
        bad("view", f"must be 'center' or 'squash', got {json.dumps(m.get('view'))}")
    if not isinstance(m.get("dataset"), dict):
        bad("dataset", "must be an object")
    return m


def _expected_shapes(m: dict, s: int) -> dict:
    rows = min(m["num_samples"], (s + 1) * m["shard_size"]) - s * m["shard_size"]
    k, c, kind = m["augs"], m["captions"], m.get("modality", "pairs")
    out = {"ok": ((rows,), np.bool_)}
    if kind != "texts":
        out["aug"] = ((rows, k, 5), np.float32)
    for t, meta in enumerate(m["teachers"]):
        if kind != "texts":
            out[f"img_{t}"] = ((rows, k, meta["embed_dim"]), np.float16)
        if kind != "images":
            out[f"txt_{t}"] = ((rows, c, meta["embed_dim"]), np.float16)
    return out


def _verify_shard(root: Path, m: dict, s: int) -> dict:
    """Open shard ``s`` after checking its files against their checksums and its arrays against the
    manifest's counts; returns the memory-mapped arrays. :class:`CacheError` says what is wrong."""
    d = _shard_dir(root, s)
    fix = "rebuild it: delete that shard directory and rerun cache-teacher with the same arguments"
    try:
        sums = json.loads((d / CHECKSUMS).read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"cache shard {str(d)!r} has no readable {CHECKSUMS} (incomplete or damaged); {fix}") from e
    expected = _expected_shapes(m, s)
    arrays = {}
    for name, (shape, dtype) in expected.items():
        f = d / f"{name}.npy"
        if not f.is_file():
            raise CacheError(f"cache shard {str(d)!r} lacks {f.name}; {fix}")
        if not isinstance(sums, dict) or sums.get(f.name) != sha256_file(f):
            raise CacheError(f"cache file {str(f)!r} does not match its checksum (modified or truncated); {fix}")
        try:
            a = np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CacheError(f"cache file {str(f)!r} is not a readable .npy array ({e}); {fix}") from e
        if a.shape != shape or a.dtype != dtype:
            raise CacheError(f"cache file {str(f)!r} holds {a.dtype} {list(a.shape)}, the manifest implies "
                             f"{np.dtype(dtype)} "
                             f"{list(shape)}; the manifest or the shard was changed — {fix}")
        arrays[name] = a
    return arrays


class _ShardItems(torch.utils.data.Dataset):
    """Sample i → the student's view of each of the K augmented crops, as each teacher takes it in, plus captions."""

    def __init__(self, teachers, source, indices, augs, seed, scale, ratio, flip_prob, region="center"):
        from mobileclip.views import teacher_view

        self.teachers, self.source, self.indices = teachers, source, list(indices)
        self.views, self.region = [teacher_view(t.preprocess) for t in teachers], region
        self.texts_only = modality(source) == "texts"
        self.augs, self.seed, self.scale, self.ratio, self.flip_prob = augs, seed, scale, ratio, flip_prob

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = self.indices[j]
        im, captions = self.source.load(i)
        if self.texts_only:
            return {"ok": True, "captions": captions}
        if im is None:
            return {"ok": False, "captions": captions}
        params = [sample_aug(self.seed, i, k, self.scale, self.ratio, self.flip_prob, im.size[0] / im.size[1])
                  for k in range(self.augs)]
        crops = [apply_aug(im, p) for p in params]
        return {"ok": True, "aug": np.stack(params), "captions": captions,
                "inputs": [torch.stack([v(c, self.region) for c in crops]) for v in self.views]}


@torch.no_grad()
def _build_shard(teachers, source, indices, augs, seed, scale, ratio, flip_prob, device, batch_size, num_workers,
                 precision="fp32", region="center"):
    ds = _ShardItems(teachers, source, indices, augs, seed, scale, ratio, flip_prob, region)
    per = max(1, batch_size // augs)
    loader = torch.utils.data.DataLoader(ds, batch_size=per, num_workers=num_workers, collate_fn=list)
    S, C, kind = len(ds), source.n_captions, modality(source)
    images, texts = kind != "texts", kind != "images"
    out = {"ok": np.zeros(S, bool)}
    if images:
        out["aug"] = np.zeros((S, augs, 5), np.float32)
    for t, teacher in enumerate(teachers):
        d = teacher_dim(teacher, device)
        if images:
            out[f"img_{t}"] = np.zeros((S, augs, d), np.float16)
        if texts:
            out[f"txt_{t}"] = np.zeros((S, C, d), np.float16)
    j = 0
    for items in loader:
        for t, teacher in enumerate(teachers):
            good = [x for x in items if x["ok"]]
            if images and good:
                x = torch.cat([g["inputs"][t] for g in good]).to(device)
                with autocast(precision, device):
                    emb = teacher.encode_image(x, normalize=True)
                emb = emb.float().cpu().numpy().reshape(len(good), augs, -1)
                g = 0
                for r, x in enumerate(items):
                    if x["ok"]:
                        out[f"img_{t}"][j + r] = emb[g]
                        g += 1
            if texts:
                caps = [(x["captions"] * C)[:C] for x in items]  # pad short caption lists by repeating
                tok = teacher.tokenizer([c for cs in caps for c in cs]).to(device)
                with autocast(precision, device):
                    temb = teacher.encode_text(tok, normalize=True)
                temb = temb.float().cpu().numpy().reshape(len(items), C, -1)
                out[f"txt_{t}"][j:j + len(items)] = temb
        for r, x in enumerate(items):
            out["ok"][j + r] = x["ok"]
            if x["ok"] and images:
                out["aug"][j + r] = x["aug"]
        j += len(items)
    return out


@torch.no_grad()
def teacher_dim(teacher, device) -> int:
    """The teacher's embedding size; measured with one text forward when it does not say."""
    if not teacher.embed_dim:
        teacher.embed_dim = int(teacher.encode_text(teacher.tokenizer(["a"]).to(device)).shape[-1])
    return int(teacher.embed_dim)


class TeacherCache:
    """Read side: checks the manifest, then verifies and memory-maps each shard on first use (per process)."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not self.root.is_dir():
            what = "is a file, not a cache directory" if self.root.exists() else "does not exist"
            raise CacheError(f"teacher cache {str(self.root)!r} {what}; build one with `mobileclip cache-teacher`")
        if not mpath.is_file():
            raise CacheError(f"{str(self.root)!r} is not a teacher cache (no manifest.json); "
                             "build one with `mobileclip cache-teacher`")
        self.manifest = read_manifest(self.root)
        missing = [s for s in range(self.manifest["num_shards"]) if not _shard_dir(self.root, s).is_dir()]
        if missing:
            raise CacheError(f"{str(self.root)!r} is incomplete: {len(missing)} of {self.manifest['num_shards']} "
                             f"shards missing (first: {missing[0]}); rerun cache-teacher with the same arguments "
                             "to finish it")
        self.augs = int(self.manifest["augs"])
        self.modality = self.manifest["modality"]
        self.shard_size = int(self.manifest["shard_size"])
        self.num_teachers = len(self.manifest["teachers"])
        self._open: dict = {}

    def check_source(self, source, progress: bool = False) -> None:
        """Refuse a ``source`` whose samples are not those the cache was built from (in order)."""
        m = self.manifest
        if len(source) != m["num_samples"]:
            raise CacheError(f"the dataset has {len(source)} samples, the cache {str(self.root)!r} was built from "
                             f"{m['num_samples']}: rows were added or removed since; rebuild the cache")
        now = dataset_digests(source, self.shard_size, progress)
        if now != m["dataset_shards"]:
            s = next(i for i, (a, b) in enumerate(zip(m["dataset_shards"], now)) if a != b)
            raise CacheError(f"the dataset's samples differ from those the cache {str(self.root)!r} was built from "
                             f"(paths or captions edited or reordered), first in samples {s * self.shard_size}.."
                             f"{min(len(source), (s + 1) * self.shard_size) - 1}: each image would be trained against "
                             "another sample's teacher embedding; rebuild the cache")

    @property
    def teacher_dims(self) -> list:
        return [t["embed_dim"] for t in self.manifest["teachers"]]

    @property
    def teacher_scales(self) -> list:
        """Each teacher's similarity multiplier (checked to lie in [1, 100] when the manifest was read)."""
        return [t["scale"] for t in self.manifest["teachers"]]

    def _arrays(self, i: int):
        s, r = divmod(i, self.shard_size)
        if s not in self._open:
            self._open[s] = _verify_shard(self.root, self.manifest, s)
        return self._open[s], r

    def ok(self, i: int) -> bool:
        a, r = self._arrays(i)
        return bool(a["ok"][r])

    def aug(self, i: int, k: int) -> np.ndarray:
        a, r = self._arrays(i)
        return np.asarray(a["aug"][r, k])

    def image_embedding(self, i: int, k: int) -> np.ndarray:
        """All teachers' embeddings of augmentation k, concatenated (split by :attr:`teacher_dims`)."""
        a, r = self._arrays(i)
        return np.concatenate([a[f"img_{t}"][r, k] for t in range(self.num_teachers)])

    def text_embedding(self, i: int, c: int) -> np.ndarray:
        """All teachers' embeddings of caption c, concatenated (split by :attr:`teacher_dims`)."""
        a, r = self._arrays(i)
        return np.concatenate([a[f"txt_{t}"][r, c] for t in range(self.num_teachers)])

    def __getstate__(self):  # memmaps are reopened in each DataLoader worker
        state = dict(self.__dict__)
        state["_open"] = {}
        return state
