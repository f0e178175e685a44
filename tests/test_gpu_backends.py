"""The GPU-only paths, checked on the CPU where the CPU can show them.

* TensorRT: a fake ``tensorrt`` module whose engines are built from the bundle's ONNX files
  (their inputs, outputs and an optimization profile) and run by ONNX Runtime on the CPU.
  ``TRTRunner``, ``EngineRunner``, ``Runner.infer`` and parity are the real code; only the CUDA
  copies and ``execute_async_v3`` are replaced. This shows that the runner reads its largest
  batch from the engine's profile, that bigger calls (parity's 36 class prompts) are split to
  it, and that export/validate run TensorRT bundles on ``cuda``.
* ONNX Runtime: a session whose CUDA (or TensorRT) provider was silently dropped, as ONNX
  Runtime does when the provider cannot be created, is refused on every path that creates one.
"""
import contextlib
import importlib.machinery
import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from mobileclip import backends
from mobileclip.backends import BackendUnavailable
from mobileclip.errors import ConfigError, MobileCLIPError

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

CUDA, CPU, TRT_EP = "CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"


# ============================================================================ a fake TensorRT

class _DType:
    def __init__(self, name):
        self.name = name


_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64"}


class FakeEngine:
    """An engine as TensorRT 10 describes one, from an ONNX file's bytes: dynamic axes are -1 and the
    batch axis has one optimization profile ``(1, opt, max)``."""

    def __init__(self, blob: bytes, trt, max_batch: int, reads: list):
        g = onnx.load_from_string(blob).graph
        self._trt, self._max, self._reads = trt, max_batch, reads
        self._io = {}
        for mode, values in ((trt.TensorIOMode.INPUT, g.input), (trt.TensorIOMode.OUTPUT, g.output)):
            for v in values:
                t = v.type.tensor_type
                shape = tuple(d.dim_value if d.dim_value else -1 for d in t.shape.dim)
                self._io[v.name] = (mode, shape, _DType(_ONNX_TO_TRT[t.elem_type]))
        self._names = list(self._io)

    num_io_tensors = property(lambda self: len(self._names))

    def get_tensor_name(self, i):
        return self._names[i]

    def get_tensor_mode(self, name):
        return self._io[name][0]

    def get_tensor_shape(self, name):
        return self._io[name][1]

    def get_tensor_dtype(self, name):
        return self._io[name][2]

    def get_tensor_profile_shape(self, name, profile):
        self._reads.append((name, profile))
        rest = self._io[name][1][1:]
        return (1, *rest), (max(1, self._max // 2), *rest), (self._max, *rest)

    def create_execution_context(self):
        return object()


@pytest.fixture
def fake_trt(monkeypatch):
    """A TensorRT 10 with one fake GPU; engines are ONNX files run by ONNX Runtime on the CPU.

    Returns a namespace: ``max_batch`` (the profile's max for engines loaded afterwards), ``calls``
    ((input name, rows) of every engine call) and ``reads`` (``get_tensor_profile_shape`` calls).
    """
    from mobileclip.backends import tensorrt as T

    state = types.SimpleNamespace(max_batch=8, calls=[], reads=[])
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)   # torch._dynamo's import calls find_spec on it
    trt.__version__ = "10.9.0.34"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    class ILogger:
        """TensorRT's logger base class (the backend subclasses it)."""

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, blob):
            return FakeEngine(blob, trt, state.max_batch, state.reads)

    class Network:
        def __init__(self):
            self.inputs, self.outputs = [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:   # reads the ONNX file's inputs and outputs; the "plan" is the ONNX file itself
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            blob = open(path, "rb").read()
            engine = FakeEngine(blob, trt, 1, [])
            for name in engine._names:
                mode, shape, _ = engine._io[name]
                (self.network.inputs if mode == "INPUT" else self.network.outputs).append(
                    types.SimpleNamespace(name=name, shape=shape))
            self.network.blob = blob
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pools = {"TF32"}, [], {}   # TensorRT's default flags: TF32 on

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            state.network_flags = flags
            return Network()

        def create_builder_config(self):
            state.config = Config()
            return state.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return network.blob

    trt.ILogger, trt.Runtime, trt.Builder, trt.OnnxParser = ILogger, Runtime, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: types.SimpleNamespace(cuda_stream=0))
    sessions = {}

    def call(self, x):   # TRTRunner.__call__ without CUDA: the real input checks, then the ONNX graph on the CPU
        x = self._prepare(x)
        state.calls.append((self.input_name, len(x)))
        if self.engine_path not in sessions:
            sessions[self.engine_path] = ort.InferenceSession(str(self.engine_path), providers=[CPU])
        return sessions[self.engine_path].run(None, {self.input_name: x})[0].astype(np.float32)

    monkeypatch.setattr(T.TRTRunner, "__call__", call)
    return state


