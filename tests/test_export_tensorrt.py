"""TensorRT backend: profiles, availability and errors everywhere; engines where TensorRT and a GPU exist."""
import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from mobileclip.errors import ConfigError, MobileCLIPError
from mobileclip.backends.tensorrt import (TRTRunner, build_engine, describe_parser_error, prepare_input,
                                        profile_shapes, require_tensorrt, tensorrt_available)

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")

TRT_OK, TRT_REASON = tensorrt_available()


def needs_tensorrt(fn):
    return pytest.mark.tensorrt(pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)(fn))


@pytest.fixture(scope="module")
def tiny():
    from mobileclip.factory import create_model
    from mobileclip.reparam import reparameterize

    torch.manual_seed(0)
    model, preprocess, tokenizer = create_model("mobileclip-tiny")
    reparameterize(model, inplace=True)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def onnx_dir(tiny, tmp_path_factory):
    """image.onnx / text.onnx with a dynamic batch (the default exporter) and a fixed-batch image.onnx."""
    from mobileclip.backends.onnx_graph import export_tower
    from mobileclip.backends.towers import ImageTower, TextTower

    model, tokenizer = tiny
    d = tmp_path_factory.mktemp("trt_onnx")
    export_tower(ImageTower(model), torch.rand(2, 3, 64, 64), d / "image.onnx", "image", "image_embedding")
    export_tower(TextTower(model), tokenizer(["a dog", "a cat"]).to(torch.int32), d / "text.onnx", "tokens",
                 "text_embedding")
    export_tower(ImageTower(model), torch.rand(2, 3, 64, 64), d / "image_fixed.onnx", "image", "image_embedding",
                 dynamic_batch=False)
    return d


def input_shape(path):
    """The first input's shape as ONNX stores it: symbolic dims as their name, fixed dims as ints."""
    t = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type
    return [d.dim_param or d.dim_value for d in t.shape.dim]


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make ``import tensorrt`` fail (None in sys.modules raises ImportError), wherever the tests run."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# --------------------------------------------------------------------------- profiles (everywhere)

def test_profile_shapes_dynamic_batch_from_exported_onnx(onnx_dir):
    img, txt = input_shape(onnx_dir / "image.onnx"), input_shape(onnx_dir / "text.onnx")
    assert img == ["batch", 3, 64, 64] and txt == ["batch", 16]
    assert profile_shapes(img, max_batch=8) == ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    assert profile_shapes(txt, max_batch=32, opt_batch=1) == ((1, 16), (1, 16), (32, 16))
    assert profile_shapes(txt, max_batch=1) == ((1, 16), (1, 16), (1, 16))  # opt never drops below 1
    assert profile_shapes(img, max_batch=7)[1][0] == 3
    # TensorRT reports a dynamic axis as -1: same profile as the symbolic name.
    assert profile_shapes([-1, 3, 64, 64], max_batch=8) == profile_shapes(img, max_batch=8)


def test_profile_shapes_fixed_batch_from_exported_onnx(onnx_dir):
    shape = input_shape(onnx_dir / "image_fixed.onnx")
    assert shape == [2, 3, 64, 64]
    assert profile_shapes(shape, max_batch=32) == ((2, 3, 64, 64),) * 3
    assert profile_shapes(shape, max_batch=1, opt_batch=1) == ((2, 3, 64, 64),) * 3


@pytest.mark.parametrize("max_batch,opt_batch,match", [
    (0, None, "max_batch must be a whole number >= 1"),
    (-4, None, "max_batch must be a whole number >= 1"),
    (2.5, None, "max_batch must be a whole number >= 1"),
    (True, None, "max_batch must be a whole number >= 1"),
    (8, 0, "opt_batch must be a whole number >= 1"),
    (8, 9, r"opt_batch \(9\) is larger than max_batch \(8\)"),
])
def test_profile_shapes_rejects_bad_batches(onnx_dir, max_batch, opt_batch, match):
    with pytest.raises(ConfigError, match=match):
        profile_shapes(input_shape(onnx_dir / "image.onnx"), max_batch=max_batch, opt_batch=opt_batch)


def test_profile_shapes_rejects_non_batch_dynamic_axes(onnx_dir):
    shape = input_shape(onnx_dir / "text.onnx")
    with pytest.raises(ConfigError, match=r"input 'tokens' .*axis 1 is 'seq'.*fixed image size and context length"):
        profile_shapes([shape[0], "seq"], max_batch=8, name="tokens")
    with pytest.raises(ConfigError, match="axis 2 is -1"):
        profile_shapes([-1, 3, -1, 64], max_batch=8)
    with pytest.raises(ConfigError, match="is a scalar"):
        profile_shapes([], max_batch=8)
    with pytest.raises(ConfigError, match="batch axis 1.5"):
        profile_shapes([1.5, 16], max_batch=8)


