"""The LiteRT backend: fp32 / fp16 / dynamic-int8 bundles pass parity, the manifest records int32 tokens and
the fixed batch, the runner splits batches and refuses a manifest that does not describe its file, the
option refusals, and a conversion error that names the tower and the op.

One real litert-torch conversion of mobileclip-tiny (the fp32 bundle) is shared by the module: the fp16 and
int8 exports reuse its fp32 .tflite files (``convert_tower`` is the only step skipped) and still run the
ai-edge-quantizer post-process, the manifest and parity for real.
"""
import importlib.util
import json
import shutil
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest

if importlib.util.find_spec("litert_torch") is None or importlib.util.find_spec("ai_edge_quantizer") is None:
    pytest.skip("LiteRT export needs litert-torch and ai-edge-quantizer: pip install 'mobileclip-toolkit[litert]' "
                "(Linux x86_64 or macOS arm64)", allow_module_level=True)

from mobileclip import backends  # noqa: E402
from mobileclip.backends import BackendUnavailable, ExportOptions, litert  # noqa: E402
from mobileclip.backends.bundle import BundleError, load_manifest, signature_misses  # noqa: E402
from mobileclip.errors import ConfigError  # noqa: E402
from mobileclip.export import export  # noqa: E402

MODEL = "mobileclip-tiny"


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, backend_bundle):
    """A real fp32 export (both towers converted by litert-torch; the registry test's), plus a copy of its
    .tflite files."""
    root = tmp_path_factory.mktemp("litert")
    out = backend_bundle("litert")
    cache = root / "cache"
    cache.mkdir()
    for t in ("image", "text"):
        shutil.copy(out / f"{t}.tflite", cache / f"{t}.tflite")
    return out, cache


@contextmanager
def _reusing(cache):
    """``convert_tower`` copies the fp32 bundle's file for a batch-1 tower instead of converting it again."""
    original = litert.convert_tower

    def cached(tower, example, path, role):
        if example.shape[0] == 1:
            shutil.copy(cache / f"{role}.tflite", path)
        else:
            original(tower, example, path, role)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(litert, "convert_tower", cached)
        yield


@pytest.fixture(scope="module")
def quantized(fp32, tmp_path_factory):
    root = tmp_path_factory.mktemp("litert_q")
    with _reusing(fp32[1]):
        return {p: (root / p, export(MODEL, root / p, fmt="litert", precision=p, max_batch=2, allow_mismatch=True,
                                     accept_int8_loss=p == "int8"))
                for p in ("fp16", "int8")}


def _parity_rows(bundle):
    report = json.loads((bundle / "parity.json").read_text())
    return {t: [(r["batch"], round(r["min_cosine"], 6)) for r in report[t]] for t in ("image", "text")}


def test_fp32_bundle_passes_parity_and_records_int32_tokens_and_the_fixed_batch(fp32):
    out, _ = fp32
    m = load_manifest(out)
    assert m["parity"]["passed"] and m["parity"]["mode"] == "predictions", m["parity"]
    assert m["tokenizer"]["token_dtype"] == "int32" and signature_misses(m) == []
    img, txt = m["artifacts"]["image"], m["artifacts"]["text"]
    assert img["inputs"] == [{"name": "image", "shape": [1, 3, m["image_size"], m["image_size"]], "dtype": "float32"}]
    assert txt["inputs"] == [{"name": "tokens", "shape": [1, m["tokenizer"]["context_length"]], "dtype": "int32"}]
    assert img["outputs"] == [{"name": "image_embedding", "shape": [1, m["embed_dim"]], "dtype": "float32"}]
    assert txt["outputs"][0]["name"] == "text_embedding"
    for e in (img, txt):   # --fixed-batch 0 (dynamic) became batch 1, and the entry says why
        assert e["backend"] == "litert" and e["fixed_batch"] == 1 and "fixed batch" in e["fixed_batch_reason"]
        assert e["converter"]["litert-torch"] and e["file"].endswith(".tflite")
        assert backends.fixed_batch(e) == 1
    assert sorted(p.name for p in out.glob("*.tflite")) == ["image.tflite", "text.tflite"]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_dynamic_int8_bundles_pass_parity(quantized, fp32, precision):
    out, m = quantized[precision]
    assert m["parity"]["passed"], (m["parity"], _parity_rows(out))
    assert load_manifest(out)["artifacts"]["text"]["inputs"][0]["dtype"] == "int32"
    for t in ("image", "text"):
        e = m["artifacts"][t]
        assert e["precision"] == precision and e["inputs"][0]["shape"][0] == 1
        assert e["inputs"][0]["dtype"] == ("float32" if t == "image" else "int32")   # float I/O: weights only
        size, size32 = (out / e["file"]).stat().st_size, (fp32[0] / e["file"]).stat().st_size
        assert size < (0.55 if precision == "fp16" else 0.4) * size32, (t, size, size32)
        if precision == "int8":
            assert e["quantization"]["method"] == "dynamic"
            # the image tower's stem stays fp32 (the image itself is not quantized per call); the text tower has none
            assert e["quantization"]["kept_fp32"]["input_convs"] == (1 if t == "image" else 0)
    rows = _parity_rows(out)
    if precision == "int8":   # really quantized
        assert min(c for r in rows.values() for _, c in r) < 1 - 1e-5, rows


