"""Zero-shot classification (prompt ensembles) and image–text retrieval."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data.datasets import collate_skip
from .errors import DatasetError

# Our own prompt set: generic photo/rendering phrasings that suit natural and synthetic images
# alike, short enough for a 16-token context.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a good photo of a {}.",
    "a rendering of a {}.",
    "a drawing of a {}.",
    "a {} in the scene.",
    "there is a {} in this picture.",
    "a small {}.",
    "a large {}.",
    "the {}.",
    "a {}.",
)


@torch.no_grad()
def build_classifier(model, tokenizer: Callable, classnames: Sequence[str],
                     templates: Sequence[str] = TEMPLATES, device: Optional[torch.device] = None,
                     progress: bool = False) -> torch.Tensor:
    """``[C, D]`` class embeddings: mean of normalized prompt embeddings, renormalized."""
    if not classnames:
        raise ValueError("zero-shot classification needs at least one class name")
    from .templates import check_templates

    templates = check_templates(templates)   # exactly one '{}' each: a clear error, never a str.format crash
    device = device or _device_of(model)
    weights = []
    for name in tqdm(classnames, desc="class prompts", disable=not progress, leave=False):
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        emb = model.encode_text(tokens, normalize=True)
        weights.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(weights)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict:
    """Number of rows whose target is among the top-k logits, for each k (k capped at C)."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        top = logits.topk(kk, dim=1).indices
        out[k] = int((top == targets[:, None]).any(dim=1).sum())
    return out


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def evaluate_zeroshot(model, tokenizer: Callable, dataset, classnames: Optional[Sequence[str]] = None,
                      templates: Sequence[str] = TEMPLATES, batch_size: int = 64, num_workers: int = 0,
                      device: Optional[torch.device] = None, progress: bool = True) -> dict:
    """Top-1/top-5 accuracy of the prompt-ensembled zero-shot classifier on ``dataset``.

    ``dataset`` yields ``(image tensor or None, label, key)`` (an
    :class:`~mobileclip.data.ImageFolderDataset` with the model's preprocess).
    Unreadable images are skipped and reported.
    """
    classnames = list(classnames if classnames is not None else dataset.classnames)
    device = device or _device_of(model)
    model.eval()
    classifier = build_classifier(model, tokenizer, classnames, templates, device)
    skipped: list[str] = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate_skip)
    n, correct, predictions = 0, {1: 0, 5: 0}, {}
    per_class_total = torch.zeros(len(classnames))
    per_class_hit = torch.zeros(len(classnames))
    for images, labels, keys, bad in tqdm(loader, desc="zero-shot", disable=not progress, leave=False):
        skipped.extend(bad)
        if images is None:
            continue
        feats = model.encode_image(images.to(device), normalize=True)
        logits = feats @ classifier.T
        labels = labels.to(device)
        for k, v in topk_correct(logits, labels, (1, 5)).items():
            correct[k] += v
        predictions.update(zip(keys, logits.argmax(dim=1).tolist()))
        hit = (logits.argmax(dim=1) == labels).float().cpu()
        per_class_total.index_add_(0, labels.cpu(), torch.ones_like(hit))
        per_class_hit.index_add_(0, labels.cpu(), hit)
        n += len(labels)
    if n == 0:
        raise DatasetError(f"no readable images to evaluate ({len(skipped)} could not be decoded)")
    return {
        "top1": correct[1] / n, "top5": correct[5] / n, "n": n, "classes": len(classnames),
        "predictions": predictions,   # image key -> predicted class index (top-1 agreement between two models)
        "skipped": len(skipped), "skipped_files": skipped[:100],
        "per_class_top1": {c: (float(h / t) if t else None) for c, h, t in
                           zip(classnames, per_class_hit.tolist(), per_class_total.tolist())},
    }


def recall_at_k(similarity: torch.Tensor, positives: torch.Tensor, ks: Iterable[int] = (1, 5, 10)) -> dict:
    """Recall@k for queries (rows) against candidates (columns).

    ``positives`` is a boolean ``[Q, N]`` matrix; a query counts as a hit at k when any of
    its positives is among its k most similar candidates.
    """
    out = {}
    order = similarity.argsort(dim=1, descending=True)
    ranked_pos = torch.gather(positives, 1, order)
    for k in ks:
        out[k] = float(ranked_pos[:, : min(k, similarity.shape[1])].any(dim=1).float().mean())
    return out


