"""What every backend exports, in one format-neutral place: the two towers as modules (each returns L2-normalized
embeddings; the text tower takes int32 or int64 ids) and the example inputs an exporter traces them with. The
tensor names are the bundle contract's (:data:`mobileclip.backends.bundle.TENSOR_NAMES`)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

EXAMPLE_PROMPTS = ("a photo of a dog", "a cat")


class ImageTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image, normalize=True)


class TextTower(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens.long(), normalize=True)


def example_inputs(src, batch: int, token_dtype: str = "int32", seed: Optional[int] = 0) -> dict:
    """``{"image": float [batch, 3, S, S] in [0, 1), "text": ids [batch, context]}`` for an export source: random
    pixels (seeded unless ``seed`` is None) and real prompts through the source's tokenizer."""
    s = src.image_size
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    image = torch.rand(batch, 3, s, s, generator=g)
    tokens = src.tokenizer(list(EXAMPLE_PROMPTS) * batch)[:batch].to(getattr(torch, token_dtype))
    return {"image": image, "text": tokens}