def test_runner_splits_a_batch_into_the_fixed_batch_and_matches_per_sample_calls(fp32, capfd):
    out, _ = fp32
    m = load_manifest(out)
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, m["image_size"], m["image_size"]), dtype=np.float32)
    tokens = np.zeros((3, m["tokenizer"]["context_length"]), dtype=np.int64)   # int64 in: cast to the graph's int32
    tokens[:, 0], tokens[:, 1:4], tokens[:, 4] = 49406, rng.integers(1, 4000, (3, 3)), 49407
    for t, inp in (("image", x), ("text", tokens)):
        r = backends.runner_for(out, m["artifacts"][t], threads=1)
        calls = []
        infer = r._infer
        r._infer = lambda chunk: calls.append(len(chunk)) or infer(chunk)
        with r:
            batched = r(inp)
            single = np.concatenate([r(inp[i:i + 1]) for i in range(3)])
        assert calls == [1] * 6 and not r.active
        assert batched.shape == (3, m["embed_dim"]) and batched.dtype == np.float32
        np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-4)
    assert "XNNPACK delegate" not in capfd.readouterr().err   # the interpreter's INFO line is silenced


@pytest.mark.parametrize("edit, message", [
    (lambda e: e["inputs"][0].update(dtype="int64"), r"takes int32 input, the manifest says int64"),
    (lambda e: e["inputs"][0].update(shape=[4, 16]), r"takes input of shape \[1, 16\] \(a fixed batch\), the "
                                                     r"manifest says \[4, 16\]"),
    (lambda e: e["inputs"][0].update(name="input_ids"), r"has input 'tokens', the manifest says 'input_ids'"),
    (lambda e: e["outputs"][0].update(shape=[1, 512]), r"gives output of shape \[1, 256\], the manifest says"),
    (lambda e: e.pop("inputs"), r"manifest entry of .* is incomplete"),
], ids=["dtype", "shape", "name", "output-dim", "incomplete"])
def test_runner_refuses_a_manifest_entry_that_does_not_describe_its_file(fp32, edit, message):
    out, _ = fp32
    entry = json.loads(json.dumps(load_manifest(out)["artifacts"]["text"]))
    edit(entry)
    r = backends.runner_for(out, entry)
    with pytest.raises(BundleError, match=message):
        r.activate()
    assert not r.active


def test_runner_refuses_a_damaged_file_and_other_devices(fp32, tmp_path):
    out, _ = fp32
    entry = load_manifest(out)["artifacts"]["image"]
    (tmp_path / "image.tflite").write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(BundleError, match=r"LiteRT cannot load .*image\.tflite.*re-export the bundle"):
        backends.runner_for(tmp_path, entry).activate()
    with pytest.raises(BackendUnavailable, match="run on the CPU"):
        backends.runner_for(out, entry, device="cuda").activate()


@pytest.mark.parametrize("kw, message", [
    (dict(token_dtype="int64"), "LiteRT takes int32 tokens"),
    (dict(compress="palettize4"), r"--compress .* applies to --format coreml only"),
    (dict(precision="fp16", quant="dynamic"), r"--quant dynamic applies to --precision int8 only"),
    (dict(precision="fp32", calib="/some/folder"), r"--calib applies to --precision int8 only"),
    (dict(precision="int8", quant="qat"), r"quantization 'qat' is not known; choose from \['auto', 'dynamic'"),
    (dict(precision="int8", quant="static"), "static int8 quantization needs calibration images: pass --calib"),
], ids=["int64-tokens", "compress", "quant-without-int8", "calib-without-int8", "unknown-quant", "static-no-calib"])
def test_check_options_refusals(kw, message):
    with pytest.raises(ConfigError, match=message):
        backends.get("litert").check_options(ExportOptions(**kw))


def test_export_refuses_int64_tokens_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="LiteRT takes int32 tokens"):
        export(MODEL, tmp_path / "x", fmt="litert", token_dtype="int64")
    assert not (tmp_path / "x").exists()
    backends.get("litert").check_options(ExportOptions(precision="int8", calib="/f"))   # auto + calib: fine


