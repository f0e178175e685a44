"""Parity between an exported bundle and PyTorch, on real inputs.

Images come from a dataset (an image folder) or the synthetic generator; prompts are
short, padded, and exactly context-length. Batches 1, a middle size and the maximum
are compared as L2-normalized embeddings: min/mean cosine, max-abs difference, and
zero-shot top-1 agreement. A miss is a :class:`ParityError` carrying the numbers.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mobileclip.errors import MobileCLIPError

THRESHOLDS = {"fp32": {"min_cosine": 0.99999}, "fp16": {"min_cosine": 0.999},
              "int8": {"min_cosine": 0.99, "top1_agreement": 0.98}}


class ParityError(MobileCLIPError):
    """An exported artifact does not match PyTorch within the thresholds."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


def parity_prompts(tokenizer, n: int = 8) -> list:
    """Short, padded, and exactly context-length prompts (the last one is truncated)."""
    base = ["a cat", "a photo of a red circle", "two blue squares on a striped background",
            "a small green star at the top", "a white ring", "a purple triangle to the left of a yellow cross"]
    long = " ".join(["a large yellow star next to a blue circle"] * 20)
    prompts = (base * ((n + len(base) - 1) // len(base)))[: max(1, n - 1)] + [long]
    ids = tokenizer([long])[0]
    assert int((ids != 0).sum()) == tokenizer.context_length  # exactly fills the context
    return prompts


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(ref - got).max()), "finite": bool(np.isfinite(got).all())}


def check(report: dict, precision, thresholds: Optional[dict] = None) -> list:
    """The threshold misses of a parity report (empty when it passes).

    ``precision`` is one name for both towers or ``{"image": ..., "text": ...}`` (a
    TensorRT int8 bundle keeps its text tower in fp16). Top-1 agreement is held to the
    strictest tower's requirement.
    """
    per = precision if isinstance(precision, dict) else {"image": precision, "text": precision}
    th = {}
    for p in per.values():
        for k, v in THRESHOLDS[p].items():
            th[k] = min(th.get(k, v), v) if k == "min_cosine" else max(th.get(k, v), v)
    th.update(thresholds or {})
    misses = []
    for tower in ("image", "text"):
        tower_th = dict(THRESHOLDS[per[tower]], **(thresholds or {}))
        for row in report[tower]:
            if not row["finite"]:
                misses.append(f"{tower} batch {row['batch']}: non-finite output")
            elif row["min_cosine"] < tower_th["min_cosine"]:
                misses.append(f"{tower} batch {row['batch']}: min cosine {row['min_cosine']:.6f} < "
                              f"{tower_th['min_cosine']}")
    if "top1_agreement" in th and report["top1_agreement"] < th["top1_agreement"]:
        hint = "" if misses else (
            " (the embeddings pass their cosine thresholds: with untrained or random weights the class scores are "
            "near-ties and argmax flips; check a trained checkpoint, or pass --allow-mismatch)")
        misses.append(f"zero-shot top-1 agreement {report['top1_agreement']:.4f} < {th['top1_agreement']}{hint}")
    return misses


def synthetic_images(n: int, image_size: int = 64) -> list:
    from PIL import Image

    from mobileclip.data.synthetic import SyntheticGenerator

    gen = SyntheticGenerator("val", image_size, seed=123, two_object_prob=0.0)
    return [Image.fromarray(gen[i].image) for i in range(n)]


@torch.no_grad()
def run_parity(model, preprocess, tokenizer, image_fn, text_fn, batches=(1, 8, 32), images=None,
               token_dtype=np.int32) -> dict:
    """Compare ``image_fn`` / ``text_fn`` (numpy in, numpy out) with the PyTorch model."""
    from mobileclip.data.synthetic import classnames

    n = max(batches)
    pil = images if images is not None else synthetic_images(n)
    pil = (pil * ((n + len(pil) - 1) // len(pil)))[:n]
    x = torch.stack([preprocess(im) for im in pil])
    prompts = parity_prompts(tokenizer, n)
    tokens = tokenizer(prompts)
    report = {"image": [], "text": []}
    for b in sorted(set(batches)):
        ref = model.encode_image(x[:b]).numpy()
        report["image"].append({"batch": b, **compare(ref, image_fn(x[:b].numpy()))})
        tb = tokens[:b] if b <= len(tokens) else tokens.repeat((b + len(tokens) - 1) // len(tokens), 1)[:b]
        ref_t = model.encode_text(tb).numpy()
        report["text"].append({"batch": b, **compare(ref_t, text_fn(tb.numpy().astype(token_dtype)))})
    # zero-shot top-1 agreement on the synthetic classes
    names = classnames()
    cls_tok = tokenizer([f"a photo of a {c}." for c in names])
    ref_cls = model.encode_text(cls_tok).numpy()
    got_cls = text_fn(cls_tok.numpy().astype(token_dtype))
    ref_img = model.encode_image(x).numpy()
    got_img = image_fn(x.numpy())
    agree = (ref_img @ ref_cls.T).argmax(1) == (got_img @ got_cls.T).argmax(1)
    report["top1_agreement"] = float(agree.mean())
    report["images"] = n
    return report
