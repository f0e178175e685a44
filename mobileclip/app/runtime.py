"""`mobileclip classify`, `index` and `search`: the torch-free runtime's commands."""
from __future__ import annotations


def register(sub) -> None:
    """Add ``classify``, ``index`` and ``search`` (defined in :mod:`mobileclip.runtime.commands`)."""
    from ..runtime.commands import add_commands

    add_commands(sub)
