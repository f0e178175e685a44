"""ONNX bundles: export, checksums, parity, and the errors around them."""
import json

import numpy as np
import pytest
import torch

import mobileclip

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from mobileclip.export import BundleError, ParityError, export, load_manifest, validate  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "tiny"
    export("mobileclip-tiny", out, max_batch=8)
    return out


def test_bundle_contents_and_manifest(bundle):
    m = load_manifest(bundle)
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        ["image.onnx", "text.onnx", "manifest.json", "parity.json", "bpe_simple_vocab_16e6.txt.gz"])
    assert m["embed_dim"] == 256 and m["image_size"] == 64 and m["mean"] == [0.0, 0.0, 0.0]
    assert m["tokenizer"] == {"name": "clip-bpe", "vocab_file": "bpe_simple_vocab_16e6.txt.gz",
                              "context_length": 16, "token_dtype": "int32"}
    img, txt = m["artifacts"]["image"], m["artifacts"]["text"]
    assert img["inputs"][0] == {"name": "image", "shape": ["batch", 3, 64, 64], "dtype": "float32"}
    assert txt["inputs"][0] == {"name": "tokens", "shape": ["batch", 16], "dtype": "int32"}
    assert txt["outputs"][0]["shape"] == ["batch", 256] and img["opset"] >= 17
    assert set(m["files"]) == {"image.onnx", "text.onnx", "parity.json", "bpe_simple_vocab_16e6.txt.gz"}
    assert m["parity"]["passed"] and m["parity"]["top1_agreement"] == 1.0
    parity = json.loads((bundle / "parity.json").read_text())
    assert [r["batch"] for r in parity["image"]] == [1, 2, 8]
    assert all(r["min_cosine"] >= 0.99999 for r in parity["image"] + parity["text"])


def test_exported_graph_has_no_train_time_branches(bundle):
    g = onnx.load(str(bundle / "image.onnx")).graph
    ops = {n.op_type for n in g.node}
    assert "BatchNormalization" not in ops  # folded by reparameterization before export
    t = onnx.load(str(bundle / "text.onnx")).graph
    assert "BatchNormalization" not in {n.op_type for n in t.node}


def test_onnx_runtime_matches_pytorch_any_batch(bundle):
    m = load_manifest(bundle)
    torch.manual_seed(m["source"]["seed"])
    ref, pp, tok = mobileclip.create_model(m["source"]["model"])
    ref = mobileclip.reparameterize(ref)
    sess = ort.InferenceSession(str(bundle / "text.onnx"), providers=["CPUExecutionProvider"])
    tokens = tok(["a red circle", "two blue squares", "x" * 200])  # short, padded, truncated
    got = sess.run(None, {"tokens": tokens.numpy().astype(np.int32)})[0]
    with torch.no_grad():
        want = ref.encode_text(tokens).numpy()
    assert got.shape == (3, 256) and np.abs(got - want).max() < 1e-5


def test_tampered_or_missing_file_is_refused(bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    data = (copy / "image.onnx").read_bytes()
    (copy / "image.onnx").write_bytes(data[:-100])
    with pytest.raises(BundleError, match="does not match its checksum"):
        load_manifest(copy)
    (copy / "image.onnx").unlink()
    with pytest.raises(BundleError, match="is missing"):
        load_manifest(copy)
    with pytest.raises(BundleError, match="does not exist"):
        load_manifest(tmp_path / "nope")


def test_validate_detects_a_mismatch(bundle, tmp_path):
    import shutil

    copy = tmp_path / "wrong"
    shutil.copytree(bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["source"]["seed"] = 1  # the reference is now a different random model
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ParityError, match="min cosine") as e:
        validate(copy, max_batch=4)
    assert not e.value.report["passed"]
    assert json.loads((copy / "parity.json").read_text())["passed"] is False  # written either way
    report = validate(copy, max_batch=4, allow_mismatch=True)
    assert not report["passed"]


def test_cli_export_validate_and_errors(tmp_path, capsys, synth_folder):
    from mobileclip.cli import main

    ck = tmp_path / "ck"
    model, _, _ = mobileclip.create_model("mobileclip-tiny")
    mobileclip.save_checkpoint(model, ck)
    out = tmp_path / "bundle"
    assert main(["export", str(ck), "--out", str(out), "--fixed-batch", "4", "--exporter", "legacy",
                 "--token-dtype", "int64"]) == 0
    m = load_manifest(out)
    assert m["artifacts"]["image"]["inputs"][0]["shape"][0] == 4 and m["tokenizer"]["token_dtype"] == "int64"
    assert m["artifacts"]["text"]["exporter"] == "legacy"
    assert main(["validate", str(out)]) == 0
    assert "parity passed" in capsys.readouterr().out
    assert main(["validate", str(out), "--data", str(synth_folder)]) == 0  # real image files
    assert json.loads((out / "parity.json").read_text())["images"] == 4
    assert main(["validate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fp16_bundle(tmp_path):
    out = tmp_path / "fp16"
    m = export("mobileclip-tiny", out, precision="fp16", max_batch=8)
    assert m["parity"]["passed"] and m["artifacts"]["image"]["precision"] == "fp16"
    assert "LayerNormalization" in m["artifacts"]["text"]["kept_fp32_ops"]
    parity = json.loads((out / "parity.json").read_text())
    assert all(0.999 <= r["min_cosine"] < 1.0 - 1e-9 for r in parity["image"] + parity["text"])  # really fp16
    g = onnx.load(str(out / "text.onnx")).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in g.initializer)
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 in and out
    # LayerNormalization runs in fp32: its scale initializer is fp32.
    names = {i.name: i.data_type for i in g.initializer}
    ln = [n for n in g.node if n.op_type == "LayerNormalization"]
    assert ln and all(names.get(n.input[1], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for n in ln)
