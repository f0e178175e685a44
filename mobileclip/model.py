"""The dual encoder every student is: a timm image tower and a text transformer.

All models in this package — students, and teachers behind their adapters — share one
interface:

* ``encode_image(images, normalize=True)`` → ``[B, D]``
* ``encode_text(tokens, normalize=True)`` → ``[B, D]``
* ``logit_scale``: the learnable *log* of the similarity scale (as in open_clip);
  ``forward`` returns it exponentiated.
* ``forward(images, tokens)`` → ``{"image_features", "text_features", "logit_scale"}``
  (plus ``"logit_bias"`` for sigmoid-loss models). Either input may be ``None``.
"""
from __future__ import annotations

from typing import Optional

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import ConfigError
from .text import TextTransformer
from .scales import scale_from_log


class ImageTower(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        icfg = cfg.image
        kwargs = dict(icfg.timm_kwargs)
        if "img_size" not in kwargs and icfg.timm_model_name.startswith(("vit_", "deit_", "eva")):
            kwargs["img_size"] = icfg.image_size
        # timm's classifier head, sized to embed_dim, is the projection (as in MobileCLIP).
        self.trunk = timm.create_model(
            icfg.timm_model_name, pretrained=False, num_classes=cfg.embed_dim,
            drop_path_rate=icfg.drop_path_rate, **kwargs,
        )
        if icfg.layer_norm_eps is not None:
            for m in self.trunk.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eps = icfg.layer_norm_eps
        if icfg.first_conv_padding is not None:
            first = next((m for m in self.trunk.modules() if isinstance(m, nn.Conv2d)), None)
            if first is None:
                raise ConfigError(f"image.first_conv_padding is set but {icfg.timm_model_name} has no Conv2d")
            first.padding = (icfg.first_conv_padding, icfg.first_conv_padding)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)


class CLIPMixin:
    """Shared helpers for anything with ``encode_image`` / ``encode_text`` / ``logit_scale``."""

    def forward(self, images: Optional[torch.Tensor] = None, tokens: Optional[torch.Tensor] = None) -> dict:
        out = {
            "image_features": self.encode_image(images, normalize=True) if images is not None else None,
            "text_features": self.encode_text(tokens, normalize=True) if tokens is not None else None,
            "logit_scale": self.logit_scale.exp(),
        }
        bias = getattr(self, "logit_bias", None)
        if bias is not None:
            out["logit_bias"] = bias
        return out


class CLIP(CLIPMixin, nn.Module):
    """A student dual encoder built from a :class:`~mobileclip.config.ModelConfig`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = ImageTower(cfg)
        self.text = TextTransformer(cfg.text, cfg.embed_dim)
        # init_logit_scale is the *log* of the similarity multiplier (ln(1/0.07) = 2.66 in CLIP): an exponentiated
        # value here (14.3, 100) would start training at exp(14.3) = 1.6e6, so it is checked for both readings.
        scale_from_log(cfg.init_logit_scale, f"{cfg.name}: init_logit_scale")
        if cfg.init_logit_bias is not None and not -100 <= float(cfg.init_logit_bias) <= 100:
            raise ConfigError(f"{cfg.name}: init_logit_bias {cfg.init_logit_bias} is outside [-100, 100]; it is added "
                              "to scaled cosines (SigLIP starts at -10), and beyond that every sigmoid saturates")
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = (
            nn.Parameter(torch.tensor(float(cfg.init_logit_bias))) if cfg.init_logit_bias is not None else None
        )

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def image_size(self) -> int:
        return self.cfg.image.image_size

    @property
    def context_length(self) -> int:
        return self.cfg.text.context_length

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def num_params(self) -> dict:
        return count_params(self)


def count_params(model: nn.Module) -> dict:
    """Parameters of the image tower, the text tower and in total."""
    image = sum(p.numel() for p in model.visual.parameters())
    text = sum(p.numel() for p in model.text.parameters())
    return {"image": image, "text": text, "total": sum(p.numel() for p in model.parameters())}
