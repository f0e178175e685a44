"""Parity between an exported bundle and PyTorch, on real inputs.

Images come from a dataset (an image folder) or the synthetic generator; prompts are
short, padded, and exactly context-length. The reference runs on the source's own
preprocessing and tokenizer (open_clip's transform for open_clip sources); the bundle runs
on the preprocessing and tokenizer its manifest describes, as the runtime would. Batches 1, a middle size and the maximum
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
        over = report.get("agreement", {}).get("images")
        misses.append(f"zero-shot top-1 agreement {report['top1_agreement']:.4f} < {th['top1_agreement']}"
                      + (f" over {over} images" if over else "") + hint)
    return misses


def synthetic_images(n: int, image_size: int = 64) -> list:
    """Synthetic pictures; every third is stretched to 4:3 or 3:4, so the resize rule (shortest side +
    center crop, or squash) matters to the comparison."""
    from PIL import Image

    from mobileclip.data.synthetic import SyntheticGenerator

    gen = SyntheticGenerator("val", image_size, seed=123, two_object_prob=0.0)
    out = []
    for i in range(n):
        im = Image.fromarray(gen[i].image)
        if i % 3 == 2:
            w, h = ((image_size * 4) // 3, image_size) if i % 2 else (image_size, (image_size * 4) // 3)
            im = im.resize((w, h), Image.BILINEAR)
        out.append(im)
    return out


# Largest difference between the bundle's preprocessing (the runtime's, from the manifest) and the
# source's own transform that still counts as the same (measured: 0.0 against open_clip's torchvision
# transforms, which resize with the same Pillow calls; float rounding only).
PREPROCESS_TOLERANCE = 1e-4


def _repeat(x, b: int):
    n = len(x)
    if b <= n:
        return x[:b]
    reps = (b + n - 1) // n
    return (x.repeat(reps, 1) if isinstance(x, torch.Tensor) else np.tile(x, (reps, 1)))[:b]


def check_inputs(pil: list, prompts: list, preprocess, tokenizer, bundle_preprocess, bundle_tokenizer) -> dict:
    """The bundle's own preprocessing and tokenizer (from its manifest) against the source's.

    Returns ``{"preprocess_max_abs", "tokens_equal", "misses"}``. A manifest whose mean, std,
    resize rule, image size, context length or vocabulary differs from what the model was
    trained with shows up here, before any tower runs.
    """
    misses, out = [], {}
    ref = torch.stack([preprocess(im) for im in pil]).numpy()
    if bundle_preprocess is not None:
        got = np.stack([bundle_preprocess(im) for im in pil])
        if got.shape != ref.shape:
            misses.append(f"the bundle's preprocessing gives {list(got.shape[1:])} images, the source's "
                          f"{list(ref.shape[1:])}")
            out["preprocess_max_abs"] = None
        else:
            out["preprocess_max_abs"] = float(np.abs(got - ref).max())
            if out["preprocess_max_abs"] > PREPROCESS_TOLERANCE:
                misses.append(f"the bundle's preprocessing (manifest mean/std/resize) differs from the source's own "
                              f"transform by up to {out['preprocess_max_abs']:.4g} (tolerance {PREPROCESS_TOLERANCE})")
    if bundle_tokenizer is not None:
        ref_t = tokenizer(prompts).numpy()
        got_t = np.asarray(bundle_tokenizer(prompts))
        out["tokens_equal"] = bool(got_t.shape == ref_t.shape and (got_t == ref_t).all())
        if not out["tokens_equal"]:
            misses.append(f"the bundle's tokenizer (manifest) gives other token ids than the source's "
                          f"(shapes {list(got_t.shape)} vs {list(ref_t.shape)})")
    out["misses"] = misses
    return out


def class_means(prompt_emb: np.ndarray, classes: int) -> np.ndarray:
    """``[C * T, D]`` prompt embeddings (class-major) -> ``[C, D]``: each normalized, averaged, renormalized."""
    e = prompt_emb / np.linalg.norm(prompt_emb, axis=1, keepdims=True)
    e = e.reshape(classes, -1, e.shape[1]).mean(1)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@torch.no_grad()
def run_parity(model, preprocess, tokenizer, image_fn, text_fn, batches=(1, 8, 32), images=None,
               token_dtype=np.int32, bundle_preprocess=None, bundle_tokenizer=None, classnames=None) -> dict:
    """Compare ``image_fn`` / ``text_fn`` (numpy in, numpy out) with the PyTorch model.

    The reference is the model on the source's own ``preprocess`` and ``tokenizer``. The bundle
    side gets its inputs from ``bundle_preprocess`` (PIL image -> ``[3, S, S]``) and
    ``bundle_tokenizer`` (texts -> ids): the runtime's, built from the manifest under test, so a
    wrong mean/std, resize rule or context length in the manifest cannot pass. Without them the
    bundle side gets the reference inputs (towers only).

    Embeddings are compared at each batch size in ``batches`` on the first ``max(batches)`` images
    (repeated when there are fewer). Zero-shot top-1 agreement reads *every* image in ``images``
    (a dataset's: ``--data``), in chunks of ``max(batches)``, against ``classnames`` (the dataset's
    classes, prompted with :data:`mobileclip.zeroshot.TEMPLATES` as zero-shot classification runs; the
    synthetic classes with one prompt each by default); its steps are 1 / len(images), not 1 / max(batches).
    """
    from mobileclip.data.synthetic import classnames as synthetic_classnames
    from mobileclip.zeroshot import TEMPLATES

    n = max(batches)
    pil = images if images else synthetic_images(n)
    first = (pil * ((n + len(pil) - 1) // len(pil)))[:n]
    x = torch.stack([preprocess(im) for im in first])
    xb = np.stack([bundle_preprocess(im) for im in first]).astype(np.float32) if bundle_preprocess else x.numpy()
    prompts = parity_prompts(tokenizer, n)
    tokens = tokenizer(prompts)

    def bundle_tokens(texts, ref):
        return np.asarray(bundle_tokenizer(texts)) if bundle_tokenizer is not None else ref.numpy()

    tokens_b = bundle_tokens(prompts, tokens)
    report = {"image": [], "text": []}
    for b in sorted(set(batches)):
        ref, got = model.encode_image(x[:b]).numpy(), image_fn(xb[:b])   # the last b is n: kept for the agreement
        report["image"].append({"batch": b, **compare(ref, got)})
        ref_t = model.encode_text(_repeat(tokens, b)).numpy()
        report["text"].append({"batch": b, **compare(ref_t, text_fn(_repeat(tokens_b, b).astype(token_dtype)))})
    # zero-shot top-1 agreement on every image, against the dataset's classes, each class the renormalized mean
    # of its TEMPLATES prompts (what `mobileclip zeroshot`, bench --eval and the runtime's classify use); on the
    # synthetic images, the synthetic classes with one prompt each (a cheaper check: 8x fewer text calls)
    names = list(classnames) if classnames else synthetic_classnames()
    templates = TEMPLATES if classnames else TEMPLATES[:1]
    prompts_all = [t.format(c) for c in names for t in templates]
    # 256 prompts and 64 images a call (the runners cut them to what each artifact takes)
    all_tok = tokenizer(prompts_all)
    all_tok_b = bundle_tokens(prompts_all, all_tok).astype(token_dtype)
    ref_cls, got_cls = (class_means(np.concatenate([f(all_tok[s:s + 256]) for s in range(0, len(prompts_all), 256)]),
                                     len(names))
                        for f, all_tok in ((lambda t: model.encode_text(t).numpy(), all_tok),
                                           (text_fn, all_tok_b)))
    if len(pil) <= n:   # every image was just embedded, both sides, as the first rows of the batch of n
        agree = (ref[:len(pil)] @ ref_cls.T).argmax(1) == (got[:len(pil)] @ got_cls.T).argmax(1)
    else:
        agree = []
        for s in range(0, len(pil), 64):   # 64 images in memory at a time
            chunk = pil[s:s + 64]
            xs = torch.stack([preprocess(im) for im in chunk])
            xsb = (np.stack([bundle_preprocess(im) for im in chunk]).astype(np.float32) if bundle_preprocess
                   else xs.numpy())
            agree.append((model.encode_image(xs).numpy() @ ref_cls.T).argmax(1)
                         == (image_fn(xsb) @ got_cls.T).argmax(1))
        agree = np.concatenate(agree)
    report["top1_agreement"] = float(agree.mean())
    report["images"] = n
    report["agreement"] = {"images": int(agree.size), "classes": len(names), "prompts_per_class": len(templates),
                           "classes_from": "the --data folder" if classnames else "the synthetic classes"}
    return report