# --------------------------------------------------------------------------- availability (everywhere)

def test_tensorrt_unavailable_says_how_to_install(no_tensorrt):
    ok, reason = tensorrt_available()
    assert ok is False
    assert "TensorRT is not installed" in reason and "pip install" in reason and "https://pypi.nvidia.com" in reason
    with pytest.raises(ConfigError) as e:
        require_tensorrt()
    assert str(e.value) == reason


def test_tensorrt_availability_on_this_machine():
    ok, reason = tensorrt_available()
    try:
        import tensorrt  # noqa: F401
        installed = True
    except (ImportError, OSError):
        installed = False
    if not installed:
        assert not ok and "pip install tensorrt" in reason and "pypi.nvidia.com" in reason
        with pytest.raises(ConfigError, match="TensorRT is not installed"):
            require_tensorrt()
    elif not torch.cuda.is_available():
        assert not ok and "no CUDA GPU" in reason
    else:
        assert ok and reason.startswith("TensorRT ") and require_tensorrt() is sys.modules["tensorrt"]


def test_tensorrt_too_old_or_without_gpu(monkeypatch):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "8.6.1"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    ok, reason = tensorrt_available()
    assert not ok and "TensorRT 8.6.1 is installed" in reason and "10.0 or newer" in reason
    fake.__version__ = "10.9.0.34"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, reason = tensorrt_available()
    assert not ok and "TensorRT 10.9.0.34 is installed but no CUDA GPU is visible" in reason
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        require_tensorrt()


def test_build_engine_without_tensorrt_touches_nothing(onnx_dir, tmp_path, no_tensorrt):
    out = tmp_path / "bundle" / "image.plan"
    cache = tmp_path / "caches" / "timing.cache"
    with pytest.raises(ConfigError, match="TensorRT is not installed.*pip install"):
        build_engine(onnx_dir / "image.onnx", out, max_batch=8, timing_cache=cache)
    assert list(tmp_path.iterdir()) == []  # no engine, no cache, not even their folders


