"""Distillation and contrastive losses: ``nn.Module``s in a registry, returning named terms.

Every loss takes the same two inputs and returns ``{"<name>_loss": scalar}``; the trainer
sums the terms with weights from the config.

* :class:`StudentOut` — L2-normalized student image/text features ``[N, D]`` over the
  whole (accumulated, all-rank) batch, the exponentiated ``logit_scale`` and optional
  ``logit_bias``.
* :class:`TeacherOut` — normalized teacher features, one ``[N, D_t]`` tensor per teacher
  (an ensemble; sizes may differ), and each teacher's exponentiated logit scale ``[T]``.

Adding a loss is one class here plus one ``@register_loss`` line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOSSES: dict[str, Callable[..., nn.Module]] = {}
TEACHER_LOSSES = {"kd", "feature", "icl"}  # losses that need teacher outputs


def register_loss(name: str):
    def deco(cls):
        LOSSES[name] = cls
        cls.loss_name = name
        return cls

    return deco


@dataclass
class StudentOut:
    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor  # exp of the learnable log scale
    logit_bias: Optional[torch.Tensor] = None


@dataclass
class TeacherOut:
    image_features: Sequence[torch.Tensor]  # per teacher [N, D_t] (a stacked [T, N, D] tensor works too)
    text_features: Sequence[torch.Tensor]
    logit_scale: torch.Tensor  # [T], exponentiated


def _labels(n: int, device) -> torch.Tensor:
    return torch.arange(n, device=device)


@register_loss("clip")
class ClipLoss(nn.Module):
    """Symmetric InfoNCE (CLIP). ``local_loss``: only this rank's rows are queries
    (against all candidates), as open_clip's ``local_loss``; ``rows`` selects them."""

    def __init__(self, local_loss: bool = False, **_: object) -> None:
        super().__init__()
        self.local_loss = local_loss

    def forward(self, s: StudentOut, t: Optional[TeacherOut] = None, rows: Optional[slice] = None) -> dict:
        img, txt = s.image_features, s.text_features
        if self.local_loss and rows is not None:
            li = s.logit_scale * img[rows] @ txt.T
            lt = s.logit_scale * txt[rows] @ img.T
            labels = _labels(img.shape[0], img.device)[rows]
        else:
            li = s.logit_scale * img @ txt.T
            lt = li.T
            labels = _labels(img.shape[0], img.device)
        return {"clip_loss": (F.cross_entropy(li, labels) + F.cross_entropy(lt, labels)) / 2}


@register_loss("siglip")
class SigLipLoss(nn.Module):
    """Sigmoid loss (Zhai et al. 2023): every pair is a binary match / no-match decision.

    Uses the student's learnable scale and bias; a student without a ``logit_bias`` gets one
    here (initialised to -10, as in SigLIP), trained with the loss.
    """

    def __init__(self, init_bias: float = -10.0, **_: object) -> None:
        super().__init__()
        self.logit_bias = nn.Parameter(torch.tensor(init_bias))

    def forward(self, s: StudentOut, t: Optional[TeacherOut] = None) -> dict:
        bias = s.logit_bias if s.logit_bias is not None else self.logit_bias
        logits = s.logit_scale * s.image_features @ s.text_features.T + bias
        n = logits.shape[0]
        signs = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
        return {"siglip_loss": -F.logsigmoid(signs * logits).sum() / n}


def _kl_rows(target_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(target || softmax(student_logits))."""
    logp = F.log_softmax(student_logits, dim=1)
    return (torch.xlogy(target_probs, target_probs) - target_probs * logp).sum(dim=1).mean()


@register_loss("kd")
class KDLoss(nn.Module):
    """KL divergence from the teacher's image→text and text→image similarity distributions
    (each teacher at its own temperature) to the student's. With several teachers the
    target is the mean of their probabilities."""

    def __init__(self, **_: object) -> None:
        super().__init__()

    def forward(self, s: StudentOut, t: TeacherOut) -> dict:
        logits = [t.logit_scale[k] * t.image_features[k] @ t.text_features[k].T for k in range(len(t.image_features))]
        p_i2t = torch.stack([x.softmax(dim=1) for x in logits]).mean(dim=0)
        p_t2i = torch.stack([x.T.softmax(dim=1) for x in logits]).mean(dim=0)
        si = s.logit_scale * s.image_features @ s.text_features.T
        return {"kd_loss": (_kl_rows(p_i2t, si) + _kl_rows(p_t2i, si.T)) / 2}


class _Projections(nn.Module):
    """One learned linear map per teacher from the student's to the teacher's embedding
    size (identity when they match)."""

    def __init__(self, student_dim: int, teacher_dims: list[int]) -> None:
        super().__init__()
        self.maps = nn.ModuleList(
            nn.Identity() if d == student_dim else nn.Linear(student_dim, d, bias=False) for d in teacher_dims
        )

    def forward(self, x: torch.Tensor, teacher: int) -> torch.Tensor:
        return F.normalize(self.maps[teacher](x), dim=-1)


@register_loss("feature")
class FeatureLoss(nn.Module):
    """CLIP-KD feature distillation: squared distance between the (projected, renormalized)
    student embedding and the teacher's, image and text, averaged over teachers.
    For unit vectors this is ``2 - 2·cos``."""

    def __init__(self, student_dim: int = 0, teacher_dims: Optional[list] = None, **_: object) -> None:
        super().__init__()
        self.proj = _Projections(student_dim, list(teacher_dims or [student_dim]))

    def forward(self, s: StudentOut, t: TeacherOut) -> dict:
        total = 0.0
        for k in range(len(t.image_features)):
            si, st = self.proj(s.image_features, k), self.proj(s.text_features, k)
            total = total + ((si - t.image_features[k]) ** 2).sum(-1).mean() \
                + ((st - t.text_features[k]) ** 2).sum(-1).mean()
        return {"feature_loss": total / (2 * len(t.image_features))}


@register_loss("icl")
class ICLLoss(nn.Module):
    """Interactive contrastive learning (CLIP-KD): student images against teacher texts and
    teacher images against student texts, InfoNCE at the student's temperature."""

    def __init__(self, student_dim: int = 0, teacher_dims: Optional[list] = None, **_: object) -> None:
        super().__init__()
        self.proj = _Projections(student_dim, list(teacher_dims or [student_dim]))

    def forward(self, s: StudentOut, t: TeacherOut) -> dict:
        total = 0.0
        labels = _labels(s.image_features.shape[0], s.image_features.device)
        for k in range(len(t.image_features)):
            si, st = self.proj(s.image_features, k), self.proj(s.text_features, k)
            a = s.logit_scale * si @ t.text_features[k].T
            b = s.logit_scale * st @ t.image_features[k].T
            total = total + (F.cross_entropy(a, labels) + F.cross_entropy(b, labels)) / 2
        return {"icl_loss": total / len(t.image_features)}


def build_losses(weights: dict, student_dim: int, teacher_dims: list, local_loss: bool = False) -> nn.ModuleDict:
    """Instantiate every loss with a non-zero weight."""
    from mobileclip.errors import ConfigError

    out = nn.ModuleDict()
    for name, w in weights.items():
        if name not in LOSSES:
            raise ConfigError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
        if w:
            out[name] = LOSSES[name](student_dim=student_dim, teacher_dims=teacher_dims, local_loss=local_loss)
    if not out:
        raise ConfigError("every loss weight is zero: set at least one of " + ", ".join(sorted(LOSSES)))
    return out


def max_logit_scale() -> float:
    """The learnable log scale is clamped to ln(100) after every step (CLIP)."""
    return math.log(100.0)
