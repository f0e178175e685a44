"""Checkpoint I/O: ``model.safetensors`` + ``config.json``, written atomically.

Nothing here unpickles arbitrary objects: safetensors files are plain tensors, and any
pickled file (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) is read with
``torch.load(weights_only=True)``. A pickle that holds anything else is refused with
:class:`~mobileclip.errors.UnsafeCheckpointError` before any of its code can run.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Union

import torch
from torch import nn

from .config import ModelConfig
from .files import atomic_write, atomic_write_json, old_dir_for, replace_dir, temp_dir_for  # noqa: F401
from .errors import CheckpointError, ConfigError, UnsafeCheckpointError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers (unwrap instead of stripping key prefixes)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif type(model).__name__ == "DistributedDataParallel" and isinstance(getattr(model, "module", None),
                                                                               nn.Module):
            model = model.module
        else:
            return model


def is_reparameterized(model: nn.Module) -> bool:
    return bool(getattr(model, "reparameterized", False))


def save_checkpoint(model: nn.Module, directory: Union[str, Path], extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` for a student model.

    ``config.json`` holds the architecture (embed dim, image size, mean/std, tokenizer,
    context length, ...), the logit scale, whether the model is reparameterized, parameter
    counts and library versions. Each file goes to a temporary name first.
    """
    from .version import __version__
    from .model import CLIP, count_params

    inner = unwrap(model)
    if not isinstance(inner, CLIP):
        raise CheckpointError(
            f"save_checkpoint saves this package's students (mobileclip.model.CLIP), got {type(inner).__name__}. "
            "For other modules save their state_dict with safetensors.torch.save_file."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in inner.state_dict().items()}
    import timm
    import open_clip

    config = {
        "format_version": FORMAT_VERSION,
        "architecture": inner.cfg.to_dict(),
        "embed_dim": inner.cfg.embed_dim,
        "image_size": inner.cfg.image.image_size,
        "mean": list(inner.cfg.preprocess.mean),
        "std": list(inner.cfg.preprocess.std),
        "tokenizer": inner.cfg.tokenizer.name,
        "context_length": inner.cfg.text.context_length,
        "logit_scale": float(inner.logit_scale.detach().exp()),
        "logit_bias": float(inner.logit_bias.detach()) if inner.logit_bias is not None else None,
        "reparameterized": is_reparameterized(inner),
        "params": count_params(inner),
        "versions": {"mobileclip": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "open_clip": open_clip.__version__},
    }
    if extra:
        config["extra"] = extra
    # A new (or checkpoint-only) directory is written whole and renamed into place, so weights and config
    # always belong together; into a directory holding other files, each file is replaced atomically.
    whole = not any(p.name not in (WEIGHTS_NAME, CONFIG_NAME) for p in directory.iterdir())
    target = temp_dir_for(directory) if whole else directory
    try:
        with atomic_write(target / WEIGHTS_NAME) as f:
            f.write(_safetensors_bytes(state, {"format": "pt", "mobileclip_format": str(FORMAT_VERSION)}))
        atomic_write_json(target / CONFIG_NAME, config)
        if whole:
            replace_dir(target, directory)
    finally:
        if whole and target.exists():
            shutil.rmtree(target, ignore_errors=True)
    return directory


def _safetensors_bytes(state: dict, metadata: dict) -> bytes:
    from safetensors.torch import save

    return save(state, metadata=metadata)


def read_config(directory: Union[str, Path]) -> dict:
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {str(directory)!r} is a file; a checkpoint is a directory holding "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    if not path.is_file():
        raise CheckpointError(
            f"{str(path)!r} is missing: a checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(written by mobileclip.save_checkpoint)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({e}); the checkpoint is damaged") from e


def load_weights(path: Union[str, Path]) -> dict:
    """Tensors from a ``.safetensors`` file or a pickled checkpoint read with ``weights_only=True``.

    A pickled checkpoint that wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``)
    is unwrapped, and DDP's ``module.`` prefix is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} " + ("is a directory; give the weights file in it"
                                                                if path.is_dir() else "does not exist"))
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({e}); it may be truncated") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refused to load {str(path)!r}: it is a pickle holding Python objects other than tensors, "
            "and unpickling it could run arbitrary code. Nothing from it was executed. If you trust its "
            "source, convert it to safetensors in a separate, sandboxed process. "
            f"(torch said: {str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{str(path)!r} could not be read as a checkpoint ({e})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{str(path)!r} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_into(model: nn.Module, state: dict, source: str) -> None:
    missing, unexpected = [], []
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}. Was it saved from a different architecture?"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(directory: Union[str, Path], device: Union[str, torch.device, None] = None) -> nn.Module:
    """Rebuild a student saved by :func:`save_checkpoint`, in eval mode."""
    from .model import CLIP
    from .reparam import reparameterize

    directory = Path(directory)
    config = read_config(directory)
    if config.get("format_version") != FORMAT_VERSION or "architecture" not in config:
        raise CheckpointError(f"{str(directory)!r}: unsupported checkpoint format {config.get('format_version')!r}")
    try:
        cfg = ModelConfig.from_dict(config["architecture"])
    except ConfigError as e:
        raise CheckpointError(f"{str(directory / CONFIG_NAME)!r}: {e}") from e
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{str(weights)!r} is missing; the checkpoint is incomplete")
    model = CLIP(cfg)
    if config.get("reparameterized"):
        model = reparameterize(model, inplace=True)
    load_state_into(model, load_weights(weights), str(weights))
    model.eval()
    return model.to(device) if device is not None else model
