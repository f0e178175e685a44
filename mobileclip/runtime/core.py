"""Run a bundle without torch: ONNX Runtime sessions, Pillow/numpy preprocessing, the pure-python BPE.

``load(bundle_dir)`` verifies the manifest and every file's sha256, opens one ONNX Runtime
session per tower and returns a :class:`RuntimeModel`. Preprocessing is
:mod:`mobileclip.transforms` (Pillow + numpy) configured from the manifest — the same
code the PyTorch side uses — so the tensors are the same.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from mobileclip.config import PreprocessConfig
from mobileclip.backends import names as backend_names, runner_for, runtime_name
from mobileclip.backends.bundle import BundleError, load_manifest, signature_misses
from mobileclip.backends.onnx import OrtRunner
from mobileclip.errors import MobileCLIPError, RuntimeInputError
from mobileclip.templates import check_templates
from mobileclip.transforms import load_image, preprocess_array

from .hf_tokenizer import HFTokenizer, load_bundle_tokenizer
from .tokenizer import ClipBPE

RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
ImageLike = Union[str, Path, Image.Image, np.ndarray]


class RuntimeBackendError(MobileCLIPError):
    """The bundle's artifacts are for a backend the torch-free runtime does not run."""


class ImageReadError(MobileCLIPError):
    """An image file is missing or cannot be decoded."""

    def __init__(self, path: Union[str, Path], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")


# ------------------------------------------------------------------ images

def read_image(path: Union[str, Path]) -> Image.Image:
    """Open an image file as 8-bit RGB with its EXIF orientation applied (deeper images are
    converted by their real range, see :mod:`mobileclip.transforms`); :class:`ImageReadError`
    names the file and says what is wrong with it."""
    from mobileclip.transforms import IMAGE_READ_ERRORS, ImageDecodeError

    p = Path(path).expanduser()
    if not p.exists():
        raise ImageReadError(p, "the file does not exist")
    if p.is_dir():
        raise ImageReadError(p, "it is a directory, not an image file")
    if not p.is_file():
        raise ImageReadError(p, "not a regular file")
    try:
        return load_image(p)
    except ImageDecodeError as e:
        raise ImageReadError(p, str(e)) from e
    except PermissionError as e:
        raise ImageReadError(p, f"permission denied ({e.strerror})") from e
    except IMAGE_READ_ERRORS as e:
        raise ImageReadError(p, f"not a decodable image ({type(e).__name__}: {e})") from e


def to_pil(image: ImageLike) -> Image.Image:
    """A path, PIL image or array as an 8-bit RGB PIL image.

    Arrays are ``uint8`` (0..255) or ``uint16`` (0..65535, 16-bit data: ``round(v / 257)``,
    the rule for 16-bit files), shaped ``HW`` or ``HWC`` with 1, 3 or 4 channels. PIL images
    in any mode are converted by :func:`mobileclip.transforms.to_rgb`.
    """
    from mobileclip.transforms import ImageDecodeError, array_to_image, to_rgb

    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        try:
            return to_rgb(image)
        except ImageDecodeError as e:
            raise RuntimeInputError(f"cannot use this {image.mode} PIL image: {e}") from e
    if isinstance(image, np.ndarray):
        if image.dtype not in (np.uint8, np.uint16):
            raise RuntimeInputError(f"image arrays must be uint8 (0..255) or uint16 (0..65535) HWC, got dtype "
                                    f"{image.dtype}; convert with (x * 255).clip(0, 255).astype(np.uint8) for "
                                    "floats in [0, 1]")
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))) or 0 in image.shape[:2]:
            raise RuntimeInputError(f"image arrays must be HW or HWC with 1, 3 or 4 channels and a non-empty "
                                    f"height and width, got shape {image.shape}")
        return to_rgb(array_to_image(image))
    raise RuntimeInputError(f"an image must be a file path, a PIL image or a uint8/uint16 array, got "
                            f"{type(image).__name__}")