@pytest.mark.parametrize("kwargs,match", [
    ({"max_batch": 0}, "max_batch must be a whole number"),
    ({"max_batch": 4, "opt_batch": 8}, r"opt_batch \(8\) is larger than max_batch \(4\)"),
    ({"workspace_gb": 0}, "workspace_gb must be a positive number"),
    ({"workspace_gb": "4"}, "workspace_gb must be a positive number"),
])
def test_build_engine_checks_arguments_first(onnx_dir, tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_engine(onnx_dir / "image.onnx", tmp_path / "x.plan", **kwargs)
    assert not (tmp_path / "x.plan").exists()


def test_build_engine_missing_onnx(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.onnx does not exist: export the ONNX towers first"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "x.plan")
    assert list(tmp_path.iterdir()) == []


def test_runner_without_tensorrt(tmp_path, no_tensorrt):
    with pytest.raises(ConfigError, match="TensorRT is not installed"):
        TRTRunner(tmp_path / "image.plan")


# --------------------------------------------------------------------------- runner input checks (everywhere)

def test_prepare_input_casts_what_is_safe():
    tokens = np.array([[49406, 320, 49407, 0]], dtype=np.int64)
    got = prepare_input(tokens, (-1, 4), np.int32, 1, 8, "tokens")
    assert got.dtype == np.int32 and got.flags.c_contiguous and (got == tokens).all()
    img = np.random.default_rng(0).random((8, 3, 4, 4))  # float64, the numpy default
    got = prepare_input(img, (-1, 3, 4, 4), np.float32, 1, 8, "image")
    assert got.dtype == np.float32 and np.allclose(got, img, atol=1e-7)
    same = np.zeros((2, 3, 4, 4), np.float32)
    assert prepare_input(same, (-1, 3, 4, 4), np.float32, 1, 8) is same  # nothing to do: no copy
    strided = np.zeros((2, 3, 4, 8), np.float32)[..., ::2]
    assert prepare_input(strided, (-1, 3, 4, 4), np.float32, 1, 8).flags.c_contiguous
    assert prepare_input(np.zeros((4, 16), np.int32), (4, 16), np.int32, 4, 4).shape == (4, 16)  # fixed batch


@pytest.mark.parametrize("x,shape,dtype,match", [
    (np.zeros((9, 16), np.int32), (-1, 16), np.int32,
     r"batch 9 is larger than this engine's maximum batch 8.*rebuild the engine with --max-batch 9"),
    (np.zeros((0, 16), np.int32), (-1, 16), np.int32, "batch 0 is smaller than this engine's minimum batch 1"),
    (np.zeros((3, 16), np.int32), (4, 16), np.int32, "fixed batch of 4 and got 3 rows"),
    (np.zeros((2, 17), np.int32), (-1, 16), np.int32, r"shape \[2, 17\]; this engine expects \[batch, 16\]"),
    (np.zeros((2, 3, 64), np.float32), (-1, 3, 64, 64), np.float32, r"expects \[batch, 3, 64, 64\]"),
    (np.full((1, 16), 2 ** 40, np.int64), (-1, 16), np.int32, "values outside the range of int32"),
    (np.zeros((1, 16), np.float32), (-1, 16), np.int32, "is float32; this engine expects int32"),
    (np.zeros((1, 3, 4, 4), np.uint8), (-1, 3, 4, 4), np.float32, "is uint8; this engine expects float32"),
])
def test_prepare_input_refuses_with_a_clear_message(x, shape, dtype, match):
    with pytest.raises(MobileCLIPError, match=match):
        prepare_input(x, shape, dtype, 1, 8, "tokens")


def test_parser_errors_name_the_node():
    class Code:
        name = "UNSUPPORTED_NODE"

    class Err:  # the methods of TensorRT's ParserError
        def __init__(self, node, name, op):
            self._n, self._name, self._op = node, name, op

        def node(self):
            return self._n

        def node_name(self):
            return self._name

        def node_operator(self):
            return self._op

        def code(self):
            return Code()

        def desc(self):
            return "No importer registered for op"

    assert describe_parser_error(Err(7, "/model/attn/Foo", "Foo")) == (
        "node 7 '/model/attn/Foo' (Foo): No importer registered for op [UNSUPPORTED_NODE]")
    assert describe_parser_error(Err(-1, "", "")) == "graph: No importer registered for op [UNSUPPORTED_NODE]"


# --------------------------------------------------------------------------- int8 QDQ for TensorRT (everywhere)

def _qdq_layers(path):
    """Per Conv/Gemm/MatMul of a QDQ ONNX file: whether its activation input is DQ(Q(x)), its int8 weights
    behind a DequantizeLinear (scales, zero points, axis) or its float weights, its bias; and the zero
    points of every Q/DQ node."""
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    rows = []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        x, w = producer.get(n.input[0]), producer.get(n.input[1])
        row = {"op": n.op_type, "group": next((a.i for a in n.attribute if a.name == "group"), 1),
               "act_qdq": x is not None and x.op_type == "DequantizeLinear"
               and getattr(producer.get(x.input[0]), "op_type", None) == "QuantizeLinear",
               "weight_dq": w is not None and w.op_type == "DequantizeLinear",
               "bias": None if len(n.input) < 3 or not n.input[2] else
               ("float" if n.input[2] in inits else producer[n.input[2]].op_type)}
        if row["weight_dq"]:
            row["weight"], row["scale"], row["zp"] = (inits[i] for i in w.input[:3])
            row["axis"] = next((a.i for a in w.attribute if a.name == "axis"), 1)
        else:
            row["weight"] = inits[n.input[1]]
        rows.append(row)
    zero_points = [inits[n.input[2]] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    return rows, zero_points


def test_tensorrt_int8_qdq_quantizes_every_conv_including_depthwise(onnx_dir, tmp_path, synth_folder):
    """The int8 ONNX the tensorrt backend builds its engine from (export_onnx's qdq_for_tensorrt path). TensorRT
    runs in int8 only ops whose inputs and weights pass through Q/DQ, so every Conv is quantized, depthwise
    ones too; weights int8 per output channel, every zero point 0 (symmetric), biases float. ONNX Runtime's
    recipe keeps depthwise convs fp32 on purpose (its int8 depthwise kernels are slower)."""
    import onnxruntime as ort

    from mobileclip.backends import ExportOptions
    from mobileclip.backends.onnx import _quantize
    from mobileclip.backends.quantize import calibration_images, quantize_static_onnx

    for t in ("image", "text"):
        shutil.copy(onnx_dir / f"{t}.onnx", tmp_path / f"{t}.onnx")
    src = types.SimpleNamespace(preprocess=lambda im: np.asarray(im.convert("RGB").resize((64, 64)), np.float32)
                                .transpose(2, 0, 1) / 255.0)
    info = {t: {"file": f"{t}.onnx", "precision": "int8"} for t in ("image", "text")}
    _quantize(src, tmp_path, info, ExportOptions(precision="int8", calib=str(synth_folder), calib_size=8), True)
    q = info["image"]["quantization"]
    assert q["target"] == "tensorrt" and q["kept_fp32_grouped_convs"] == 0 and q["activations"] == "int8 symmetric"
    assert info["text"]["precision"] == "fp16"   # TensorRT int8 bundles keep the text tower in fp16

    rows, zero_points = _qdq_layers(tmp_path / "image.onnx")
    convs = [r for r in rows if r["op"] == "Conv"]
    depthwise = [r for r in convs if r["group"] > 1 and r["weight"].shape[1] == 1]
    assert len(convs) >= 20 and len(depthwise) >= 10   # mobileclip-tiny's FastViT stages
    for r in rows:
        assert r["act_qdq"] and r["weight_dq"], r["op"]
        out_axis = 0 if r["op"] in ("Conv", "Gemm") else 1   # Gemm here has transB=1: [out, in]
        assert r["weight"].dtype == np.int8 and r["axis"] == out_axis
        assert r["scale"].shape == (r["weight"].shape[out_axis],) and (r["scale"] > 0).all()   # per channel
        assert r["zp"].dtype == np.int8 and not r["zp"].any()
        assert r["bias"] in (None, "float")   # TensorRT's DequantizeLinear takes no int32 bias
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)

    samples, _ = calibration_images(str(synth_folder), src.preprocess, 8)
    quantize_static_onnx(onnx_dir / "image.onnx", tmp_path / "image_ort.onnx", "image", samples)
    ort_rows, _ = _qdq_layers(tmp_path / "image_ort.onnx")
    assert not any(r["weight_dq"] for r in ort_rows if r["op"] == "Conv" and r["group"] > 1)

    # ONNX Runtime still runs TensorRT's graph, close to fp32 (held-out random inputs)
    x = np.random.default_rng(1).random((8, 3, 64, 64)).astype(np.float32)

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]

    cos = cosines(run(tmp_path / "image.onnx"), run(onnx_dir / "image.onnx"))
    assert 0.99 <= cos.min() and cos.max() < 1 - 1e-6   # close, and really quantized


# --------------------------------------------------------------------------- engines (TensorRT + CUDA)

def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def engines(onnx_dir, tmp_path_factory):
    from mobileclip.backends.onnx_graph import to_fp16

    if not TRT_OK:
        pytest.skip(TRT_REASON)
    out = tmp_path_factory.mktemp("trt_engines")
    for tower in ("image", "text"):
        shutil.copy(onnx_dir / f"{tower}.onnx", out / f"{tower}_fp16.onnx")
        to_fp16(out / f"{tower}_fp16.onnx")
    cache = out / "timing.cache"
    reports = {}
    for tower in ("image", "text"):
        reports[f"{tower}_fp32"] = build_engine(onnx_dir / f"{tower}.onnx", out / f"{tower}_fp32.plan", max_batch=8,
                                                workspace_gb=1, timing_cache=cache)
        reports[f"{tower}_fp16"] = build_engine(out / f"{tower}_fp16.onnx", out / f"{tower}_fp16.plan", max_batch=8,
                                                workspace_gb=1, timing_cache=cache)
    return out, reports


@needs_tensorrt
def test_build_report(engines):
    out, reports = engines
    r = reports["image_fp32"]
    json.dumps(r)  # JSON-serialisable as it is
    assert r["file"] == "image_fp32.plan" and r["backend"] == "tensorrt" and r["strongly_typed"] and r["tf32"] is False
    assert r["tensorrt"] == sys.modules["tensorrt"].__version__ and r["device"] == torch.cuda.get_device_name()
    assert r["profile"] == {"min": 1, "opt": 4, "max": 8} and r["workspace_gb"] == 1.0 and r["build_seconds"] > 0
    assert r["inputs"] == [{"name": "image", "shape": [-1, 3, 64, 64], "dtype": "float32",
                            "profile": {"min": [1, 3, 64, 64], "opt": [4, 3, 64, 64], "max": [8, 3, 64, 64]}}]
    assert r["outputs"] == [{"name": "image_embedding", "shape": [-1, 256], "dtype": "float32"}]
    assert r["engine_bytes"] == (out / "image_fp32.plan").stat().st_size > 0
    t = reports["text_fp16"]
    assert t["inputs"][0]["dtype"] == "int32" and t["inputs"][0]["shape"] == [-1, 16]
    assert t["outputs"][0]["dtype"] == "float32"  # fp16 graph, fp32 I/O kept by to_fp16
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing behind


@needs_tensorrt
def test_timing_cache_created_and_reused(engines, onnx_dir, tmp_path):
    out, reports = engines
    first = reports["image_fp32"]["timing_cache"]
    assert first["file"] == "timing.cache" and first["loaded_bytes"] == 0 and first["saved_bytes"] > 0
    later = reports["text_fp16"]["timing_cache"]  # the fourth build found the cache the others wrote
    assert later["loaded_bytes"] > 0 and later["saved_bytes"] >= later["loaded_bytes"]
    assert (out / "timing.cache").stat().st_size == later["saved_bytes"]
    cache = tmp_path / "timing.cache"
    shutil.copy(out / "timing.cache", cache)
    again = build_engine(onnx_dir / "image.onnx", tmp_path / "again.plan", max_batch=8, workspace_gb=1,
                         timing_cache=cache)
    assert again["timing_cache"]["loaded_bytes"] == later["saved_bytes"]
    with TRTRunner(tmp_path / "again.plan") as runner:
        assert runner(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, 256)


@needs_tensorrt
def test_corrupt_timing_cache_is_a_clear_error(onnx_dir, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"not a timing cache" * 10)
    with pytest.raises(MobileCLIPError, match="timing cache .*timing.cache is unreadable.*delete it"):
        build_engine(onnx_dir / "image.onnx", tmp_path / "x.plan", max_batch=2, timing_cache=cache)
    assert not (tmp_path / "x.plan").exists()


@needs_tensorrt
@pytest.mark.parametrize("precision,threshold", [("fp32", 0.99999), ("fp16", 0.999)])
def test_engines_match_pytorch(engines, tiny, precision, threshold):
    out, _ = engines
    model, tokenizer = tiny
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 64, 64, generator=g)
    tokens = tokenizer(["a red circle", "two blue squares", "x " * 40, "a dog", "a cat", "a car", "sky", "sea"])
    with torch.no_grad():
        want_img = model.encode_image(images, normalize=True).numpy()
        want_txt = model.encode_text(tokens, normalize=True).numpy()
    with TRTRunner(out / f"image_{precision}.plan") as img, TRTRunner(out / f"text_{precision}.plan") as txt:
        assert (img.min_batch, img.max_batch, txt.input_dtype) == (1, 8, np.dtype(np.int32))
        for n in (1, 8):
            got = img(images[:n].numpy())
            assert got.shape == (n, 256) and got.dtype == np.float32
            assert cosines(got, want_img[:n]).min() >= threshold
            got = txt(tokens[:n].numpy())  # int64 tokens: cast to the engine's int32
            assert got.shape == (n, 256) and cosines(got, want_txt[:n]).min() >= threshold


