"""The precision policy, in one place: what ``auto`` means, which precisions a device allows, and the context
each one runs in — for the trainer (``precision=``), ``cache-teacher --precision`` and ``mobileclip bench``.

* ``auto`` is bf16 autocast on CUDA and fp32 on the CPU; fp16 needs CUDA; ``compile`` with bf16 is refused on
  the CPU (:func:`resolve_precision`).
* fp32 is IEEE fp32 on CUDA: PyTorch lets cuDNN convolutions use TF32 by default (and matmuls when asked), so a
  run called "fp32" is not fp32 unless :func:`ieee_fp32` says so; bf16/fp16 are ``torch.autocast``
  (:func:`autocast`).
"""
from __future__ import annotations

import contextlib
from contextlib import contextmanager
from typing import Iterator

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device, compile: bool = False) -> str:
    """``auto`` → bf16 on CUDA, fp32 on the CPU; fp16 needs CUDA; ``compile`` with bf16 is refused on the CPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    if precision == "bf16" and compile and device.type == "cpu":
        # Measured with torch 2.14.1 on x86-64: one compiled bf16-autocast step of mobileclip-s0 aborts the
        # process ("free(): invalid next size", SIGABRT) in Inductor's generated CPU code; an earlier torch gave
        # NaN gradients on mobileclip-tiny. Eager bf16 and compiled fp32 are right. On CUDA the combination is
        # allowed, and the GPU check compares a compiled step with an eager one.
        raise ConfigError("compile=true with precision=bf16 is not supported on CPU (torch.compile's CPU code "
                          "for bf16 autocast aborts on mobileclip-s0 and gave NaN gradients on mobileclip-tiny); "
                          "use precision=fp32 with compile, or compile=false with bf16")
    return precision


def autocast(precision: str, device):
    """The context a resolved precision runs in: IEEE fp32 on CUDA for fp32 (nothing on the CPU), else
    ``torch.autocast`` in bf16 or fp16."""
    import torch

    if precision == "fp32":
        return ieee_fp32() if device.type == "cuda" else contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextmanager
def _no_tf32(new, legacy) -> Iterator[None]:
    """IEEE fp32 in the block for one kind of CUDA op, restored after: through ``new.fp32_precision`` where
    torch has it (PyTorch >= 2.9: ``"ieee"``, ``"tf32"`` or ``"none"``), else ``legacy.allow_tf32``. Reading
    the old flag raises a RuntimeError once the new API has been used ("mix of the legacy and new APIs"), so
    only one of them is ever touched."""
    new_api = new is not None and hasattr(new, "fp32_precision")
    owner, attr, value = (new, "fp32_precision", "ieee") if new_api else (legacy, "allow_tf32", False)
    saved = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, saved)


def ieee_fp32_matmul():
    """fp32 CUDA matmuls in full fp32 (no TF32) inside the block; the previous setting is restored after."""
    import torch

    return _no_tf32(torch.backends.cuda.matmul, torch.backends.cuda.matmul)


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """fp32 CUDA matmuls *and* cuDNN convolutions in full fp32 inside the block (cuDNN allows TF32 for
    convolutions by default, so an "fp32" timing of a conv tower would otherwise be a TF32 one)."""
    import torch

    with _no_tf32(getattr(torch.backends.cudnn, "conv", None), torch.backends.cudnn), ieee_fp32_matmul():
        yield
