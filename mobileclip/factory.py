"""``create_model(name, pretrained=None)`` → ``(model, preprocess, tokenizer)`` for every model."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from . import spec as specs
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint, read_config
from .errors import CheckpointError, TeacherError
from .model import CLIP
from .tokenizer import Tokenizer
from .transforms import ImagePreprocess
from .zoo import get_model_config


def create_model(name: Union[str, Path], pretrained: Optional[Union[str, Path]] = None,
                 device: Union[str, torch.device, None] = None):
    """Build a model by its spec (:mod:`mobileclip.spec`: a registered name, a checkpoint directory,
    ``open_clip:...``, ``hf:...`` or ``py:...``).

    * ``"mobileclip-s0"`` (see :func:`mobileclip.list_models`): random weights, or
      ``pretrained=`` a checkpoint directory / weights file for the same architecture: one of
      ours, Apple's released ``mobileclip_s0.pt`` … ``mobileclip_blt.pt``, or an open_clip
      MobileCLIP/MobileCLIP2 file (converted on load, see :mod:`mobileclip.convert`).
    * ``"open_clip:ViT-B-32[:tag or file]"``, ``"hf:dir"``, ``"py:module:fn"``: a frozen teacher
      (``pretrained=`` then acts as the open_clip tag or file).
    * a directory holding ``config.json`` + ``model.safetensors``.

    Returns ``(model, preprocess, tokenizer)``; the model is in eval mode.
    """
    parsed = specs.parse(name, pretrained)
    if parsed.third_party:
        if pretrained and not (parsed.kind == specs.OPEN_CLIP and not parsed.weights):
            raise CheckpointError(f"pretrained={str(pretrained)!r} does not apply to {str(name)!r}: give open_clip "
                                  "weights in the spec (open_clip:<arch>:<tag or file>); hf: and py: models bring "
                                  "their own")
        teacher = load_teacher(parsed.with_weights(str(pretrained)) if pretrained else parsed, device=device)
        return teacher, teacher.preprocess, teacher.tokenizer
    if parsed.kind == specs.CHECKPOINT:
        if pretrained is not None:
            raise CheckpointError(f"pretrained={str(pretrained)!r} applies to registered model names; {str(name)!r} "
                                  "is a checkpoint directory, which holds its own weights")
        model = load_checkpoint(Path(parsed.target).expanduser())
    else:
        model = build_model(get_model_config(parsed.target), pretrained)[0]
    if device is not None:
        model = model.to(device)
    return (model, *_io(model))


def load_teacher(spec: Union[str, "specs.ModelSpec", nn.Module], preprocess: Optional[Callable] = None,
                 tokenizer: Optional[Callable] = None, device: Union[str, torch.device, None] = None):
    """A frozen :class:`~mobileclip.teachers.Teacher` from a spec (any form :mod:`mobileclip.spec` reads: the
    third-party ones load through :mod:`mobileclip.third_party`; a registered name gets random weights, seeded),
    a :class:`Teacher`, or a module passed with its own ``preprocess`` and ``tokenizer``."""
    from . import third_party
    from .teachers import Teacher, wrap_teacher

    if isinstance(spec, Teacher):
        teacher = spec
    elif isinstance(spec, nn.Module):
        if preprocess is None or tokenizer is None:
            raise TeacherError("a teacher module needs its own preprocess and tokenizer: "
                               "load_teacher(module, preprocess=..., tokenizer=...)")
        teacher = wrap_teacher(spec, preprocess, tokenizer)
    elif not isinstance(spec, (str, specs.ModelSpec)) or not spec:
        raise TeacherError(f"a teacher spec must be a non-empty string or a module, got {spec!r}")
    else:
        parsed = spec if isinstance(spec, specs.ModelSpec) else specs.parse(spec)
        if parsed.kind == specs.OPEN_CLIP:
            teacher = third_party.load_open_clip_teacher(parsed.target, parsed.weights)
        elif parsed.kind == specs.HF:
            teacher = third_party.load_hf_teacher(parsed.target)
        elif parsed.kind == specs.PY:
            teacher = third_party.load_py_teacher(str(parsed))
        else:
            # A registered name has random weights: seeded, so that two identical runs have the same teacher
            # (and a teacher cache built twice is bit-identical); the caller's random state is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, pp, tok = create_model(str(parsed))
            teacher = Teacher(model, pp, tok, str(parsed), embed_dim=model.embed_dim, image_size=model.image_size)
    return teacher.to(device) if device is not None else teacher


def _weights_in(directory: Path) -> Path:
    """``model.safetensors`` of one of our checkpoint directories (its config must be there too)."""
    read_config(directory)   # a clear error when config.json is missing or damaged
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{str(weights)!r} is missing; the checkpoint is incomplete")
    return weights


def _io(model: CLIP) -> tuple:
    """The preprocessing and tokenizer of one of our models."""
    return ImagePreprocess(model.cfg.preprocess), Tokenizer(model.cfg.tokenizer)


def build_model(cfg, pretrained: Optional[Union[str, Path]] = None) -> tuple:
    """``(model, preprocess, tokenizer)`` for a :class:`ModelConfig`, with ``pretrained`` weights if given."""
    model = CLIP(cfg)
    if pretrained is not None:
        _load_pretrained(model, Path(pretrained).expanduser())
    return (model.eval(), *_io(model))


def _load_pretrained(model: CLIP, path: Path) -> None:
    from .convert import load_pretrained

    if path.is_dir():
        path = _weights_in(path)
    if path.is_file():
        # Our checkpoint (saved from this very network), Apple's mobileclip_*.pt, or an open_clip
        # MobileCLIP/MobileCLIP2 file: the layout is detected from the keys and converted; anything that does
        # not fit exactly is an error.
        load_pretrained(model, path)
    else:
        raise CheckpointError(f"pretrained checkpoint {str(path)!r} does not exist "
                              f"(expected a directory with {CONFIG_NAME} + {WEIGHTS_NAME}, or a weights file)")


def resolve_student_name(name: str) -> tuple:
    """A student spec → ``(registered name or checkpoint dir, weights file or None)``.

    ``open_clip:<MobileCLIP arch>[:<file>]`` names the registered model with the same network
    (:data:`mobileclip.convert.OPEN_CLIP_ARCHS`), so released open_clip MobileCLIP/MobileCLIP2
    models train as students; other open_clip architectures, ``hf:`` and ``py:`` models are teachers only.
    """
    from .convert import OPEN_CLIP_ARCHS
    from .errors import ConfigError

    parsed = specs.parse(name)
    if parsed.kind == specs.OPEN_CLIP:
        arch = parsed.target
        if arch not in OPEN_CLIP_ARCHS:
            raise ConfigError(f"student {name!r}: open_clip architectures that train as students are "
                              f"{sorted(OPEN_CLIP_ARCHS)} (converted to this package's models); other open_clip "
                              "models can be teachers")
        tag, weights = parsed.weights_file()
        if weights is None and tag and ("/" in tag or tag.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))):
            tag, weights = None, tag   # a file that is not there: loading it says so
        if weights is None and tag:
            raise ConfigError(f"student {name!r}: {tag!r} looks like an open_clip pretrained tag; a student starts "
                              "from a local weights file (download it, then open_clip:<arch>:<file>)")
        return OPEN_CLIP_ARCHS[arch], weights   # tag=file: the registered model carries the preprocessing
    if parsed.third_party:
        raise ConfigError(f"student {name!r}: Hugging Face and py: models are teachers only; students are registered "
                          "models, checkpoint directories or open_clip MobileCLIP/MobileCLIP2 architectures")
    return str(name), None


OVERRIDE_KEYS = {"embed_dim": ("embed_dim",),
                 "image_size": ("image.image_size", "preprocess.image_size"),
                 "context_length": ("text.context_length", "tokenizer.context_length")}


def student_config(name: str, embed_dim: int = 0, image_size: int = 0, context_length: int = 0):
    """A registered model's config with the student overrides applied (0 keeps the model's own): a new
    embedding size, a smaller (or larger) input image, a shorter context. Returns ``(config, the dotted
    config keys the overrides changed)``."""
    import dataclasses

    cfg = get_model_config(name)
    changed = []
    if embed_dim and embed_dim != cfg.embed_dim:
        cfg = cfg.replace(embed_dim=int(embed_dim))
        changed += OVERRIDE_KEYS["embed_dim"]
    if image_size and image_size != cfg.image.image_size:
        cfg = cfg.replace(image=dataclasses.replace(cfg.image, image_size=int(image_size)),
                          preprocess=dataclasses.replace(cfg.preprocess, image_size=int(image_size)))
        changed += OVERRIDE_KEYS["image_size"]
    if context_length and context_length != cfg.text.context_length:
        cfg = cfg.replace(text=dataclasses.replace(cfg.text, context_length=int(context_length)),
                          tokenizer=dataclasses.replace(cfg.tokenizer, context_length=int(context_length)))
        changed += OVERRIDE_KEYS["context_length"]
    return cfg, tuple(changed)


def create_student(name: str, pretrained: Optional[Union[str, Path]] = None, embed_dim: int = 0,
                   image_size: int = 0, context_length: int = 0):
    """A trainable student, optionally initialized from released or earlier weights.

    ``pretrained``: one of our checkpoint directories or weight files, Apple's ``mobileclip_*.pt``
    or an open_clip MobileCLIP/MobileCLIP2 file, for the same network. ``embed_dim``,
    ``image_size`` and ``context_length`` override the registered config (0 keeps it; see
    :func:`student_config`); a timm image tower is built for the new image size, and the text
    tower's positional embedding for the new context. Tensors that an override reshapes (the
    projections for ``embed_dim``; the positional embeddings) keep their fresh initialization
    and are listed in the returned report; any other difference is a :class:`CheckpointError`. Returns ``(model, preprocess,
    tokenizer, report or None)``; the model is in train mode.
    """
    from .convert import load_pretrained
    from .errors import ConfigError
    from .zoo import list_models

    name, spec_weights = resolve_student_name(name)
    if spec_weights and pretrained:
        raise ConfigError(f"the student spec names weights ({spec_weights}) and student_pretrained is set too; "
                          "give one")
    pretrained = pretrained or spec_weights
    report = None
    if name not in list_models():   # a checkpoint directory: the whole model, nothing to add
        if pretrained or embed_dim or image_size or context_length:
            raise ConfigError(f"student {name!r} is a checkpoint directory; student_pretrained, student_embed_dim, "
                              "student_image_size and student_context_length apply to registered names (pass the "
                              "directory as student_pretrained= with its model name as student= to fine-tune it)")
        model, preprocess, tokenizer = create_model(name)
    else:
        cfg, overridden = student_config(name, embed_dim, image_size, context_length)
        model = CLIP(cfg)
        if pretrained:
            # The tensors an override reshapes (the projections, for embed_dim) may differ from the file; nothing
            # else may, so another model's file is an error rather than a half-loaded student.
            with torch.device("meta"):
                default = CLIP(get_model_config(name)).state_dict()
            reshaped = [k for k, v in model.state_dict().items()
                        if k not in default or tuple(default[k].shape) != tuple(v.shape)]
            path = Path(pretrained).expanduser()
            if path.is_dir():
                path = _weights_in(path)
            report = load_pretrained(model, path, may_differ=reshaped, config_may_differ=overridden)
        preprocess, tokenizer = _io(model)
    if getattr(model, "reparameterized", False):
        raise CheckpointError(f"student {name!r} is reparameterized (inference form) and cannot be trained")
    return model.train(), preprocess, tokenizer, report
