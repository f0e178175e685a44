"""The training DataLoader's host limits: batches sized to /dev/shm, and workers forked with the interpreter's
objects frozen."""
from __future__ import annotations

import gc
import os
from typing import Optional

from mobileclip.errors import ConfigError


def shm_free(path: str = "/dev/shm") -> Optional[int]:
    """Bytes free in the shared-memory filesystem DataLoader workers pass batches through (None: none there)."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def shm_prefetch(batch_bytes: int, workers: int, want: int = 4, free: Optional[int] = None) -> int:
    """The DataLoader prefetch factor whose batches in flight (``workers x prefetch``, each ``batch_bytes``, with
    room for the rest of a sample) fit in half of ``/dev/shm``: ``want`` when they fit, fewer when not, and a
    :class:`ConfigError` when not even one batch per worker does (a container's default 64 MB: "Bus error")."""
    free = shm_free() if free is None else free
    if free is None or batch_bytes <= 0:
        return want
    need = int(batch_bytes * 1.25)
    fits = int(free / 2 // (need * workers)) if workers else want
    if fits >= 1:
        return min(want, fits)
    raise ConfigError(f"data.workers={workers}: each worker passes batches of about {need / 1e6:.0f} MB through "
                      f"/dev/shm, which has {free / 1e6:.0f} MB free; lower data.workers or batch_size, or give the "
                      "container more shared memory (docker run --shm-size=8g)")


def start_loader(loader):
    """``iter(loader)``, with the interpreter's objects frozen while the workers fork (:func:`gc.freeze`, as
    Python's documentation advises before a fork): a collection in a worker would otherwise write to every
    object it inherited, and the kernel copy their pages into each worker."""
    if not loader.num_workers:
        return iter(loader)
    gc.collect()
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()