class Preprocessor:
    """Image → ``float32 [3, S, S]``: RGB (EXIF-rotated for files, transparency on white), resize, crop, mean/std.

    Exactly :func:`mobileclip.transforms.preprocess_array` with the bundle's settings.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
                 interpolation: str = "bilinear", mode: str = "shortest", crop: str = "center") -> None:
        if mode not in RESIZE_MODES:
            raise RuntimeBackendError(f"resize mode {mode!r} is not supported by the runtime; supported: "
                                      f"{list(RESIZE_MODES)}")
        if interpolation not in INTERPOLATIONS:
            raise RuntimeBackendError(f"interpolation {interpolation!r} is not supported by the runtime; "
                                      f"supported: {list(INTERPOLATIONS)}")
        if crop != "center":
            raise RuntimeBackendError(f"crop {crop!r} is not supported by the runtime; supported: ['center']")
        if len(mean) != 3 or len(std) != 3:
            raise BundleError(f"mean/std need 3 values each, got {list(mean)} / {list(std)}")
        self.cfg = PreprocessConfig(int(image_size), tuple(float(v) for v in mean), tuple(float(v) for v in std),
                                    interpolation, mode)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Preprocessor":
        try:
            resize = manifest["resize"]
            return cls(manifest["image_size"], manifest["mean"], manifest["std"], resize["interpolation"],
                       resize["mode"], resize.get("crop", "center"))
        except KeyError as e:
            raise BundleError(f"the bundle manifest has no {e.args[0]!r}; re-export the bundle") from e

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def __call__(self, image: ImageLike) -> np.ndarray:
        return preprocess_array(to_pil(image), self.cfg)

    def batch(self, images: Sequence[ImageLike]) -> np.ndarray:
        s = self.cfg.image_size
        if not images:
            return np.zeros((0, 3, s, s), np.float32)
        return np.stack([self(im) for im in images])

    def __repr__(self) -> str:
        c = self.cfg
        return f"Preprocessor(size={c.image_size}, resize={c.resize_mode}, interpolation={c.interpolation})"


# ------------------------------------------------------------------ sessions

# What this torch-free runtime runs: artifacts whose engine is ONNX Runtime (.onnx, and .ort files).
RUNTIME_BACKENDS = tuple(n for n in backend_names() if runtime_name(n).startswith("onnxruntime"))


def check_backend(directory: Path, role: str, entry: dict, allowed: Sequence[str] = RUNTIME_BACKENDS) -> None:
    backend = entry.get("backend") if isinstance(entry, dict) else None
    if backend not in allowed:
        raise RuntimeBackendError(
            f"the {role} tower of bundle {str(directory)!r} is a {backend!r} artifact; mobileclip.runtime "
            f"runs ONNX Runtime bundles only ({', '.join(RUNTIME_BACKENDS)}). Export an ONNX bundle of the same model with "
            "`mobileclip export <model> --format onnx --out <dir>`, or use `mobileclip bench` for "
            f"{backend} artifacts")


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def bundle_fingerprint(manifest: dict) -> str:
    """sha256 over the image and text artifacts' checksums: which towers produced an embedding."""
    files, arts = manifest.get("files", {}), manifest.get("artifacts", {})
    try:
        digests = [files[arts[t]["file"]] for t in ("image", "text")]
    except (KeyError, TypeError) as e:
        raise BundleError(f"the bundle manifest has no checksum for an artifact ({e!r}); re-export the bundle") from e
    return hashlib.sha256(":".join(digests).encode()).hexdigest()


# ------------------------------------------------------------------ the model

def _is_single_image(x) -> bool:
    return isinstance(x, (str, Path, Image.Image)) or (isinstance(x, np.ndarray) and x.ndim in (2, 3))


def _as_image_list(images) -> list:
    if _is_single_image(images):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        raise RuntimeInputError(f"image arrays must be HW, HWC or a batch NHWC, got shape {images.shape}")
    if isinstance(images, (list, tuple)):
        return list(images)
    raise RuntimeInputError(f"images must be a path, a PIL image, a uint8 array or a list of those, got "
                            f"{type(images).__name__}")


