"""IEEE fp32 on CUDA: PyTorch lets cuDNN convolutions use TF32 by default (and matmuls when asked), so a run
called "fp32" is not fp32 unless these contexts say so. Used by ``mobileclip bench``'s fp32 rows, by
``cache-teacher --precision fp32`` and by the trainer's ``precision=fp32``."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


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
