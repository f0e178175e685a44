"""Named loss recipes from the distillation literature, in this toolkit's units (``recipe=<name>``).

A recipe is a set of ``losses.*`` settings applied *under* the YAML file and the ``key=value``
overrides, so any of its keys can still be changed (``recipe=clip-kd losses.icl=0``). It sets the
loss weights and the teacher temperature only; the optimizer, data and steps stay yours. Each entry
names the code it was read from. What a recipe leaves out of the paper's method is said beside it.
"""
from __future__ import annotations

import copy

from mobileclip.errors import ConfigError

# Every loss weight a recipe sets explicitly (the others keep the config's defaults: 0, clip 1).
_ZERO = {"clip": 0.0, "siglip": 0.0, "kd": 0.0, "feature": 0.0, "icl": 0.0, "feature_alpha": 0.0,
         "kd_teacher_scale": 0.0}

RECIPES: dict = {
    # CLIP-KD (Yang et al., CVPR 2024), github winycg/CLIP-KD: src/open_clip/loss.py (KDClipLoss) and
    # script/ViT_B_16_KD/ViT_T_16_kd.sh (--alpha_ckd_loss 1 --alpha_icl_loss 1 --alpha_fd_loss 2000), the task
    # (CLIP) loss at 1. CKD is KL at T=1 with the teacher at its own scale: our kd. FD is
    # 2000 x (F.mse_loss(img) + F.mse_loss(txt)) on normalized features: feature_alpha (= 2 x 2000 / D in our
    # feature units, 15.6 at D = 256). ICL is InfoNCE of student images against teacher texts and back: our icl,
    # which uses the student's scale where CLIP-KD learns a separate one.
    "clip-kd": {"losses": {**_ZERO, "clip": 1.0, "kd": 1.0, "icl": 1.0, "feature_alpha": 2000.0}},
    # MobileCLIP (Vasu et al., CVPR 2024), github apple/ml-mobileclip: training/configs/run_datacompdr1b.sh
    # (--distill-loss-weights 0.25 0.75 --distill-logit-scale 100): 0.25 x CLIP + 0.75 x KD, the KD a
    # cross-entropy to the teachers' softmax at a fixed scale of 100 (our kd: KL, the same gradient). The
    # MobileCLIP-S variants use 0 / 1 (no CLIP term): recipe=mobileclip losses.clip=0 losses.kd=1.
    "mobileclip": {"losses": {**_ZERO, "clip": 0.25, "kd": 0.75, "kd_teacher_scale": 100.0}},
    # TinyCLIP (Wu et al., ICCV 2023), github microsoft/Cream: TinyCLIP/src/open_clip/clip_soft_loss.py
    # (affinity mimicking: the symmetric soft cross-entropy of the image-text affinities, our kd) with
    # --distillation-alpha 1 (soft loss only, no CLIP term; src/training/params.py) and --logit-scale 50
    # (TinyCLIP/script/*.sh) for the teacher. Its weight inheritance (initialising the student from the
    # teacher's weights) is not part of a loss recipe: use student_pretrained.
    "tinyclip": {"losses": {**_ZERO, "kd": 1.0, "kd_teacher_scale": 50.0}},
    # This toolkit's, for a teacher, pairs and data without pairs: chosen on the validation split of the real-teacher
    # benchmark (benchmarks/results/distill_real_sweep.md) over the recipes above: KD at the teacher's own scale, a
    # light feature term and a quarter of the CLIP loss on the pairs, and the three unpaired losses
    # (data.image_cache / data.text_cache). Heavy feature distillation (CLIP-KD's alpha) did worse there.
    "kd-unpaired": {"losses": {**_ZERO, "clip": 0.25, "kd": 1.0, "feature": 1.0, "unpaired_feature": 1.0,
                               "unpaired_intra_kd": 0.5, "unpaired_cross_kd": 1.0}},
}


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_recipe(name, data: dict) -> dict:
    """``data`` (the YAML file and overrides) on top of recipe ``name``'s settings."""
    if not isinstance(name, str) or name not in RECIPES:
        raise ConfigError(f"recipe: unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))} "
                          "(or leave it empty and set the losses.* weights yourself)")
    base = copy.deepcopy(RECIPES[name])
    mine = data.get("losses") if isinstance(data.get("losses"), dict) else {}
    for a, b in (("feature", "feature_alpha"), ("feature_alpha", "feature")):
        if a in mine:   # the same loss given in the other unit replaces the recipe's
            base["losses"].pop(b, None)
    return _merge(base, data)