@torch.no_grad()
def evaluate_retrieval(model, tokenizer: Callable, dataset, batch_size: int = 64, num_workers: int = 0,
                       device: Optional[torch.device] = None, ks: Sequence[int] = (1, 5, 10),
                       progress: bool = True) -> dict:
    """Image→text and text→image recall@k on a :class:`~mobileclip.data.CaptionDataset`.

    Rows that share an image path count as several captions of one image. Captions that tokenize
    to the same ids (the same text after the tokenizer's own normalization) are one query with
    several correct images: a caption shared by two images is a hit for either, and for
    image→text any copy of an image's caption counts — the model cannot tell them apart, so which
    copy ranks first is arbitrary. (clip_benchmark counts only the caption's own image, so on sets
    with duplicate captions R@k here is higher than its.) ``duplicate_captions`` in the result
    counts the captions that have such copies.
    """
    device = device or _device_of(model)
    model.eval()
    skipped: list[str] = []
    # Encode each distinct image once.
    keys = list(dict.fromkeys(dataset.image_paths))
    first_row = {}
    for i, p in enumerate(dataset.image_paths):
        first_row.setdefault(p, i)
    subset = torch.utils.data.Subset(dataset, [first_row[p] for p in keys])
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate_skip)
    img_feats, img_keys = [], []
    for images, _, paths, bad in tqdm(loader, desc="images", disable=not progress, leave=False):
        skipped.extend(bad)
        if images is None:
            continue
        img_feats.append(model.encode_image(images.to(device), normalize=True).float().cpu())
        img_keys.extend(paths)
    if not img_feats:
        raise DatasetError(f"no readable images to evaluate ({len(skipped)} could not be decoded)")
    img_feats = torch.cat(img_feats)
    index = {k: i for i, k in enumerate(img_keys)}
    # Captions of unreadable images are dropped with them.
    rows = [(c, index[p]) for p, c in zip(dataset.image_paths, dataset.captions) if p in index]
    txt_feats, token_keys = [], []
    for s in tqdm(range(0, len(rows), batch_size), desc="captions", disable=not progress, leave=False):
        tokens = tokenizer([c for c, _ in rows[s: s + batch_size]])
        tokens = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(tokens)
        token_keys += [tuple(r) for r in tokens.tolist()]
        txt_feats.append(model.encode_text(tokens.to(device), normalize=True).float().cpu())
    txt_feats = torch.cat(txt_feats)
    owner = torch.tensor([i for _, i in rows])
    pos = owner[None, :] == torch.arange(len(img_keys))[:, None]  # [images, texts]
    # Captions the model cannot tell apart (the same token ids: the same text after the tokenizer's own
    # normalization): every image that owns one copy is correct for all copies.
    groups: dict = {}
    for t, key in enumerate(token_keys):
        groups.setdefault(key, []).append(t)
    dup = 0
    for ts in groups.values():
        if len(ts) > 1:
            dup += len(ts)
            idx = torch.tensor(ts)
            pos[:, idx] = pos[:, idx].any(dim=1, keepdim=True)
    sim = img_feats @ txt_feats.T
    i2t = recall_at_k(sim, pos, ks)
    t2i = recall_at_k(sim.T, pos.T, ks)
    # each query's own top-1 hit (images and captions in dataset order), to compare two models query by query
    hits = {"image_to_text@1": pos[torch.arange(len(pos)), sim.argmax(dim=1)].tolist(),
            "text_to_image@1": pos.T[torch.arange(pos.shape[1]), sim.T.argmax(dim=1)].tolist()}
    out = {"images": len(img_keys), "texts": len(rows), "duplicate_captions": dup, "skipped": len(skipped),
           "skipped_files": skipped[:100], "hits": hits}
    out.update({f"image_to_text_R@{k}": v for k, v in i2t.items()})
    out.update({f"text_to_image_R@{k}": v for k, v in t2i.items()})
    out["mean_R@1"] = (i2t[ks[0]] + t2i[ks[0]]) / 2 if ks else math.nan
    return out
