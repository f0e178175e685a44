"""``create_model(name, pretrained=None)`` → ``(model, preprocess, tokenizer)`` for every model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint, load_state_into, load_weights, read_config
from .errors import CheckpointError
from .model import CLIP
from .tokenizer import Tokenizer
from .transforms import ImagePreprocess
from .zoo import get_model_config


def create_model(name: Union[str, Path], pretrained: Optional[Union[str, Path]] = None,
                 device: Union[str, torch.device, None] = None):
    """Build a model by registry name, teacher spec, or checkpoint directory.

    * ``"mobileclip-s0"`` (see :func:`mobileclip.list_models`): random weights, or
      ``pretrained=`` a checkpoint directory / weights file for the same architecture.
    * ``"open_clip:ViT-B-32[:tag or file]"``, ``"hf:dir"``: a frozen teacher
      (``pretrained=`` then acts as the open_clip tag or file).
    * a directory holding ``config.json`` + ``model.safetensors``.

    Returns ``(model, preprocess, tokenizer)``; the model is in eval mode.
    """
    from .teachers import is_teacher_spec, load_teacher

    name = str(name)
    if is_teacher_spec(name):
        spec = f"{name}:{pretrained}" if pretrained and name.startswith("open_clip:") and name.count(":") == 1 else name
        teacher = load_teacher(spec, device=device)
        return teacher, teacher.preprocess, teacher.tokenizer
    from .zoo import list_models

    path = Path(name).expanduser()
    # A checkpoint directory wins; then a registered name; anything path-like is a checkpoint
    # that load_checkpoint reports clearly as missing or incomplete.
    if (path / CONFIG_NAME).is_file() or (name not in list_models() and (
            path.is_dir() or "/" in name or name.startswith("."))):
        model = load_checkpoint(path)
    else:
        model = CLIP(get_model_config(name))
        if pretrained is not None:
            _load_pretrained(model, Path(pretrained).expanduser())
        model.eval()
    if device is not None:
        model = model.to(device)
    return model, ImagePreprocess(model.cfg.preprocess), Tokenizer(model.cfg.tokenizer)


def _load_pretrained(model: CLIP, path: Path) -> None:
    if path.is_dir():
        config = read_config(path)
        arch = config.get("architecture", {}).get("name")
        if arch != model.cfg.name:
            raise CheckpointError(f"{str(path)!r} holds a {arch!r} checkpoint, not {model.cfg.name!r}; "
                                  f"load it with create_model({str(path)!r})")
        if config.get("reparameterized"):
            raise CheckpointError(f"{str(path)!r} is reparameterized; load it with create_model({str(path)!r})")
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{str(weights)!r} is missing; the checkpoint is incomplete")
        load_state_into(model, load_weights(weights), str(weights))
    elif path.is_file():
        load_state_into(model, load_weights(path), str(path))
    else:
        raise CheckpointError(f"pretrained checkpoint {str(path)!r} does not exist "
                              f"(expected a directory with {CONFIG_NAME} + {WEIGHTS_NAME}, or a weights file)")
