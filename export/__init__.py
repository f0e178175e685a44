"""Export: bundles of the two towers (ONNX, Core ML, TensorRT), each proven to match PyTorch (``mobileclip.export``)."""
from .api import export, validate
from .bundle import BundleError, load_manifest
from .validate import ParityError

__all__ = ["BundleError", "ParityError", "export", "load_manifest", "validate"]
