"""What every backend provides: :class:`Backend`, :class:`Runner`, :class:`ExportOptions`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import numpy as np

from mobileclip.errors import MobileCLIPError


class BackendUnavailable(MobileCLIPError):
    """This machine cannot export or run this backend (a missing package, the wrong OS, no GPU)."""


@dataclass
class ExportOptions:
    """Everything ``mobileclip export`` passes to a backend; each backend reads what applies to it."""

    precision: str = "fp32"
    fixed_batch: int = 0              # 0: a dynamic batch
    max_batch: int = 32               # the largest batch parity runs (TensorRT's profile, Core ML's range)
    exporter: str = "dynamo"          # torch.onnx exporter
    token_dtype: str = "int32"
    calib: Optional[str] = None       # image folder for static int8 calibration
    calib_size: int = 64
    quant: str = "auto"               # int8 method: auto, dynamic, static
    compress: str = "none"            # Core ML weight compression
    seed: int = 0
    workspace_gb: float = 4.0         # TensorRT
    timing_cache: Optional[str] = None
    accept_int8_loss: bool = False    # export an int8 recipe the backend refuses by default (Backend.int8_refused)
    exact_gelu: bool = False          # static int8 for ONNX Runtime: keep GELU in float (quantize.gelu_in_int8)


def int8_refusal_reason(student: float, teacher: float, real: float) -> str:
    """Why an int8 recipe is refused by default, from its zero-shot top-1 agreement (%) with the fp32 source on the
    trained models of benchmarks/results/precision/summary.md (tests/test_precision_policy.py checks the numbers)."""
    return (f"it keeps {student:.1f} % of the fp32 source's zero-shot top-1s on make demo's trained student, "
            f"{teacher:.1f} % on its teacher and {real:.1f} % on a student trained on real data, where a default "
            "recipe must keep >= 98 % on each (benchmarks/results/precision/summary.md); fp16 keeps >= 99.6 %")


def int8_method(o: ExportOptions) -> str:
    """The int8 method the options pick: ``static`` when asked (``--quant static``) or when ``--quant auto`` is
    given calibration images (``--calib``); ``dynamic`` otherwise."""
    return "static" if o.quant == "static" or (o.quant == "auto" and bool(o.calib)) else "dynamic"


@dataclass(frozen=True)
class Backend:
    name: str
    precisions: tuple
    runtime: str                                # the engine that runs the artifacts (bench's runtime column)
    io: str                                     # what a runner's call includes (bench reports it)
    extra: str                                  # pip extra that installs its tools
    summary: str                                # one line for docs and `--help`
    export: Callable                            # (ExportSource, out_dir: Path, ExportOptions) -> {role: entry}
    runner: Callable                            # (directory, entry, device=, threads=) -> Runner
    unavailable: Callable[[], Optional[str]]    # why it cannot run here, or None
    check_options: Callable[[ExportOptions], None] = lambda options: None   # ConfigError for options it refuses
    prepare_export: Callable[[], None] = lambda: None      # a clear error, before any work, where export cannot run
    # Where predictions cannot run here: (directory, manifest, model, images, tokens, fp16 min cosine) -> report
    static_parity: Optional[Callable] = None
    label: str = ""                             # how reports name it ("ONNX", "Core ML", ...); default: name
    # The artifact's own inputs and outputs read back from the file: (directory, entry) ->
    # {"inputs": [{name, shape, dtype}], "outputs": [...]}; validate compares them with the manifest.
    read_io: Optional[Callable] = None
    # The device export and validate run its artifacts on for parity ("cuda" for TensorRT engines, which
    # run nowhere else); bench and the runtime pass the device they were asked for.
    parity_device: str = "cpu"
    # Why each int8 method ("static", "dynamic") is refused by default, where it is: measured on trained models
    # (benchmarks/results/precision/summary.md: a default recipe must keep >= 98 % of the fp32 source's zero-shot
    # top-1s and lose <= 1 point of R@1). --accept-int8-loss exports it anyway.
    int8_refused: Mapping[str, str] = field(default_factory=dict)
    # The int8 methods it has, and the one an export's options pick (TensorRT's int8 is static only).
    int8_methods: tuple = ("static", "dynamic")
    int8_method: Callable[[ExportOptions], str] = int8_method

    def int8_refusal(self, o: ExportOptions) -> Optional[str]:
        """Why these options' int8 recipe is refused by default, or None (not int8, accepted, or it passes)."""
        if o.precision != "int8" or o.accept_int8_loss:
            return None
        return self.int8_refused.get(self.int8_method(o))


def cuda_index(device) -> Optional[int]:
    """The GPU of a device name: ``cuda`` → 0, ``cuda:N`` → N; None for anything else (``cpu``, ``cuda:x``)."""
    kind, _, index = str(device).partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        return None
    return int(index or 0)


def installed_versions(*dists: str) -> dict:
    """``{distribution: version}`` for those of ``dists`` that are installed (a tool record for manifests)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue   # not installed: nothing to record
    return out


def fixed_batch(entry: dict) -> int:
    """The fixed batch of an artifact (its first input's first dimension), or 0 for a dynamic one."""
    try:
        dim = entry["inputs"][0]["shape"][0]
    except (KeyError, IndexError, TypeError):
        return 0
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else 0


class Runner(ABC):
    """One tower artifact, numpy in and numpy out, with Polygraphy's lifecycle.

    ``activate()`` loads it (a session, an engine, an interpreter), ``infer(x)`` runs any batch —
    in chunks of the artifact's fixed batch (the last one padded) or of its largest allowed batch —
    and ``deactivate()`` frees it. A runner is also a context manager and a callable (``infer``).
    Subclasses implement ``_activate``, ``_infer`` (one call within the limits) and may override
    ``_deactivate``.
    """

    def __init__(self, directory: Union[str, Path], entry: dict, device: str = "cpu", threads: int = 0) -> None:
        self.directory, self.entry = Path(directory), entry
        self.path = self.directory / entry["file"]
        self.device, self.threads = device, int(threads)
        self.fixed_batch = fixed_batch(entry)
        self.max_batch: Optional[int] = None      # set by runners whose artifact caps the batch
        self.active = False

    # -- lifecycle
    def activate(self) -> "Runner":
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference
    def infer(self, x: np.ndarray) -> np.ndarray:
        self.activate()
        step = self.fixed_batch or self.max_batch
        if not step or len(x) <= step and not self.fixed_batch:
            return self._infer(x)
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            pad = (self.fixed_batch - len(chunk)) if self.fixed_batch else 0
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(self._infer(chunk)[: len(chunk) - pad])
        return np.concatenate(outs)

    __call__ = infer

    @abstractmethod
    def _activate(self) -> None:
        """Load the artifact (a session, an engine, an interpreter)."""

    @abstractmethod
    def _infer(self, x: np.ndarray) -> np.ndarray:
        """One call on ``x``, whose batch is within the artifact's limits."""

    def _deactivate(self) -> None:
        """Free what ``_activate`` loaded; runners holding nothing that needs closing keep this default."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, active={self.active})"