class RuntimeModel:
    """A loaded bundle. ``encode_image`` / ``encode_text`` return L2-normalized ``float32 [N, D]``."""

    def __init__(self, directory: Union[str, Path], manifest: dict, providers: Optional[Sequence[str]] = None,
                 threads: int = 0, batch_size: int = 32) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        try:
            self.name = str(manifest["model"])
            self.embed_dim = int(manifest["embed_dim"])
            self.logit_scale = float(manifest["logit_scale"])
            token_dtype = manifest["tokenizer"].get("token_dtype", "int32")
        except (KeyError, TypeError, AttributeError) as e:
            raise BundleError(f"the manifest of {str(self.directory)!r} lacks {e!r}; re-export the bundle") from e
        if token_dtype not in ("int32", "int64"):
            raise BundleError(f"token dtype {token_dtype!r} in the manifest: expected int32 or int64")
        if batch_size < 1:
            raise RuntimeInputError(f"batch_size must be >= 1, got {batch_size}")
        self.token_dtype = np.dtype(token_dtype)
        self.fingerprint = bundle_fingerprint(manifest)
        # The one way every consumer opens a bundle (bench and export's parity too); backends are checked for
        # both towers before any runner exists, and the towers run on ONNX Runtime with the given providers.
        opened = open_bundle(self.directory, threads=threads, manifest=manifest, backends_allowed=RUNTIME_BACKENDS,
                             hf_tokenizer=False)
        self.preprocess = opened.preprocess
        # tokenizer.json through the `tokenizers` library when it is installed, else our pure-Python BPE
        self.tokenizer: Union[ClipBPE, HFTokenizer] = opened.tokenizer
        for runner in opened.runners.values():
            runner.providers = providers
        self.image_tower = opened.runners["image"].activate()
        self.text_tower = opened.runners["text"].activate()
        misses = signature_misses(manifest)   # the graphs' own signatures were checked against these entries
        if misses:
            raise BundleError(f"bundle {str(self.directory)!r}: {'; '.join(misses)}; re-export the bundle")
        for role, tower in (("image", self.image_tower), ("text", self.text_tower)):
            if tower.output_dim is not None and tower.output_dim != self.embed_dim:
                raise BundleError(f"the {role} tower gives {tower.output_dim}-d embeddings, the manifest's "
                                  f"embed_dim is {self.embed_dim}; re-export the bundle")
        self.batch_size = self.image_tower.fixed_batch or int(batch_size)
        self.vocab_size: Optional[int] = manifest["tokenizer"].get("vocab_size")   # the text tower's rows
        self._class_cache: dict = {}

    def _run(self, role: str, tower: OrtRunner, x: np.ndarray) -> np.ndarray:
        """One tower call; the engine's own failure becomes one line naming the bundle and the tower."""
        try:
            out = tower(x)
        except MobileCLIPError:
            raise
        except Exception as e:   # onnxruntime raises its own exception types (Fail, InvalidArgument, ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise RuntimeBackendError(f"the {role} tower of bundle {str(self.directory)!r} failed on a batch of "
                                      f"{len(x)}: {type(e).__name__}: {first}; check the bundle with "
                                      "`mobileclip validate`") from e
        if out.ndim != 2 or len(out) != len(x) or not np.isfinite(out).all():
            raise RuntimeBackendError(f"the {role} tower of bundle {str(self.directory)!r} gave "
                                      + ("non-finite embeddings" if out.ndim == 2 and len(out) == len(x)
                                         else f"an output of shape {out.shape} for a batch of {len(x)}")
                                      + "; check the bundle with `mobileclip validate`")
        return out

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    # -------------------------------------------------------------- encoders

    def encode_pixels(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed ``float32 [N, 3, S, S]`` → normalized embeddings ``[N, D]``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, self.image_size, self.image_size):
            raise RuntimeInputError(f"pixels must be float32 [N, 3, {self.image_size}, {self.image_size}], "
                                    f"got {x.shape}")
        if not len(x):
            return np.zeros((0, self.embed_dim), np.float32)
        return _normalize(np.concatenate([self._run("image", self.image_tower, x[i:i + self.batch_size])
                                          for i in range(0, len(x), self.batch_size)]))

    def encode_image(self, images: Union[ImageLike, Sequence[ImageLike]]) -> np.ndarray:
        """A path, PIL image, ``uint8`` HWC array, or a list of them → ``float32 [N, D]`` (N=1 for one image)."""
        items = _as_image_list(images)
        outs = [self.encode_pixels(self.preprocess.batch(items[i:i + self.batch_size]))
                for i in range(0, len(items), self.batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, self.embed_dim), np.float32)

    def tokenize(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        return self.tokenizer(texts, dtype=self.token_dtype)

    def encode_text(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """A string or a list of strings → ``float32 [N, D]``."""
        tokens = self.tokenize(texts)
        if not len(tokens):
            return np.zeros((0, self.embed_dim), np.float32)
        if self.vocab_size is not None and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            bad = int(tokens.max()) if tokens.max() >= self.vocab_size else int(tokens.min())
            raise RuntimeBackendError(f"the tokenizer of bundle {str(self.directory)!r} gave id {bad}, "
                                      f"outside the text tower's {self.vocab_size} token embeddings; re-export the "
                                      "bundle")
        return _normalize(np.concatenate([self._run("text", self.text_tower, tokens[i:i + self.batch_size])
                                          for i in range(0, len(tokens), self.batch_size)]))

    # -------------------------------------------------------------- zero-shot

    def class_embeddings(self, labels: Sequence[str], templates: Optional[Iterable[str]] = None) -> np.ndarray:
        """One normalized embedding per label: the mean over templates of the prompt embeddings, renormalized."""
        if isinstance(labels, str):
            raise RuntimeInputError("labels must be a list of strings, e.g. ['cat', 'dog'], not one string")
        labels = list(labels)
        if not labels:
            raise RuntimeInputError("the label list is empty; give at least one label, e.g. ['cat', 'dog']")
        bad = [lb for lb in labels if not isinstance(lb, str) or not lb.strip()]
        if bad:
            raise RuntimeInputError(f"labels must be non-empty strings; got {bad[:3]}")
        templates = check_templates(templates)
        key = (tuple(labels), tuple(templates))
        if key not in self._class_cache:
            prompts = [t.format(lb) for lb in labels for t in templates]
            emb = self.encode_text(prompts).reshape(len(labels), len(templates), self.embed_dim).mean(axis=1)
            if len(self._class_cache) > 16:
                self._class_cache.clear()
            self._class_cache[key] = _normalize(emb)
        return self._class_cache[key]

    def classify(self, images, labels: Sequence[str], templates: Optional[Iterable[str]] = None,
                 top: Optional[int] = None):
        """Zero-shot labels for one image → ``[(label, probability), ...]`` sorted, most likely first.

        Probabilities are ``softmax(logit_scale * cosine)`` over ``labels`` (they sum to 1;
        ``top`` keeps the first ``top``). A list of images gives one such list per image.
        """
        single = _is_single_image(images)
        weights = self.class_embeddings(labels, templates)
        if top is not None and top < 1:
            raise RuntimeInputError(f"top must be >= 1, got {top}")
        probs = _softmax(self.logit_scale * (self.encode_image(images) @ weights.T))
        labels = list(labels)
        results = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[:top]
            results.append([(labels[i], float(p[i])) for i in order])
        return results[0] if single else results

    def __repr__(self) -> str:
        return (f"RuntimeModel({self.name!r}, bundle={str(self.directory)!r}, embed_dim={self.embed_dim}, "
                f"image_size={self.image_size}, context_length={self.context_length})")


TOWERS = ("image", "text")


def bundle_tokenizer(directory: Path, info: dict, hf_tokenizer: bool = True):
    """The tokenizer a bundle ships, as apps build it: CLIP's BPE (``tokenizer.json`` through the ``tokenizers``
    library when installed, else the pure-Python BPE; the two checked against each other), or, with
    ``hf_tokenizer``, a transformers CLIP tokenizer from the files a Hugging Face bundle ships (``transformers``
    needed; without it such a bundle is refused with the runtime's reason). Returns ``texts -> ids``."""
    if info.get("name") != "hf" or not hf_tokenizer:
        return load_bundle_tokenizer(directory, info)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    ctx = int(info["context_length"])
    return lambda texts: tok(list(texts), padding="max_length", max_length=ctx, truncation=True,
                             return_tensors="np")["input_ids"]


class OpenedBundle:
    """A bundle opened by :func:`open_bundle`: its checked ``manifest``, the ``preprocess`` and ``tokenizer`` built
    from it, one not-yet-activated runner per tower (``runners``), and the ``problems`` that kept a part from
    being built (``strict=False`` only)."""

    def __init__(self, directory: Path, manifest: dict, preprocess, tokenizer, runners: dict,
                 problems: dict) -> None:
        self.directory, self.manifest, self.preprocess, self.tokenizer = directory, manifest, preprocess, tokenizer
        self.runners, self.problems = runners, problems

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(self.manifest["tokenizer"].get("token_dtype", "int32"))

    def tokens(self, texts: Sequence[str]) -> np.ndarray:
        """``texts`` through the bundle's tokenizer, in the dtype its text tower takes."""
        if self.tokenizer is None:
            raise BundleError(self.problems.get("tokenizer") or f"{str(self.directory)!r} has no tokenizer")
        return np.ascontiguousarray(np.asarray(self.tokenizer(list(texts))).astype(self.token_dtype))

    def close(self) -> None:
        for r in self.runners.values():
            r.deactivate()


def open_bundle(bundle_dir: Union[str, Path], device: str = "cpu", threads: int = 0, *, verify: bool = True,
                strict: bool = True, manifest: Optional[dict] = None,
                backends_allowed: Optional[Sequence[str]] = None, hf_tokenizer: Optional[bool] = True) -> OpenedBundle:
    """Open a bundle the one way every consumer does (the runtime, export's parity check, ``mobileclip bench``):
    the manifest (its schema, and every file's sha256 with ``verify``; or ``manifest`` already loaded), the
    preprocessing and the tokenizer it ships, and a runner per tower from its backend (``device``, ``threads``;
    not activated). ``backends_allowed`` refuses other backends before any of their modules is imported.
    ``strict=False`` records a preprocessing or tokenizer that cannot be built in ``problems`` (``{"preprocess":
    reason, "tokenizer": reason}``) instead of raising. ``hf_tokenizer``: a Hugging Face tokenizer through
    transformers (True), refused as the runtime refuses it (False), or not built at all (None: parity then feeds
    the source's ids)."""
    directory = Path(bundle_dir).expanduser()
    if manifest is None:
        manifest = load_manifest(directory, verify=verify)
    try:
        entries = {t: manifest["artifacts"][t] for t in TOWERS}
    except (KeyError, TypeError) as e:
        raise BundleError(f"the manifest of {str(directory)!r} lacks {e!r}; re-export the bundle") from e
    if backends_allowed is not None:
        for role, entry in entries.items():
            check_backend(directory, role, entry, backends_allowed)
    problems, preprocess, tokenizer = {}, None, None
    try:
        preprocess = Preprocessor.from_manifest(manifest)
    except (MobileCLIPError, TypeError, ValueError, KeyError) as e:
        if strict:
            raise
        problems["preprocess"] = f"the bundle's preprocessing cannot be built from its manifest: {e}"
    info = manifest.get("tokenizer") or {}
    try:
        if not (hf_tokenizer is None and info.get("name") == "hf"):
            tokenizer = bundle_tokenizer(directory, info, bool(hf_tokenizer))
    except (MobileCLIPError, OSError, TypeError, ValueError, KeyError, ImportError) as e:
        if strict:
            raise
        problems["tokenizer"] = f"the bundle's tokenizer cannot be built from its manifest: {e}"
    runners = {t: runner_for(directory, entry, device=device, threads=threads) for t, entry in entries.items()}
    return OpenedBundle(directory, manifest, preprocess, tokenizer, runners, problems)


def load(bundle_dir: Union[str, Path], providers: Optional[Sequence[str]] = None, threads: int = 0,
         batch_size: int = 32, verify: bool = True) -> RuntimeModel:
    """Load an ONNX bundle: checks the manifest and every file's sha256 (``verify``), opens the sessions.

    ``providers``: ONNX Runtime execution providers (default CPU; a GPU provider ONNX Runtime could
    not create is refused with :class:`~mobileclip.backends.BackendUnavailable`, never silently run
    on the CPU); ``threads``: intra-op threads (0: ONNX Runtime's default); ``batch_size``:
    images/texts per session call for dynamic-batch artifacts (a fixed-batch artifact uses its own
    batch, padding the last).
    """
    directory = Path(bundle_dir).expanduser()
    manifest = load_manifest(directory, verify=verify)
    return RuntimeModel(directory, manifest, providers=providers, threads=threads, batch_size=batch_size)
