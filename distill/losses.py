"""Distillation and contrastive losses: ``nn.Module``s in a registry, returning named terms.

Every loss takes the same two inputs and returns ``{"<name>_loss": scalar}``; the trainer
sums the terms with weights from the config.

* :class:`StudentOut` — L2-normalized student image/text features ``[N, D]`` over the
  whole (accumulated, all-rank) batch, the student's similarity multiplier ``scale`` (the
  exp of its learnable ``logit_scale``) and optional ``logit_bias``.
* :class:`TeacherOut` — normalized teacher features, one ``[N, D_t]`` tensor per teacher
  (an ensemble; sizes may differ), and each teacher's similarity multiplier ``scale`` ``[T]``
  (in [1, 100]: :mod:`mobileclip.scales`; ``losses.kd_teacher_scale`` replaces it).

Both may also carry *unpaired* features: ``image_only`` (images without captions) and
``text_only`` (texts without images), whose teacher embeddings come from their own caches.
The paired losses ignore them; the ``unpaired_*`` losses use them (with the paired rows of
the step as more columns where a term compares across items).

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
TEACHER_LOSSES = {"kd", "feature", "icl", "unpaired_feature", "unpaired_intra_kd", "unpaired_cross_kd"}
UNPAIRED_LOSSES = {"unpaired_feature", "unpaired_intra_kd", "unpaired_cross_kd"}  # need image-/text-only data


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
    scale: torch.Tensor  # the multiplier: exp of the learnable log scale
    logit_bias: Optional[torch.Tensor] = None
    image_only: Optional[torch.Tensor] = None  # [M, D] images without captions
    text_only: Optional[torch.Tensor] = None   # [L, D] texts without images


@dataclass
class TeacherOut:
    image_features: Sequence[torch.Tensor]  # per teacher [N, D_t] (a stacked [T, N, D] tensor works too)
    text_features: Sequence[torch.Tensor]
    scale: torch.Tensor  # [T], each teacher's multiplier (not its log)
    image_only: Optional[Sequence[torch.Tensor]] = None  # per teacher [M, D_t]
    text_only: Optional[Sequence[torch.Tensor]] = None   # per teacher [L, D_t]


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
            li = s.scale * img[rows] @ txt.T
            lt = s.scale * txt[rows] @ img.T
            labels = _labels(img.shape[0], img.device)[rows]
        else:
            li = s.scale * img @ txt.T
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
        logits = s.scale * s.image_features @ s.text_features.T + bias
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
        logits = [t.scale[k] * t.image_features[k] @ t.text_features[k].T for k in range(len(t.image_features))]
        p_i2t = torch.stack([x.softmax(dim=1) for x in logits]).mean(dim=0)
        p_t2i = torch.stack([x.T.softmax(dim=1) for x in logits]).mean(dim=0)
        si = s.scale * s.image_features @ s.text_features.T
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


def clip_kd_feature_weight(alpha: float, teacher_dim: int) -> float:
    """CLIP-KD's feature-distillation weight ``alpha`` in :class:`FeatureLoss`'s units.

    CLIP-KD adds ``alpha * (F.mse_loss(img_s, img_t) + F.mse_loss(txt_s, txt_t))``, each a mean over N x D;
    :class:`FeatureLoss` is the squared distance summed over D, averaged over N and over image and text, so
    ``alpha * (mse_img + mse_txt) = (2 * alpha / D) * FeatureLoss``."""
    return 2.0 * float(alpha) / int(teacher_dim)


@register_loss("feature")
class FeatureLoss(nn.Module):
    """CLIP-KD feature distillation: squared distance between the (projected, renormalized)
    student embedding and the teacher's, image and text, averaged over teachers.
    For unit vectors this is ``2 - 2·cos``. With ``feature_alpha`` (CLIP-KD's alpha), teacher k's
    term is weighted by :func:`clip_kd_feature_weight` (``2 alpha / D_k``) and the loss is used at weight 1."""

    def __init__(self, student_dim: int = 0, teacher_dims: Optional[list] = None, feature_alpha: float = 0.0,
                 **_: object) -> None:
        super().__init__()
        dims = list(teacher_dims or [student_dim])
        self.proj = _Projections(student_dim, dims)
        self.teacher_weights = [clip_kd_feature_weight(feature_alpha, d) if feature_alpha else 1.0 for d in dims]

    def forward(self, s: StudentOut, t: TeacherOut) -> dict:
        total = 0.0
        for k in range(len(t.image_features)):
            si, st = self.proj(s.image_features, k), self.proj(s.text_features, k)
            total = total + self.teacher_weights[k] * (((si - t.image_features[k]) ** 2).sum(-1).mean()
                                                       + ((st - t.text_features[k]) ** 2).sum(-1).mean())
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
            a = s.scale * si @ t.text_features[k].T
            b = s.scale * st @ t.image_features[k].T
            total = total + (F.cross_entropy(a, labels) + F.cross_entropy(b, labels)) / 2
        return {"icl_loss": total / len(t.image_features)}


def _rows(x) -> int:
    return 0 if x is None else int(x.shape[0])


def _sides(s: StudentOut, t: TeacherOut) -> list:
    """The unpaired sides present: ``(student rows, teacher rows per teacher, student columns, teacher
    columns per teacher, the other modality's student columns, ... teacher columns)`` for images, then texts.

    Same-modality columns are every item of that modality in the step (paired first, then unpaired);
    cross-modality columns every item of the other modality."""
    out = []
    T = len(t.image_features)
    for mine, other in (("image", "text"), ("text", "image")):
        s_rows, t_rows = getattr(s, f"{mine}_only"), getattr(t, f"{mine}_only")
        if _rows(s_rows) == 0:
            continue

        def cat(a, b):
            return a if _rows(b) == 0 else torch.cat([a, b])

        s_same = cat(getattr(s, f"{mine}_features"), s_rows)
        t_same = [cat(getattr(t, f"{mine}_features")[k], t_rows[k]) for k in range(T)]
        s_cross = cat(getattr(s, f"{other}_features"), getattr(s, f"{other}_only"))
        t_other = getattr(t, f"{other}_only")
        t_cross = [cat(getattr(t, f"{other}_features")[k], None if t_other is None else t_other[k])
                   for k in range(T)]
        out.append((s_rows, t_rows, s_same, t_same, s_cross, t_cross))
    return out


@register_loss("unpaired_feature")
class UnpairedFeatureLoss(nn.Module):
    """Feature distillation on unpaired items: each image without a caption pulls the student's
    (projected, renormalized) image embedding to the teacher's, each text without an image its text
    embedding; ``2 - 2·cos`` per item, averaged over items of each side, the sides and the teachers."""

    def __init__(self, student_dim: int = 0, teacher_dims: Optional[list] = None, **_: object) -> None:
        super().__init__()
        self.proj = _Projections(student_dim, list(teacher_dims or [student_dim]))

    def forward(self, s: StudentOut, t: TeacherOut) -> dict:
        sides = _sides(s, t)
        total = s.image_features.new_zeros(())
        for s_rows, t_rows, *_ in sides:
            for k in range(len(t_rows)):
                total = total + ((self.proj(s_rows, k) - t_rows[k]) ** 2).sum(-1).mean()
        n = len(sides) * len(t.image_features)
        return {"unpaired_feature_loss": total / n if n else total}


def _kd_rows(t_rows, t_cols, scales, s_rows, s_cols, s_scale, exclude_self_from: Optional[int] = None):
    """Mean KL(teacher || student) over rows of row-vs-column similarity distributions. With several
    teachers the target is the mean of their probabilities. ``exclude_self_from``: row i is column
    ``exclude_self_from + i`` (itself), which is left out of both distributions."""
    mask = None
    if exclude_self_from is not None:
        m = s_rows.shape[0]
        mask = torch.zeros(m, s_cols.shape[0], dtype=torch.bool, device=s_rows.device)
        mask[torch.arange(m), exclude_self_from + torch.arange(m)] = True
    probs = []
    for k in range(len(t_rows)):
        logits = scales[k] * t_rows[k] @ t_cols[k].T
        if mask is not None:
            logits = logits.masked_fill(mask, -math.inf)
        probs.append(logits.softmax(dim=1))
    p = torch.stack(probs).mean(dim=0)
    sl = s_scale * s_rows @ s_cols.T
    if mask is not None:
        sl = sl.masked_fill(mask, -1e4)   # finite: its target probability is 0, so it adds nothing to the KL
    return _kl_rows(p, sl)


@register_loss("unpaired_intra_kd")
class UnpairedIntraKDLoss(nn.Module):
    """Relational KD within a modality: for each image without a caption, the teacher's distribution
    over the step's other images (paired and unpaired; itself left out) at the teacher's temperature,
    matched by the student's at its own; each text without an image likewise over the step's other
    texts. KL averaged over rows, then over the sides present."""

    def __init__(self, **_: object) -> None:
        super().__init__()

    def forward(self, s: StudentOut, t: TeacherOut) -> dict:
        sides = _sides(s, t)
        total = s.image_features.new_zeros(())
        for s_rows, t_rows, s_same, t_same, _, _ in sides:
            offset = s_same.shape[0] - s_rows.shape[0]   # the unpaired rows come after the paired ones
            total = total + _kd_rows(t_rows, t_same, t.scale, s_rows, s_same, s.scale, offset)
        return {"unpaired_intra_kd_loss": total / len(sides) if sides else total}


@register_loss("unpaired_cross_kd")
class UnpairedCrossKDLoss(nn.Module):
    """Cross-modal KD from unpaired data: for each image without a caption, the teacher's image→text
    distribution over a bank of texts — the step's captions and texts without images, as the teacher
    embeds them — matched by the student's distribution over its own embeddings of the same texts;
    each text without an image likewise over the step's images. This teaches the student which
    captions fit an image (and which images a text) without any pair. KL averaged over rows, then
    over the sides present."""

    def __init__(self, **_: object) -> None:
        super().__init__()

    def forward(self, s: StudentOut, t: TeacherOut) -> dict:
        sides = _sides(s, t)
        total = s.image_features.new_zeros(())
        for s_rows, t_rows, _, _, s_cross, t_cross in sides:
            total = total + _kd_rows(t_rows, t_cross, t.scale, s_rows, s_cross, s.scale)
        return {"unpaired_cross_kd_loss": total / len(sides) if sides else total}


def build_losses(weights: dict, student_dim: int, teacher_dims: list, local_loss: bool = False,
                 feature_alpha: float = 0.0) -> nn.ModuleDict:
    """Instantiate every loss with a non-zero weight (``feature_alpha``: :class:`FeatureLoss` in CLIP-KD's units)."""
    from mobileclip.errors import ConfigError

    out = nn.ModuleDict()
    for name, w in weights.items():
        if name not in LOSSES:
            raise ConfigError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
        if w:
            out[name] = LOSSES[name](student_dim=student_dim, teacher_dims=teacher_dims, local_loss=local_loss,
                                     feature_alpha=feature_alpha)
    if not out:
        raise ConfigError("every loss weight is zero: set at least one of " + ", ".join(sorted(LOSSES)))
    return out


def max_logit_scale() -> float:
    """The learnable log scale is clamped to ln(100) after every step (CLIP)."""
    return math.log(100.0)
