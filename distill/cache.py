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

A shard is written to a temporary directory and renamed into place when complete, so a
killed run resumes by skipping the shards that exist. Under ``torchrun`` rank r builds
shards r, r+W, r+2W, ... The trainer reads the arrays through :class:`TeacherCache` and
never runs a teacher.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from mobileclip.checkpoint import atomic_write_json, replace_dir, temp_dir_for
from mobileclip.errors import ConfigError, MobileCLIPError

from .data import apply_aug, sample_aug

FORMAT_VERSION = 1


class CacheError(MobileCLIPError):
    """A teacher cache is missing, incomplete, or does not match the request."""


def _shard_dir(root: Path, s: int) -> Path:
    return root / f"shard_{s:05d}"


def build_cache(teachers: Sequence, source, out: Union[str, Path], augs: int = 4, shard_size: int = 1024,
                batch_size: int = 64, seed: int = 0, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                flip_prob: float = 0.5, device: Union[str, torch.device] = "cpu", rank: int = 0, world: int = 1,
                num_workers: int = 0, progress: bool = True) -> dict:
    """Run ``teachers`` (loaded :class:`~mobileclip.teachers.Teacher` objects) over ``source``.

    Returns the manifest. Existing complete shards are kept (resume); a manifest that
    disagrees with this request (other teachers, dataset, K, seed) is an error.
    """
    from mobileclip.teachers import Teacher

    if augs < 1:
        raise ConfigError("augs must be at least 1")
    if not teachers:
        raise ConfigError("build_cache needs at least one teacher")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(source)
    n_shards = (n + shard_size - 1) // shard_size
    device = torch.device(device)
    teachers = [t.to(device) for t in teachers]
    # Embedding sizes and temperatures, from one forward when the teacher does not say.
    meta = []
    for t in teachers:
        if not isinstance(t, Teacher):
            raise ConfigError(f"build_cache takes loaded teachers (mobileclip.load_teacher), got {type(t).__name__}")
        meta.append({"name": t.name, "embed_dim": teacher_dim(t, device), "logit_scale": float(t.logit_scale.exp())})
    manifest = {
        "format_version": FORMAT_VERSION, "teachers": meta, "dataset": source.spec(), "num_samples": n,
        "augs": augs, "captions": source.n_captions, "shard_size": shard_size, "num_shards": n_shards,
        "seed": seed, "aug": {"scale": list(scale), "ratio": list(ratio), "flip_prob": flip_prob},
    }
    mpath = out / "manifest.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        keys = ("teachers", "dataset", "num_samples", "augs", "captions", "shard_size", "seed", "aug")
        diff = [k for k in keys if _jsonable(old.get(k)) != _jsonable(manifest[k])]
        if diff:
            raise CacheError(f"{str(out)!r} holds a cache built with different {diff}; use another --out "
                             "or delete it")
    elif rank == 0:
        atomic_write_json(mpath, manifest)

    todo = [s for s in range(rank, n_shards, world) if not _shard_dir(out, s).is_dir()]
    bar = tqdm(total=len(todo) * shard_size, desc=f"cache-teacher (rank {rank})", unit="img", disable=not progress)
    t0, done = time.time(), 0
    skipped = 0
    for s in todo:
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        arrays = _build_shard(teachers, source, range(lo, hi), augs, seed, scale, ratio, flip_prob, device,
                              batch_size, num_workers)
        skipped += int((~arrays["ok"]).sum())
        tmp = temp_dir_for(_shard_dir(out, s))
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        replace_dir(tmp, _shard_dir(out, s))
        done += hi - lo
        bar.update(hi - lo)
    bar.close()
    manifest["skipped_images_this_run"] = skipped
    if progress:
        print(f"cache-teacher: {done} samples in {time.time() - t0:.1f} s, {skipped} unreadable images skipped")
    return manifest


def _jsonable(x):
    return json.loads(json.dumps(x))


