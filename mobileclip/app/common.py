"""What the command groups of the `mobileclip` command line share (the parser and the error boundary are in
cli.py, which imports the groups; the groups import this, never cli.py)."""
from __future__ import annotations

from typing import Optional


def torch_device(arg: Optional[str]):
    import torch

    if arg:
        return torch.device(arg)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def write_json(path: Optional[str], data: dict) -> None:
    if path:
        from ..checkpoint import atomic_write_json

        atomic_write_json(path, data)
        print(f"wrote {path}")


# Which extra installs a missing module (for the one-line error that names it).
EXTRA_OF = {"torch": "train", "torchvision": "train", "timm": "train", "open_clip": "train",
            "transformers": "train", "safetensors": "train", "webdataset": "train", "braceexpand": "train",
            "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "runtime", "coremltools": "coreml",
            "tensorrt": "tensorrt", "matplotlib": "bench", "regex": "runtime", "ftfy": "runtime"}
