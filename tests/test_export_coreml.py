"""Core ML backend: conversion, spec checks, normalization folding, compression, fp16 safety.

coremltools converts on Linux but only runs a model on macOS: everything here except the
``macos`` tests checks the saved spec and the PyTorch side of the graph.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

ct = pytest.importorskip("coremltools", reason="the coreml extra (coremltools) is not installed")

from conftest import randomize_batchnorm  # noqa: E402

from mobileclip.config import OPENAI_MEAN, OPENAI_STD, PreprocessConfig  # noqa: E402
from mobileclip.errors import ConfigError, MobileCLIPError  # noqa: E402
from mobileclip.backends import coreml, coreml_checks, coreml_compress  # noqa: E402
from mobileclip.backends.coreml import (  # noqa: E402
    COMPRESSIONS, IMAGE_IN, IMAGE_OUT, TEXT_IN, TEXT_OUT, CoreMLExportError, NormalizedImageInput, check_spec,
    coreml_predictor, export_coreml, fp16_overflow_check, normalized_to_pixels,
)
from mobileclip.backends.towers import ImageTower, TextTower  # noqa: E402
from mobileclip.transforms import preprocess_array  # noqa: E402

MAX_BATCH = 4
ON_MACOS = sys.platform == "darwin"
macos_only = pytest.mark.skipif(not ON_MACOS, reason="Core ML predictions (MLModel.predict) need macOS")


@pytest.fixture(scope="module")
def tiny():
    from mobileclip.factory import create_model
    from mobileclip.reparam import reparameterize

    torch.manual_seed(0)
    model, preprocess, tokenizer = create_model("mobileclip-tiny")
    randomize_batchnorm(model)
    reparameterize(model, inplace=True)
    return model, preprocess, tokenizer


def _export(model, out: Path, **kw) -> dict:
    c = model.cfg
    return export_coreml(ImageTower(model), TextTower(model), out, image_size=c.image.image_size,
                         mean=c.preprocess.mean, std=c.preprocess.std, context_length=c.text.context_length,
                         max_batch=MAX_BATCH, **kw)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml")
    return out, _export(tiny[0], out)


def _ops(path: Path) -> list:
    return coreml_checks._main_ops(ct.utils.load_spec(str(path)))


def _weights_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "weights" in f.parts)


# --- conversion and spec -------------------------------------------------------------------------


def test_export_writes_both_packages_matching_their_entries(tiny, exported):
    model = tiny[0]
    out, entries = exported
    c = model.cfg
    assert sorted(entries) == ["image", "text"]
    for kind, entry in entries.items():
        path = out / entry["file"]
        assert path.is_dir() and (path / "Manifest.json").is_file()
        assert check_spec(path, entry) == []
        assert entry["backend"] == "coreml" and entry["precision"] == "fp16" and entry["compression"] == "none"
        assert entry["minimum_deployment_target"] == "iOS17"
        assert entry["fp16_check"]["passed"] and entry["fp16_check"]["coreml_graph"]["masks"] == []
        json.dumps(entry, allow_nan=False)  # the manifest can hold it as strict JSON
    image, text = entries["image"], entries["text"]
    assert image["inputs"] == [{"name": IMAGE_IN, "type": "image", "color_layout": "RGB", "dtype": "uint8",
                                "shape": [1, 3, c.image.image_size, c.image.image_size]}]
    assert image["outputs"][0]["name"] == IMAGE_OUT and image["outputs"][0]["shape"] == [1, c.embed_dim]
    assert image["normalization"]["mean"] == list(c.preprocess.mean)
    assert text["inputs"][0] == {"name": TEXT_IN, "type": "tensor", "dtype": "int32",
                                 "shape": ["batch", c.text.context_length], "batch_range": [1, MAX_BATCH]}
    assert text["outputs"][0] == {"name": TEXT_OUT, "type": "tensor", "dtype": "float32",
                                  "shape": ["batch", c.embed_dim]}


def test_spec_as_coremltools_reads_it(tiny, exported):
    """Independent of check_spec: the raw description says image RGB SxS, int32 tokens 1..max_batch."""
    out, _ = exported
    c = tiny[0].cfg
    spec = ct.utils.load_spec(str(out / "image.mlpackage"))
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion == 8
    img = spec.description.input[0]
    assert img.name == IMAGE_IN and img.type.WhichOneof("Type") == "imageType"
    assert (img.type.imageType.width, img.type.imageType.height) == (c.image.image_size,) * 2
    assert img.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    spec = ct.utils.load_spec(str(out / "text.mlpackage"))
    tok = spec.description.input[0].type.multiArrayType
    assert tok.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    assert [(r.lowerBound, r.upperBound) for r in tok.shapeRange.sizeRanges] == [
        (1, MAX_BATCH), (c.text.context_length, c.text.context_length)]
    assert spec.description.output[0].type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32


def test_fp16_keeps_overflow_prone_ops_in_fp32(exported):
    out, _ = exported
    fp16 = ct.proto.MIL_pb2.DataType.Value("FLOAT16")
    fp32 = ct.proto.MIL_pb2.DataType.Value("FLOAT32")
    dtypes = {}
    for op in _ops(out / "text.mlpackage"):
        for o in op.outputs:
            if o.type.WhichOneof("type") == "tensorType":
                dtypes.setdefault(op.type, set()).add(o.type.tensorType.dataType)
    assert dtypes["layer_norm"] == {fp32} and dtypes["softmax"] == {fp32}
    assert dtypes["reduce_l2_norm"] == {fp32}
    assert fp16 in dtypes["linear"] and fp16 in dtypes["conv"]
    assert "cast" in dtypes


def test_fp32_op_list_mirrors_the_onnx_backend():
    from mobileclip.backends.onnx_graph import FP32_OPS

    assert set(coreml.ONNX_TO_MIL_FP32) == set(FP32_OPS)


@pytest.mark.parametrize("field, mutate, needle", [
    ("context length", lambda e: e["text"]["inputs"][0].update(shape=["batch", 77]), "axis 1"),
    ("batch range", lambda e: e["text"]["inputs"][0].update(batch_range=[1, 64]), "batch range"),
    ("token dtype", lambda e: e["text"]["inputs"][0].update(dtype="int64"), "dtype"),
    ("input name", lambda e: e["text"]["inputs"][0].update(name="input_ids"), "inputs"),
    ("output dim", lambda e: e["text"]["outputs"][0].update(shape=["batch", 512]), "program shape"),
    ("image size", lambda e: e["image"]["inputs"][0].update(shape=[1, 3, 224, 224]), "size"),
    ("colour layout", lambda e: e["image"]["inputs"][0].update(color_layout="BGR"), "color space"),
    ("normalization", lambda e: e["image"]["normalization"].update(mean=list(OPENAI_MEAN)), "normalization"),
    ("compression", lambda e: e["image"].update(compression="int8"), "constexpr_affine_dequantize"),
    ("precision", lambda e: e["image"].update(precision="fp32"), "float16"),
])
def test_check_spec_catches_a_wrong_expectation(exported, field, mutate, needle):
    out, entries = exported
    wrong = json.loads(json.dumps(entries))
    mutate(wrong)
    kind = "text" if wrong["text"] != entries["text"] else "image"
    misses = check_spec(out / wrong[kind]["file"], wrong[kind])
    assert misses, f"a wrong {field} went unnoticed"
    assert any(needle in m for m in misses), misses


def test_check_spec_reports_a_missing_package(tmp_path, exported):
    _, entries = exported
    misses = check_spec(tmp_path / "nothing.mlpackage", entries["image"])
    assert len(misses) == 1 and "not an .mlpackage" in misses[0]


# --- image normalization folding ------------------------------------------------------------------


def test_normalization_fold_is_exact(tiny):
    """(pixels/255 - mean)/std inside the model == the preprocessing, bit for bit."""
    model = tiny[0]
    size = model.cfg.image.image_size
    rng = np.random.default_rng(0)
    from PIL import Image

    pixels = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    cfg = PreprocessConfig(size, OPENAI_MEAN, OPENAI_STD)
    normalized = torch.from_numpy(np.stack([preprocess_array(Image.fromarray(p), cfg) for p in pixels]))
    tower = ImageTower(model).eval()
    wrapper = NormalizedImageInput(tower, OPENAI_MEAN, OPENAI_STD).eval()
    scaled = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(wrapper.normalize(scaled), normalized)
    with torch.no_grad():
        torch.testing.assert_close(wrapper(scaled), tower(normalized), rtol=0, atol=1e-6)
        # and the fold is not a no-op: without it the embedding differs
        assert (tower(scaled) - tower(normalized)).abs().max() > 1e-3


def test_normalized_arrays_map_back_to_their_exact_pixels():
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    pixels[0, 0, 0] = [0, 255, 128]  # the extremes survive the round trip
    cfg = PreprocessConfig(16, OPENAI_MEAN, OPENAI_STD)
    x = np.stack([preprocess_array(Image.fromarray(p), cfg) for p in pixels])
    back = normalized_to_pixels(x, OPENAI_MEAN, OPENAI_STD)
    assert back.dtype == np.uint8 and np.array_equal(back, pixels)
    with pytest.raises(MobileCLIPError, match="8-bit"):
        normalized_to_pixels(x + 0.3 / 255 / np.asarray(OPENAI_STD, np.float32).reshape(1, 3, 1, 1),
                             OPENAI_MEAN, OPENAI_STD)
    with pytest.raises(MobileCLIPError, match="8-bit"):
        normalized_to_pixels(np.full((1, 3, 4, 4), 10.0, np.float32), OPENAI_MEAN, OPENAI_STD)


# --- compression ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*scikit-learn is not installed")
@pytest.mark.parametrize("compress, op", [
    # k-means palettization (scikit-learn is installed with the executorch extra) takes ~30 s: make test-slow
    pytest.param("palettize8", "constexpr_lut_to_dense", marks=pytest.mark.slow),
    ("int8", "constexpr_affine_dequantize")])
def test_compressed_export(tiny, exported, tmp_path, compress, op):
    plain_dir, _ = exported
    entries = _export(tiny[0], tmp_path, compress=compress)
    for kind, entry in entries.items():
        path = tmp_path / entry["file"]
        assert check_spec(path, entry) == []
        assert entry["compression"] == compress and entry["compression_config"]
        cfg = entry["compression_config"]
        ops = [o.type for o in _ops(path)]
        assert ops.count(op) == cfg["weights_compressed"] >= 3, (kind, sorted(set(ops)), cfg)
        assert cfg["max_weight_error"] <= cfg["weight_error_limit"]
        # 8-bit weights instead of fp16 (less the few kept in fp16): well under the plain size
        assert _weights_bytes(path) < 0.75 * _weights_bytes(plain_dir / entry["file"])
    if compress.startswith("palettize"):
        cfg = entries["image"]["compression_config"]
        assert cfg["nbits"] == 8 and cfg["mode"] == ("kmeans" if coreml_compress._has_kmeans() else "uniform")


class TwoLinears(nn.Module):
    def __init__(self, tiny_scale: float) -> None:
        super().__init__()
        self.big = nn.Linear(64, 64)
        self.small = nn.Linear(64, 64)
        with torch.no_grad():
            self.small.weight.mul_(tiny_scale)  # like a folded 1e-5 layer scale

    def forward(self, x):
        return self.big(x) + self.small(x)


@pytest.mark.filterwarnings("ignore:.*scikit-learn is not installed")
@pytest.mark.parametrize("compress", ["int8", "palettize8"])
def test_compression_keeps_weights_it_would_break(compress):
    """coremltools 9.0 quantizes fp16 weights with fp16 scales: ~1e-6 weights come back as zeros
    (int8) or garbage (LUT). Those stay uncompressed; ordinary weights are compressed."""
    mlmodel = mlmodel_of(TwoLinears(1e-5))
    compressed, record = coreml.compress_weights(mlmodel, compress)
    if compress.startswith("palettize") and coreml_compress._has_kmeans() and "kept_uncompressed" not in record:
        # scikit-learn's k-means (installed with the executorch extra) sometimes fits a table to the tiny
        # weights too (its result varies between runs): then both are compressed, and both within the limit
        assert record["weights_compressed"] == 2 and record["max_weight_error"] < record["weight_error_limit"]
        return
    assert list(record["kept_uncompressed"]) == ["small_weight_to_fp16"], record
    assert record["kept_uncompressed"]["small_weight_to_fp16"] > record["weight_error_limit"]
    assert record["weights_compressed"] == 1 and record["max_weight_error"] < record["weight_error_limit"]
    const_names = {op.name for op in compressed._mil_program.functions["main"].find_ops(op_type="const")}
    assert "small_weight_to_fp16" in const_names and "big_weight_to_fp16" not in const_names

    healthy = coreml.compress_weights(mlmodel_of(TwoLinears(1.0)), compress)[1]
    assert "kept_uncompressed" not in healthy and healthy["weights_compressed"] == 2


@pytest.mark.skipif(not coreml_compress._has_kmeans(), reason="k-means palettization needs scikit-learn "
                    "(installed with the executorch extra); without it the table is uniform, deterministic anyway")
def test_palettized_weights_are_byte_equal_at_any_thread_count(tmp_path):
    """scikit-learn's k-means (coremltools uses it for weights under 10,000 elements) gives different tables at
    different OpenMP thread counts; the export holds it to one thread, so two exports write the same bytes."""
    from threadpoolctl import threadpool_limits

    torch.manual_seed(0)
    convs = nn.Sequential(*[nn.Conv2d(64, 64, 7, groups=64, padding=3) for _ in range(4)]).eval()
    with torch.no_grad():
        for c in convs:
            c.weight.normal_(0, 0.05)   # 3,136-element depthwise kernels: scikit-learn's range
    traced = coreml.trace(convs, (torch.randn(1, 64, 8, 8),))
    with coreml.frozen(convs):
        mlmodel = coreml._convert(ct, traced, [ct.TensorType(name="x", shape=(1, 64, 8, 8))], "y", "fp16")
    weights = {}
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="openmp"):   # as on machines with 1 and 2 cores
            compressed, record = coreml.compress_weights(mlmodel, "palettize8")
        assert record["mode"] == "kmeans" and record["kmeans_threads"] == 1 and record["weights_compressed"] == 4
        compressed.save(str(tmp_path / f"{threads}.mlpackage"))
        weights[threads] = [p.read_bytes() for p in sorted((tmp_path / f"{threads}.mlpackage").rglob("weight.bin"))]
    assert weights[1] and weights[1] == weights[2]


def mlmodel_of(module: nn.Module):
    traced = coreml.trace(module, (torch.randn(2, 64),))
    with coreml.frozen(module):
        return coreml._convert(ct, traced, [ct.TensorType(name="x", shape=(2, 64))], "y", "fp16")


# --- fp16 safety ------------------------------------------------------------------------------------

FINFO_MIN = torch.finfo(torch.float32).min


class MaskedText(nn.Module):
    """A tiny causal text tower; its mask is a buffer (``mask="buffer"``, open_clip style),
    built in forward with ``masked_fill(-inf)`` (``"inline"``), or left to SDPA (``"sdpa"``)."""

    def __init__(self, mask: str = "buffer", fill: float = FINFO_MIN, length: int = 8, width: int = 16) -> None:
        super().__init__()
        self.mask, self.length = mask, length
        self.emb = nn.Embedding(100, width)
        self.proj = nn.Linear(width, width)
        if mask == "buffer":
            self.register_buffer("attn_mask", torch.full((length, length), fill).triu(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens.long())
        if self.mask == "sdpa":
            y = F.scaled_dot_product_attention(x[:, None], x[:, None], x[:, None], is_causal=True)[:, 0]
        else:
            scores = x @ x.transpose(1, 2)
            if self.mask == "buffer":
                scores = scores + self.attn_mask
            else:
                causal = torch.ones(self.length, self.length, dtype=torch.bool).triu(1)
                scores = scores.masked_fill(causal, float("-inf"))
            y = scores.softmax(-1) @ x
        return F.normalize(self.proj(y.mean(1)), dim=-1)


class SmallImage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(self.conv(x).mean((2, 3))), dim=-1)


def _tokens(n: int = 8) -> torch.Tensor:
    return (torch.arange(n) + 1).repeat(2, 1)


def test_fp16_check_passes_for_our_towers(tiny):
    model, _, tokenizer = tiny
    with torch.no_grad():
        image = fp16_overflow_check(ImageTower(model), torch.randn(2, 3, 64, 64))
        text = fp16_overflow_check(TextTower(model), tokenizer(["a cat", "a photo of a dog"]))
    for report in (image, text):
        assert report["passed"] and report["supported"] and report["finite"], report
        assert report["masks"] == [] and report["overflow_constants"] == []
        assert report["min_cosine"] > 0.999


@pytest.mark.parametrize("mask, fill, flagged", [
    ("buffer", FINFO_MIN, "attn_mask"),
    ("buffer", float("-inf"), "attn_mask"),
    ("buffer", -65504.0, "attn_mask"),
    ("inline", None, "graph constant"),
])
def test_fp16_check_flags_masks(mask, fill, flagged):
    tower = MaskedText(mask, fill if fill is not None else FINFO_MIN)
    report = fp16_overflow_check(tower, _tokens())
    assert not report["passed"]
    assert any(flagged in name for name in report["masks"]), report["masks"]


def test_fp16_check_only_blames_the_tower_that_uses_the_mask():
    class Pair(nn.Module):  # a whole CLIP model: the image side holds the text side's mask
        def __init__(self):
            super().__init__()
            self.visual, self.text = SmallImage(), MaskedText()

    class Side(nn.Module):
        def __init__(self, model, kind):
            super().__init__()
            self.model, self.kind = model, kind

        def forward(self, x):
            return getattr(self.model, self.kind)(x)

    pair = Pair()
    image = fp16_overflow_check(Side(pair, "visual"), torch.rand(2, 3, 16, 16))
    text = fp16_overflow_check(Side(pair, "text"), _tokens())
    assert image["passed"] and image["masks"] == [], image
    assert text["masks"] == ["model.text.attn_mask"]


def test_fp16_check_passes_without_masks():
    for tower in (MaskedText("sdpa"), MaskedText("buffer", fill=-1e4)):
        report = fp16_overflow_check(tower, _tokens())
        assert report["passed"] and report["masks"] == [], report


def test_fp16_check_flags_non_finite_half_outputs():
    class Overflows(nn.Module):
        def forward(self, x):
            return x * 1000.0 * 1000.0  # finite in fp32, inf in fp16

    report = fp16_overflow_check(Overflows(), torch.ones(1, 4))
    assert report["supported"] and report["finite"] is False and not report["passed"]


def test_fp16_export_refuses_a_masked_tower_and_fp32_export_takes_it(tmp_path):
    kw = dict(image_size=16, mean=OPENAI_MEAN, std=OPENAI_STD, context_length=8, max_batch=MAX_BATCH)
    with pytest.raises(CoreMLExportError, match="attn_mask") as err:
        export_coreml(SmallImage(), MaskedText(), tmp_path / "fp16", **kw)
    assert "precision='fp32'" in str(err.value) and err.value.report["masks"] == ["attn_mask"]

    entries = export_coreml(SmallImage(), MaskedText(), tmp_path / "fp32", precision="fp32", **kw)
    for entry in entries.values():
        assert check_spec(tmp_path / "fp32" / entry["file"], entry) == []
        assert entry["precision"] == "fp32" and entry["fp16_check"]["ran"] is False
    assert entries["text"]["outputs"][0]["shape"] == ["batch", 16]
    # the converted program still holds the mask: the scan of the shipped graph sees it
    assert entries["text"]["fp16_check"]["coreml_graph"]["masks"]
    assert entries["image"]["fp16_check"]["coreml_graph"]["masks"] == []


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, needle", [
    ({"precision": "int4"}, "precision"),
    ({"compress": "palettize3"}, "compression"),
    ({"max_batch": 0}, "max_batch"),
    ({"context_length": "77"}, "context_length"),
    ({"mean": (0.5, 0.5)}, "mean and std"),
    ({"std": (1.0, 0.0, 1.0)}, "std"),
])
def test_bad_arguments_raise_config_error_before_any_work(tmp_path, kw, needle):
    args = dict(image_size=16, mean=OPENAI_MEAN, std=OPENAI_STD, context_length=8)
    args.update(kw)
    with pytest.raises(ConfigError, match=needle):
        export_coreml(SmallImage(), MaskedText(), tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_compressions_are_all_accepted_names():
    assert COMPRESSIONS == ("none", "palettize4", "palettize6", "palettize8", "int8")


def test_missing_coremltools_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(ConfigError, match=r"pip install 'mobileclip-toolkit\[coreml\]'"):
        coreml.require_coremltools()


@pytest.mark.skipif(ON_MACOS, reason="checks the non-macOS error")
def test_predictor_off_macos_says_it_needs_macos(exported):
    out, _ = exported
    with pytest.raises(MobileCLIPError, match="need macOS"):
        coreml_predictor(out / "text.mlpackage")


def test_predictor_rejects_unknown_options(exported):
    out, _ = exported
    with pytest.raises(ConfigError, match="compute units"):
        coreml_predictor(out / "text.mlpackage", compute_units="gpu")
    with pytest.raises(ConfigError, match="kind"):
        coreml_predictor(out / "text.mlpackage", kind="audio")


# --- real predictions (macOS) ---------------------------------------------------------------------------


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.macos
@macos_only
def test_predictions_match_pytorch(tiny, exported):
    from mobileclip.export.parity import parity_prompts, synthetic_images

    model, preprocess, tokenizer = tiny
    out, entries = exported
    images = torch.stack([preprocess(im) for im in synthetic_images(5, model.cfg.image.image_size)])
    tokens = tokenizer(parity_prompts(tokenizer, 2 * MAX_BATCH + 1))  # more rows than the max batch
    with torch.no_grad():
        ref_img = model.encode_image(images).numpy()
        ref_txt = model.encode_text(tokens).numpy()
    got_img = coreml_predictor(out / "image.mlpackage")(images.numpy())
    got_txt = coreml_predictor(out / "text.mlpackage")(tokens.numpy().astype(np.int32))
    assert got_img.shape == ref_img.shape and got_txt.shape == ref_txt.shape
    assert _cosines(ref_img, got_img).min() >= 0.999
    assert _cosines(ref_txt, got_txt).min() >= 0.999


@pytest.mark.macos
@macos_only
@pytest.mark.filterwarnings("ignore:.*scikit-learn is not installed")
@pytest.mark.parametrize("compress", ["palettize8", "int8"])
def test_compressed_predictions_stay_close(tiny, tmp_path, compress):
    model, preprocess, tokenizer = tiny
    _export(model, tmp_path, compress=compress)
    tokens = tokenizer(["a cat", "a photo of a red circle", "two blue squares"])
    with torch.no_grad():
        ref = model.encode_text(tokens).numpy()
    got = coreml_predictor(tmp_path / "text.mlpackage")(tokens.numpy())
    assert _cosines(ref, got).min() >= 0.99
