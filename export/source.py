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
from typing import Callable, Optional, Union

import torch
from torch import nn

from mobileclip import spec as specs
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


def token_rows(model: nn.Module) -> Optional[int]:
    """The text tower's token-embedding rows (every token id must be below it); None where the model has
    no single ``token_embedding`` (open_clip, HF CLIP, ours)."""
    rows = {m.num_embeddings for n, m in model.named_modules()
            if isinstance(m, nn.Embedding) and n.rsplit(".", 1)[-1] == "token_embedding"}
    return rows.pop() if len(rows) == 1 else None


def _clip_bpe(vocab: Path, context: int) -> tuple[dict, list]:
    return ({"name": "clip-bpe", "vocab_file": vocab.name, "context_length": context, "pad_id": 0,
             "lowercase": True}, [vocab])


def _ours(spec: str, pretrained: Optional[str] = None, architecture: Optional[dict] = None) -> ExportSource:
    from mobileclip.factory import create_model
    from mobileclip.reparam import reparameterize

    if architecture is not None:   # the network recorded at export, whatever the registered name is today
        from mobileclip.config import ModelConfig
        from mobileclip.factory import build_model

        model, preprocess, tokenizer = build_model(ModelConfig.from_dict(architecture), pretrained)
    else:
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
    from mobileclip.factory import load_teacher

    from mobileclip.reparam import reparameterize

    parsed = specs.parse(spec)
    teacher = load_teacher(parsed)
    reparameterize(teacher.model, inplace=True)  # e.g. MobileCLIP-S1's FastViT trunk
    inner = teacher.model
    kind = parsed.kind
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
        info, files = _hf_tokenizer_files(parsed.target, teacher)
    logit_scale = float(teacher.scale)   # the multiplier, checked to lie in [1, 100] when the teacher loaded
    origin = (pcfg.get("preprocess_from", "open_clip model default") if kind == "open_clip" else
              "preprocessor_config.json" if (Path(parsed.target).expanduser() / "preprocessor_config.json").is_file()
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
    pretrained = spec.get("pretrained")
    if pretrained:
        _check_weights(pretrained, spec.get("pretrained_sha256"))
    if spec.get("weights_sha256"):   # open_clip:<arch>:[<tag>=]<file>
        _check_weights(_open_clip_file(model)[1], spec["weights_sha256"])
    if specs.is_third_party(model):
        src = _third_party(model)
    else:
        src = _ours(model, pretrained, spec.get("architecture"))
    src.spec = dict(spec)
    return src


def weights_digest(path: Union[str, Path]) -> str:
    """sha256 of a weights file, or of one of our checkpoint directories (its config and weights)."""
    from mobileclip.errors import CheckpointError
    from mobileclip.hashing import sha256_file

    p = Path(path)
    if p.is_dir():
        if not ((p / "config.json").is_file() and (p / "model.safetensors").is_file()):
            raise CheckpointError(f"{str(p)!r} is not a checkpoint directory (config.json + model.safetensors)")
        return sha256_file(p / "config.json") + ":" + sha256_file(p / "model.safetensors")
    return sha256_file(p)


def _check_weights(path: str, digest: Optional[str]) -> None:
    """The weights a bundle was exported from must still be the same (file or checkpoint directory)."""
    from mobileclip.errors import CheckpointError

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"the weights this bundle was exported from, {path!r}, no longer exist")
    if digest and weights_digest(p) != digest:   # a directory no longer holding a checkpoint is an error there
        raise CheckpointError(f"{path!r} changed since the bundle was exported (sha256 differs); the PyTorch "
                              "reference would not be the model that was exported. Re-export the bundle")


def _open_clip_file(model: str) -> tuple:
    """``open_clip:<arch>:<x>`` → ``(the spec with the file replaced by "", the file or None)``; ``x`` may be
    ``tag=file``."""
    parsed = specs.parse(model)
    tag, file = parsed.weights_file() if parsed.kind == specs.OPEN_CLIP else (None, None)
    if file is None:
        return model, None
    return str(parsed.with_weights(f"{tag}=" if tag else "")) + ("" if tag else ":"), file


def resolve_spec(model: str, seed: int = 0, pretrained: Optional[str] = None) -> dict:
    """A bundle's ``source``: enough to re-create the PyTorch reference, and to tell if its inputs changed.

    Checkpoint directories and weight files become absolute paths with their sha256; a registered
    name records its network (``architecture``), so ``validate`` rebuilds the same one even after the
    registered model changes.
    """
    from mobileclip.errors import CheckpointError
    from mobileclip.zoo import get_model_config, list_models

    parsed = specs.parse(model, pretrained)
    if parsed.kind == specs.PY:
        raise ConfigError(f"{model!r}: export takes a registered name, a checkpoint directory, open_clip:... or "
                          "hf:...; a py: teacher has no spec a bundle could re-create its reference from")
    if pretrained and model not in list_models():
        raise ConfigError(f"--pretrained applies to registered model names ({', '.join(list_models())}); for "
                          f"{model!r} put the weights in the model spec (open_clip:<arch>:<file>) or export the "
                          "checkpoint directory itself")
    spec: dict = {}
    if parsed.kind == specs.OPEN_CLIP:
        prefix, file = _open_clip_file(model)
        if file is not None and Path(file).expanduser().is_file():
            file = str(Path(file).expanduser().resolve())
            model, spec["weights_sha256"] = prefix + file, weights_digest(file)
    elif parsed.kind == specs.HF and Path(parsed.target).expanduser().is_dir():
        model = specs.hf(Path(parsed.target).expanduser().resolve())
    elif parsed.kind == specs.CHECKPOINT and Path(model).is_dir():
        model = str(Path(model).resolve())
    spec = {"model": model, "seed": int(seed), **spec}
    if model in list_models():
        spec["architecture"] = get_model_config(model).to_dict()
    if pretrained:
        p = Path(pretrained).expanduser()
        if not p.exists():
            raise CheckpointError(f"pretrained weights {pretrained!r} do not exist")
        spec["pretrained"] = str(p.resolve())
        spec["pretrained_sha256"] = weights_digest(p)
    return spec
