"""TensorRT engines from the ONNX towers, and a small runner to execute them.

Written against the TensorRT 10.x / 11.x Python API:

* Networks are **strongly typed**: precision comes from the ONNX file's own types, never
  from builder flags (``BuilderFlag.FP16``/``INT8`` are gone in 11.x). An fp32 engine is
  built from the fp32 ONNX, an fp16 engine from the fp16-typed ONNX of
  :func:`mobileclip.backends.onnx_graph.to_fp16` (fp32 I/O, LayerNorm/Softmax/reductions kept
  fp32), an int8 engine from a QDQ ONNX (explicit quantization) in TensorRT's recipe
  (``quantize.TARGETS["tensorrt"]``: every Conv, depthwise ones included, MatMul and Gemm;
  int8 symmetric; float biases). ``STRONGLY_TYPED`` is required on 10.x and accepted
  (ignored) on 11.x, where every network is strongly typed. ``BuilderFlag.TF32`` (on by
  default) is cleared, so float32 layers compute in fp32.
* One optimization profile covers the batch axis of every input: ``min=1``, ``opt``,
  ``max=max_batch`` (see :func:`profile_shapes`); every other axis must be fixed. The runner
  reads that range back from the engine, and :class:`EngineRunner` (through ``Runner.infer``)
  splits larger calls into calls of at most ``max``.
* A timing cache (optional) makes rebuilds skip kernel autotuning already done; it is
  loaded when the file exists and written back after the build. The engine and the cache
  are written to a temporary name and renamed into place.

``import tensorrt`` happens inside the functions, so this module imports everywhere;
:func:`tensorrt_available` says why TensorRT cannot be used on a machine.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from mobileclip.files import atomic_write
from mobileclip.errors import ConfigError, MobileCLIPError

from .base import Backend, BackendUnavailable, Runner, cuda_index

MIN_VERSION = (10, 0)
INSTALL_HINT = ("pip install tensorrt from NVIDIA's index (https://pypi.nvidia.com) on a machine with an NVIDIA GPU, "
                "e.g. `pip install --extra-index-url https://pypi.nvidia.com tensorrt`")

# TensorRT DataType member name -> numpy / torch dtype name.
_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
           "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8"}


# --------------------------------------------------------------------------- availability

def tensorrt_available() -> tuple[bool, str]:
    """``(True, version line)`` when TensorRT >= 10 imports and a CUDA GPU is visible, else ``(False, reason)``.

    The reason is meant for the user: it says what is missing and how to get it.
    """
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the package is there but libnvinfer is not
        return False, f"TensorRT is not installed ({type(e).__name__}: {e}): {INSTALL_HINT}"
    version = str(getattr(trt, "__version__", "unknown"))
    if _version_tuple(version) < MIN_VERSION:
        return False, (f"TensorRT {version} is installed but mobileclip needs TensorRT "
                       f"{'.'.join(map(str, MIN_VERSION))} or newer (strongly typed networks): "
                       f"upgrade it, {INSTALL_HINT}")
    if not torch.cuda.is_available():
        return False, (f"TensorRT {version} is installed but no CUDA GPU is visible (torch.cuda.is_available() is "
                       "False): TensorRT builds and runs engines on an NVIDIA GPU; run this on a machine with one, "
                       "with a CUDA build of torch and CUDA_VISIBLE_DEVICES not hiding it")
    return True, f"TensorRT {version} on {torch.cuda.get_device_name()}"


def require_tensorrt():
    """The ``tensorrt`` module, or :class:`ConfigError` saying why it cannot be used here."""
    ok, reason = tensorrt_available()
    if not ok:
        raise ConfigError(reason)
    import tensorrt as trt

    return trt


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


# --------------------------------------------------------------------------- profiles

def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _batch_arg(name: str, value) -> int:
    if not _is_int(value) or int(value) < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def profile_shapes(input_shape: Sequence, max_batch: int, opt_batch: Optional[int] = None, *,
                   name: str = "input") -> tuple[tuple, tuple, tuple]:
    """``(min, opt, max)`` shapes of the optimization profile for one input.

    ``input_shape`` is an ONNX input shape as :func:`mobileclip.backends.onnx_graph.io_spec` gives
    it (a symbolic dim is a string such as ``"batch"``) or as TensorRT reports it (``-1``).
    Only axis 0 may vary:

    * dynamic batch (a string, ``None``, a negative number, or 0 — ONNX's "unknown"):
      ``min = 1``, ``opt = opt_batch`` or by default ``max(1, max_batch // 2)`` (the middle
      of the range: TensorRT picks kernels for ``opt``, and still runs batch 1 and
      ``max_batch``), ``max = max_batch``;
    * fixed batch ``b``: all three are the input's own shape (``max_batch``/``opt_batch``
      do not apply; ``max_batch`` is still checked).

    Every other axis must be a fixed size (:class:`ConfigError` otherwise).
    """
    shape = list(input_shape)
    max_batch = _batch_arg("max_batch", max_batch)
    if opt_batch is not None:
        opt_batch = _batch_arg("opt_batch", opt_batch)
        if opt_batch > max_batch:
            raise ConfigError(f"opt_batch ({opt_batch}) is larger than max_batch ({max_batch}); choose an opt "
                              f"batch between 1 and {max_batch}")
    if not shape:
        raise ConfigError(f"input {name!r} is a scalar; TensorRT export needs inputs shaped [batch, ...]")
    rest = []
    for axis, d in enumerate(shape[1:], start=1):
        if not _is_int(d) or int(d) < 1:
            raise ConfigError(
                f"input {name!r} has shape {shape}: axis {axis} is {d!r}, not a fixed size. The TensorRT profile "
                "varies the batch axis only; export the ONNX with a fixed image size and context length")
        rest.append(int(d))
    b = shape[0]
    if _is_int(b) and int(b) >= 1:
        fixed = (int(b), *rest)
        return fixed, fixed, fixed
    if isinstance(b, str) or b is None or (_is_int(b) and int(b) <= 0):
        opt = opt_batch if opt_batch is not None else max(1, max_batch // 2)
        return (1, *rest), (opt, *rest), (max_batch, *rest)
    raise ConfigError(f"input {name!r} has shape {shape}: its batch axis {b!r} is neither a size nor a symbolic name")


# --------------------------------------------------------------------------- build

_LOGGER = None


def _logger(trt):
    """One process-wide logger (TensorRT keeps a single global logger) that also records errors."""
    global _LOGGER
    if _LOGGER is None or _LOGGER[0] is not trt:
        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.verbose = False
                self.errors: list[str] = []

            def log(self, severity, msg):
                level = int(severity)  # INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4
                if level <= 1:
                    self.errors.append(str(msg))
                if level <= (4 if self.verbose else 2):
                    label = getattr(severity, "name", str(level))
                    print(f"[TensorRT] {label}: {msg}", file=sys.stderr)

        _LOGGER = (trt, _Logger())
    return _LOGGER[1]


def _call(obj, method: str):
    """``obj.method()``, or None where this TensorRT version's object has no such method."""
    fn = getattr(obj, method, None)
    return fn() if callable(fn) else None


