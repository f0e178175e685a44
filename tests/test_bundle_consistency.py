"""Issue 20, item 2: a bundle is consistent with itself wherever it is loaded (runtime, validate, bench).

Checksums prove each file is the one the manifest lists; these cases re-sign the manifest after an
edit, so only the cross-checks can catch them: tokenizer.json against the BPE vocabulary file it was
written from, and every token id against the text tower's token-embedding rows. The reference side
of each check is the vocabulary file read by open_clip's own algorithm, not the JSON under test.
"""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("tokenizers", reason="the runtime extra (tokenizers) is not installed")

from mobileclip import runtime  # noqa: E402
from mobileclip.app.cli import main  # noqa: E402
from mobileclip.export import validate  # noqa: E402
from mobileclip.backends.bundle import write_manifest  # noqa: E402
from mobileclip.runtime.core import RuntimeBackendError  # noqa: E402
from mobileclip.runtime.hf_tokenizer import PROBE_CORPUS, HFTokenizer  # noqa: E402
from mobileclip.runtime.tokenizer import TokenizerError  # noqa: E402


def _edit_json(d, fn):
    """Edit the bundle's tokenizer.json with ``fn(config)`` and re-sign the manifest (checksums pass)."""
    from mobileclip.benchmarks.robustness_cases import edit_tokenizer_json

    edit_tokenizer_json(d, fn)


def _swap(config):
    v = config["model"]["vocab"]
    v["cat</w>"], v["dog</w>"] = v["dog</w>"], v["cat</w>"]


def _huge_id(config):
    config["model"]["vocab"]["cat</w>"] = 999999


def _no_lowercase(config):
    steps = config["normalizer"]["normalizers"]
    config["normalizer"]["normalizers"] = [s for s in steps if s.get("type") != "Lowercase"]


def _special(config):
    config["added_tokens"][0]["id"] = 5


def _merge(config):
    merges = config["model"]["merges"]
    merges[10], merges[11] = merges[11], merges[10]


CASES = {
    "two ids swapped": (_swap, "its vocabulary differs .'dog</w>': 2368 in tokenizer.json, 1929"),
    "an id past the vocabulary": (_huge_id, "'cat</w>': 999999 in tokenizer.json, 2368 in the vocabulary file"),
    "normalizer without lowercasing": (_no_lowercase, "tokenizes 'A PHOTO OF A Dog!' to other ids"),
    "start token renumbered": (_special, "its special tokens differ"),
    "two merges swapped": (_merge, "its merges differ from merge 10 on"),
}


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "b")


def test_export_records_the_towers_vocabulary(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["tokenizer"]["vocab_size"] == 49408   # mobileclip-tiny's text.token_embedding rows


def test_a_consistent_bundle_loads_and_its_json_tokenizes_the_probe_like_open_clip(tiny_bundle):
    import open_clip

    m = json.loads((tiny_bundle / "manifest.json").read_text())
    ctx = m["tokenizer"]["context_length"]
    want = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)(list(PROBE_CORPUS)).numpy()
    for mode in ("json", "python"):   # the independent reference: open_clip's own tokenizer
        got = HFTokenizer(tiny_bundle / m["tokenizer"]["tokenizer_json"], clean=mode)(PROBE_CORPUS)
        assert np.array_equal(got, want), mode
    runtime.load(tiny_bundle)


@pytest.mark.parametrize("case", list(CASES))
def test_inconsistent_tokenizer_json_is_refused_everywhere(bundle, tmp_path, capsys, case):
    edit, message = CASES[case]
    _edit_json(bundle, edit)
    with pytest.raises(TokenizerError, match=message):
        runtime.load(bundle)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    code = main(["classify", str(bundle), str(image), "--labels", "cat,dog"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("mobileclip: error: ") and "does not agree" in err[0]
    report = validate(bundle, max_batch=4, allow_mismatch=True, report=tmp_path / "v.json")
    assert not report["passed"]
    assert any("does not agree with the bundle's vocabulary file" in miss for miss in report["misses"])


def test_bench_refuses_an_inconsistent_tokenizer_on_stderr(bundle, tmp_path, capsys):
    _edit_json(bundle, _swap)
    code = main(["bench", str(bundle), "--towers", "text", "--batch", "1", "--min-runs", "2", "--min-seconds", "0",
                 "--warmup", "0", "--peak-seconds", "0.05", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mobileclip: error: 1 of 1 cases failed")
    assert "does not agree with the bundle's vocabulary file" in err[-1]


def test_tower_vocabulary_smaller_than_the_tokenizers_is_refused(bundle, tmp_path):
    m = json.loads((bundle / "manifest.json").read_text())
    m["tokenizer"]["vocab_size"] = 49000
    write_manifest(bundle, m)
    with pytest.raises(TokenizerError, match="ids up to 49407, but its text tower has 49000 token embeddings"):
        runtime.load(bundle)
    report = validate(bundle, max_batch=4, allow_mismatch=True, report=tmp_path / "v.json")
    assert any("tokenizer.vocab_size is 49000, the source's text tower has 49408" in m for m in report["misses"])


def test_runtime_guards_ids_and_wraps_engine_failures(tiny_bundle, monkeypatch):
    model = runtime.load(tiny_bundle)
    assert model.vocab_size == 49408
    model.vocab_size = 300   # as if the tower had 300 rows: "a photo" has ids above that
    with pytest.raises(RuntimeBackendError, match="gave id .*outside the text tower's 300 token embeddings"):
        model.encode_text("a photo")
    model.vocab_size = 49408

    def engine_failure(x):   # what onnxruntime raises on an out-of-range Gather index
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : indices element out of data bounds\nstack")

    monkeypatch.setattr(model.text_tower, "infer", engine_failure)
    monkeypatch.setattr(type(model.text_tower), "__call__", lambda self, x: self.infer(x))
    with pytest.raises(RuntimeBackendError, match=r"the text tower of bundle .* failed on a batch of 1: RuntimeError: "
                                                  r"\[ONNXRuntimeError\] : 2 : INVALID_ARGUMENT : indices element "
                                                  r"out of data bounds; check the bundle"):
        model.encode_text("a photo")


def test_bundles_without_the_recorded_vocabulary_still_load(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    del m["tokenizer"]["vocab_size"]   # exported before it was recorded
    write_manifest(bundle, m)
    model = runtime.load(bundle)
    assert model.vocab_size is None and model.encode_text("a photo").shape == (1, model.embed_dim)
