"""mobileclip: distill a large CLIP into a compact on-device dual encoder, export it, prove it, measure it.

The public names below are imported lazily (PEP 562), so ``import mobileclip`` is cheap
and sub-packages that must not pull in torch (the on-device runtime) stay torch-free.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import DISTRIBUTION, __version__  # noqa: F401

_EXPORTS = {
    "load_checkpoint": "checkpoint", "load_weights": "checkpoint", "save_checkpoint": "checkpoint",
    "ModelConfig": "config",
    "CheckpointError": "errors", "ConfigError": "errors", "DatasetError": "errors", "MobileCLIPError": "errors",
    "TeacherError": "errors", "UnknownModelError": "errors", "UnsafeCheckpointError": "errors",
    "create_model": "factory",
    "convert_checkpoint": "convert", "load_pretrained": "convert",
    "CLIP": "model", "count_params": "model",
    "reparameterize": "reparam",
    "Teacher": "teachers", "load_teacher": "factory", "wrap_teacher": "teachers",
    "Tokenizer": "tokenizer",
    "ImagePreprocess": "transforms", "load_image": "transforms",
    "get_model_config": "zoo", "list_models": "zoo",
}
_SUBMODULES = {"zoo", "data", "zeroshot", "teachers", "checkpoint", "config", "reparam", "transforms", "catalog",
               "convert"}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mobileclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)


if TYPE_CHECKING:  # for type checkers and IDEs
    from .checkpoint import load_checkpoint, load_weights, save_checkpoint  # noqa: F401
    from .config import ModelConfig  # noqa: F401
    from .errors import (  # noqa: F401
        CheckpointError, ConfigError, DatasetError, MobileCLIPError, TeacherError, UnknownModelError,
        UnsafeCheckpointError,
    )
    from .convert import convert_checkpoint, load_pretrained  # noqa: F401
    from .factory import create_model  # noqa: F401
    from .model import CLIP, count_params  # noqa: F401
    from .reparam import reparameterize  # noqa: F401
    from .factory import load_teacher  # noqa: F401
    from .teachers import Teacher, wrap_teacher  # noqa: F401
    from .tokenizer import Tokenizer  # noqa: F401
    from .transforms import ImagePreprocess, load_image  # noqa: F401
    from .zoo import get_model_config, list_models  # noqa: F401
