"""`mobileclip bench`: latency across models, runtimes, precisions and batch sizes."""
from __future__ import annotations


def register(sub) -> None:
    """Add ``bench`` (defined in :mod:`mobileclip.benchmarks.harness`)."""
    from ..benchmarks.harness import add_commands

    add_commands(sub)
