"""The runtimes ``mobileclip bench`` times a model's towers on: PyTorch (:class:`TorchRuntime`,
eager or ``torch.compile``) and a bundle's backend (:class:`BundleRuntime`, through
``mobileclip.backends``), with the inputs they are timed on."""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import ExitStack
from typing import Callable, Optional

import numpy as np

from mobileclip import backends
from mobileclip.errors import MobileCLIPError

from .stats import MemoryProbe

BACKEND_RUNTIME = {name: backends.runtime_name(name) for name in backends.names()}
RUNTIMES = ("torch", *BACKEND_RUNTIME.values())
TOWERS = ("image", "text")
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
PROMPTS = ("a photo of a dog", "a red car parked at night", "two cats sleeping on a blue sofa",
           "a diagram of a neural network", "a bowl of ramen with an egg", "snow on a mountain ridge at dawn",
           "a person riding a bicycle in the rain", "an empty train station")


# =========================================================================== runtimes

class Skip(MobileCLIPError):
    """A case that cannot run on this machine or configuration; the message is the reason."""


class Runtime(ABC):
    """One way of running a model's towers: ``prepare(tower, batch)`` returns a zero-argument
    callable that runs one batch; ``sync()`` waits for the device after a call; ``close()``
    releases what the runtime holds. ``prepare`` raises :class:`Skip` with the reason when the
    case cannot run here."""

    name = "runtime"
    io = "host"

    def __init__(self, device: str) -> None:
        self.device = device
        self.load_rss: dict = {}        # tower -> RSS MB added by loading it

    @abstractmethod
    def precision(self, tower: str) -> str:
        """The precision the ``tower`` runs in (``fp32``, ``fp16``, ``bf16``, ``int8``)."""

    @abstractmethod
    def prepare(self, tower: str, batch: int) -> Callable[[], object]:
        """Inputs for ``batch`` samples and a callable running one call on them."""

    def sync(self) -> None:
        return None

    def close(self) -> None:
        return None


def _image_batch(batch: int, size: int, mean, std, seed: int = 0) -> np.ndarray:
    """Random 8-bit pixels, normalized as the model's preprocessing does (float32 NCHW)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(batch, 3, size, size)).astype(np.float32) / 255.0
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((pixels - m) / s)


def _prompts(batch: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]


class TorchRuntime(Runtime):
    """PyTorch eager (or ``torch.compile``) on ``cpu`` or ``cuda``; fp32, or bf16/fp16 autocast."""

    name = "torch"
    io = "device tensors (inputs already on the device; outputs left there)"

    def __init__(self, src, device: str, precision: str = "fp32", compile: bool = False) -> None:
        import torch

        super().__init__(device)
        self.src, self._precision, self.compile = src, precision, compile
        self.name = "torch.compile" if compile else "torch"
        self.dev = torch.device(device)
        self._fns: dict = {}

    def precision(self, tower: str) -> str:
        return self._precision

    def _fn(self, tower: str):
        import torch

        if tower not in self._fns:
            fn = getattr(self.src.model, f"encode_{tower}")
            if self.compile:
                if not hasattr(torch, "compile"):
                    raise Skip(f"torch {torch.__version__} has no torch.compile")
                fn = torch.compile(fn)
            self._fns[tower] = fn
        return self._fns[tower]

    def prepare(self, tower: str, batch: int) -> Callable[[], object]:
        import torch

        if tower == "image":
            s = self.src.image_size
            x = torch.from_numpy(_image_batch(batch, s, self.src.mean, self.src.std)).to(self.dev)
        else:
            x = self.src.tokenizer(_prompts(batch)).to(self.dev)
        fn = self._fn(tower)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self._precision)
        dev_type = self.dev.type

        def run():
            with ExitStack() as stack:
                stack.enter_context(torch.inference_mode())
                if dtype is not None:
                    stack.enter_context(torch.autocast(dev_type, dtype=dtype))
                elif dev_type == "cuda":   # "fp32" means fp32: no TF32 convolutions (cuDNN's default) or matmuls
                    from .stats import ieee_fp32

                    stack.enter_context(ieee_fp32())
                return fn(x)

        return run

    def sync(self) -> None:
        if self.dev.type == "cuda":
            import torch

            torch.cuda.synchronize(self.dev)


class BundleRuntime(Runtime):
    """A bundle's towers through their backend's runners, opened as users open it
    (:func:`mobileclip.runtime.open_bundle`): the runtime the backend names (onnxruntime with ``--threads``
    intra-op threads and one inter-op thread, TensorRT, Core ML, ...) and the bundle's own tokenizer. A runner
    that cannot run here is a :class:`Skip` with its reason."""

    def __init__(self, opened) -> None:
        super().__init__(opened.runners["image"].device)
        self.opened, self.dir, self.manifest = opened, opened.directory, opened.manifest
        backend = backends.get(self.manifest["artifacts"]["image"]["backend"])
        self.name, self.io = backend.runtime, backend.io
        for r in opened.runners.values():
            if hasattr(r, "inter_threads"):
                r.inter_threads = 1
            if hasattr(r, "probe_placement"):   # ONNX Runtime: which providers really run the nodes (first call)
                r.probe_placement = True

    def entry(self, tower: str) -> dict:
        return self.manifest["artifacts"][tower]

    def precision(self, tower: str) -> str:
        return self.entry(tower)["precision"]

    def runner(self, tower: str):
        return self.opened.runners[tower]

    def placement(self, tower: str) -> Optional[dict]:
        """``{"providers": [...], "nodes": {provider: count}}`` the tower's session really used, once it has run
        (ONNX Runtime runners); None where the backend cannot say."""
        return getattr(self.opened.runners[tower], "placement", None)

    def inputs(self, tower: str, batch: int) -> np.ndarray:
        fixed = self.runner(tower).fixed_batch
        if fixed and fixed != batch:
            raise Skip(f"the {tower} artifact has a fixed batch of {fixed}; re-export with --fixed-batch {batch} "
                       "(or a dynamic batch, where the format has one) to time that batch")
        m = self.manifest
        if tower == "image":
            return _image_batch(batch, int(m["image_size"]), m["mean"], m["std"])
        if self.opened.tokenizer is None:
            raise Skip("the bundle's tokenizer could not be loaded (see the bundle row's reason)")
        return self.opened.tokens(_prompts(batch))

    def prepare(self, tower: str, batch: int) -> Callable[[], object]:
        x = self.inputs(tower, batch)
        r = self.runner(tower)
        if not r.active:
            rss0 = MemoryProbe.rss_mb()
            try:
                r.activate()
            except backends.BackendUnavailable as e:
                raise Skip(str(e)) from e
            self.load_rss[tower] = MemoryProbe.rss_mb() - rss0
        if r.max_batch and batch > r.max_batch:
            raise Skip(f"batch {batch} is beyond the artifact's largest batch ({r.max_batch}); re-export with "
                       f"--max-batch {batch}")
        return lambda: r.infer(x)

    def close(self) -> None:
        self.opened.close()
