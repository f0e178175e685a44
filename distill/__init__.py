"""Distillation: losses, teacher-embedding cache, trainer (``mobileclip.distill``)."""
from .cache import TeacherCache, build_cache
from .config import TrainConfig, load_config
from .losses import LOSSES, register_loss
from .train import Trainer, TrainingError, train

__all__ = ["LOSSES", "TeacherCache", "TrainConfig", "Trainer", "TrainingError", "build_cache", "load_config",
           "register_loss", "train"]
