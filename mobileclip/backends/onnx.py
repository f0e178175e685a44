"""The ONNX backend: ``image.onnx`` / ``text.onnx`` run by ONNX Runtime (torch-free at import).

Export: ``torch.onnx`` (dynamo or legacy exporter), ONNX Runtime's basic offline optimizations,
then fp16 conversion or int8 quantization (:mod:`.onnx_graph`, :mod:`.quantize`). The runner is
an ONNX Runtime session whose real input dtype, fixed dimensions and output size are checked
against the manifest entry when it is activated.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .base import Backend, BackendUnavailable, ExportOptions, Runner, cuda_index, int8_method, int8_refusal_reason
from .bundle import BundleError

QUANT_METHODS = ("auto", "dynamic", "static")


# ------------------------------------------------------------------ export

def export_onnx(src, out_dir: Path, options: ExportOptions, qdq_for_tensorrt: bool = False) -> dict:
    """Both towers as ONNX files in ``out_dir``; returns their manifest entries."""
    import torch

    from .onnx_graph import export_tower, io_spec, optimize_offline, to_fp16
    from .bundle import IMAGE_IN, IMAGE_OUT, TEXT_IN, TEXT_OUT
    from .towers import ImageTower, TextTower, example_inputs

    o = options
    b = o.fixed_batch or 2
    example = example_inputs(src, b, o.token_dtype)
    export_tower(ImageTower(src.model), example["image"], out_dir / "image.onnx", IMAGE_IN, IMAGE_OUT,
                 dynamic_batch=not o.fixed_batch, exporter=o.exporter)
    export_tower(TextTower(src.model), example["text"], out_dir / "text.onnx", TEXT_IN, TEXT_OUT,
                 dynamic_batch=not o.fixed_batch, exporter=o.exporter)
    info = {t: {"file": f"{t}.onnx", "backend": "onnx", "precision": o.precision, "exporter": o.exporter}
            for t in ("image", "text")}
    for t in ("image", "text"):
        info[t].update(optimize_offline(out_dir / f"{t}.onnx"))
    if o.precision == "fp16":
        for t in ("image", "text"):
            info[t].update(to_fp16(out_dir / f"{t}.onnx"))
    elif o.precision == "int8":
        _quantize(src, out_dir, info, o, qdq_for_tensorrt)
    for t in ("image", "text"):
        info[t].update(io_spec(out_dir / info[t]["file"]))
    return info


def _quantize(src, out_dir: Path, info: dict, o: ExportOptions, qdq_for_tensorrt: bool) -> None:
    """int8 towers: the image tower static QDQ when calibration images are given, else dynamic.

    The text tower is quantized dynamically for ONNX Runtime (its MatMuls are where the time
    goes, and per-call activation scales suit variable-length prompts). For TensorRT, which
    runs QDQ graphs only, the image tower is QDQ in TensorRT's recipe (every convolution
    including the depthwise ones, int8 symmetric activations, float biases: ``quantize.TARGETS``)
    and the text tower is fp16.
    """
    from .bundle import IMAGE_IN
    from .onnx_graph import to_fp16
    from .quantize import calibration_images, quantize_dynamic_onnx, quantize_static_onnx

    method = int8_method(o)
    fp32 = out_dir / "image.fp32.onnx"
    shutil.move(out_dir / "image.onnx", fp32)
    if method == "static":
        samples, meta = calibration_images(o.calib, src.preprocess, o.calib_size, o.seed)
        q = quantize_static_onnx(fp32, out_dir / "image.onnx", IMAGE_IN, samples,
                                 target="tensorrt" if qdq_for_tensorrt else "onnxruntime",
                                 int8_gelu=False if o.exact_gelu else None)
        q["quantization"].update(meta)
    else:
        q = quantize_dynamic_onnx(fp32, out_dir / "image.onnx")
    fp32.unlink()
    info["image"].update(q)
    if qdq_for_tensorrt:
        info["text"].update(to_fp16(out_dir / "text.onnx"), precision="fp16")
        return
    fp32 = out_dir / "text.fp32.onnx"
    shutil.move(out_dir / "text.onnx", fp32)
    info["text"].update(quantize_dynamic_onnx(fp32, out_dir / "text.onnx"))
    fp32.unlink()


def check_options(o: ExportOptions) -> None:
    from mobileclip.errors import ConfigError

    if o.quant not in QUANT_METHODS:
        raise ConfigError(f"quantization {o.quant!r} is not known; choose from {list(QUANT_METHODS)}")
    if o.quant != "auto" and o.precision != "int8":
        raise ConfigError(f"--quant {o.quant} applies to --precision int8 only")
    if o.precision == "int8" and o.quant == "static" and not o.calib:
        raise ConfigError("static int8 quantization needs calibration images: pass --calib <image folder> "
                          "(real images, one sub-folder per class), or use --quant dynamic")
    if o.calib and o.precision != "int8":
        raise ConfigError("--calib applies to --precision int8 only")
    if o.compress != "none":
        raise ConfigError("--compress (weight palettization / int8) applies to --format coreml only")


# ------------------------------------------------------------------ run

CPU_PROVIDER = "CPUExecutionProvider"


def provider_name(provider) -> str:
    """An execution provider's name, whether given as ``"Name"`` or ``("Name", {options})``."""
    return provider[0] if isinstance(provider, (tuple, list)) else str(provider)


