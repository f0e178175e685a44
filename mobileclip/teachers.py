"""Teachers behind the student interface: frozen, always in eval mode.

:class:`Teacher` wraps a module that has ``encode_image`` / ``encode_text`` together with its own
preprocessing and tokenizer, checks what it returns where it enters (rows, size, finite values), and carries
its similarity multiplier. :func:`wrap_teacher` builds one from any such module. Loading one by its spec
(``open_clip:...``, ``hf:...``, ``py:...``, a checkpoint directory, a registered name) is
:func:`mobileclip.factory.load_teacher`'s (``mobileclip.load_teacher``); the third-party loaders are in
:mod:`mobileclip.third_party`.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .errors import MobileCLIPError, TeacherError
from .model import CLIPMixin
from .scales import MAX_SCALE, check_scale, scale_from_log

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