class _ShardItems(torch.utils.data.Dataset):
    """Sample i → the K augmented crops through each teacher's preprocessing, plus captions."""

    def __init__(self, teachers, source, indices, augs, seed, scale, ratio, flip_prob):
        self.teachers, self.source, self.indices = teachers, source, list(indices)
        self.augs, self.seed, self.scale, self.ratio, self.flip_prob = augs, seed, scale, ratio, flip_prob

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = self.indices[j]
        im, captions = self.source.load(i)
        if im is None:
            return {"ok": False, "captions": captions}
        params = [sample_aug(self.seed, i, k, self.scale, self.ratio, self.flip_prob, im.size[0] / im.size[1])
                  for k in range(self.augs)]
        crops = [apply_aug(im, p) for p in params]
        return {"ok": True, "aug": np.stack(params), "captions": captions,
                "inputs": [torch.stack([t.preprocess(c) for c in crops]) for t in self.teachers]}


@torch.no_grad()
def _build_shard(teachers, source, indices, augs, seed, scale, ratio, flip_prob, device, batch_size, num_workers):
    ds = _ShardItems(teachers, source, indices, augs, seed, scale, ratio, flip_prob)
    per = max(1, batch_size // augs)
    loader = torch.utils.data.DataLoader(ds, batch_size=per, num_workers=num_workers, collate_fn=list)
    S, C = len(ds), source.n_captions
    out = {"aug": np.zeros((S, augs, 5), np.float32), "ok": np.zeros(S, bool)}
    for t, teacher in enumerate(teachers):
        d = teacher_dim(teacher, device)
        out[f"img_{t}"] = np.zeros((S, augs, d), np.float16)
        out[f"txt_{t}"] = np.zeros((S, C, d), np.float16)
    j = 0
    for items in loader:
        for t, teacher in enumerate(teachers):
            good = [x for x in items if x["ok"]]
            if good:
                x = torch.cat([g["inputs"][t] for g in good]).to(device)
                emb = teacher.encode_image(x, normalize=True).float().cpu().numpy().reshape(len(good), augs, -1)
            caps = [(x["captions"] * C)[:C] for x in items]  # pad short caption lists by repeating
            tok = teacher.tokenizer([c for cs in caps for c in cs]).to(device)
            temb = teacher.encode_text(tok, normalize=True).float().cpu().numpy().reshape(len(items), C, -1)
            g = 0
            for r, x in enumerate(items):
                out[f"txt_{t}"][j + r] = temb[r]
                if x["ok"]:
                    out[f"img_{t}"][j + r] = emb[g]
                    g += 1
        for r, x in enumerate(items):
            out["ok"][j + r] = x["ok"]
            if x["ok"]:
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
    """Read side: memory-maps each shard's arrays on first use (per worker process)."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise CacheError(f"{str(self.root)!r} is not a teacher cache (no manifest.json); "
                             "build one with `mobileclip cache-teacher`")
        self.manifest = json.loads(mpath.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{str(mpath)!r}: unsupported cache format {self.manifest.get('format_version')}")
        missing = [s for s in range(self.manifest["num_shards"]) if not _shard_dir(self.root, s).is_dir()]
        if missing:
            raise CacheError(f"{str(self.root)!r} is incomplete: {len(missing)} of {self.manifest['num_shards']} "
                             f"shards missing (first: {missing[0]}); rerun cache-teacher with the same arguments "
                             "to finish it")
        self.augs = int(self.manifest["augs"])
        self.shard_size = int(self.manifest["shard_size"])
        self.num_teachers = len(self.manifest["teachers"])
        self._open: dict = {}

    @property
    def teacher_dims(self) -> list:
        return [t["embed_dim"] for t in self.manifest["teachers"]]

    @property
    def teacher_logit_scales(self) -> list:
        return [t["logit_scale"] for t in self.manifest["teachers"]]

    def _arrays(self, i: int):
        s, r = divmod(i, self.shard_size)
        if s not in self._open:
            d = _shard_dir(self.root, s)
            self._open[s] = {p.stem: np.load(p, mmap_mode="r") for p in d.glob("*.npy")}
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
