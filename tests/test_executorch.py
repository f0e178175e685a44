"""ExecuTorch backend: an int8 bundle (static image tower calibrated on images, dynamic text tower) passes
parity; entries record the fixed batch, token dtype, quantization and delegation; the runner chunks, checks
its inputs and its manifest entry; option refusals; torch-free import."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("executorch.runtime", reason="executorch is not installed (pip install "
                                                 "'mobileclip-toolkit[executorch]')")

from mobileclip import backends  # noqa: E402
from mobileclip.backends.bundle import BundleError, load_manifest  # noqa: E402
from mobileclip.errors import ConfigError  # noqa: E402
from mobileclip.export import export  # noqa: E402

ET = backends.get("executorch")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, synth_folder):
    """``mobileclip-tiny`` int8 with --calib (16 images), batch-1 programs, parity up to batch 4."""
    out = tmp_path_factory.mktemp("et") / "int8"
    # Random weights: the synthetic class prompts score as near-ties, so zero-shot top-1 agreement is not
    # meaningful here (test_export.py's int8 tests do the same); the cosines must pass.
    export("mobileclip-tiny", out, fmt="executorch", precision="int8", calib=str(synth_folder), calib_size=16,
           max_batch=4, allow_mismatch=True, accept_int8_loss=True)   # the mechanics, not the default policy
    return out


def test_int8_bundle_passes_parity_and_records_how_it_was_made(int8_bundle):
    m = load_manifest(int8_bundle)
    assert all(x.startswith("zero-shot top-1 agreement") and "near-ties" in x for x in m["parity"]["misses"])
    report = json.loads((int8_bundle / "parity.json").read_text())
    for tower in ("image", "text"):
        assert [r["batch"] for r in report[tower]] == [1, 2, 4]
        assert all(0.99 <= r["min_cosine"] < 1 - 1e-7 for r in report[tower]), report[tower]  # quantized, close
    img, txt = m["artifacts"]["image"], m["artifacts"]["text"]
    assert img["file"] == "image.pte" and img["backend"] == "executorch" and img["precision"] == "int8"
    # the fixed batch is in the input shapes (the Runner chunks by it) and in the entry
    assert img["inputs"] == [{"name": "image", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert img["outputs"] == [{"name": "image_embedding", "shape": [1, 256], "dtype": "float32"}]
    assert txt["inputs"] == [{"name": "tokens", "shape": [1, 16], "dtype": "int32"}]
    assert m["tokenizer"]["token_dtype"] == "int32" and img["batch"]["fixed"] == txt["batch"]["fixed"] == 1
    qi, qt = img["quantization"], txt["quantization"]
    assert qi["method"] == "static" and qi["calibration_images"] == 16 and qi["calibration_samples"] == 16
    assert qi["kept_fp32"]["final_projection"].endswith("head.fc") and qi["kept_fp32"]["depthwise_convs"] > 0
    assert qi["kept_fp32"]["input_convs"] == 1   # the stem: the image itself is not quantized
    assert qt["method"] == "dynamic" and "calibration_images" not in qt and "token_embedding" in qt["kept_fp32"]
    assert "batch_norms_not_folded" not in qi   # fastvit_t8 has no attention stage: every batch norm is folded
    for entry in (img, txt):
        d = entry["delegation"]
        assert d["delegate"] == "XnnpackBackend" and d["delegated_subgraphs"] >= 1 and d["delegated_nodes"] > 50
        assert d["non_delegated_nodes"] == sum(d["non_delegated_ops"].values())
        assert all(op.startswith(("aten.", "dim_order_ops.")) for op in d["non_delegated_ops"]), d
        assert entry["tools"]["executorch"] and entry["tools"]["torchao"]
    assert "aten.embedding.default" in txt["delegation"]["non_delegated_ops"]   # what runs outside XNNPACK
    assert (int8_bundle / "image.pte").stat().st_size < 2.5e6   # fp32: 3.8 MB


def test_runner_chunks_a_batch_on_a_batch1_program(int8_bundle):
    m = load_manifest(int8_bundle)
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 64, 64), dtype=np.float32)
    tokens = rng.integers(1, 49407, size=(3, 16)).astype(np.int32)
    for role, batch in (("image", x), ("text", tokens)):
        with backends.runner_for(int8_bundle, m["artifacts"][role]) as r:
            assert r.fixed_batch == 1
            together = r(batch)
            apart = np.concatenate([r(batch[i:i + 1]) for i in range(3)])
        assert together.shape == (3, 256) and together.dtype == np.float32
        np.testing.assert_array_equal(together, apart)
        np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1, atol=1e-3)


def test_runner_refuses_inputs_the_program_does_not_take(int8_bundle):
    m = load_manifest(int8_bundle)
    with backends.runner_for(int8_bundle, m["artifacts"]["image"]) as r:
        with pytest.raises(ConfigError, match=r"takes float32 input of shape \[batch, 3, 64, 64\].*got float32 "
                                              r"of shape \[1, 3, 32, 32\]"):
            r(np.zeros((2, 3, 32, 32), np.float32))
        with pytest.raises(ConfigError, match=r"got float64 of shape \[1, 3, 64, 64\]"):
            r(np.zeros((1, 3, 64, 64)))
    with backends.runner_for(int8_bundle, m["artifacts"]["text"]) as r:
        with pytest.raises(ConfigError, match=r"takes int32 input of shape \[batch, 16\].*got int64"):
            r(np.zeros((1, 16), np.int64))
        with pytest.raises(ConfigError, match=r"got int32 of shape \[1, 8\]"):
            r(np.zeros((1, 8), np.int32))


@pytest.mark.parametrize("role, key, value, match", [
    ("image", "inputs", [{"name": "image", "shape": [1, 3, 32, 32], "dtype": "float32"}],
     r"input shape \[1, 3, 64, 64\], the manifest says \[1, 3, 32, 32\]"),
    ("image", "inputs", [{"name": "image", "shape": [2, 3, 64, 64], "dtype": "float32"}],
     r"input shape \[1, 3, 64, 64\], the manifest says \[2, 3, 64, 64\]"),
    ("text", "inputs", [{"name": "tokens", "shape": [1, 16], "dtype": "int64"}],
     "input dtype int32, the manifest says int64"),
    ("text", "outputs", [{"name": "text_embedding", "shape": [1, 512], "dtype": "float32"}],
     r"output shape \[1, 256\], the manifest says \[1, 512\]"),
    ("image", "inputs", [{"name": "image", "shape": ["batch", 3, 64, 64], "dtype": "float32"}],
     "ExecuTorch artifacts have fixed shapes"),
    ("image", "inputs", [], "incomplete"),
])
def test_an_edited_manifest_entry_is_refused_on_activate(int8_bundle, role, key, value, match):
    entry = dict(load_manifest(int8_bundle)["artifacts"][role], **{key: value})
    r = backends.runner_for(int8_bundle, entry)
    with pytest.raises(BundleError, match=match):
        r.activate()
    assert not r.active


def test_a_damaged_program_is_a_bundle_error(int8_bundle, tmp_path):
    entry = load_manifest(int8_bundle)["artifacts"]["image"]
    shutil.copy(int8_bundle / "image.pte", tmp_path / "image.pte")
    data = (tmp_path / "image.pte").read_bytes()
    (tmp_path / "image.pte").write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match="ExecuTorch cannot load"):
        backends.runner_for(tmp_path, entry).activate()
    with pytest.raises(BundleError, match="is missing"):
        backends.runner_for(tmp_path / "nowhere", entry).activate()


def test_threads_resize_executorchs_threadpool(int8_bundle):
    from executorch.extension.pybindings import portable_lib

    before = portable_lib._threadpool_get_thread_count()
    try:
        with backends.runner_for(int8_bundle, load_manifest(int8_bundle)["artifacts"]["text"], threads=1) as r:
            assert r.threads_in_use == portable_lib._threadpool_get_thread_count() == 1
            r(np.ones((2, 16), np.int32))
    finally:
        portable_lib._unsafe_reset_threadpool(before)
    with pytest.raises(backends.BackendUnavailable, match="run on the CPU"):
        backends.runner_for(int8_bundle, load_manifest(int8_bundle)["artifacts"]["text"], device="cuda").activate()


@pytest.mark.parametrize("kwargs, match", [
    (dict(compress="int8"), "--compress .* applies to --format coreml only"),
    (dict(quant="dynamic"), "--quant dynamic applies to --precision int8 only"),
    (dict(calib="imgs"), "--calib applies to --precision int8 only"),
    (dict(precision="int8", quant="qat"), r"quantization 'qat' is not known; choose from \['auto'"),
    (dict(precision="int8", quant="static"), "needs calibration images: pass --calib <image folder>"),
    (dict(exporter="legacy"), "--exporter legacy applies to --format onnx only"),
    (dict(precision="fp16"), r"precision 'fp16' is not available for executorch; choose from \['fp32', 'int8'\]"),
])
def test_options_it_refuses(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        export("mobileclip-tiny", tmp_path / "x", fmt="executorch", **kwargs)
    assert not (tmp_path / "x").exists()


def test_backend_is_available_here_and_module_imports_without_torch():
    assert ET.unavailable() is None and ET.precisions == ("fp32", "int8")
    ET.prepare_export()
    code = ("import sys; import mobileclip.backends.executorch as m; assert m.BACKEND.name == 'executorch'; "
            "heavy = [k for k in ('torch', 'executorch', 'torchao') if k in sys.modules]; "
            "assert not heavy, heavy; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_a_lowering_failure_names_the_tower_and_the_op():
    import torch

    from mobileclip.backends.executorch import LoweringError, _capture, _failure

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(LoweringError, match="torch.export could not capture the image tower: "):
        _capture("image", DataDependent(), torch.ones(1, 3))

    e = RuntimeError("Failed to lower node\nnode=foo target=torch.ops.aten._fft_r2c.default args=...")
    assert _failure(e).startswith("op torch.ops.aten._fft_r2c.default: Failed to lower node")
    assert _failure(ValueError("no op here\nmore")) == "ValueError: no op here"
    assert _failure(KeyError()) == "KeyError (no message)"


def test_calibration_runs_in_the_programs_fixed_batch():
    from mobileclip.backends.executorch import _example_batches

    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    chunks = [c.numpy() for c in _example_batches(x, 2)]
    assert [c.shape for c in chunks] == [(2, 2)] * 3
    np.testing.assert_array_equal(chunks[-1], x[[4, 4]])   # the last one padded with its last row


@pytest.mark.slow   # ~21 s (a PT2E prepare/convert of a FastViT-shaped block): make test-slow
def test_a_batch_norm_is_not_folded_into_a_conv_whose_output_has_other_users():
    """prepare_pt2e folds conv -> batch_norm without checking the conv's other users (torchao 0.18); in
    MobileCLIP-S0's attention stage that normalized the residual stream (image cosine 0.91, nothing
    quantized). The shield keeps such a batch norm apart, and leaves a conv's only batch norm to be folded."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    from mobileclip.backends.executorch import _capture, _shield_shared_conv_batch_norms

    class Block(torch.nn.Module):   # FastViT: x = pos_emb(x); x = x + mixer(norm(x)); plus a ConvNorm
        def __init__(self):
            super().__init__()
            self.pos_emb = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.norm = torch.nn.BatchNorm2d(4)
            self.conv = torch.nn.Conv2d(4, 4, 1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            x = self.pos_emb(x)
            return self.bn(self.conv(x + self.norm(x)))

    torch.manual_seed(0)
    block = Block().eval()
    for bn in (block.norm, block.bn):   # non-trivial statistics (a fresh BatchNorm is near identity)
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        want = block(x)
        graph = _capture("image", block, x).module()
        assert _shield_shared_conv_batch_norms(graph) == ["norm"]   # not bn: conv's only user, folded
        converted = convert_pt2e(prepare_pt2e(graph, XNNPACKQuantizer()))   # no annotations: only the folding
        torch.testing.assert_close(converted(x), want, rtol=1e-4, atol=1e-4)
    norms = [n for n in converted.graph.nodes if "batch_norm" in str(n.target)]
    assert len(norms) == 1   # bn was folded into conv; norm was kept
