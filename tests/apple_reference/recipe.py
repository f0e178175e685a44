"""A deterministic weight recipe and fixed inputs for checking converters against Apple's model code.

Pure torch (no package imports), so the same file gives the same tensors wherever it runs: in
the tests, and in the one-off run of Apple's own ``ml-mobileclip`` code that produced
``reference.npz`` (see README.md here). Every tensor depends only on its key name, shape and
the seed, not on the order of the state dict.

Values are chosen so that every branch matters and nothing overflows: BatchNorm statistics
and affine weights away from identity, layer scales in [0.05, 0.15] (Apple initializes them
at 1e-5, which would hide a wrong mapping; at ~0.5 the activations of MCi's 20 residual
blocks grow to 1e5 and attention turns float rounding into 1e-2 differences), weights
scaled by fan-in.
"""
from __future__ import annotations

import zlib

import torch


def _gen(name: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def tensor_for(name: str, shape: tuple, dtype: str, seed: int = 0) -> torch.Tensor:
    """The recipe: one tensor, from its state-dict key, shape and dtype."""
    shape = tuple(int(s) for s in shape)
    if dtype != "float32":               # BatchNorm's num_batches_tracked
        return torch.zeros(shape, dtype=getattr(torch, dtype))
    g = _gen(name, seed)
    leaf = name.rsplit(".", 1)[-1]
    n = 1
    for s in shape:
        n *= s
    if leaf == "running_var":
        return torch.rand(shape, generator=g) * 0.5 + 0.75
    if leaf == "running_mean":
        return torch.randn(shape, generator=g) * 0.1
    if "layer_scale" in name or leaf == "gamma":
        return torch.rand(shape, generator=g) * 0.1 + 0.05
    if name.endswith(("embedding_layer.weight", "pos_embed.pos_embed", "cls_token")):
        return torch.randn(shape, generator=g) * 0.02
    if len(shape) <= 1 or n == max(shape):   # norm weights and biases, and [C, 1, 1]-like vectors
        if leaf == "bias":
            return torch.randn(shape, generator=g) * 0.05
        return torch.rand(shape, generator=g) * 0.5 + 0.75
    if leaf in ("projection_layer", "proj"):  # Apple's projections [in, out], applied as x @ P
        fan_in = shape[0]
    else:                                    # conv / linear weights [out, in, *k]
        fan_in = n // shape[0]
    return torch.randn(shape, generator=g) * fan_in ** -0.5


def state_dict_for(layout: list, seed: int = 0) -> dict:
    """``layout``: ``[[name, shape, dtype], ...]`` (as in layouts.json) -> a state dict by the recipe."""
    return {name: tensor_for(name, shape, dtype, seed) for name, shape, dtype in layout}


def fixed_images(image_size: int, n: int = 2) -> torch.Tensor:
    """``[n, 3, S, S]`` in [0, 1]: what Apple's transform (Resize, CenterCrop, ToTensor; no mean/std) gives."""
    g = torch.Generator().manual_seed(1234)
    return torch.rand(n, 3, image_size, image_size, generator=g)


def fixed_tokens(context_length: int = 77, vocab_size: int = 49408) -> torch.Tensor:
    """Three token rows as CLIP's tokenizer makes them: start, ids, end (the largest id), zero padding.

    Lengths 5, 20 and the full context (end token in the last position).
    """
    sot, eot = vocab_size - 2, vocab_size - 1
    g = torch.Generator().manual_seed(4321)
    rows = []
    for length in (5, 20, context_length):
        ids = torch.randint(1, sot, (length - 2,), generator=g)
        row = torch.zeros(context_length, dtype=torch.long)
        row[0], row[1:length - 1], row[length - 1] = sot, ids, eot
        rows.append(row)
    return torch.stack(rows)