@pytest.mark.parametrize("toy, message", [
    ("cummax", r"cannot convert the image tower: op aten\.cummax\S* has no litert-torch lowering \(RuntimeError: "
               r"Lowering not found"),
    ("argmax64", r"cannot convert the text tower: op tfl\.arg_max does not legalize to LiteRT"),   # tokens.long()
], ids=["cummax", "argmax64"])
def test_a_conversion_error_names_the_tower_and_the_op(tmp_path, toy, message):
    import torch

    class Cummax(torch.nn.Module):
        def forward(self, image):
            return {"image_embedding": torch.cummax(image, dim=-1).values}

    class Argmax64(torch.nn.Module):   # what an int64 EOT pooling does to the text tower
        def forward(self, tokens):
            return {"text_embedding": tokens.long().argmax(-1).float()}

    role, module, x = {"cummax": ("image", Cummax(), torch.rand(1, 4)),
                       "argmax64": ("text", Argmax64(), torch.randint(0, 9, (1, 8), dtype=torch.int32))}[toy]
    with pytest.raises(litert.LiteRTExportError, match=message) as info:
        litert.convert_tower(module.eval(), x, tmp_path / "x.tflite", role)
    assert info.value.__cause__ is not None and not (tmp_path / "x.tflite").exists()


def test_failing_op_reads_the_message_its_cause_and_the_captured_log():
    try:
        try:
            raise TypeError("Shapes must be 1D ... While executing %view : target=torch.ops.aten.view.default(...)")
        except TypeError as inner:
            raise RuntimeError("conversion failed") from inner
    except RuntimeError as e:
        assert litert.failing_op(e) == "aten.view.default"
        err = litert.conversion_error("text", e)
        assert "the text tower: op aten.view.default is where the conversion failed" in str(err)
        assert "RuntimeError: conversion failed" in str(err)
    legalize = ValueError("Failed to run converter passes: text.py:215:0: error: failed to legalize operation "
                          "'tfl.arg_max' that was explicitly marked illegal")
    assert litert.failing_op(legalize) == "tfl.arg_max"
    assert litert.failing_op(ValueError("x"), extra="loc(...): 'tfl.quantize' op requires the same shape") \
        == "tfl.quantize"
    plain = litert.conversion_error("image", OSError("disk full\nmore"))
    assert str(plain) == "LiteRT cannot convert the image tower: OSError: disk full"


def test_unavailable_and_prepare_export_say_what_to_install(monkeypatch):
    assert litert._unavailable() is None
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    assert "pip install 'mobileclip-toolkit[litert]'" in litert._unavailable()
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'mobileclip-toolkit\[litert\]'.*litert_torch.*"
                                                 r"wheels only for Linux x86_64 and macOS arm64"):
        litert.prepare_export()
    monkeypatch.setattr(litert.platform, "system", lambda: "Windows")
    monkeypatch.setattr(litert.platform, "machine", lambda: "AMD64")
    with pytest.raises(BackendUnavailable, match="this machine is Windows AMD64: export there"):
        litert.prepare_export()


def test_the_module_imports_neither_torch_nor_litert():
    code = ("import sys; import mobileclip.backends.litert as m; assert m.BACKEND.name == 'litert'; "
            "bad = [k for k in ('torch', 'litert_torch', 'ai_edge_litert', 'ai_edge_quantizer') if k in sys.modules]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.slow
def test_static_int8_image_tower_calibrated_on_images(fp32, synth_folder, tmp_path):
    """Full-integer image tower (PT2E, calibrated on --calib), text tower dynamic. Random weights: parity is
    reported, not required (near-tie scores, and static int8 of an untrained tower is coarse)."""
    out = tmp_path / "st"
    with _reusing(fp32[1]):   # the text tower's fp32 file; the image tower goes through PT2E
        m = export(MODEL, out, fmt="litert", precision="int8", calib=str(synth_folder), calib_size=16, max_batch=2,
                   allow_mismatch=True, accept_int8_loss=True)
    img, txt = m["artifacts"]["image"], m["artifacts"]["text"]
    q = img["quantization"]
    assert q["method"] == "static" and q["calibration_images"] == 16 and q["calibration_samples"] == 16
    assert txt["quantization"]["method"] == "dynamic"
    spec = img["inputs"][0]
    assert spec["dtype"] == "int8" and spec["quantization"]["scale"] > 0 and spec["shape"][0] == 1
    rows = _parity_rows(out)
    print("static int8 parity:", rows, m["parity"]["misses"])
    assert all(0.5 < c < 1 - 1e-6 for _, c in rows["image"]), rows   # really quantized, and not garbage
    assert all(c > 0.99 for _, c in rows["text"]), rows


def test_int8_is_refused_by_default_with_its_measured_reason(tmp_path, capsys):
    """LiteRT int8 kept fewer than 98 % of the fp32 source's top-1s on trained students (benchmarks/results/precision):
    refused before any work unless --accept-int8-loss; fp16 is the way offered."""
    from mobileclip.app.cli import main

    out = tmp_path / "q"
    assert main(["export", MODEL, "--format", "litert", "--precision", "int8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "LiteRT dynamic int8 is refused by default" in err and "91.7 %" in err and "--accept-int8-loss" in err
    assert "--precision fp16" in err and not out.exists()
    with pytest.raises(ConfigError, match="refused by default"):
        export(MODEL, out, fmt="litert", precision="int8")