def _as_tensorrt(src, dst):
    """A copy of an ONNX bundle whose manifest says its towers are TensorRT engines (the fake loads the ONNX)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for tower in ("image", "text"):
        m["artifacts"][tower]["backend"] = "tensorrt"
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst, m


def test_build_engine_asks_for_a_strongly_typed_network_with_the_batch_profile_and_no_tf32(fake_trt, tiny_bundle,
                                                                                               tmp_path):
    from mobileclip.backends.tensorrt import build_engine

    fake_trt.max_batch = 8   # what the fake engine reports back
    r = build_engine(tiny_bundle / "image.onnx", tmp_path / "image.plan", max_batch=8, workspace_gb=1)
    config = fake_trt.config
    assert fake_trt.network_flags == 1 << 1   # STRONGLY_TYPED: precision from the ONNX file's types
    assert [p.shapes for p in config.profiles] == [{"image": ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))}]
    assert "TF32" not in config.flags and r["tf32"] is False   # an fp32 engine computes in fp32
    assert config.pools == {"WORKSPACE": 1 << 30}
    assert r["profile"] == {"min": 1, "opt": 4, "max": 8} and r["inputs"][0]["profile"]["max"] == [8, 3, 64, 64]
    assert (tmp_path / "image.plan").read_bytes() == (tiny_bundle / "image.onnx").read_bytes()
    assert build_engine(tiny_bundle / "text.onnx", tmp_path / "text.plan", max_batch=8, tf32=True)["tf32"] is True
    assert "TF32" in fake_trt.config.flags


def test_trt_runner_takes_its_batch_range_from_the_engine_profile(fake_trt, tiny_bundle):
    from mobileclip.backends.tensorrt import TRTRunner

    fake_trt.max_batch = 6
    runner = TRTRunner(tiny_bundle / "text.onnx")
    assert (runner.min_batch, runner.max_batch) == (1, 6) and fake_trt.reads == [("tokens", 0)]
    assert runner.input_shape == (-1, 16) and runner.input_dtype == np.dtype(np.int32)
    assert runner(np.ones((6, 16), np.int64)).shape == (6, 256)   # int64 tokens cast to the engine's int32
    with pytest.raises(MobileCLIPError, match="batch 7 is larger than this engine's maximum batch 6.*--max-batch 7"):
        runner(np.ones((7, 16), np.int32))


def test_engine_runner_splits_36_rows_into_profile_sized_calls(fake_trt, tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    entry = dict(m["artifacts"]["text"], backend="tensorrt")
    tokens = np.random.default_rng(0).integers(1, 400, size=(36, 16)).astype(np.int32)
    want = ort.InferenceSession(str(tiny_bundle / "text.onnx"), providers=[CPU]).run(None, {"tokens": tokens})[0]
    with backends.runner_for(tiny_bundle, entry, device="cuda") as r:
        assert r.max_batch == 8   # read from the engine's profile on activation
        got = r.infer(tokens)
    assert [n for _, n in fake_trt.calls] == [8, 8, 8, 8, 4]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)   # rows back in order, none lost


def test_engine_runner_device(fake_trt, tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    entry = dict(m["artifacts"]["image"], backend="tensorrt")
    with pytest.raises(BackendUnavailable, match="run on a CUDA GPU, not on 'cpu': pass --device cuda"):
        backends.runner_for(tiny_bundle, entry, device="cpu").activate()
    with pytest.raises(ConfigError, match="CUDA device 1 does not exist"):   # cuda:N picks GPU N
        backends.runner_for(tiny_bundle, entry, device="cuda:1").activate()
    with backends.runner_for(tiny_bundle, entry, device="cuda:0") as r:
        assert r.infer(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, 256)


def test_validate_runs_a_tensorrt_bundle_on_cuda_within_the_profile(fake_trt, tiny_bundle, tmp_path):
    """Parity's batches (1, 2, 4) and its 36 class prompts in one call, on engines whose profile stops at 3:
    every engine call stays within the profile, and parity passes (on "cuda": TensorRT runs nowhere else)."""
    from mobileclip.export import validate

    bundle, _ = _as_tensorrt(tiny_bundle, tmp_path / "trt")
    fake_trt.max_batch = 3
    report = validate(bundle, max_batch=4)
    assert report["passed"], report["misses"]
    assert [r["batch"] for r in report["image"]] == [1, 2, 4]
    sizes = {name: [n for t, n in fake_trt.calls if t == name] for name in ("image", "tokens")}
    assert sizes["tokens"] == [1, 2, 3, 1] + [3] * 12   # batches 1, 2, 4 (as 3 + 1), then the 36 class prompts
    assert sizes["image"] == [1, 2, 3, 1]   # batches 1, 2, 4; the zero-shot agreement reuses batch 4's embeddings
    assert ("image", 0) in fake_trt.reads and ("tokens", 0) in fake_trt.reads


# ============================================================================ ONNX Runtime's silent fallback

@pytest.fixture
def ort_fallback(monkeypatch):
    """onnxruntime reporting CUDA as available, whose sessions nevertheless run on the CPU alone (what it does
    when the CUDA provider cannot be created: a missing libcudnn, a driver too old). ``state.active``: the
    providers sessions report (CPU only by default); ``state.requested``: the providers each session was asked for."""
    state = types.SimpleNamespace(active=None, requested=[])
    real = ort.InferenceSession

    class Session(real):
        def __init__(self, path, sess_options=None, providers=None, **kw):
            state.requested.append(list(providers or []))
            super().__init__(path, sess_options, providers=[CPU], **kw)

        def get_providers(self):
            return list(state.active) if state.active is not None else super().get_providers()

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT_EP, CUDA, CPU])
    return state


def _onnx_entry(bundle, tower="image"):
    return json.loads((bundle / "manifest.json").read_text())["artifacts"][tower]


@pytest.mark.parametrize("kw, missing", [
    ({"device": "cuda"}, CUDA),
    ({"providers": [CUDA, CPU]}, CUDA),                                    # an explicit list is checked too
    ({"providers": [(CUDA, {"device_id": 0}), CPU]}, CUDA),                # ... with provider options
    ({"providers": [TRT_EP, CUDA, CPU]}, f"{TRT_EP}, {CUDA}"),
])
def test_ort_runner_refuses_a_session_that_fell_back_to_cpu(ort_fallback, tiny_bundle, kw, missing):
    from mobileclip.backends.onnx import OrtRunner

    r = OrtRunner(tiny_bundle, _onnx_entry(tiny_bundle), **kw)
    with pytest.raises(BackendUnavailable, match=rf"did not create {missing} .*runs on \['CPUExecutionProvider'\]"):
        r.activate()
    assert not r.active


def test_ort_runner_runs_when_the_gpu_provider_is_active(ort_fallback, tiny_bundle):
    from mobileclip.backends.onnx import OrtRunner

    ort_fallback.active = [CUDA, CPU]   # the provider was created: nothing to refuse
    with OrtRunner(tiny_bundle, _onnx_entry(tiny_bundle), device="cuda:1") as r:
        assert r.infer(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 256)
    # cuda:N is GPU N; an fp32 artifact runs without TF32 (ONNX Runtime's CUDA default is use_tf32=1)
    assert ort_fallback.requested[-1] == [(CUDA, {"device_id": 1, "use_tf32": 0}), CPU]
    fp16 = dict(_onnx_entry(tiny_bundle), precision="fp16")   # lower precisions keep the provider's defaults
    with OrtRunner(tiny_bundle, fp16, device="cuda") as r:
        assert ort_fallback.requested[-1] == [CUDA, CPU]
    with OrtRunner(tiny_bundle, _onnx_entry(tiny_bundle)) as r:   # the CPU needs no check
        assert ort_fallback.requested[-1] == [CPU] and r.infer(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 256)


def test_runtime_load_with_cuda_providers_refuses_the_fallback(ort_fallback, tiny_bundle):
    import mobileclip.runtime as rt

    with pytest.raises(BackendUnavailable, match=f"did not create {CUDA}"):
        rt.load(tiny_bundle, providers=[CUDA, CPU])
    assert rt.load(tiny_bundle).encode_text(["a dog"]).shape == (1, 256)


def test_bench_never_times_a_cpu_fallback_as_cuda(ort_fallback, tiny_bundle):
    from mobileclip.benchmarks.runtimes import BundleRuntime, Skip
    from mobileclip.runtime.core import open_bundle

    rt = BundleRuntime(open_bundle(tiny_bundle, "cuda", 1))
    with pytest.raises(Skip, match=f"did not create {CUDA}"):   # bench records the case as skipped, with why
        rt.prepare("image", 1)
    rt.close()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has a CUDA provider: the fallback cannot be provoked")
@pytest.mark.filterwarnings("ignore:Specified provider")
def test_real_onnxruntime_fallback_is_refused(tiny_bundle):
    """The real thing: this onnxruntime has no CUDA provider, so it quietly gives a CPU session."""
    from mobileclip.backends.onnx import ort_session

    with pytest.raises(BackendUnavailable, match=f"did not create {CUDA}"):
        ort_session(tiny_bundle / "image.onnx", providers=[CUDA, CPU])
