"""Typed errors. Every message says what was wrong and what to do about it."""
from __future__ import annotations


class MobileCLIPError(Exception):
    """Base class of every error this package raises on purpose."""


class UnknownModelError(MobileCLIPError, KeyError):
    """A model name that is neither registered nor a teacher spec nor a checkpoint directory."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""


class ConfigError(MobileCLIPError, ValueError):
    """A configuration key or value is wrong."""


class CheckpointError(MobileCLIPError):
    """A checkpoint is missing, incomplete, or does not match its model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint holds Python objects other than tensors; it was not loaded."""


class RuntimeInputError(MobileCLIPError, ValueError):
    """An argument is not usable (an empty label list, a template without '{}', a wrong array type, ...)."""


class DatasetError(MobileCLIPError):
    """A dataset is missing, empty, or malformed."""


class TeacherError(MobileCLIPError):
    """A teacher spec cannot be resolved or loaded."""


class TrainingError(MobileCLIPError):
    """Training cannot go on (too many non-finite steps, a run directory that cannot be resumed, ...)."""