def describe_parser_error(err) -> str:
    """One line for an ``OnnxParser`` error: the node (index, name, operator) and what went wrong."""
    node = _call(err, "node")
    name, op = _call(err, "node_name"), _call(err, "node_operator")
    if node is not None and int(node) >= 0:
        where = f"node {int(node)}"
        if name:
            where += f" {name!r}"
        if op:
            where += f" ({op})"
    else:
        where = "graph"
    code = _call(err, "code")
    code = getattr(code, "name", code)
    desc = _call(err, "desc") or str(err)
    return f"{where}: {desc}" + (f" [{code}]" if code is not None else "")


def _dtype_name(dt) -> str:
    key = getattr(dt, "name", str(dt).rsplit(".", 1)[-1])
    return _DTYPES.get(key, key.lower())


def _io(trt, engine) -> tuple[list, list]:
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        n = engine.get_tensor_name(i)
        entry = {"name": n, "shape": [int(d) for d in engine.get_tensor_shape(n)],
                 "dtype": _dtype_name(engine.get_tensor_dtype(n))}
        if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
            mn, opt, mx = engine.get_tensor_profile_shape(n, 0)
            entry["profile"] = {"min": [int(d) for d in mn], "opt": [int(d) for d in opt],
                                "max": [int(d) for d in mx]}
            inputs.append(entry)
        else:
            outputs.append(entry)
    return inputs, outputs