@needs_tensorrt
def test_batch_above_profile_max_is_a_clear_error(engines):
    out, _ = engines
    with TRTRunner(out / "image_fp32.plan") as runner:
        with pytest.raises(MobileCLIPError, match="batch 9 is larger than this engine's maximum batch 8.*max-batch 9"):
            runner(np.zeros((9, 3, 64, 64), np.float32))
        with pytest.raises(MobileCLIPError, match="is int32; this engine expects float32"):
            runner(np.zeros((1, 3, 64, 64), np.int32))
        assert runner(np.zeros((8, 3, 64, 64), np.float32)).shape == (8, 256)  # still usable afterwards


@needs_tensorrt
def test_fixed_batch_engine(onnx_dir, tiny, tmp_path):
    report = build_engine(onnx_dir / "image_fixed.onnx", tmp_path / "fixed.plan", max_batch=32, workspace_gb=1)
    assert report["profile"] == {"min": 2, "opt": 2, "max": 2} and report["inputs"][0]["shape"] == [2, 3, 64, 64]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = tiny[0].encode_image(images, normalize=True).numpy()
    with TRTRunner(tmp_path / "fixed.plan") as runner:
        assert (runner.min_batch, runner.max_batch) == (2, 2)
        assert cosines(runner(images.numpy()), want).min() >= 0.99999
        with pytest.raises(MobileCLIPError, match="fixed batch of 2 and got 1 rows"):
            runner(images[:1].numpy())


@needs_tensorrt
def test_runner_timing(engines):
    out, _ = engines
    with TRTRunner(out / "text_fp16.plan") as runner:
        tokens = np.ones((4, 16), np.int32)
        times = runner.time(tokens, warmup=2, iters=5)
        assert len(times) == 5 and all(isinstance(t, float) and t > 0 for t in times)
        assert len(runner.time(tokens, warmup=0, iters=3, include_copies=True)) == 3
        with pytest.raises(ConfigError, match="iters >= 1"):
            runner.time(tokens, iters=0)
