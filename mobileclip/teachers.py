"""Teachers behind the student interface: frozen, always in eval mode.

Specs understood by :func:`load_teacher` (and :func:`mobileclip.create_model`):

* ``open_clip:<arch>`` — random weights (tests, architecture work)
* ``open_clip:<arch>:<pretrained tag>`` — open_clip downloads (needs network)
* ``open_clip:<arch>:/path/to/weights.{safetensors,pt,bin}`` — a local file, read safely
* ``hf:<local dir or hub id>`` — a transformers ``CLIPModel``
* ``py:<module or file.py>:<callable>`` — your own teacher, built by a function of yours
* a directory written by :func:`mobileclip.save_checkpoint`, or a registered model name
* from Python, any ``nn.Module`` with ``encode_image`` / ``encode_text``, passed with its
  own ``preprocess`` and ``tokenizer`` (:func:`wrap_teacher`).

The teacher's own preprocessing and tokenizer always come with it.
"""
from __future__ import annotations

import difflib
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .config import OPENAI_MEAN, OPENAI_STD, PreprocessConfig, TokenizerConfig
from .errors import MobileCLIPError, TeacherError
from .model import CLIPMixin
from .scales import MAX_SCALE, check_scale, scale_from_log
from .tokenizer import Tokenizer
from .transforms import ImagePreprocess

DEFAULT_TEACHER_SCALE = 100.0


class CallableTokenizer:
    """Adapts any ``texts -> LongTensor`` callable to the :class:`~mobileclip.tokenizer.Tokenizer` interface."""

    def __init__(self, fn: Callable, context_length: int, name: str) -> None:
        self._fn, self.context_length, self.name = fn, context_length, name

    def __call__(self, texts):
        if isinstance(texts, str):
            texts = [texts]
        out = self._fn(list(texts))
        return out if isinstance(out, torch.Tensor) else torch.as_tensor(out)

    def __repr__(self) -> str:
        return f"CallableTokenizer({self.name}, context_length={self.context_length})"


