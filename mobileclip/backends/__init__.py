"""Backends: the bundle contract and one module per artifact format (torch-free at import).

A backend is one module of this package exposing ``BACKEND``, a :class:`Backend`:

* ``export(source, out_dir, options) -> {"image": entry, "text": entry}`` writes both towers of
  an :class:`~mobileclip.export.source.ExportSource` into ``out_dir`` and returns their manifest
  entries (it may import torch and the format's own tools, lazily);
* ``runner(directory, entry, device, threads) -> Runner``: numpy in, numpy out, with
  Polygraphy's ``activate`` / ``infer`` / ``deactivate`` lifecycle (:class:`Runner`);
* ``unavailable() -> None | str``: why this machine cannot run it (a missing package, the wrong
  OS or no GPU), or None.

Parity (``mobileclip.export``), the runtime and ``mobileclip bench`` get runners only from
here, and the CLI's ``--format`` choices are :func:`names`. Adding a backend is one new module
and one line in :data:`REGISTRY`.
"""
from __future__ import annotations

from importlib import import_module

from .base import Backend, BackendUnavailable, ExportOptions, Runner, fixed_batch  # noqa: F401

# name -> (module, precisions, the engine that runs it). Listing them imports nothing.
REGISTRY = {
    "onnx": ("mobileclip.backends.onnx", ("fp32", "fp16", "int8"), "onnxruntime"),
    "coreml": ("mobileclip.backends.coreml", ("fp32", "fp16", "int8"), "coreml"),
    "tensorrt": ("mobileclip.backends.tensorrt", ("fp32", "fp16", "int8"), "tensorrt"),
    "ort": ("mobileclip.backends.ort_mobile", ("fp32", "fp16", "int8"), "onnxruntime-mobile"),
    "litert": ("mobileclip.backends.litert", ("fp32", "fp16", "int8"), "litert"),
    "executorch": ("mobileclip.backends.executorch", ("fp32", "int8"), "executorch"),
    "web": ("mobileclip.backends.web", ("fp32", "fp16", "int8"), "onnxruntime"),
}


def names() -> list:
    """Every registered backend, in registry order."""
    return list(REGISTRY)


def precisions(name: str) -> tuple:
    return REGISTRY[_known(name)][1]


def runtime_name(name: str) -> str:
    """The engine that runs backend ``name``'s artifacts (a ``mobileclip bench`` runtime)."""
    return REGISTRY[_known(name)][2]


def all_precisions() -> list:
    """Every precision some backend offers (the CLI's ``--precision`` choices)."""
    return sorted({p for _, ps, _ in REGISTRY.values() for p in ps}, key=("fp32", "fp16", "int8").index)


def _known(name: str) -> str:
    if name not in REGISTRY:
        from mobileclip.errors import ConfigError

        raise ConfigError(f"format {name!r} is not known; choose from {names()}")
    return name


def get(name: str) -> Backend:
    """The backend ``name`` (imports its module)."""
    backend = import_module(REGISTRY[_known(name)][0]).BACKEND
    assert (backend.name, tuple(backend.precisions), backend.runtime) == (name, precisions(name),
                                                                           runtime_name(name)), name
    return backend


def runner_for(directory, entry: dict, device: str = "cpu", threads: int = 0) -> Runner:
    """The runner of one artifact entry of a bundle manifest (its ``backend`` picks the module)."""
    return get(entry["backend"]).runner(directory, entry, device=device, threads=threads)
