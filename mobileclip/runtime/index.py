"""An image index: embeddings of every image under a folder, searchable by text or by image.

File format (one file, a NumPy ``.npz`` zip archive read with ``allow_pickle=False``;
the file name is free, e.g. ``pictures.idx``):

* ``embeddings``: ``float16`` or ``float32 [N, D]``, L2-normalized, row ``i`` is ``files[i]``;
* ``metadata``: ``uint8`` bytes of a UTF-8 JSON object::

    {"format": "mobileclip-image-index", "version": 1,
     "root": "/abs/folder",              # the indexed folder; paths below are relative to it
     "bundle": "/abs/bundle",            # the bundle that embedded the images (search's default)
     "model": "mobileclip-s0", "fingerprint": "<sha256>",   # of the bundle's image+text artifacts
     "embed_dim": 512, "dtype": "float16",
     "files":   [{"path": "2024/a.jpg", "size": 123456, "mtime_ns": 1700000000000000000}, ...],
     "skipped": [{"path": "bad.jpg", "size": 10, "mtime_ns": ..., "error": "..."}, ...],
     "created": "2025-01-01T12:00:00Z", "updated": "..."}

Files are images (by extension, recursively; hidden files and folders are left out, and
links to folders are not followed).
Unreadable ones are skipped and listed, never fatal; they are retried on ``update`` once
their size or mtime changes. ``update`` embeds only new or changed files (size or mtime
differ) and drops deleted ones. An index can only be updated or searched with a bundle
of the same fingerprint: embeddings of other towers are not comparable. Writes go to a
temporary file renamed into place.
"""
from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from mobileclip.errors import MobileCLIPError
from mobileclip.files import atomic_write

from .core import ImageReadError, RuntimeInputError, RuntimeModel, load

FORMAT = "mobileclip-image-index"
VERSION = 1
# The same list as mobileclip.data.datasets.IMAGE_EXTENSIONS (copied: that module imports torch).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_SEARCH_CHUNK = 1 << 16


class ImageIndexError(MobileCLIPError):
    """An index file is missing or malformed, or its folder is gone."""


