"""mobileclip: distill a large CLIP into a compact on-device dual encoder, export it, prove it, measure it."""
from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .config import ModelConfig
from .errors import (
    CheckpointError, ConfigError, DatasetError, MobileCLIPError, TeacherError, UnknownModelError,
    UnsafeCheckpointError,
)
from .factory import create_model
from .model import CLIP, count_params
from .reparam import reparameterize
from .teachers import Teacher, load_teacher, wrap_teacher
from .tokenizer import Tokenizer
from .transforms import ImagePreprocess, load_image
from .zoo import get_model_config, list_models

__all__ = [
    "CLIP", "CheckpointError", "ConfigError", "DatasetError", "ImagePreprocess", "MobileCLIPError", "ModelConfig",
    "Teacher", "TeacherError", "Tokenizer", "UnknownModelError", "UnsafeCheckpointError", "count_params",
    "create_model", "get_model_config", "list_models", "load_checkpoint", "load_image", "load_teacher",
    "load_weights", "reparameterize", "save_checkpoint", "wrap_teacher", "__version__",
]
