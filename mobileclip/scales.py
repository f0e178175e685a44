"""Similarity scales, spelled one way: the multiplier on cosine similarities (CLIP's ``exp(logit_scale)``).

A CLIP model stores the *log* of its scale (``model.logit_scale``, ln(1/0.07) at init, clamped to
ln(100) in training), and the loss multiplies cosines by its exponential. Mixing the two up is silent
and ruinous for distillation: a teacher scale passed as ``exp(x)`` where ``x`` was expected (or
exponentiated twice) is ~1e5-1e7, at which every teacher softmax is one-hot. So everywhere a scale
enters this toolkit — :class:`mobileclip.teachers.Teacher` (``scale=``), the teacher cache's manifest
(``"scale"``), ``losses.kd_teacher_scale`` — it is the multiplier, checked to lie in [1, 100] (CLIP's
clamp), and a value outside names both readings.
"""
from __future__ import annotations

import math
import warnings

from .errors import ConfigError

MIN_SCALE, MAX_SCALE = 1.0, 100.0
_TOL = 1e-4   # exp(ln(100)) in float32 is 100.00000xx


def scale_problem(value, what: str = "scale") -> str:
    """Why ``value`` is not a similarity scale (a multiplier in [1, 100]), naming both readings; '' when it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{what} must be a number (the similarity multiplier, e.g. 100), got {value!r}"
    v = float(value)
    if not math.isfinite(v):
        return f"{what} must be finite, got {v}"
    if v > MAX_SCALE * (1 + _TOL):
        hint = (f"did you pass exp(scale)? log({v:.6g}) = {math.log(v):.4g}, which would be a scale of "
                f"{math.log(v):.4g}" if v < 1e300 else "did you pass exp(scale)?")
        return (f"{what} {v:.6g} is outside [1, 100], the range CLIP allows for the similarity multiplier "
                f"(exp of the model's logit_scale): {hint}. Pass the multiplier itself, e.g. 100 "
                "(CLIP's usual value) or exp(model.logit_scale)")
    if v < MIN_SCALE:
        return (f"{what} {v:.6g} is outside [1, 100], the range CLIP allows for the similarity multiplier: if "
                f"{v:.6g} is the log of the scale, pass exp({v:.6g}) = {math.exp(v):.4g}; a multiplier below 1 "
                "makes every similarity distribution almost uniform")
    return ""


def check_scale(value, what: str = "scale", error=ConfigError) -> float:
    """``value`` as a float if it is a similarity multiplier in [1, 100], else ``error`` naming both readings.

    A value in [1, ln 100] is allowed but warned about: it is more likely a log (CLIP initialises the
    multiplier at 1/0.07 = 14.3; trained models sit near 100)."""
    problem = scale_problem(value, what)
    if problem:
        raise error(problem)
    v = min(float(value), MAX_SCALE)
    if v <= math.log(MAX_SCALE):
        warnings.warn(f"{what} {v:.4g} is a very soft similarity multiplier (CLIP starts at 14.3 and trained "
                      f"models sit near 100); if {v:.4g} is the log of the scale, pass exp({v:.4g}) = "
                      f"{math.exp(v):.4g}", stacklevel=3)
    return v


def scale_from_log(log_value, what: str = "logit_scale", error=ConfigError) -> float:
    """The multiplier of a stored *log* scale (a model's ``logit_scale`` parameter), checked as :func:`check_scale`
    would check it, with the message naming this reading."""
    try:
        lv = float(log_value)
    except (TypeError, ValueError):
        raise error(f"{what} must be a number (the log of the similarity multiplier), got {log_value!r}") from None
    if not math.isfinite(lv) or lv > math.log(MAX_SCALE) * (1 + _TOL) + _TOL or lv < 0:
        what_exp = f"exp({lv:.6g}) = {math.exp(lv):.6g}" if math.isfinite(lv) and lv < 700 else f"exp({lv})"
        raise error(f"{what} {lv:.6g} is the log of the similarity multiplier, and {what_exp} is outside [1, 100] "
                    f"(CLIP's range; its log is [0, {math.log(MAX_SCALE):.4f}]). If {lv:.6g} is the multiplier "
                    "itself (an already exponentiated value), pass it as the scale, not as its log")
    return min(math.exp(lv), MAX_SCALE)