def build_engine(onnx_path: Union[str, Path], engine_path: Union[str, Path], *, max_batch: int = 32,
                 opt_batch: Optional[int] = None, workspace_gb: float = 4.0,
                 timing_cache: Union[str, Path, None] = None, verbose: bool = False, tf32: bool = False) -> dict:
    """Build a serialized TensorRT engine (``.plan``) from an ONNX tower; return its JSON-ready record.

    Precision is the ONNX file's: pass the fp16-typed ONNX for an fp16 engine and a QDQ
    ONNX for int8. Nothing is written until the engine is built: the engine (and the
    timing cache, when given) go to a temporary name first and are renamed into place.
    TensorRT's builder lets float32 layers use TF32 unless told not to (``BuilderFlag.TF32`` is
    set by default): the flag is cleared unless ``tf32=True``, so an fp32 engine (and the
    fp32 parts of fp16 and int8 ones) computes in fp32, as its label and its fp32 parity
    threshold say.

    The record: ``file``, ``backend``, ``tensorrt`` (version), ``profile`` (batch sizes
    ``min``/``opt``/``max``), ``workspace_gb``, ``build_seconds``, ``inputs``/``outputs``
    (name, shape with -1 for dynamic axes, dtype; inputs also carry their profile shapes),
    ``device``, ``engine_bytes``, ``strongly_typed``, ``tf32`` and ``timing_cache`` (file, bytes
    loaded, bytes saved; None without a cache).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    max_batch = _batch_arg("max_batch", max_batch)
    if opt_batch is not None and _batch_arg("opt_batch", opt_batch) > max_batch:
        raise ConfigError(f"opt_batch ({opt_batch}) is larger than max_batch ({max_batch}); choose an opt batch "
                          f"between 1 and {max_batch}")
    if isinstance(workspace_gb, bool) or not isinstance(workspace_gb, (int, float)) or not workspace_gb > 0:
        raise ConfigError(f"workspace_gb must be a positive number of GiB, got {workspace_gb!r}")
    if not onnx_path.is_file():
        raise ConfigError(f"{onnx_path} does not exist: export the ONNX towers first (mobileclip export --format onnx)")
    trt = require_tensorrt()

    logger = _logger(trt)
    logger.verbose, logger.errors = bool(verbose), []
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(1 << int(flag) if flag is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise MobileCLIPError(
            f"TensorRT {trt.__version__} could not parse {onnx_path}:\n  " + "\n  ".join(errors or logger.errors
                                                                                         or ["(no details)"])
            + "\nCheck the operators against https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md; "
              "re-exporting with the other exporter (--exporter legacy / dynamo) or a newer TensorRT often helps")
    if network.num_inputs < 1 or network.num_outputs < 1:
        raise MobileCLIPError(f"{onnx_path} has {network.num_inputs} inputs and {network.num_outputs} outputs; "
                              "a tower needs at least one of each: re-export it")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None and not tf32:
        config.clear_flag(tf32_flag)
    profile = builder.create_optimization_profile()
    batches = None
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        mn, opt, mx = profile_shapes([int(d) for d in inp.shape], max_batch, opt_batch, name=inp.name)
        profile.set_shape(inp.name, mn, opt, mx)
        batches = batches or {"min": mn[0], "opt": opt[0], "max": mx[0]}
    if config.add_optimization_profile(profile) < 0:
        raise MobileCLIPError(f"TensorRT rejected the optimization profile {batches} for {onnx_path}: "
                              + "; ".join(logger.errors or ["(no details)"]))

    cache_record = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        unusable = (f"timing cache {timing_cache} is unreadable or was recorded with another GPU or TensorRT "
                    "version: delete it, or pass another timing-cache path")
        logged = len(logger.errors)
        try:
            cache = config.create_timing_cache(blob)
        except Exception as e:  # a corrupt blob: say which file and what to do
            raise MobileCLIPError(f"{unusable} ({e})") from e
        # TensorRT may report a bad blob by logging an error rather than failing the call.
        if cache is None or len(logger.errors) > logged or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise MobileCLIPError(f"{unusable} (" + "; ".join(logger.errors[logged:] or ["rejected"]) + ")")
        cache_record = {"file": timing_cache.name, "loaded_bytes": len(blob), "saved_bytes": 0}

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - t0
    if plan is None:
        details = "; ".join(logger.errors[-5:]) or "no error was logged"
        raise MobileCLIPError(
            f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} ({details}). Rebuild with "
            f"verbose=True (--verbose) for the builder log; a larger workspace (now {workspace_gb} GiB) or a "
            "smaller max batch often helps")

    # Load what was built: proves the plan deserializes here and gives the engine's real I/O types.
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise MobileCLIPError(f"the engine built from {onnx_path} does not deserialize: "
                              + "; ".join(logger.errors[-5:] or ["(no details)"]))
    inputs, outputs = _io(trt, engine)
    del engine, runtime  # in this order: an engine must not outlive its runtime
    data = memoryview(plan)
    with atomic_write(engine_path) as f:
        f.write(data)
    if cache_record is not None:
        saved = memoryview(config.get_timing_cache().serialize())
        with atomic_write(timing_cache) as f:
            f.write(saved)
        cache_record["saved_bytes"] = saved.nbytes
    return {
        "file": engine_path.name, "backend": "tensorrt", "tensorrt": trt.__version__, "onnx": onnx_path.name,
        "strongly_typed": True, "tf32": bool(tf32 and tf32_flag is not None), "profile": batches,
        "workspace_gb": float(workspace_gb),
        "build_seconds": round(build_seconds, 2), "engine_bytes": data.nbytes, "inputs": inputs, "outputs": outputs,
        "device": torch.cuda.get_device_name(), "timing_cache": cache_record,
    }


# --------------------------------------------------------------------------- run

def prepare_input(x, shape: Sequence[int], dtype, min_batch: int, max_batch: int, name: str = "input") -> np.ndarray:
    """``x`` as a C-contiguous array of the engine input's dtype, or :class:`MobileCLIPError` saying what is wrong.

    ``shape`` is the engine's input shape (-1 on dynamic axes). Integers are cast to the
    engine's integer type when they fit (int64 tokens -> int32), floats to its float type
    (float64 -> float32); any other dtype change is refused.
    """
    x = np.asarray(x)
    want = np.dtype(dtype)
    expected = "[" + ", ".join("batch" if i == 0 and d < 0 else str(d) for i, d in enumerate(shape)) + "]"
    if x.ndim != len(shape) or any(d >= 0 and x.shape[i] != d for i, d in enumerate(shape) if i > 0):
        raise MobileCLIPError(f"input {name!r} has shape {list(x.shape)}; this engine expects {expected}")
    n = x.shape[0]
    if shape[0] >= 0 and n != shape[0]:
        raise MobileCLIPError(f"this engine has a fixed batch of {shape[0]} and got {n} rows for {name!r}: "
                              f"pad or split the input into batches of {shape[0]}, or rebuild the engine from a "
                              "dynamic-batch ONNX")
    if n > max_batch:
        raise MobileCLIPError(f"batch {n} is larger than this engine's maximum batch {max_batch} (its optimization "
                              f"profile): rebuild the engine with --max-batch {n} (or more), or pass at most "
                              f"{max_batch} rows per call")
    if n < min_batch:
        raise MobileCLIPError(f"batch {n} is smaller than this engine's minimum batch {min_batch}")
    if x.dtype != want:
        if want.kind in "iu" and x.dtype.kind in "iu":
            info = np.iinfo(want)
            if x.size and (int(x.min()) < info.min or int(x.max()) > info.max):
                raise MobileCLIPError(f"input {name!r} holds values outside the range of {want}, which this engine "
                                      "expects")
        elif not (want.kind == "f" and x.dtype.kind == "f"):
            raise MobileCLIPError(f"input {name!r} is {x.dtype}; this engine expects {want} (images are float "
                                  "arrays, tokens integer arrays)")
    return np.ascontiguousarray(x, dtype=want)


class TRTRunner:
    """Runs a one-input, one-output engine on a CUDA device; numpy in, float32 numpy out.

    Usable as a context manager (``close()`` releases the context and engine). Engines are
    tied to the TensorRT version and GPU model that built them.
    """

    def __init__(self, engine_path: Union[str, Path], device: int = 0) -> None:
        trt = require_tensorrt()
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise ConfigError(f"{self.engine_path} does not exist: build it with `mobileclip export --format tensorrt`")
        if not _is_int(device) or not 0 <= int(device) < torch.cuda.device_count():
            raise ConfigError(f"CUDA device {device!r} does not exist; this machine has {torch.cuda.device_count()} "
                              f"(0..{torch.cuda.device_count() - 1})")
        self.device = torch.device("cuda", int(device))
        self._logger = _logger(trt)
        self._logger.errors = []
        with torch.cuda.device(self.device):
            # The stream first: it creates torch's CUDA context, which TensorRT then shares.
            self.stream = torch.cuda.Stream(device=self.device)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                raise MobileCLIPError(
                    f"TensorRT {trt.__version__} could not load {self.engine_path} ("
                    + "; ".join(self._logger.errors[-3:] or ["no details"]) + "). Engines only load with the "
                    "TensorRT version and GPU model that built them: rebuild it on this machine")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise MobileCLIPError(f"could not create an execution context for {self.engine_path} (out of GPU "
                                      "memory?): free GPU memory or use another device")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if len(ins) != 1 or len(outs) != 1:
            raise MobileCLIPError(f"{self.engine_path} has inputs {ins} and outputs {outs}; TRTRunner runs engines "
                                  "with one input and one output (a mobileclip tower)")
        self.input_name, self.output_name = ins[0], outs[0]
        self.input_shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        self.input_dtype = np.dtype(_dtype_name(self.engine.get_tensor_dtype(self.input_name)))
        out_dtype = _dtype_name(self.engine.get_tensor_dtype(self.output_name))
        if not hasattr(torch, out_dtype):
            raise MobileCLIPError(f"{self.engine_path}: output dtype {out_dtype} has no torch equivalent")
        self.output_dtype = getattr(torch, out_dtype)
        if self.input_shape[0] >= 0:
            self.min_batch = self.max_batch = self.input_shape[0]
        else:
            mn, _, mx = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.min_batch, self.max_batch = int(mn[0]), int(mx[0])

    # Polygraphy-style lifetime
    def __enter__(self) -> "TRTRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the execution context and engine (their GPU memory); the runner is unusable afterwards."""
        self.context = None
        self.engine = None
        self._runtime = None

    def _prepare(self, x) -> np.ndarray:
        if self.context is None:
            raise MobileCLIPError(f"this runner of {self.engine_path} was closed; create a new TRTRunner")
        return prepare_input(x, self.input_shape, self.input_dtype, self.min_batch, self.max_batch, self.input_name)

    def _enqueue(self, xt: torch.Tensor) -> torch.Tensor:
        """Queue one inference of ``xt`` (already on the device) on ``self.stream``; returns the output tensor."""
        mark = len(self._logger.errors)  # report only what TensorRT logs during this call
        if not self.context.set_input_shape(self.input_name, tuple(xt.shape)):
            raise MobileCLIPError(f"TensorRT refused input shape {tuple(xt.shape)} for {self.input_name!r}: "
                                  + "; ".join(self._logger.errors[mark:] or ["no details"]))
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        if any(d < 0 for d in out_shape):
            raise MobileCLIPError(f"TensorRT could not infer the shape of {self.output_name!r} ({out_shape}) for "
                                  f"input shape {tuple(xt.shape)}")
        out = torch.empty(out_shape, dtype=self.output_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, xt.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise MobileCLIPError(f"TensorRT failed to run {self.engine_path}: "
                                  + "; ".join(self._logger.errors[mark:] or ["no details"]))
        return out

    def __call__(self, x) -> np.ndarray:
        x = self._prepare(x)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            xt = torch.from_numpy(x).to(self.device)
            out = self._enqueue(xt)
            result = out.float().cpu()  # .cpu() waits for the stream
        self.stream.synchronize()
        return result.numpy()

    def time(self, x, warmup: int = 10, iters: int = 100, include_copies: bool = False) -> list[float]:
        """Per-call latencies in milliseconds, timed with CUDA events on the runner's stream.

        By default the input is put on the GPU once and each sample is one inference
        (TensorRT's enqueue plus the GPU work). ``include_copies=True`` times host to
        device copy, inference and the copy back, as ``__call__`` does.
        """
        if not _is_int(warmup) or warmup < 0 or not _is_int(iters) or iters < 1:
            raise ConfigError(f"warmup must be >= 0 and iters >= 1, got warmup={warmup!r}, iters={iters!r}")
        x = self._prepare(x)
        times = []
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            xt = torch.from_numpy(x).to(self.device)
            for i in range(warmup + iters):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(self.stream)
                if include_copies:
                    self._enqueue(torch.from_numpy(x).to(self.device)).float().cpu()
                else:
                    self._enqueue(xt)
                end.record(self.stream)
                end.synchronize()
                if i >= warmup:
                    times.append(float(start.elapsed_time(end)))
        return times


# ------------------------------------------------------------------ the backend

def export_tensorrt(src, out_dir: Path, options) -> dict:
    """ONNX towers built for TensorRT (int8: QDQ image tower, fp16 text tower), then one engine each."""
    from .onnx import export_onnx

    require_tensorrt()
    arts = export_onnx(src, out_dir, options, qdq_for_tensorrt=True)
    out = {}
    for t, entry in arts.items():
        eng = build_engine(out_dir / entry["file"], out_dir / f"{t}.engine",
                           max_batch=options.fixed_batch or options.max_batch, workspace_gb=options.workspace_gb,
                           timing_cache=Path(options.timing_cache) if options.timing_cache else None)
        out[t] = {**entry, **eng, "onnx": entry["file"], "file": f"{t}.engine", "backend": "tensorrt"}
    return out


def _check_tensorrt_options(options) -> None:
    from .onnx import check_options

    check_options(options)
    if options.precision == "int8" and not options.calib:
        raise ConfigError("TensorRT int8 is built from a QDQ ONNX calibrated on real images: pass --calib "
                          "<image folder>")


class EngineRunner(Runner):
    """A TensorRT engine through :class:`TRTRunner` (CUDA; batches chunked to the engine's profile)."""

    def _activate(self) -> None:
        ok, why = tensorrt_available()
        if not ok:
            raise BackendUnavailable(why)
        gpu = cuda_index(self.device)
        if gpu is None:
            raise BackendUnavailable(f"TensorRT engines run on a CUDA GPU, not on {self.device!r}: pass --device cuda "
                                     "(or cuda:N)")
        self.engine = TRTRunner(self.path, device=gpu)
        # The engine's own optimization profile (min/opt/max, read from the engine by TRTRunner) caps
        # a call: Runner.infer splits larger batches (parity's 36 class prompts) into calls of this size.
        self.max_batch = self.engine.max_batch

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.engine(x)

    def _deactivate(self) -> None:
        self.engine.close()
        self.engine = None


def _unavailable():
    ok, why = tensorrt_available()
    return None if ok else why


BACKEND = Backend(
    label="TensorRT", name="tensorrt", precisions=("fp32", "fp16", "int8"), runtime="tensorrt", extra="tensorrt",
    io="host numpy arrays in and out (host/device copies included)",
    summary="TensorRT engines built from the ONNX towers (NVIDIA GPUs)",
    export=export_tensorrt, runner=EngineRunner, unavailable=_unavailable, check_options=_check_tensorrt_options,
    prepare_export=lambda: require_tensorrt(), parity_device="cuda", int8_methods=("static",),
    int8_method=lambda options: "static",
    int8_refused={"static": "it has not been measured on trained models (TensorRT needs an NVIDIA GPU, which none of "
                            "this project's measuring machines had), and its recipe quantizes what the ONNX Runtime "
                            "recipe keeps in fp32 because it cost top-1 agreement (the stem; depthwise convolutions); "
                            "fp16 keeps 100 % on every other backend"})
