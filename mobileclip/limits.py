"""Upper bounds of the numbers a user passes that size memory: checked where they enter, before anything is
created, so a typo (``student_image_size=100000``) is one line instead of a process killed for memory.

Each bound is far above what any published CLIP setting uses (the reason is in the message), so it only stops
values no run could mean.
"""
from __future__ import annotations

import os
from typing import Optional

from .errors import ConfigError

# value: (bound, why no real run goes there)
IMAGE_SIZE = (2048, "CLIP models train at 224-518 px (MobileCLIP at 256)")
CONTEXT_LENGTH = (1024, "CLIP text towers take 64-256 tokens (MobileCLIP 77)")
EMBED_DIM = (8192, "CLIP embeddings have 256-1536 dimensions")
BATCH = (1 << 20, "SigLIP's largest batch was 1M")
AUGS = (1024, "MobileCLIP's DataCompDR stores 30 augmentations per image")
SHARD = (1 << 20, "a shard is read whole; 1024-65536 samples is the usual size")
SAMPLES = (1_000_000_000, "synthetic data is for tests and demos")


def check_max(value, bound: tuple, what: str) -> None:
    """Refuse ``value`` above ``bound`` (a ``(limit, why)`` pair above), naming ``what``."""
    limit, why = bound
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
        raise ConfigError(f"{what}: {value:,} is above the limit of {limit:,} ({why}); a value this large "
                          "would exhaust memory - check for a typo")


def total_memory() -> Optional[int]:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_pixels(images: int, size: int, what: str, per: str = "") -> None:
    """Refuse a batch whose float32 pixels alone (``images x 3 x size^2 x 4`` bytes) exceed half of this
    machine's memory: the step would need many times that for activations."""
    need, have = images * 3 * size * size * 4, total_memory()
    if have and need > have / 2:
        raise ConfigError(f"{what}: a batch of {images:,} images at {size} px{per} holds {need / 1e9:.1f} GB of pixels "
                          f"alone, more than half of this machine's {have / 1e9:.1f} GB; lower the batch size (or "
                          "raise accum_steps)")
