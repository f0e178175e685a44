"""The runtime's ``tokenizer.json`` tokenizer (:class:`HFTokenizer`, through the ``tokenizers`` library) and the
checks that a bundle's tokenizer files agree with each other and with its vocabulary (:func:`check_bundle_tokenizer`,
:func:`load_bundle_tokenizer`). What ``tokenizer.json`` holds and how it reproduces open_clip's tokenizer:
:mod:`mobileclip.runtime.tokenizer_json`."""
from __future__ import annotations

import hashlib
import html
import html.entities
import json
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .tokenizer import SPECIAL_TOKENS, ClipBPE, TokenizerError, read_merges, tokenizer_from_manifest
from .tokenizer_json import CLIP_PATTERN, clip_vocab


TOKENIZER_JSON = "tokenizer.json"   # the file name a bundle uses
MANIFEST_KEY = "tokenizer_json"     # manifest["tokenizer"][MANIFEST_KEY] = TOKENIZER_JSON


def _fix_surrogates(text: str) -> str:
    """ftfy's ``fix_surrogates`` (Rust strings cannot hold surrogates)."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    from ftfy.fixes import fix_surrogates

    return fix_surrogates(text)


class HFTokenizer:
    """``HFTokenizer("tokenizer.json")(["a photo of a cat"])`` -> ``int64 [N, context_length]`` like :class:`ClipBPE`.

    ``clean="python"``: open_clip's cleaning (ftfy, ``html.unescape`` twice, whitespace, ``lower``)
    and its regex split run in Python, ``tokenizers`` does the byte-level BPE, the special tokens,
    truncation and padding - ids equal open_clip's (and :class:`ClipBPE`'s) on every text.
    ``clean="json"``: only the JSON (what apps on other platforms run; see the module docstring for
    where it differs). ``"auto"`` (default): ``"python"`` when ftfy and regex are installed.
    """

    def __init__(self, path: Union[str, Path], clean: str = "auto") -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise TokenizerError("the 'tokenizers' package is not installed; use ClipBPE") from e
        if clean not in ("auto", "python", "json"):
            raise ValueError(f"clean must be 'auto', 'python' or 'json', got {clean!r}")
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {str(path)!r} does not exist; re-export the bundle")
        try:
            text = path.read_text(encoding="utf-8")
            config = json.loads(text)
            self._tok = Tokenizer.from_str(text)
        except Exception as e:   # tokenizers raises plain Exception on a bad file
            raise TokenizerError(f"{str(path)!r} is not a valid tokenizer.json ({e}); re-export the bundle") from e
        padding, truncation = self._tok.padding, self._tok.truncation
        if not padding or not truncation or padding.get("length") != truncation.get("max_length"):
            raise TokenizerError(f"{str(path)!r} does not pad and truncate to one fixed length; re-export the bundle")
        self.context_length = int(padding["length"])
        self.pad_id = int(padding["pad_id"])
        self.sot_token_id = self._tok.token_to_id(SPECIAL_TOKENS[0])
        self.eot_token_id = self._tok.token_to_id(SPECIAL_TOKENS[1])
        if self.sot_token_id is None or self.eot_token_id is None:
            raise TokenizerError(f"{str(path)!r} has no CLIP start/end tokens; re-export the bundle")
        steps = (config.get("normalizer") or {}).get("normalizers", [])
        self.lowercase = any(step.get("type") == "Lowercase" for step in steps)
        if clean == "auto":
            try:
                import ftfy  # noqa: F401
                import regex  # noqa: F401
                clean = "python"
            except ImportError:
                clean = "json"
        self.clean_mode = clean
        if clean == "python":
            import ftfy
            import regex

            self._fix_text = ftfy.fix_text
            self._pat = regex.compile(CLIP_PATTERN, regex.IGNORECASE)
            self._tok.normalizer = None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def clean(self, text: str) -> str:
        """The cleaned text that is split: open_clip's ``_clean_lower`` (``_clean_whitespace`` for a
        case-keeping tokenizer) with ``clean="python"``, the JSON's normalizer with ``"json"``."""
        if self.clean_mode == "json":
            return self._tok.normalizer.normalize_str(_fix_surrogates(text))
        text = " ".join(html.unescape(html.unescape(self._fix_text(text))).strip().split())
        return text.lower() if self.lowercase else text

    def __call__(self, texts: Union[str, Sequence[str]], dtype=np.int64) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TokenizerError(f"the tokenizer takes a string or a list of strings, got items of type {bad[0]}")
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=dtype)
        if not texts:
            return out
        if self.clean_mode == "json":
            out[:] = [e.ids for e in self._tok.encode_batch([_fix_surrogates(t) for t in texts])]
            return out
        cleaned = [self.clean(t) for t in texts]
        # A special token's text is one piece for open_clip's regex only where no punctuation run
        # precedes it, while tokenizers would match it anywhere: such texts are split in Python.
        special = [i for i, t in enumerate(cleaned) if any(s in t for s in SPECIAL_TOKENS)]
        plain = sorted(set(range(len(cleaned))) - set(special))
        if plain:
            out[plain] = [e.ids for e in self._tok.encode_batch([cleaned[i] for i in plain])]
        if special:
            words = [self._pat.findall(cleaned[i]) for i in special]
            out[special] = [e.ids for e in self._tok.encode_batch(words, is_pretokenized=True)]
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of one row of ids: the start token is dropped, everything from the end token on too."""
        ids = [int(i) for i in ids]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        return self._tok.decode([i for i in ids if i != self.sot_token_id], skip_special_tokens=True).strip()

    def __repr__(self) -> str:
        return (f"HFTokenizer(vocab={self.vocab_size}, context_length={self.context_length}, "
                f"clean={self.clean_mode!r})")


def tokenizers_available() -> bool:
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


# A fixed probe corpus on which a bundle's tokenizer.json (run by `tokenizers` alone, as apps run it)
# and its BPE vocabulary file (ClipBPE, open_clip's algorithm) must give the same ids: cased and
# accented words, punctuation runs, contractions, digits, several scripts, an emoji, the special
# tokens' text, whitespace, an entity, and a text longer than any context. It avoids the documented
# gaps of the JSON normalizer (ftfy's mojibake repair, numeric references outside NUMERIC_REFS).
PROBE_CORPUS = (
    "a photo of a cat", "A PHOTO OF A Dog!", "two dogs, 3 cats & 1 bird...", "it's, don't, we'll, they've",
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e na\u00efve", "\u6771\u4eac\u30bf\u30ef\u30fc at night",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0438 \u0440\u0443\u0441\u0441\u043a\u0438\u0439",
    "an emoji \U0001F600 and a heart \u2764", "  tabs\tand\nnewlines   ", "fish &amp; chips",
    "e-mail someone@example.com or https://example.org/a?b=c#d", "1234567890 3.14159 -42",
    "<start_of_text> in a caption <end_of_text>", "", "zebra " * 100,
)


def _first_differences(got: dict, want: dict, n: int = 2) -> str:
    keys = sorted(set(got) | set(want), key=lambda k: (want.get(k, 1 << 30), str(k)))
    diff = [k for k in keys if got.get(k) != want.get(k)]
    return ", ".join(f"{k!r}: {got.get(k)} in tokenizer.json, {want.get(k)} in the vocabulary file"
                     for k in diff[:n]) + (f" (and {len(diff) - n} more)" if len(diff) > n else "")


def tokenizer_json_problem(json_path: Union[str, Path], vocab_file: Union[str, Path]) -> Union[str, None]:
    """How a ``tokenizer.json`` disagrees with CLIP's BPE vocabulary file it claims to encode (None: it
    agrees): the token -> id map, the merges, and the ids of the special tokens, compared in full."""
    try:
        config = json.loads(Path(json_path).read_text(encoding="utf-8"))
        model = config["model"]
        got_vocab, got_merges = dict(model["vocab"]), list(model["merges"])
        added = {t["content"]: t["id"] for t in config.get("added_tokens") or []}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"it cannot be read as a BPE tokenizer.json ({type(e).__name__}: {e})"
    merges = read_merges(vocab_file)
    want_vocab = {tok: i for i, tok in enumerate(clip_vocab(merges))}
    if got_vocab != want_vocab:
        return f"its vocabulary differs ({_first_differences(got_vocab, want_vocab)})"
    # `tokenizers` writes merges as "a b" (older) or ["a", "b"] (newer)
    got_merges = [" ".join(m) if isinstance(m, list) else m for m in got_merges]
    want_merges = [f"{a} {b}" for a, b in merges]
    if got_merges != want_merges:
        i = next((i for i, (a, b) in enumerate(zip(got_merges, want_merges)) if a != b),
                 min(len(got_merges), len(want_merges)))
        return (f"its merges differ from merge {i} on ({len(got_merges)} merges, the vocabulary file has "
                f"{len(want_merges)})")
    wrong = {t: i for t, i in added.items() if want_vocab.get(t) != i}
    if wrong or any(t not in added for t in SPECIAL_TOKENS):
        return f"its special tokens differ ({_first_differences(added, {t: want_vocab[t] for t in SPECIAL_TOKENS})})"
    return None


def _check_padding(tok: "HFTokenizer", info: dict, name: str) -> None:
    want = {"context_length": int(info.get("context_length", tok.context_length)), "pad_id": int(info.get("pad_id", 0))}
    got = {"context_length": tok.context_length, "pad_id": tok.pad_id}
    if want != got:
        raise TokenizerError(f"{name!r} does not match the manifest's tokenizer entry ({got} vs {want}); "
                             "re-export the bundle")


def check_bundle_tokenizer(bundle_dir: Union[str, Path], info: dict, runtime: "HFTokenizer" = None) -> None:
    """Refuse (:class:`TokenizerError`) a CLIP BPE bundle whose tokenizer files disagree with each other
    or with its text tower: ``tokenizer.json`` against the BPE vocabulary file (vocabulary, merges and
    special tokens in full, then :data:`PROBE_CORPUS` tokenized both ways), and every id the vocabulary
    holds against the tower's token-embedding rows (``info["vocab_size"]``, recorded at export).
    ``runtime``: the tokenizer built from that JSON for the runtime (Python cleaning), probed too.
    Checksums prove a file is what the manifest lists; this proves the files say the same thing (about
    0.3 s: the JSON, the vocabulary file and one more tokenizer are read)."""
    if info.get("name") != "clip-bpe":
        return
    bundle_dir = Path(bundle_dir)
    vocab_file = bundle_dir / str(info.get("vocab_file", ""))
    # Files already found consistent in this process are not checked again (keyed by their bytes' sha256).
    name = info.get(MANIFEST_KEY)
    try:
        key = (hashlib.sha256(vocab_file.read_bytes()).hexdigest(),
               hashlib.sha256((bundle_dir / str(name)).read_bytes()).hexdigest() if name else None,
               json.dumps({k: info.get(k) for k in ("context_length", "pad_id", "lowercase", "vocab_size")},
                          sort_keys=True))
    except OSError:
        key = None
    if key is not None and key in _CONSISTENT:
        return
    _check_bundle_tokenizer(bundle_dir, vocab_file, info, runtime)
    if key is not None:
        _CONSISTENT.add(key)


_CONSISTENT: set = set()


def _check_bundle_tokenizer(bundle_dir: Path, vocab_file: Path, info: dict, runtime) -> None:
    rows = info.get("vocab_size")
    if rows is not None:
        n = len(clip_vocab(read_merges(vocab_file)))
        if isinstance(rows, bool) or not isinstance(rows, int) or n > rows:
            raise TokenizerError(f"the bundle's tokenizer gives ids up to {n - 1}, but its text tower has "
                                 f"{rows!r} token embeddings (manifest tokenizer.vocab_size); re-export the bundle")
    name = info.get(MANIFEST_KEY)
    if not name:
        return
    path = bundle_dir / str(name)
    problem = tokenizer_json_problem(path, vocab_file)
    if problem is None and tokenizers_available():
        as_json = HFTokenizer(path, clean="json")
        _check_padding(as_json, info, name)
        ref = ClipBPE(vocab_file, as_json.context_length, as_json.pad_id, bool(info.get("lowercase", True)))
        want = ref(PROBE_CORPUS)
        for mode, tok in (("json", as_json), ("python", runtime)):
            got = (tok or HFTokenizer(path, clean=mode))(PROBE_CORPUS)
            bad = [i for i in range(len(PROBE_CORPUS)) if not np.array_equal(got[i], want[i])]
            if bad:
                problem = (f"it tokenizes {PROBE_CORPUS[bad[0]][:40]!r} to other ids than the vocabulary file "
                           f"({len(bad)} of {len(PROBE_CORPUS)} probe texts differ, {mode} cleaning)")
                break
    if problem:
        raise TokenizerError(f"{str(path)!r} does not agree with the bundle's vocabulary file "
                             f"{info.get('vocab_file')!r}: {problem}; the bundle is inconsistent - re-export it")


def load_bundle_tokenizer(bundle_dir: Union[str, Path], info: dict,
                          prefer: str = "auto") -> Union["HFTokenizer", ClipBPE]:
    """The bundle's tokenizer: :class:`HFTokenizer` when ``tokenizers`` is importable and the manifest's
    tokenizer entry names a ``tokenizer_json`` file, else :class:`ClipBPE` (``prefer="python"`` forces
    ClipBPE, ``"hf"`` requires the JSON path)."""
    if prefer not in ("auto", "hf", "python"):
        raise ValueError(f"prefer must be 'auto', 'hf' or 'python', got {prefer!r}")
    name = info.get(MANIFEST_KEY)
    use_hf = prefer != "python" and info.get("name") == "clip-bpe" and bool(name) and tokenizers_available()
    if prefer == "hf" and not use_hf:
        raise TokenizerError("a tokenizers-based tokenizer was requested, but "
                             + ("the 'tokenizers' package is not installed" if not tokenizers_available()
                                else f"the bundle manifest's tokenizer entry names no {MANIFEST_KEY!r}"))
    if not use_hf:
        check_bundle_tokenizer(bundle_dir, info)
        return tokenizer_from_manifest(bundle_dir, info)
    tok = HFTokenizer(Path(bundle_dir) / name)
    _check_padding(tok, info, name)
    check_bundle_tokenizer(bundle_dir, info, runtime=tok if tok.clean_mode == "python" else None)
    return tok


__all__ = ["TOKENIZER_JSON", "MANIFEST_KEY", "PROBE_CORPUS", "HFTokenizer", "check_bundle_tokenizer",
           "tokenizer_json_problem", "load_bundle_tokenizer", "tokenizers_available"]
