"""Captions tokenized once (:class:`TokenTable`), optionally kept on disk between runs and ranks."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch


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
    # SAMPLE random ones (and the first and last) of a larger one (docs/trust.md: what a re-signed table can do).
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


