"""GELU in int8 (quantize.gelu_in_int8, the ONNX Runtime static recipe): what ONNX Runtime runs, and how far it
is from GELU, checked on every one of the 256 uint8 inputs against numpy's own formulas."""
import math

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mobileclip.backends.quantize import QUICK_GELU, gelu_in_int8, op_counts  # noqa: E402

S_IN, Z_IN, S_OUT, Z_OUT = 0.045, 128, 0.031, 7   # a uint8 input over [-5.8, 5.7], an output over [-0.2, 7.7]


def one_gelu(path, zero_dtype=np.uint8, per_channel=False):
    """uint8 x -> DequantizeLinear -> Gelu -> QuantizeLinear: the pattern the static recipe leaves around GELU."""
    scale = np.full((2,), S_IN, np.float32) if per_channel else np.asarray(S_IN, np.float32)
    zero = np.full((2,), Z_IN, zero_dtype) if per_channel else np.asarray(Z_IN if zero_dtype == np.uint8 else 0,
                                                                          zero_dtype)
    x_type = TensorProto.UINT8 if zero_dtype == np.uint8 else TensorProto.INT8
    inits = [numpy_helper.from_array(scale, "s_in"), numpy_helper.from_array(zero, "z_in"),
             numpy_helper.from_array(np.asarray(S_OUT, np.float32), "s_out"),
             numpy_helper.from_array(np.asarray(Z_OUT, np.uint8), "z_out")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s_in", "z_in"], ["xf"], axis=1),
             helper.make_node("Gelu", ["xf"], ["yf"]),
             helper.make_node("QuantizeLinear", ["yf", "s_out", "z_out"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", x_type, [1, 2, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def run(path, x, optimize=True):
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_every_uint8_input_gives_x_sigmoid_1702x_and_stays_near_gelu(tmp_path):
    path = one_gelu(tmp_path / "g.onnx")
    x = np.arange(512, dtype=np.uint8).reshape(1, 2, 16, 16)   # every uint8 value, twice
    exact = run(path, x)
    info = gelu_in_int8(path)
    assert info == {"gelu": f"int8, as x * sigmoid({QUICK_GELU} x)", "gelus_in_int8": 1, "gelus": 1}
    assert op_counts(path) == {"DequantizeLinear": 3, "Sigmoid": 1, "QuantizeLinear": 2, "Mul": 1}

    # numpy's own formulas, per uint8 value v
    v = (x.astype(np.float64) - Z_IN) * np.float32(S_IN)
    sig = np.clip(np.rint(1 / (1 + np.exp(-QUICK_GELU * v)) * 255), 0, 255) / 255   # the sigmoid, in uint8
    quick = np.clip(np.rint(v * sig / np.float32(S_OUT)) + Z_OUT, 0, 255)
    gelu = np.clip(np.rint(np.vectorize(lambda t: 0.5 * t * (1 + math.erf(t / math.sqrt(2))))(v) / S_OUT) + Z_OUT,
                   0, 255)
    assert np.array_equal(exact, gelu)   # the float path ORT ran before: GELU, quantized
    for optimize in (True, False):   # ORT's int8 kernels (fused), and the same graph computed in float
        got = run(path, x, optimize).astype(int)
        assert np.abs(got - quick).max() <= 1, optimize   # x * sigmoid(1.702 x), to a rounding step
        # ... which is GELU to within its approximation error (<= 0.021) plus a rounding step
        assert np.abs(got - gelu).max() <= 1 + math.ceil(0.021 / S_OUT), optimize


def test_onnx_runtime_runs_it_with_its_int8_kernels(tmp_path):
    """The speed comes from ONNX Runtime fusing the QDQ form into QLinearSigmoid + QLinearMul: if a release stops
    doing that, the rewrite only adds work, and this fails."""
    path = one_gelu(tmp_path / "g.onnx")
    gelu_in_int8(path)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = op_counts(tmp_path / "optimized.onnx")
    assert ops.get("QLinearSigmoid") == 1 and ops.get("QLinearMul") == 1
    assert not {"Sigmoid", "Mul", "Gelu"} & set(ops), ops


@pytest.mark.parametrize("case", ["int8 zero point", "per-channel scale"])
def test_other_quantizations_are_left_as_they_are(tmp_path, case):
    path = one_gelu(tmp_path / "g.onnx", **({"zero_dtype": np.int8} if case == "int8 zero point"
                                             else {"per_channel": True}))
    before = path.read_bytes()
    assert gelu_in_int8(path) == {"gelu": "float", "gelus_in_int8": 0, "gelus": 1}
    assert op_counts(path) == {"DequantizeLinear": 1, "Gelu": 1, "QuantizeLinear": 1}
    assert onnx.load(str(path)).graph == onnx.load_from_string(before).graph


@pytest.mark.parametrize("exact", [False, True])
def test_the_export_recipe_runs_gelu_in_int8_unless_exact_gelu(tiny_bundle, synth_folder, tmp_path, exact):
    """``export --precision int8 --calib DIR`` (ONNX Runtime's static recipe) and ``--exact-gelu``, through the
    ONNX backend's quantization step; the manifest says which GELU the tower computes."""
    import json
    import shutil
    import types

    from mobileclip.backends import ExportOptions
    from mobileclip.backends.onnx import _quantize

    for t in ("image", "text"):
        shutil.copy(tiny_bundle / f"{t}.onnx", tmp_path / f"{t}.onnx")
    size = json.loads((tiny_bundle / "manifest.json").read_text())["image_size"]
    src = types.SimpleNamespace(preprocess=lambda im: np.asarray(im.convert("RGB").resize((size, size)), np.float32)
                                .transpose(2, 0, 1) / 255.0)
    info = {t: {"file": f"{t}.onnx", "precision": "int8"} for t in ("image", "text")}
    _quantize(src, tmp_path, info, ExportOptions(precision="int8", calib=str(synth_folder), calib_size=8,
                                                 exact_gelu=exact), False)
    q, ops = info["image"]["quantization"], op_counts(tmp_path / "image.onnx")
    rewritten = {n.op_type for n in onnx.load(str(tmp_path / "image.onnx")).graph.node if n.name.startswith("int8_gelu")}
    assert q["method"] == "static" and q["gelus"] > 0
    if exact:
        assert q["gelu"] == "float" and q["gelus_in_int8"] == 0 and ops["Gelu"] == q["gelus"] and not rewritten
    else:
        assert q["gelu"].startswith("int8") and q["gelus_in_int8"] > 0
        assert ops.get("Gelu", 0) == q["gelus"] - q["gelus_in_int8"]
        assert rewritten == {"DequantizeLinear", "Sigmoid", "QuantizeLinear", "Mul"}
