"""Issue 20, item 9: parity that can fail, for every registered backend.

Parametrized over the registry, so a backend added later is covered without editing this file:

* each backend's runner, on the bundle ``backend_bundle`` exported, against the PyTorch model built here by the
  public API (``mobileclip.create_model`` at the export's seed, not re-parameterized: not the export's own source
  loader) on the same pixels and on token ids from open_clip's tokenizer — not through the bundle's parity report;
* a damaged artifact (its bytes cut in half, the manifest re-signed so the checksums pass) fails ``validate``:
  a refusal of one line, or a failed report.
"""
import io
import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileclip import backends
from mobileclip.errors import MobileCLIPError

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


def _exported(name, backend_bundle) -> Path:
    try:
        backends.get(name).prepare_export()
    except MobileCLIPError as e:
        pytest.skip(f"{name} cannot export here: {e}")
    return backend_bundle(name)


def _reference(manifest: dict):
    import mobileclip

    torch.manual_seed(int(manifest["source"].get("seed", 0)))
    model = mobileclip.create_model(manifest["source"]["model"])[0].eval()
    return model


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("name", backends.names())
def test_runner_matches_the_pytorch_model_directly(name, backend_bundle):
    b = backends.get(name)
    bundle = _exported(name, backend_bundle)
    if b.unavailable():
        pytest.skip(f"{name} artifacts cannot run here: {b.unavailable()}")
    import open_clip

    m = json.loads((bundle / "manifest.json").read_text())
    model = _reference(m)
    s = int(m["image_size"])
    rng = np.random.default_rng(0)
    pixels = rng.normal(0, 1, (3, 3, s, s)).astype(np.float32)
    ctx = int(m["tokenizer"]["context_length"])
    texts = ["a photo of a cat", "a diagram", "two dogs playing in the snow"]
    ids = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)(texts)   # independent of the bundle's tokenizer
    with torch.no_grad():
        want_i = _unit(model.encode_image(torch.from_numpy(pixels)).numpy())
        want_t = _unit(model.encode_text(ids).numpy())
    dtype = np.int64 if m["tokenizer"].get("token_dtype") == "int64" else np.int32
    for tower, x, want in (("image", pixels, want_i), ("text", ids.numpy().astype(dtype), want_t)):
        r = backends.runner_for(bundle, m["artifacts"][tower], "cpu", 1)
        try:
            got = _unit(r.infer(x))
        finally:
            r.deactivate()
        cos = (got * want).sum(-1)
        assert got.shape == want.shape and cos.min() > 0.9999, (tower, cos)
        # and it can fail: another row's embedding is far from this one
        assert (got[0] * want[1]).sum() < 0.999


def _cut(path: Path) -> Path:
    """Cut the artifact's bytes in half (its largest file, for a folder artifact such as an .mlpackage)."""
    target = max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size) if path.is_dir() \
        else path
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.mark.parametrize("name", backends.names())
def test_a_damaged_artifact_fails_validate(name, backend_bundle, tmp_path):
    from mobileclip.app.cli import main
    from mobileclip.backends.bundle import write_manifest
    from mobileclip.export import validate

    bundle = _exported(name, backend_bundle)
    for tower in ("image", "text"):   # the image tower through the API, the text tower through the CLI
        d = shutil.copytree(bundle, tmp_path / f"{tower}-{name}")
        m = json.loads((d / "manifest.json").read_text())
        _cut(d / m["artifacts"][tower]["file"])
        write_manifest(d, m)   # re-signed: only the artifact's own reading can tell
        if tower == "image":
            try:
                report = validate(d, max_batch=2, allow_mismatch=True, report=tmp_path / f"{tower}-{name}.json")
            except MobileCLIPError:
                failed = True
            else:
                failed = not report["passed"]
            assert failed, f"{name}: a {tower} artifact cut in half passed validate"
            continue
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["validate", str(d), "--max-batch", "2", "--report", str(tmp_path / f"{tower}.cli.json")])
        lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
        assert "Traceback" not in err.getvalue()
        if code == 2:   # refused: one line naming the damaged file
            assert lines and lines[-1].startswith("mobileclip: error: "), lines[-3:]
        else:   # read, and failed parity: the verdict names the miss
            assert code == 1 and "parity FAILED" in out.getvalue() + err.getvalue()
