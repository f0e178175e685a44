"""The Core ML bundle format: files, precisions, compressions, the deployment target, compute units,
and coremltools itself (imported, with the versions that convert, or refused with how to install it)."""
from __future__ import annotations

import numpy as np

from mobileclip.errors import ConfigError

COMPRESSIONS = ("none", "palettize4", "palettize6", "palettize8", "int8")
PRECISIONS = ("fp16", "fp32")
DEPLOYMENT_TARGET = "iOS17"
SPECIFICATION_VERSION = 8  # Core ML's model specification version for iOS 17 / macOS 14
FILES = {"image": "image.mlpackage", "text": "text.mlpackage"}
INPUT_SCALE = 1.0 / 255.0
# The op a compression leaves in the ML program (iOS 17 opset).
COMPRESSED_OPS = {"palettize": "constexpr_lut_to_dense", "int8": "constexpr_affine_dequantize"}
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")


def require_coremltools():
    """Import coremltools, or raise a :class:`ConfigError` that says how to install it."""
    try:
        import coremltools as ct
    except ImportError as e:
        raise ConfigError(f"Core ML export needs coremltools ({e}); install it with: "
                          f"pip install 'mobileclip-toolkit[coreml]'") from e
    ct_major = int(ct.__version__.split(".")[0])
    np_version = tuple(int(p) for p in np.__version__.split(".")[:2])
    if ct_major <= 9 and np_version >= (2, 4):
        raise ConfigError(f"coremltools {ct.__version__} cannot convert with numpy {np.__version__} "
                          f"(every traced conversion fails); install numpy<2.4: pip install 'numpy<2.4'")
    return ct
