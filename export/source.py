"""What gets exported: one description for our students and third-party CLIPs.

``mobileclip export`` takes a registry name (random weights at a seed, for benchmarking
architectures), one of our checkpoint directories, ``open_clip:<arch>[:<tag or file>]``,
or ``hf:<CLIPModel dir>``. Each becomes an :class:`ExportSource`: the model (anything with
``encode_image`` / ``encode_text``), its preprocessing and tokenizer, and the facts the
bundle manifest records. A bundle stores the source spec and seed, so ``validate`` can
re-create the PyTorch reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from mobileclip.errors import ConfigError


@dataclass
class ExportSource:
    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    spec: dict                      # {"model": ..., "seed": ...}: enough to re-create ``model``
    name: str
    kind: str                       # "mobileclip", "open_clip" or "hf"
    embed_dim: int
    image_size: int
    mean: tuple
    std: tuple
    resize: dict
    context_length: int
    logit_scale: float
    tokenizer_info: dict = field(default_factory=dict)
    tokenizer_files: list = field(default_factory=list)   # copied into the bundle
    preprocess_from: str = ""                               # where mean/std/resize came from


def _clip_bpe(vocab: Path, context: int) -> tuple[dict, list]:
    return ({"name": "clip-bpe", "vocab_file": vocab.name, "context_length": context, "pad_id": 0,
             "lowercase": True}, [vocab])


def _ours(spec: str, pretrained: Optional[str] = None) -> ExportSource:
    from mobileclip.factory import create_model
    from mobileclip.reparam import reparameterize

    model, preprocess, tokenizer = create_model(spec, pretrained=pretrained)
    reparameterize(model, inplace=True)
    cfg = model.cfg
    info, files = _clip_bpe(tokenizer.vocab_path, cfg.text.context_length)
    return ExportSource(
        model.eval(), preprocess, tokenizer, {}, cfg.name, "mobileclip", cfg.embed_dim, cfg.image.image_size,
        tuple(cfg.preprocess.mean), tuple(cfg.preprocess.std),
        {"mode": cfg.preprocess.resize_mode, "interpolation": cfg.preprocess.interpolation, "crop": "center"},
        cfg.text.context_length, float(model.logit_scale.detach().exp()), info, files,
        preprocess_from=f"the {cfg.name} model config" + (" of the checkpoint" if Path(spec).is_dir() else ""))


def _third_party(spec: str) -> ExportSource:
    from mobileclip.teachers import load_teacher

    from mobileclip.reparam import reparameterize

    teacher = load_teacher(spec)
    reparameterize(teacher.model, inplace=True)  # e.g. MobileCLIP-S1's FastViT trunk
    inner = teacher.model
    kind = "open_clip" if spec.startswith("open_clip:") else "hf"
    if kind == "open_clip":
        import open_clip.tokenizer as oct

        pcfg = inner.visual.preprocess_cfg
        mean, std = tuple(pcfg["mean"]), tuple(pcfg["std"])
        resize = {"mode": pcfg.get("resize_mode", "shortest"), "interpolation": pcfg.get("interpolation", "bicubic"),
                  "crop": "center"}
        tok = getattr(teacher.tokenizer, "_fn", None)
        if not isinstance(tok, oct.SimpleTokenizer):
            raise ConfigError(f"{spec}: only open_clip models with CLIP's BPE tokenizer can be bundled (this one "
                              f"uses {type(tok).__name__})")
        info, files = _clip_bpe(Path(oct.default_bpe()), teacher.context_length)
    else:
        pcfg = teacher.preprocess.cfg
        mean, std = tuple(pcfg.mean), tuple(pcfg.std)
        resize = {"mode": pcfg.resize_mode, "interpolation": pcfg.interpolation, "crop": "center"}
        info, files = _hf_tokenizer_files(spec[3:], teacher)
    scale = getattr(inner, "logit_scale", None)
    logit_scale = float(scale.detach().reshape(-1)[0].exp()) if isinstance(scale, torch.Tensor) else 100.0
    origin = (pcfg.get("preprocess_from", "open_clip model default") if kind == "open_clip" else
              "preprocessor_config.json" if (Path(spec[3:]).expanduser() / "preprocessor_config.json").is_file()
              else "CLIP's defaults (no preprocessor_config.json)")
    return ExportSource(teacher, teacher.preprocess, teacher.tokenizer, {}, spec, kind, int(teacher.embed_dim),
                        int(teacher.image_size), mean, std, resize, int(teacher.context_length), logit_scale,
                        info, files, preprocess_from=origin)


def _hf_tokenizer_files(directory: str, teacher) -> tuple[dict, list]:
    from mobileclip.tokenizer import Tokenizer

    if isinstance(teacher.tokenizer, Tokenizer):   # a weights-only directory: CLIP's BPE
        return _clip_bpe(teacher.tokenizer.vocab_path, teacher.context_length)
    d = Path(directory).expanduser()
    files = [d / f for f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                             "special_tokens_map.json") if (d / f).is_file()]
    if not files:
        raise ConfigError(f"{directory}: the tokenizer files are not in a local directory; save the tokenizer "
                          "beside the model (tokenizer.save_pretrained) to bundle it")
    ids = teacher.tokenizer([""])[0]
    return ({"name": "hf", "files": [f.name for f in files], "context_length": teacher.context_length,
             "pad_id": int(ids[-1])}, files)


def load_source(spec: dict) -> ExportSource:
    """The PyTorch reference of a bundle: a checkpoint, a third-party CLIP, or a registry model at a seed."""
    model = spec["model"]
    torch.manual_seed(int(spec.get("seed", 0)))   # registry names and third-party archs get random weights
    from mobileclip.teachers import is_teacher_spec

    pretrained = spec.get("pretrained")
    if pretrained:
        _check_pretrained(pretrained, spec.get("pretrained_sha256"))
    src = _third_party(model) if is_teacher_spec(model) else _ours(model, pretrained)
    src.spec = dict(spec)
    return src


def _check_pretrained(path: str, sha256: Optional[str]) -> None:
    """The weights file a bundle was exported from must still be the same file."""
    from mobileclip.convert import file_sha256
    from mobileclip.errors import CheckpointError

    if not Path(path).is_file():
        raise CheckpointError(f"the weights file this bundle was exported from, {path!r}, no longer exists")
    if sha256 and file_sha256(path) != sha256:
        raise CheckpointError(f"{path!r} changed since the bundle was exported (sha256 differs); the PyTorch "
                              "reference would not be the model that was exported. Re-export the bundle")


def resolve_spec(model: str, seed: int = 0, pretrained: Optional[str] = None) -> dict:
    """A bundle's ``source``: checkpoint directories and weight files become absolute paths."""
    from mobileclip.convert import file_sha256
    from mobileclip.teachers import is_teacher_spec
    from mobileclip.zoo import list_models

    if model.startswith("py:"):
        raise ConfigError(f"{model!r}: export takes a registered name, a checkpoint directory, open_clip:... or "
                          "hf:...; a py: teacher has no spec a bundle could re-create its reference from")
    if pretrained and model not in list_models():
        raise ConfigError(f"--pretrained applies to registered model names ({', '.join(list_models())}); for "
                          f"{model!r} put the weights in the model spec (open_clip:<arch>:<file>) or export the "
                          "checkpoint directory itself")
    if not is_teacher_spec(model) and Path(model).is_dir():
        model = str(Path(model).resolve())
    elif model.startswith("hf:") and Path(model[3:]).expanduser().is_dir():
        model = "hf:" + str(Path(model[3:]).expanduser().resolve())
    spec = {"model": model, "seed": int(seed)}
    if pretrained:
        p = Path(pretrained).expanduser()
        if not p.exists():
            from mobileclip.errors import CheckpointError

            raise CheckpointError(f"pretrained weights {pretrained!r} do not exist")
        spec["pretrained"] = str(p.resolve())
        if p.is_file():
            spec["pretrained_sha256"] = file_sha256(p)
    return spec
