"""Export: bundles of the two towers (ONNX, Core ML, TensorRT), each proven to match PyTorch (``mobileclip.export``).

Names are imported lazily (PEP 562), so ``mobileclip.backends.bundle`` can be used where torch
is not installed (the runtime reads bundles without it).
"""
from importlib import import_module

_EXPORTS = {"export": ".api", "validate": ".api", "BundleError": "mobileclip.backends.bundle",
            "load_manifest": "mobileclip.backends.bundle",
            "ParityError": ".parity"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
