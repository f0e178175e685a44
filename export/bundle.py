"""Moved to :mod:`mobileclip.backends.bundle`; this name is the same module object (kept for old imports)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("mobileclip.backends.bundle")
