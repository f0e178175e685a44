"""What `mobileclip models` lists: students (ours) and teachers (open_clip architectures).

Parameter counts are computed by building each model on PyTorch's ``meta`` device (no
memory, no weights). open_clip has ~140 architectures and building all of them takes
half a minute, so their counts ship precomputed in ``open_clip_params.json``
(regenerate: ``python -m mobileclip.catalog``); an architecture missing from that file
is counted on the fly.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import torch

from . import spec as specs
from .zoo import get_entry, get_model_config, list_models

TABLE = Path(__file__).with_name("open_clip_params.json")


def student_rows() -> list[dict]:
    from .model import CLIP

    rows = []
    for name in list_models():
        cfg = get_model_config(name)
        with torch.device("meta"):
            counts = CLIP(cfg).num_params()
        entry = get_entry(name)
        rows.append({
            "name": name, "role": entry.role, "image_size": cfg.image.image_size,
            "context_length": cfg.text.context_length, "embed_dim": cfg.embed_dim,
            "image_params": counts["image"], "text_params": counts["text"], "params": counts["total"],
            "published_params_m": list(entry.published_params_m) if entry.published_params_m else None,
            "description": cfg.description,
        })
    return rows


def open_clip_param_count(arch: str) -> Optional[dict]:
    """Parameters of an open_clip architecture, built on the meta device; None when it needs
    a Hugging Face text tower (which would have to be downloaded)."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(open_clip.get_model_config(arch))
    if cfg is None or "hf_model_name" in cfg.get("text_cfg", {}) or "multimodal_cfg" in cfg:
        return None
    cls = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    with torch.device("meta"):
        model = cls(**cfg)
    image = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"image_params": image, "text_params": total - image, "params": total}


def teacher_rows(compute_missing: bool = True) -> list[dict]:
    import open_clip

    table = json.loads(TABLE.read_text()) if TABLE.is_file() else {}
    known = table.get("models", {})
    rows = []
    for arch in open_clip.list_models():
        cfg = open_clip.get_model_config(arch) or {}
        size = cfg.get("vision_cfg", {}).get("image_size")
        size = size[0] if isinstance(size, (list, tuple)) else size
        counts = known.get(arch)
        if counts is None and compute_missing:
            try:
                counts = open_clip_param_count(arch)
            except Exception:  # an architecture this torch/timm cannot build: list it without counts
                counts = None
        rows.append({"name": specs.open_clip(arch), "role": "teacher", "image_size": size,
                     "context_length": cfg.get("text_cfg", {}).get("context_length"),
                     "embed_dim": cfg.get("embed_dim"), **(counts or {"params": None})})
    return rows


def _main() -> None:
    import open_clip
    from tqdm import tqdm

    out = {}
    for arch in tqdm(open_clip.list_models(), desc="open_clip architectures"):
        try:
            counts = open_clip_param_count(arch)
        except Exception:
            counts = None
        if counts:
            out[arch] = counts
    TABLE.write_text(json.dumps({"open_clip": open_clip.__version__, "models": out}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(out)} architectures to {TABLE}")


if __name__ == "__main__":
    _main()
