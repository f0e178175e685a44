"""Distillation (``mobileclip.distill``): the teacher-embedding cache, the data sources it and the trainer read, the
losses, and the trainer. Everything a documented call needs is importable from here."""
from mobileclip.errors import TrainingError

from .cache import CacheError, TeacherCache, build_cache
from .config import TrainConfig, load_config
from .losses import LOSSES, register_loss
from .sources import (CaptionPairs, ImageFiles, SyntheticImages, SyntheticPairs, SyntheticTexts, TextLines,
                      WebDatasetPairs, source_from_spec)
from .train import Trainer, train

__all__ = ["LOSSES", "CacheError", "CaptionPairs", "ImageFiles", "SyntheticImages", "SyntheticPairs",
           "SyntheticTexts", "TeacherCache", "TextLines", "TrainConfig", "Trainer", "TrainingError",
           "WebDatasetPairs", "build_cache", "load_config", "register_loss", "source_from_spec", "train"]
