"""CLIP's byte-level BPE tokenizer in pure Python (no torch, no open_clip).

It reads the vocabulary file a bundle ships (``bpe_simple_vocab_16e6.txt.gz``) and gives
exactly the ids of open_clip's ``SimpleTokenizer`` (``clean="lower"``, no reduction
mask): text is fixed with ftfy, HTML-unescaped twice, whitespace-collapsed and
lower-cased; split with CLIP's regex; each piece is mapped byte-by-byte to printable
unicode and merged with the first ``49152 - 256 - 2`` merges of the file. A sequence is
``<start_of_text> ids… <end_of_text>`` padded with ``pad_id``; a longer one is truncated
to the context length with the end token kept in the last position.
"""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from mobileclip.errors import MobileCLIPError

SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
N_MERGES = 49152 - 256 - 2


class TokenizerError(MobileCLIPError):
    """The bundle's tokenizer cannot be used by the runtime (unknown kind, missing or bad vocabulary)."""


@lru_cache()
def bytes_to_unicode() -> dict:
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _pairs(word: tuple) -> set:
    return {(a, b) for a, b in zip(word[:-1], word[1:])}


def read_merges(vocab_file: Union[str, Path]) -> list:
    """The merge pairs of CLIP's ``bpe_simple_vocab_16e6.txt.gz``; :class:`TokenizerError` says what is wrong."""
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise TokenizerError(f"tokenizer vocabulary {str(vocab_file)!r} does not exist; re-export the bundle")
    try:
        with gzip.open(vocab_file, "rb") as f:
            lines = f.read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise TokenizerError(f"tokenizer vocabulary {str(vocab_file)!r} cannot be read ({e}); "
                             "it should be CLIP's gzipped BPE merges file") from e
    merges = [tuple(m.split()) for m in lines[1:N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise TokenizerError(f"{str(vocab_file)!r} is not CLIP's BPE merges file (expected {N_MERGES} merge "
                             f"pairs after the header line)")
    return merges


class ClipBPE:
    """``ClipBPE(vocab_file, context_length)(["a photo of a cat"])`` → ``int64 [N, context_length]``."""

    def __init__(self, vocab_file: Union[str, Path], context_length: int = 77, pad_id: int = 0,
                 lowercase: bool = True) -> None:
        import ftfy  # the tokenizer's own dependencies (open_clip's too)
        import regex

        self._fix_text = ftfy.fix_text
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise TokenizerError(f"tokenizer vocabulary {str(vocab_file)!r} does not exist; re-export the bundle")
        if not isinstance(context_length, int) or context_length < 2:
            raise TokenizerError(f"context length must be an integer >= 2 (room for the start and end tokens), "
                                 f"got {context_length!r}")
        merges = read_merges(vocab_file)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self._cache = {t: t for t in SPECIAL_TOKENS}
        self._pat = regex.compile("|".join(SPECIAL_TOKENS)
                                  + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                  regex.IGNORECASE)
        self.sot_token_id = self.encoder[SPECIAL_TOKENS[0]]
        self.eot_token_id = self.encoder[SPECIAL_TOKENS[1]]
        self.context_length = context_length
        self.pad_id = int(pad_id)
        self.lowercase = bool(lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def clean(self, text: str) -> str:
        text = html.unescape(html.unescape(self._fix_text(text))).strip()
        text = " ".join(text.split())
        return text.lower() if self.lowercase else text

    def bpe(self, token: str) -> str:
        """Merge one regex piece (already byte-mapped); pieces are joined by spaces."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        ranks = self.bpe_ranks
        while True:
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            merged = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list:
        """The ids of ``text`` without start/end tokens."""
        ids = []
        for piece in self._pat.findall(self.clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of one row of ids: the start token is dropped, everything from the end token on (padding) too."""
        ids = [int(i) for i in ids]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        text = "".join(self.decoder[i] for i in ids if i in self.decoder and i != self.sot_token_id)
        text = bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return text.replace("</w>", " ").strip()

    def __call__(self, texts: Union[str, Sequence[str]], dtype=np.int64) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TokenizerError(f"the tokenizer takes a string or a list of strings, got items of type {bad[0]}")
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=dtype)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out

    def __repr__(self) -> str:
        return f"ClipBPE(vocab={self.vocab_size}, context_length={self.context_length})"


def tokenizer_from_manifest(bundle_dir: Union[str, Path], info: dict) -> ClipBPE:
    """The tokenizer a bundle's manifest describes (``manifest["tokenizer"]``)."""
    name = info.get("name")
    if name == "hf":
        raise TokenizerError("this bundle uses a Hugging Face tokenizer (manifest tokenizer 'hf'), which the "
                             "torch-free runtime does not implement; export a model with CLIP's BPE tokenizer "
                             "(our students, open_clip CLIPs, or an HF CLIP saved without its own tokenizer "
                             "files), or run this bundle through `mobileclip validate`/`bench` with transformers")
    if name != "clip-bpe":
        raise TokenizerError(f"bundle tokenizer {name!r} is not supported by the runtime; known: ['clip-bpe']")
    for key in ("vocab_file", "context_length"):
        if key not in info:
            raise TokenizerError(f"the bundle manifest's tokenizer entry has no {key!r}; re-export the bundle")
    return ClipBPE(Path(bundle_dir) / info["vocab_file"], int(info["context_length"]), int(info.get("pad_id", 0)),
                   bool(info.get("lowercase", True)))
