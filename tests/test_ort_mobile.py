"""ONNX Runtime Mobile bundles (``--format ort``): .ort files that ONNX Runtime itself loads, the
reduced-operator config a minimal ORT build needs, and the same checks as ONNX bundles."""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime.tools.convert_onnx_models_to_ort", reason="onnxruntime's ORT converter")

from mobileclip.backends.bundle import BundleError, load_manifest  # noqa: E402
from mobileclip.backends.ort_mobile import CONFIG  # noqa: E402
from mobileclip.export import export, validate  # noqa: E402
from mobileclip.export.parity import ParityError  # noqa: E402


@pytest.fixture(scope="module")
def ort_int8(tmp_path_factory, synth_folder):
    out = tmp_path_factory.mktemp("ort") / "int8"
    export("mobileclip-tiny", out, fmt="ort", precision="int8", max_batch=4, calib=str(synth_folder), calib_size=16,
           data=str(synth_folder), allow_mismatch=True,   # random weights: class scores are near-ties
           accept_int8_loss=True)   # the mechanics, not the default policy (tests/test_precision_policy.py)
    return out


def _cosine_misses(m):
    return [x for x in m["parity"]["misses"] if "top-1 agreement" not in x]


def test_int8_ort_bundle_loads_in_onnxruntime_and_matches_pytorch(ort_int8):
    import onnxruntime as ort

    m = load_manifest(ort_int8)
    assert not _cosine_misses(m) and m["parity"]["mode"] == "predictions", m["parity"]
    for t in ("image", "text"):
        e = m["artifacts"][t]
        assert e["backend"] == "ort" and e["file"] == f"{t}.ort" and e["onnx"] == f"{t}.onnx"
        assert e["ort_config"] == CONFIG and e["ort_format"]["optimization_style"] == "Fixed"
        assert {e["file"], e["onnx"], CONFIG} <= set(m["files"])     # listed and checksummed
        # ONNX Runtime's own loader takes the file as ORT format (the flatbuffer's identifier is "ORTM")
        assert (ort_int8 / e["file"]).read_bytes()[4:8] == b"ORTM"
        s = ort.InferenceSession(str(ort_int8 / e["file"]), providers=["CPUExecutionProvider"])
        assert s.get_inputs()[0].name == e["inputs"][0]["name"]
    assert m["artifacts"]["image"]["quantization"]["method"] == "static"


def test_operator_config_lists_what_the_towers_use_and_no_temporary_path(ort_int8):
    text = (ort_int8 / CONFIG).read_text()
    assert "# - image.ort" in text and "# - text.ort" in text and "tmp" not in text
    ops = {op.split("{")[0] for line in text.splitlines() if not line.startswith("#")
           for op in line.split(";")[2].split(",")}
    assert {"Conv", "MatMul", "LayerNormalization", "ArgMax"} <= ops | {"FusedConv"}, ops
    assert any(line.startswith("com.microsoft;") for line in text.splitlines())   # the fused kernels it needs


def test_runtime_classifies_with_an_ort_bundle(ort_int8, synth_folder):
    """The runtime's zero-shot probabilities on the .ort towers equal a reference computed apart from it: the
    bundle's .onnx towers (what the .ort files were converted from) run by ONNX Runtime directly, on pixels
    made here with numpy (the synthetic images are already at the input size) and ids from open_clip's
    tokenizer, then softmax(logit_scale * cosine)."""
    import onnxruntime as ort
    from open_clip.tokenizer import SimpleTokenizer
    from PIL import Image

    from mobileclip.runtime import load

    b = load(ort_int8)
    m = load_manifest(ort_int8)
    files = sorted(synth_folder.rglob("*.png"))[::9][:6]
    images = [Image.open(p).convert("RGB") for p in files]
    labels = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
    got = b.classify(images, labels, templates=["{}"])

    s = m["image_size"]
    assert all(im.size == (s, s) for im in images)
    mean, std = (np.asarray(m[k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    pixels = (np.stack([np.asarray(im, np.float32).transpose(2, 0, 1) for im in images]) / 255 - mean) / std
    tokens = SimpleTokenizer(context_length=m["tokenizer"]["context_length"])(labels).numpy().astype(np.int32)

    def run(tower, x):
        sess = ort.InferenceSession(str(ort_int8 / m["artifacts"][tower]["onnx"]), providers=["CPUExecutionProvider"])
        y = sess.run(None, {m["artifacts"][tower]["inputs"][0]["name"]: x})[0].astype(np.float64)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    logits = m["logit_scale"] * run("image", pixels) @ run("text", tokens).T
    want = np.exp(logits - logits.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    assert len(got) == len(images)
    for row, p in zip(got, want):
        assert [label for label, _ in row] == [labels[j] for j in np.argsort(-p, kind="stable")]   # ranking, top-1
        np.testing.assert_allclose([prob for _, prob in row], np.sort(p)[::-1], atol=1e-5)


def test_validate_reads_the_ort_files_own_signature(ort_int8, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ort_int8, bad)
    mpath = bad / "manifest.json"
    m = json.loads(mpath.read_text())
    m["artifacts"]["text"]["outputs"][0]["name"] = "embedding"   # a manifest that lies about the .ort file
    mpath.write_text(json.dumps(m))
    from mobileclip.backends.bundle import write_manifest

    m.pop("files")   # re-signed, as a forger would
    write_manifest(bad, m)
    with pytest.raises(ParityError, match=r"text: the manifest's outputs .*text.ort"):
        validate(bad, report=tmp_path / "r.json")


def test_a_truncated_ort_file_is_refused(ort_int8, tmp_path):
    from mobileclip.backends.onnx import OrtRunner

    bad = tmp_path / "cut"
    shutil.copytree(ort_int8, bad)
    data = (bad / "image.ort").read_bytes()
    (bad / "image.ort").write_bytes(data[: len(data) // 2])
    entry = load_manifest(ort_int8)["artifacts"]["image"]
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        OrtRunner(bad, entry).activate()


def test_ort_format_flag_selects_the_ort_backend_and_refuses_other_formats(monkeypatch, tmp_path, capsys):
    import mobileclip.export as export_pkg
    from mobileclip.app.cli import main

    seen = {}

    def fake_export(model, out, fmt, **kw):
        seen["fmt"] = fmt
        return {"artifacts": {"image": {"file": "image.ort"}, "text": {"file": "text.ort"}},
                "parity": {"passed": True, "misses": []}}

    monkeypatch.setattr(export_pkg, "export", fake_export)
    assert main(["export", "mobileclip-tiny", "--ort-format", "--out", str(tmp_path / "b")]) == 0
    assert seen["fmt"] == "ort"
    assert main(["export", "mobileclip-tiny", "--ort-format", "--format", "coreml", "--out", str(tmp_path / "c")]) == 2
    assert "--ort-format converts ONNX towers" in capsys.readouterr().err