class IndexMismatchError(ImageIndexError):
    """An index is used with a bundle other than the one that built it."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def scan_images(folder: Union[str, Path]) -> dict:
    """``{relative posix path: (size, mtime_ns)}`` of the image files under ``folder``, recursively (a dangling
    symbolic link: ``(-1, -1)``)."""
    root = Path(folder)
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:  # vanished, or a dangling link: listed (-1, -1), so it fails to load and is counted
                if os.path.islink(p):   # as unreadable, and is tried again once its target exists
                    found[p.relative_to(root).as_posix()] = (-1, -1)
                continue
            found[p.relative_to(root).as_posix()] = (int(st.st_size), int(st.st_mtime_ns))
    return found


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total == 0, dynamic_ncols=True)


def _embed_files(model: RuntimeModel, root: Path, rels: list, progress: bool) -> tuple:
    """Embed ``root/rel`` for each rel, in batches; returns (embeddings [M, D] float32, ok rels, failures)."""
    ok, failed, outs = [], {}, []
    bar = _progress(len(rels), progress, "embedding")
    try:
        for i in range(0, len(rels), model.batch_size):
            pixels, names = [], []
            for rel in rels[i:i + model.batch_size]:
                try:
                    pixels.append(model.preprocess(root / rel))
                    names.append(rel)
                except ImageReadError as e:
                    failed[rel] = e.reason
                except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
                    # decodable headers but pixel data Pillow cannot convert (odd modes, truncated data)
                    failed[rel] = f"{type(e).__name__}: {e}"
                bar.update(1)
            if names:
                outs.append(model.encode_pixels(np.stack(pixels)))
                ok.extend(names)
    finally:
        bar.close()
    emb = np.concatenate(outs) if outs else np.zeros((0, model.embed_dim), np.float32)
    return emb, ok, failed


class ImageIndex:
    """Normalized image embeddings of a folder, with the metadata needed to update and search it."""

    def __init__(self, root: Union[str, Path], embeddings: np.ndarray, files: list, bundle: str, model_name: str,
                 fingerprint: str, skipped: Optional[list] = None, created: Optional[str] = None,
                 updated: Optional[str] = None) -> None:
        if embeddings.ndim != 2 or len(embeddings) != len(files):
            raise ImageIndexError(f"index has {len(files)} files but embeddings of shape {embeddings.shape}")
        self.root = Path(root)
        self.embeddings = embeddings
        self.files = files              # [{"path", "size", "mtime_ns"}], row-aligned with embeddings
        self.skipped = list(skipped or [])
        self.bundle = str(bundle)
        self.model_name = model_name
        self.fingerprint = fingerprint
        self.created = created or _now()
        self.updated = updated or self.created
        self.stats: dict = {}
        self._model: Optional[RuntimeModel] = None

    # -------------------------------------------------------------- properties

    def __len__(self) -> int:
        return len(self.files)

    @property
    def dtype(self) -> str:
        return str(self.embeddings.dtype)

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def paths(self) -> list:
        """Full paths of the indexed images, in row order."""
        return [str(self.root / f["path"]) for f in self.files]

    def __repr__(self) -> str:
        return (f"ImageIndex({len(self)} images under {str(self.root)!r}, model={self.model_name!r}, "
                f"dtype={self.dtype}, {len(self.skipped)} unreadable)")

    # -------------------------------------------------------------- build / update

    @classmethod
    def build(cls, model: RuntimeModel, folder: Union[str, Path], fp16: bool = False,
              progress: bool = True) -> "ImageIndex":
        """Embed every image under ``folder``; unreadable files are skipped and listed in ``index.stats``."""
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise ImageIndexError(f"folder {str(root)!r} " + ("is a file, not a folder of images" if root.exists()
                                                              else "does not exist"))
        found = scan_images(root)
        if not found:
            raise ImageIndexError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {str(root)!r}")
        dtype = np.float16 if fp16 else np.float32
        index = cls(root, np.zeros((0, model.embed_dim), dtype), [], str(model.directory.resolve()), model.name,
                    model.fingerprint)
        index._model = model
        index.stats = index._refresh(model, found, progress)
        return index

    def update(self, model: Optional[RuntimeModel] = None, progress: bool = True) -> dict:
        """Embed new and changed files (size or mtime), drop deleted ones; returns what was done."""
        model = self._bound_model(model)
        if not self.root.is_dir():
            raise ImageIndexError(f"the indexed folder {str(self.root)!r} no longer exists; build a new index")
        self.stats = self._refresh(model, scan_images(self.root), progress)
        return self.stats

    def _refresh(self, model: RuntimeModel, found: dict, progress: bool) -> dict:
        t0 = time.time()
        old = {f["path"]: (i, (f["size"], f["mtime_ns"])) for i, f in enumerate(self.files)}
        old_skipped = {s["path"]: s for s in self.skipped}
        keep, todo, still_skipped = [], [], []
        changed = 0
        for rel, stat in found.items():
            if rel in old and old[rel][1] == stat:
                keep.append(rel)
            elif rel in old_skipped and (old_skipped[rel]["size"], old_skipped[rel]["mtime_ns"]) == stat:
                still_skipped.append(old_skipped[rel])   # unchanged unreadable file: not retried
            else:
                changed += rel in old
                todo.append(rel)
        removed = sum(rel not in found for rel in old)
        emb, ok, failed = _embed_files(model, self.root, todo, progress)
        dtype = self.embeddings.dtype
        paths = keep + ok
        kept_rows = np.asarray([old[rel][0] for rel in keep], dtype=np.intp)
        rows = np.concatenate([self.embeddings[kept_rows], emb.astype(dtype)])
        order = np.asarray(sorted(range(len(paths)), key=paths.__getitem__), dtype=np.intp)   # rows by path
        self.embeddings = rows[order]
        self.files = [{"path": paths[i], "size": found[paths[i]][0], "mtime_ns": found[paths[i]][1]} for i in order]
        new_skipped = [{"path": r, "size": found[r][0], "mtime_ns": found[r][1], "error": err}
                       for r, err in sorted(failed.items())]
        self.skipped = sorted(still_skipped + new_skipped, key=lambda s: s["path"])
        self.updated = _now()
        return {"files": len(self.files), "embedded": len(ok), "added": len(ok) - sum(r in old for r in ok),
                "changed": changed, "removed": removed, "unchanged": len(keep),
                "skipped": [(s["path"], s["error"]) for s in new_skipped],
                "unreadable_total": len(self.skipped), "seconds": round(time.time() - t0, 2)}

    def convert(self, fp16: bool) -> None:
        """Store the embeddings as float16 (half the size) or float32."""
        self.embeddings = self.embeddings.astype(np.float16 if fp16 else np.float32)

    # -------------------------------------------------------------- bundle binding

    def check_model(self, model: RuntimeModel) -> None:
        if model.fingerprint == self.fingerprint and model.embed_dim != self.embed_dim:
            raise IndexMismatchError(
                f"this index holds {self.embed_dim}-d embeddings but bundle {str(model.directory)!r}, whose artifacts "
                f"built it (fingerprint {self.fingerprint[:12]}), gives {model.embed_dim}-d ones: the index file or "
                f"the bundle's manifest was edited since; rebuild the index (mobileclip index {model.directory} "
                f"{self.root} --out NEW.idx)")
        if model.fingerprint != self.fingerprint or model.embed_dim != self.embed_dim:
            raise IndexMismatchError(
                f"this index was built with bundle {self.bundle!r} (model {self.model_name!r}, fingerprint "
                f"{self.fingerprint[:12]}); bundle {str(model.directory)!r} (model {model.name!r}, fingerprint "
                f"{model.fingerprint[:12]}) gives embeddings that cannot be compared with it. Use the original "
                f"bundle (search --bundle {self.bundle}), or build a new index with this bundle "
                f"(mobileclip index {model.directory} {self.root} --out NEW.idx)")

    def _bound_model(self, model: Optional[RuntimeModel]) -> RuntimeModel:
        if model is None:
            if self._model is None:
                if not Path(self.bundle).is_dir():
                    raise ImageIndexError(f"the index's bundle {self.bundle!r} does not exist any more; pass the "
                                          "bundle explicitly (--bundle) — it must be the same export")
                self._model = load(self.bundle)
            model = self._model
        self.check_model(model)
        return model

    # -------------------------------------------------------------- search

    def search(self, query, k: int = 5, model: Optional[RuntimeModel] = None) -> list:
        """The ``k`` images most similar to ``query`` → ``[(path, cosine), ...]``, best first.

        A ``str`` is a text query; a ``pathlib.Path``, PIL image or uint8 array is an image
        query. ``model`` defaults to the bundle the index was built with.
        """
        model = self._bound_model(model)
        if isinstance(query, str):
            if not query.strip():
                raise RuntimeInputError("the text query is empty")
            q = model.encode_text([query])[0]
        else:
            q = model.encode_image(query)
            if len(q) != 1:
                raise RuntimeInputError(f"search takes one query image, got {len(q)}")
            q = q[0]
        return self.search_embedding(q, k)

    def search_embedding(self, query: np.ndarray, k: int = 5) -> list:
        """Brute-force cosine search for a normalized ``[D]`` embedding."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise RuntimeInputError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.embed_dim:
            raise RuntimeInputError(f"query embedding has {q.shape[0]} values, the index {self.embed_dim}")
        n = len(self)
        if n == 0:
            return []
        scores = np.concatenate([self.embeddings[i:i + _SEARCH_CHUNK].astype(np.float32, copy=False) @ q
                                 for i in range(0, n, _SEARCH_CHUNK)])
        k = min(int(k), n)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.lexsort((top, -scores[top]))]   # by score, ties by row
        return [(str(self.root / self.files[i]["path"]), float(scores[i])) for i in top]

    # -------------------------------------------------------------- save / load

    def metadata(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "root": str(self.root), "bundle": self.bundle,
                "model": self.model_name, "fingerprint": self.fingerprint, "embed_dim": self.embed_dim,
                "dtype": self.dtype, "files": self.files, "skipped": self.skipped, "created": self.created,
                "updated": self.updated}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the index atomically (a temporary file in the same folder, renamed into place)."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise ImageIndexError(f"{str(path)!r} is a directory; give a file name such as pictures.idx")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = np.frombuffer(json.dumps(self.metadata()).encode("utf-8"), dtype=np.uint8)
        with atomic_write(path) as f:   # a temporary beside it, renamed into place; a full disk leaves none
            np.savez(f, embeddings=self.embeddings, metadata=meta)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ImageIndex":
        path = Path(path).expanduser()
        if path.is_dir():
            raise ImageIndexError(f"index {str(path)!r} is a directory; give the index file written by "
                                  "`mobileclip index ... --out FILE`")
        if not path.is_file():
            raise ImageIndexError(f"index {str(path)!r} does not exist; build one with `mobileclip index BUNDLE "
                                  f"FOLDER --out {path}`")
        with open(path, "rb") as f:
            raw_bytes = f.read()
        if not raw_bytes.startswith(b"PK"):   # an .npz is a zip archive
            raise ImageIndexError(f"{str(path)!r} is not a mobileclip image index (not a .npz archive; it starts "
                                  f"with {raw_bytes[:16]!r}); build one with `mobileclip index BUNDLE FOLDER --out "
                                  "FILE`")
        try:
            data = np.load(io.BytesIO(raw_bytes), allow_pickle=False)
            emb, raw = data["embeddings"], data["metadata"]
            meta = json.loads(raw.tobytes().decode("utf-8"))
        except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile) as e:
            raise ImageIndexError(f"{str(path)!r} is not a mobileclip image index ({type(e).__name__}: {e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ImageIndexError(f"{str(path)!r} is not a mobileclip image index (format {meta.get('format')!r})"
                                  if isinstance(meta, dict) else f"{str(path)!r} has malformed metadata")
        if meta.get("version") != VERSION:
            raise ImageIndexError(f"{str(path)!r}: index version {meta.get('version')!r} is not supported "
                                  f"(this runtime reads version {VERSION}); rebuild it")
        try:
            index = cls(meta["root"], emb, meta["files"], meta["bundle"], meta["model"], meta["fingerprint"],
                        meta.get("skipped", []), meta.get("created"), meta.get("updated"))
        except KeyError as e:
            raise ImageIndexError(f"{str(path)!r}: index metadata lacks {e.args[0]!r}; rebuild it") from e
        if emb.dtype not in (np.float16, np.float32):
            raise ImageIndexError(f"{str(path)!r}: embeddings have dtype {emb.dtype}, expected float16/float32")
        return index


def build_index(model: RuntimeModel, folder: Union[str, Path], fp16: bool = False,
                progress: bool = True) -> ImageIndex:
    """Shorthand for :meth:`ImageIndex.build`."""
    return ImageIndex.build(model, folder, fp16=fp16, progress=progress)


def load_index(path: Union[str, Path]) -> ImageIndex:
    """Shorthand for :meth:`ImageIndex.load`."""
    return ImageIndex.load(path)
