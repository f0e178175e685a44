"""The torch-free runtime: run an exported ONNX bundle with numpy, Pillow and ONNX Runtime.

>>> from mobileclip import runtime
>>> model = runtime.load("bundles/s0-fp32")           # checks the manifest and every checksum
>>> model.encode_image(["a.jpg", "b.png"])            # float32 [2, D], L2-normalized
>>> model.encode_text(["a photo of a cat"])           # float32 [1, D]
>>> model.classify("a.jpg", ["cat", "dog", "car"])    # [("cat", 0.93), ("dog", 0.05), ("car", 0.02)]
>>> index = runtime.ImageIndex.build(model, "~/Pictures"); index.save("pictures.idx")
>>> runtime.ImageIndex.load("pictures.idx").search("a red car at night", k=5)   # [(path, cosine), ...]

Nothing here imports torch (a test checks ``sys.modules`` in a fresh interpreter).
"""
from mobileclip.backends.bundle import BundleError
from mobileclip.errors import RuntimeInputError
from mobileclip.templates import DEFAULT_TEMPLATES

from .core import (ImageReadError, OpenedBundle, Preprocessor, RuntimeBackendError, RuntimeModel, bundle_fingerprint,
                   load, open_bundle, read_image)
from .index import IMAGE_EXTENSIONS, ImageIndex, ImageIndexError, IndexMismatchError, build_index, load_index, \
    scan_images
from .hf_tokenizer import HFTokenizer, load_bundle_tokenizer
from .tokenizer import ClipBPE, TokenizerError, tokenizer_from_manifest

__all__ = [
    "OpenedBundle", "open_bundle",
    "BundleError", "ClipBPE", "DEFAULT_TEMPLATES", "IMAGE_EXTENSIONS", "ImageIndex", "ImageIndexError",
    "ImageReadError", "IndexMismatchError", "Preprocessor", "RuntimeBackendError", "RuntimeInputError",
    "RuntimeModel", "TokenizerError", "build_index", "bundle_fingerprint", "load", "load_index", "read_image",
    "scan_images", "tokenizer_from_manifest", "HFTokenizer", "load_bundle_tokenizer",
]