def ort_session(path: Path, precision: str = "fp32", providers: Optional[Sequence] = None, threads: int = 0,
                inter_threads: int = 0, profile_prefix: Optional[str] = None):
    """An ONNX Runtime session for one bundle artifact, on exactly the providers asked for.

    ONNX Runtime falls back to the next provider in the list (in the end the CPU) when one
    cannot be created (onnxruntime without CUDA, a missing CUDA/cuDNN library, a TensorRT
    EP without TensorRT), with only a log line. Timings or outputs from such a session would
    be labelled with a device they never ran on, so every requested provider other than the
    CPU must be among the session's own providers (``session.get_providers()``), or
    :class:`BackendUnavailable` says which are missing and what to do.

    ``profile_prefix`` turns on ONNX Runtime's profiler (files named after it), which records the provider that
    runs each node: :func:`node_placement` reads it after the first run.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailable("ONNX bundles run with onnxruntime: pip install onnxruntime") from e
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if inter_threads:
        opts.inter_op_num_threads = int(inter_threads)
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    # ORT 1.31 can crash creating an fp16 session with the NCHWc layout transformer (DESIGN.md).
    disabled = ["NchwcTransformer"] if precision == "fp16" else None
    requested = list(providers or [CPU_PROVIDER])
    try:
        session = ort.InferenceSession(str(path), opts, providers=requested, disabled_optimizers=disabled)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise BundleError(f"ONNX Runtime cannot load {str(path)!r}: {e}") from e
    check_providers(session, requested, path)
    return session


def check_providers(session, requested: Sequence, path) -> None:
    """:class:`BackendUnavailable` when a requested non-CPU provider is not among ``session.get_providers()``."""
    active = list(session.get_providers())
    missing = [provider_name(p) for p in requested if provider_name(p) != CPU_PROVIDER
               and provider_name(p) not in active]
    if missing:
        import onnxruntime as ort

        raise BackendUnavailable(
            f"ONNX Runtime {ort.__version__} did not create {', '.join(missing)} for {str(path)!r}: the session runs on "
            f"{active} instead (this onnxruntime offers {ort.get_available_providers()}). Install the matching onnxruntime-gpu and "
            "the CUDA/cuDNN (or TensorRT) libraries it needs (ONNX Runtime's log says which failed to load), or "
            "run on the CPU (--device cpu, or providers=['CPUExecutionProvider'])")


def node_placement(session) -> dict:
    """Where a profiled session's nodes ran (call after at least one run; it ends the profiling, so later runs are
    not slowed): ``{"providers": the session's providers, "nodes": {provider: nodes it ran}}``, read from the
    profile's per-node kernel events (``args.provider``), each node counted once. The profile file is removed.
    A session whose providers include CUDA can still place nodes on the CPU (ops CUDA has no kernel for): the
    counts show it, where ``get_providers()`` does not."""
    import json

    path = session.end_profiling()
    nodes: dict = {}
    try:
        events = json.loads(Path(path).read_text()) if path else []
    except (OSError, ValueError) as e:
        raise BackendUnavailable(f"ONNX Runtime's profile {path!r} could not be read ({e})") from e
    finally:
        if path:
            Path(path).unlink(missing_ok=True)
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time") and args.get("provider"):
            nodes.setdefault(args["provider"], set()).add(ev["name"])
    return {"providers": list(session.get_providers()), "nodes": {k: len(v) for k, v in sorted(nodes.items())}}


def ort_providers(device: str, precision: str = "fp32") -> list:
    """The execution providers for ``device``: ``cpu``, or ``cuda`` / ``cuda:N`` (CUDA first, refused when
    onnxruntime has no CUDA provider; ``cuda:N`` picks GPU N). An fp32 artifact gets CUDA's ``use_tf32=0``: ONNX
    Runtime's CUDA provider otherwise runs fp32 matmuls and convolutions in TF32 (its default), and an "fp32" row
    would measure something else."""
    import onnxruntime as ort

    device = str(device)
    if device == "cpu":
        return [CPU_PROVIDER]
    gpu = cuda_index(device)
    if gpu is None:
        raise BackendUnavailable(f"device {device!r}: ONNX bundles run on cpu, cuda or cuda:N")
    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have:
        raise BackendUnavailable(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (available: {have}); "
                                 "install onnxruntime-gpu to run bundles on the GPU")
    options = {"device_id": gpu} if ":" in device else {}
    if precision == "fp32":
        options["use_tf32"] = 0
    return [("CUDAExecutionProvider", options) if options else "CUDAExecutionProvider", CPU_PROVIDER]


class OrtRunner(Runner):
    """An ONNX Runtime session; activation checks the graph's own signature against the manifest.

    ``providers`` overrides the execution providers ``device`` implies; either way a session
    on which ONNX Runtime silently dropped a requested GPU provider is refused
    (:func:`ort_session`). ``inter_threads`` sets ONNX Runtime's inter-op pool (0: its default).
    ``probe_placement``: the session is profiled for its first run only, and ``placement`` then says which
    providers ran how many nodes (:func:`node_placement`).
    """

    def __init__(self, directory, entry: dict, device: str = "cpu", threads: int = 0,
                 providers: Optional[Sequence] = None, inter_threads: int = 0) -> None:
        super().__init__(directory, entry, device, threads)
        self.providers, self.inter_threads = providers, inter_threads
        self.probe_placement = False
        self.placement: Optional[dict] = None
        self._profile_dir = None

    def _activate(self) -> None:
        entry = self.entry
        try:
            spec_in = entry["inputs"][0]
        except (KeyError, IndexError, TypeError) as e:
            raise BundleError(f"the manifest entry of {str(self.path)!r} is incomplete ({e!r}); re-export the "
                              "bundle") from e
        prefix = None
        if self.probe_placement and self.placement is None:
            import tempfile

            self._profile_dir = tempfile.mkdtemp(prefix="mobileclip-placement-")
            prefix = str(Path(self._profile_dir) / "ort")
        self.session = ort_session(self.path, entry.get("precision", "fp32"),
                                   self.providers or ort_providers(self.device, entry.get("precision", "fp32")),
                                   self.threads, self.inter_threads, profile_prefix=prefix)
        names = [i.name for i in self.session.get_inputs()]
        if spec_in.get("name") not in names:
            raise BundleError(f"{str(self.path)!r} has inputs {names}, the manifest says {spec_in.get('name')!r}; "
                              "re-export the bundle")
        self.input_name = spec_in["name"]
        real_in = next(i for i in self.session.get_inputs() if i.name == self.input_name)
        want_type = f"tensor({'float' if spec_in.get('dtype') == 'float32' else spec_in.get('dtype')})"
        if real_in.type != want_type:
            raise BundleError(f"{str(self.path)!r} takes {real_in.type} input, the manifest says "
                              f"{spec_in.get('dtype')}; re-export the bundle")
        shape = list(spec_in.get("shape", []))
        if any(isinstance(a, int) and a != b for a, b in zip(real_in.shape, shape)):
            raise BundleError(f"{str(self.path)!r} takes input of shape {real_in.shape}, the manifest says "
                              f"{shape}; re-export the bundle")
        out = self.session.get_outputs()[0].shape
        self.output_dim = out[-1] if out and isinstance(out[-1], int) else None

    def _infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: x})[0]
        if self._profile_dir is not None:   # the first run of a profiled session: read where its nodes ran
            self._end_profile()
        return out

    def _end_profile(self) -> None:
        import shutil

        try:
            self.placement = node_placement(self.session)
        finally:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None

    def _deactivate(self) -> None:
        if self._profile_dir is not None:
            import shutil

            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None
        self.session = None


def read_io_file(directory, entry: dict) -> dict:
    """An ONNX file's inputs and outputs as the ONNX library reads them (symbolic dims as names)."""
    from .onnx_graph import io_spec

    real = io_spec(Path(directory) / entry["file"])
    return {k: real[k] for k in ("inputs", "outputs")}


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
              "tensor(int64)": "int64", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


def read_io_session(directory, entry: dict) -> dict:
    """A model's inputs and outputs as an ONNX Runtime session reads them (for .ort files, which the
    ONNX library cannot open)."""
    session = ort_session(Path(directory) / entry["file"], entry.get("precision", "fp32"))

    def one(v):
        return {"name": v.name, "shape": [d if isinstance(d, int) else str(d) for d in v.shape],
                "dtype": _ORT_TYPES.get(v.type, v.type)}

    return {"inputs": [one(v) for v in session.get_inputs()], "outputs": [one(v) for v in session.get_outputs()]}


def _unavailable() -> Optional[str]:
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed: pip install 'mobileclip-toolkit[onnx]'"
    return None if onnxruntime.InferenceSession else "onnxruntime has no InferenceSession"


BACKEND = Backend(
    label="ONNX", name="onnx", precisions=("fp32", "fp16", "int8"), runtime="onnxruntime", extra="onnx",
    io="host numpy arrays in and out",
    summary="ONNX files run by ONNX Runtime (CPU, CUDA; Android/iOS apps that bundle ORT)",
    export=export_onnx, runner=OrtRunner, unavailable=_unavailable, check_options=check_options,
    read_io=read_io_file,
    # static: the real-data student's 89.7 % was measured with the exact GELU (--exact-gelu, then the only recipe);
    # the int8 GELU moved the demo models' agreement by -0.2 points on average (docs/precision.md)
    int8_refused={"static": int8_refusal_reason(97.6, 97.3, 89.7),
                  "dynamic": int8_refusal_reason(99.2, 99.4, 97.0)})