class Teacher(CLIPMixin, nn.Module):
    """A frozen CLIP behind the student interface. ``train()`` keeps it in eval mode.

    ``scale`` is the teacher's similarity multiplier (``exp`` of a CLIP model's ``logit_scale``, e.g. 100), in
    [1, 100]; when omitted, the model's own ``logit_scale`` parameter (a log) is exponentiated, else 100.
    A sigmoid-trained model (one with a ``logit_bias``, SigLIP) whose own multiplier exceeds 100 is capped at
    100, and :attr:`scale_from` says so. ``logit_scale=`` is refused: it was ambiguous (log or not).
    """

    def __init__(self, model: nn.Module, preprocess: Callable, tokenizer: Callable, name: str,
                 encode_image: Optional[Callable] = None, encode_text: Optional[Callable] = None,
                 scale: Optional[float] = None, embed_dim: Optional[int] = None,
                 image_size: Optional[int] = None, context_length: Optional[int] = None,
                 **legacy: Any) -> None:
        super().__init__()
        _refuse_logit_scale_keyword(legacy, "Teacher")
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self._encode_image = encode_image or _normalize_optional(model.encode_image)
        self._encode_text = encode_text or _normalize_optional(model.encode_text)
        self.scale, self.scale_from = _teacher_scale(model, scale, name)
        # As on every CLIP model here, ``logit_scale`` is the log (a buffer: the teacher's temperature is fixed).
        self.register_buffer("logit_scale", torch.tensor(math.log(self.scale)), persistent=False)
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.context_length = context_length if context_length is not None else getattr(tokenizer, "context_length", None)
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def set_scale(self, scale: float) -> "Teacher":
        """Replace the teacher's similarity multiplier (checked to lie in [1, 100])."""
        self.scale = check_scale(scale, f"teacher {self.name!r} scale", TeacherError)
        self.scale_from = "given"
        self.logit_scale.fill_(math.log(self.scale))
        return self

    def train(self, mode: bool = True) -> "Teacher":
        # A teacher is never put into training mode (dropout, BN statistics), whatever the trainer asks.
        return super().train(False)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self._checked("encode_image", self._encode_image, images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self._checked("encode_text", self._encode_text, tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def _checked(self, what: str, fn: Callable, inputs: torch.Tensor) -> torch.Tensor:
        """``fn(inputs)``, refused with a :class:`TeacherError` naming the teacher unless it is what every consumer
        of a teacher's embeddings assumes: one finite, non-zero row of ``embed_dim`` numbers per input. Not while
        the teacher is being traced or exported (its graph holds no such check; the exported artifact's parity is)."""
        if _tracing():
            return fn(inputs)
        try:
            x = fn(inputs)
        except (MobileCLIPError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:
            if "out of memory" in str(e).lower():
                raise
            raise TeacherError(f"teacher {self.name!r}: {what} raised {type(e).__name__}: {str(e)[:300]}") from e
        rows = int(inputs.shape[0])
        problem = _embedding_problem(x, rows, self.embed_dim)
        if problem:
            raise TeacherError(f"teacher {self.name!r}: {what} on {rows} input(s) returned {problem}; a teacher must "
                               "return one finite, non-zero embedding per input (check its weights and its code)")
        return x

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, image_size={self.image_size}, scale={self.scale:g}"


def _tracing() -> bool:
    """Inside torch.export / torch.compile / torch.jit tracing, where data-dependent checks cannot run."""
    compiler = getattr(torch, "compiler", None)
    return bool((compiler is not None and compiler.is_compiling()) or torch.jit.is_tracing()
                or torch.jit.is_scripting())


def _embedding_problem(x: Any, rows: int, dim: Optional[int]) -> Optional[str]:
    """What is wrong with a teacher's output for ``rows`` inputs (None: nothing)."""
    if not isinstance(x, torch.Tensor):
        return f"a {type(x).__name__}, not a tensor"
    if x.dim() != 2 or x.shape[0] != rows:
        return f"shape {tuple(x.shape)}, not ({rows}, dim)"
    if dim and x.shape[1] != dim:
        return f"{x.shape[1]}-d embeddings where the teacher's embedding size is {dim}"
    if not x.is_floating_point():
        return f"a {x.dtype} tensor, not floating point"
    finite = torch.isfinite(x).all(dim=1)
    zero = x.abs().amax(dim=1) == 0
    if not bool((zero | ~finite).any()):   # one device sync per call on the good path (online distillation)
        return None
    if not bool(finite.all()):
        return f"non-finite values (NaN or inf) in {int((~finite).sum())} of {rows} rows"
    return f"all-zero embeddings in {int(zero.sum())} of {rows} rows (they cannot be normalized)"


def _normalize_optional(fn: Callable) -> Callable:
    """Call ``fn`` unnormalized when it takes ``normalize``; the wrapper normalizes itself."""
    try:
        takes = "normalize" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes = False
    return (lambda x: fn(x, normalize=False)) if takes else fn


def wrap_teacher(module: nn.Module, preprocess: Callable, tokenizer: Callable, name: Optional[str] = None,
                 scale: Optional[float] = None, embed_dim: Optional[int] = None,
                 image_size: Optional[int] = None, **legacy: Any) -> Teacher:
    """Bring your own teacher: any module with ``encode_image`` and ``encode_text``.

    ``scale`` is the similarity multiplier in [1, 100] (``exp`` of a CLIP model's ``logit_scale``, e.g. 100);
    when omitted, the module's own ``logit_scale`` parameter (a log) is exponentiated, else 100.
    """
    _refuse_logit_scale_keyword(legacy, "wrap_teacher")
    for attr in ("encode_image", "encode_text"):
        if not callable(getattr(module, attr, None)):
            raise TeacherError(f"{type(module).__name__} has no {attr}(); a teacher needs encode_image and encode_text")
    if not callable(preprocess) or not callable(tokenizer):
        raise TeacherError("wrap_teacher needs the teacher's own preprocess and tokenizer callables")
    return Teacher(module, preprocess, tokenizer, name or type(module).__name__, scale=scale,
                   embed_dim=embed_dim, image_size=image_size)


def _refuse_logit_scale_keyword(extra: dict, where: str) -> None:
    if "logit_scale" in extra:
        v = extra.pop("logit_scale")
        raise TeacherError(f"{where}(logit_scale={v!r}) is no longer accepted: it was ambiguous (the log of the "
                           "similarity multiplier, or the multiplier?). Pass scale=<the multiplier in [1, 100]>, e.g. "
                           "scale=100, or scale=float(model.logit_scale.exp()) for a CLIP model's own")
    if extra:
        raise TypeError(f"{where}() got unexpected keyword arguments {sorted(extra)}")


def _teacher_scale(model: nn.Module, scale: Optional[float], name: str) -> tuple:
    """``(multiplier, where it came from)``: the explicit ``scale`` checked, else the model's own log scale."""
    if scale is not None:
        if isinstance(scale, torch.Tensor):
            raise TeacherError(f"teacher {name!r}: scale must be a number (the multiplier, e.g. 100), got a tensor; "
                               "pass float(model.logit_scale.exp()) for a CLIP model's own")
        return check_scale(scale, f"teacher {name!r} scale", TeacherError), "given"
    own = getattr(model, "logit_scale", None)
    if not isinstance(own, torch.Tensor):
        return DEFAULT_TEACHER_SCALE, "default (the model has no logit_scale)"
    log_value = float(own.detach().float().reshape(-1)[0])
    has_bias = isinstance(getattr(model, "logit_bias", None), torch.Tensor)
    if has_bias and math.log(MAX_SCALE) < log_value < math.log(1000.0):
        return MAX_SCALE, (f"the model's own exp(logit_scale) = {math.exp(log_value):.4g} (sigmoid-trained), capped at "
                           f"{MAX_SCALE:g}")
    return scale_from_log(log_value, f"teacher {name!r}: the model's logit_scale", TeacherError), \
        "the model's own exp(logit_scale)"


# --------------------------------------------------------------------------- open_clip

def _open_clip_arch(arch: str) -> None:
    import open_clip

    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5)
        raise TeacherError(
            f"open_clip has no architecture {arch!r}" + (f"; did you mean {close}?" if close else "")
            + " Run `mobileclip models` for the list."
        )


_PP_KEYS = ("mean", "std", "interpolation", "resize_mode")


def open_clip_preprocess(arch: str, tag: Optional[str] = None, weights_file: Optional[str] = None) -> dict:
    """The preprocessing open_clip's released weights for ``arch`` were trained with.

    From ``open_clip.get_pretrained_cfg(arch, tag)``; without a tag (a local weights file, or
    random weights) from the architecture's tags when they all agree. Returns ``{"mean", "std",
    "interpolation", "resize_mode", "from"}``, or ``{"from": "model default"}`` for an
    architecture with no released weights. A local file for an architecture whose tags disagree
    (e.g. ``ViT-L-14``: ``laion2b_s32b_b82k`` uses mean/std 0.5) is an error asking which tag the
    file is (``open_clip:<arch>:<tag>=<file>``): guessing would be silently wrong.
    """
    import open_clip

    tags = [tag] if tag else list(open_clip.list_pretrained_tags_by_model(arch))
    groups: dict = {}
    for t in tags:
        c = open_clip.get_pretrained_cfg(arch, t) or {}
        key = tuple(tuple(c[k]) if isinstance(c.get(k), (list, tuple)) else c.get(k) for k in _PP_KEYS)
        if key[0] is None:   # a tag without preprocessing settings: open_clip uses its defaults
            continue
        groups.setdefault(key, []).append(t)
    if not groups:
        return {"from": "open_clip model default"}
    if len(groups) > 1:
        if weights_file is None:   # random weights: nothing to match; the model's default
            return {"from": "open_clip model default (its pretrained tags disagree)"}
        listing = "; ".join(f"{ts}: mean {k[0]}, std {k[1]}, {k[2]}, resize {k[3]}" for k, ts in groups.items())
        raise TeacherError(
            f"open_clip:{arch}'s released weights use different preprocessing ({listing}). Say which tag "
            f"{weights_file} is: open_clip:{arch}:<tag>={weights_file}")
    (key, ts), = groups.items()
    out = dict(zip(_PP_KEYS, key))
    out["mean"], out["std"] = tuple(out["mean"]), tuple(out["std"])
    out["interpolation"] = out["interpolation"] or "bicubic"
    out["resize_mode"] = out["resize_mode"] or "shortest"
    out["from"] = f"open_clip pretrained cfg {arch}/{','.join(ts)}"
    return out


def _split_open_clip_pretrained(arch: str, pretrained: str) -> tuple:
    """``tag``, ``file`` or ``tag=file`` → ``(tag, file)`` (each may be None)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if Path(pretrained).expanduser().is_file():
        return None, str(Path(pretrained).expanduser())
    if "=" in pretrained:
        tag, file = pretrained.split("=", 1)
        if tag not in tags:
            raise TeacherError(f"open_clip:{arch} has no pretrained tag {tag!r}; known tags: {tags}")
        if not Path(file).expanduser().is_file():
            raise TeacherError(f"weights file {file!r} for open_clip:{arch} does not exist")
        return tag, str(Path(file).expanduser())
    if any(sep in pretrained for sep in ("/", os.sep)) or pretrained.endswith(
            (".pt", ".pth", ".bin", ".safetensors", ".ckpt")):
        raise TeacherError(f"weights file {pretrained!r} for open_clip:{arch} does not exist")
    if pretrained not in tags:
        raise TeacherError(f"open_clip:{arch} has no pretrained tag {pretrained!r}; known tags: {tags}")
    return pretrained, None


def load_open_clip_teacher(arch: str, pretrained: Optional[str] = None) -> Teacher:
    """An open_clip CLIP: random weights, a pretrained tag (download), a local file, or ``tag=file``.

    The preprocessing is the one the released weights use (:func:`open_clip_preprocess`), not
    open_clip's model default, which for most MobileCLIP/MobileCLIP2 configs is OpenAI's mean/std
    and bicubic while their weights expect mean 0 / std 1 and bilinear.
    """
    import open_clip

    from .checkpoint import load_state_into, load_weights

    _open_clip_arch(arch)
    tag, weights_file = _split_open_clip_pretrained(arch, pretrained) if pretrained else (None, None)
    pp = open_clip_preprocess(arch, tag, weights_file)
    pp_kwargs = {} if "mean" not in pp else dict(
        image_mean=pp["mean"], image_std=pp["std"], image_interpolation=pp["interpolation"],
        image_resize_mode=pp["resize_mode"])
    download = tag if weights_file is None else None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=download, **pp_kwargs)
    except Exception as e:  # network failures surface as many exception types
        if download is None:
            raise
        raise TeacherError(
            f"could not get the pretrained weights {tag!r} for open_clip:{arch} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Without network access, download the checkpoint elsewhere "
            f"and pass its path: open_clip:{arch}:/path/to/open_clip_model.safetensors"
        ) from e
    if weights_file is not None:
        load_state_into(model, load_weights(weights_file), str(weights_file))
    model.visual.preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {}, preprocess_from=pp["from"])
    tok = open_clip.get_tokenizer(arch)
    context = int(getattr(tok, "context_length", None) or open_clip.get_model_config(arch)["text_cfg"].get(
        "context_length", 77))
    cfg = open_clip.get_model_config(arch)
    image_size = cfg["vision_cfg"].get("image_size", 224)
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    return Teacher(model, preprocess, CallableTokenizer(tok, context, f"open_clip:{arch}"),
                   f"open_clip:{arch}" + (f":{pretrained}" if pretrained else ""),
                   embed_dim=cfg.get("embed_dim"), image_size=image_size)


# --------------------------------------------------------------------------- Hugging Face

def load_hf_teacher(path_or_id: str) -> Teacher:
    """A transformers ``CLIPModel`` from a local directory (or a hub id, with network)."""
    from transformers import CLIPModel

    local = Path(path_or_id).expanduser()
    try:
        model = CLIPModel.from_pretrained(str(local) if local.is_dir() else path_or_id,
                                          local_files_only=local.is_dir())
    except (OSError, ValueError) as e:
        where = "directory" if local.is_dir() else "hub id (needs network)"
        raise TeacherError(f"could not load a transformers CLIPModel from {where} {path_or_id!r}: "
                           f"{str(e).splitlines()[0][:300]}") from e
    vcfg, tcfg = model.config.vision_config, model.config.text_config
    context = int(tcfg.max_position_embeddings)
    mean, std, interpolation = OPENAI_MEAN, OPENAI_STD, "bicubic"
    pp = local / "preprocessor_config.json"
    if local.is_dir() and pp.is_file():
        spec = json.loads(pp.read_text())
        mean = tuple(spec.get("image_mean", mean))
        std = tuple(spec.get("image_std", std))
        interpolation = {2: "bilinear", 3: "bicubic", 0: "nearest"}.get(spec.get("resample", 3), "bicubic")
    preprocess = ImagePreprocess(PreprocessConfig(int(vcfg.image_size), mean, std, interpolation, "shortest"))
    tokenizer = _hf_tokenizer(local if local.is_dir() else path_or_id, context, int(tcfg.vocab_size))

    def image_fn(images):
        return _tensor(model.get_image_features(pixel_values=images))

    def text_fn(tokens):
        return _tensor(model.get_text_features(input_ids=tokens))

    return Teacher(model, preprocess, tokenizer, f"hf:{path_or_id}", encode_image=image_fn, encode_text=text_fn,
                   embed_dim=int(model.config.projection_dim), image_size=int(vcfg.image_size))


def _tensor(out: Any) -> torch.Tensor:
    # transformers 5 returns a model output object; 4.x a tensor.
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]


def _hf_tokenizer(source: Union[Path, str], context: int, vocab_size: int):
    has_files = isinstance(source, Path) and any((source / f).is_file() for f in (
        "tokenizer.json", "vocab.json", "tokenizer_config.json"))
    if has_files or not isinstance(source, Path):
        from transformers import AutoTokenizer

        try:
            hf_tok = AutoTokenizer.from_pretrained(str(source), local_files_only=isinstance(source, Path))
        except (OSError, ValueError) as e:
            raise TeacherError(f"could not load the tokenizer of {source}: {str(e).splitlines()[0][:300]}") from e

        def fn(texts):
            return hf_tok(texts, padding="max_length", truncation=True, max_length=context,
                          return_tensors="pt")["input_ids"]

        return CallableTokenizer(fn, context, f"hf:{source}")
    # A directory with weights only: CLIP checkpoints share the CLIP BPE vocabulary.
    if vocab_size < 49408:
        raise TeacherError(
            f"{source} has no tokenizer files and its vocabulary ({vocab_size}) is smaller than CLIP's BPE "
            "(49408); save the tokenizer beside the model (tokenizer.save_pretrained)"
        )
    return Tokenizer(TokenizerConfig("clip-bpe", context))


# --------------------------------------------------------------------------- dispatch

def is_teacher_spec(name: str) -> bool:
    return isinstance(name, str) and name.startswith(("open_clip:", "hf:", "py:"))


def _import_callable(spec: str) -> Callable:
    """``py:package.module:function`` or ``py:path/to/file.py:function`` → the function."""
    import importlib
    import importlib.util
    import sys

    body = spec[len("py:"):]
    target, sep, attr = body.rpartition(":")
    if not sep or not target or not attr:
        raise TeacherError(f"{spec!r}: a Python teacher is py:<module or file.py>:<callable>, e.g. "
                           "py:my_pkg.teachers:build or py:teachers.py:build")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise TeacherError(f"{spec!r}: {str(path)!r} does not exist")
        mod_name = f"_mobileclip_teacher_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name != target.split(".")[0] and e.name != target:
                raise   # the teacher's own module failed to import one of its dependencies: a real error
            if os.getcwd() not in sys.path:   # console scripts do not put the working directory on the path
                sys.path.append(os.getcwd())    # last, so files there never shadow installed modules
                try:
                    module = importlib.import_module(target)
                except ModuleNotFoundError:
                    raise TeacherError(f"{spec!r}: no module named {target!r} (on sys.path or in the working "
                                       "directory)") from None
            else:
                raise TeacherError(f"{spec!r}: no module named {target!r}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TeacherError(f"{spec!r}: {target} has no callable {attr!r}")
    return fn


def load_py_teacher(spec: str) -> Teacher:
    """Bring your own teacher from the command line: ``py:<module or file.py>:<callable>``.

    The callable takes no arguments and returns a :class:`Teacher`, a module with ``encode_image``,
    ``encode_text`` and its own ``preprocess`` and ``tokenizer`` attributes, or a tuple
    ``(module, preprocess, tokenizer)``.
    """
    obj = _import_callable(spec)()
    if isinstance(obj, Teacher):
        return obj
    if isinstance(obj, tuple) and len(obj) == 3:
        module, preprocess, tokenizer = obj
    elif isinstance(obj, nn.Module):
        module, preprocess, tokenizer = obj, getattr(obj, "preprocess", None), getattr(obj, "tokenizer", None)
        if preprocess is None or tokenizer is None:
            raise TeacherError(f"{spec!r} returned a {type(obj).__name__} without its own preprocess and tokenizer "
                               "attributes; return (module, preprocess, tokenizer) or set module.preprocess and "
                               "module.tokenizer")
    else:
        raise TeacherError(f"{spec!r} returned a {type(obj).__name__}; expected a module with encode_image/"
                           "encode_text (and preprocess/tokenizer attributes), a (module, preprocess, tokenizer) "
                           "tuple, or a mobileclip Teacher")
    if not isinstance(module, nn.Module):
        raise TeacherError(f"{spec!r}: the teacher must be a torch.nn.Module, got {type(module).__name__}")
    image_size = getattr(module, "image_size", None)
    return wrap_teacher(module, preprocess, tokenizer, name=spec, embed_dim=getattr(module, "embed_dim", None),
                        image_size=image_size if isinstance(image_size, int) else None)


def load_teacher(spec: Union[str, nn.Module], preprocess: Optional[Callable] = None,
                 tokenizer: Optional[Callable] = None, device: Union[str, torch.device, None] = None) -> Teacher:
    """Load a frozen teacher from a spec string, a checkpoint directory, or a module."""
    if isinstance(spec, Teacher):
        teacher = spec
    elif isinstance(spec, nn.Module):
        if preprocess is None or tokenizer is None:
            raise TeacherError("a teacher module needs its own preprocess and tokenizer: "
                               "load_teacher(module, preprocess=..., tokenizer=...)")
        teacher = wrap_teacher(spec, preprocess, tokenizer)
    elif not isinstance(spec, str) or not spec:
        raise TeacherError(f"a teacher spec must be a non-empty string or a module, got {spec!r}")
    elif spec.startswith("open_clip:"):
        parts = spec.split(":", 2)
        if not parts[1]:
            raise TeacherError("open_clip teacher spec is open_clip:<arch>[:<pretrained tag or file>]")
        teacher = load_open_clip_teacher(parts[1], parts[2] if len(parts) > 2 and parts[2] else None)
    elif spec.startswith("hf:"):
        if not spec[3:]:
            raise TeacherError("Hugging Face teacher spec is hf:<local dir or hub id>")
        teacher = load_hf_teacher(spec[3:])
    elif spec.startswith("py:"):
        teacher = load_py_teacher(spec)
    else:
        from .factory import create_model

        # A registered name has random weights: seeded, so that two identical runs have the same teacher
        # (and a teacher cache built twice is bit-identical); the caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, pp, tok = create_model(spec)
        teacher = Teacher(model, pp, tok, spec, embed_dim=model.embed_dim, image_size=model.image_size)
    return teacher.to(device) if device is not None else teacher
