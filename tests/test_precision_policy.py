"""The int8 recipes each backend refuses by default are exactly those that fail issue 23's rule on the committed
precision tables (benchmarks/results/precision/summary.json), and the summary is what its tables say."""
import json
from pathlib import Path

import pytest

from mobileclip import backends
from mobileclip.backends import ExportOptions
from mobileclip.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "precision"
SUMMARY = json.loads((ROOT / "summary.json").read_text())


def _options(quant, **kw):
    return ExportOptions(precision="int8", quant=quant, calib="calib/" if quant == "static" else None, **kw)


def test_the_summary_is_what_the_committed_tables_say():
    from mobileclip.benchmarks.precision_summary import summarize

    assert summarize(ROOT) == SUMMARY


def test_the_summary_covers_every_int8_method_of_the_cpu_backends_on_three_trained_models():
    int8 = {(v["format"], v["quant"]) for v in SUMMARY["recipes"].values() if v["precision"] == "int8"}
    assert int8 == {(f, q) for f in ("onnx", "ort", "litert", "executorch") for q in ("static", "dynamic")}
    assert len(SUMMARY["models"]) >= 3 and any(m.startswith("real") for m in SUMMARY["models"])


@pytest.mark.parametrize("name", sorted(k for k, v in SUMMARY["recipes"].items() if v["precision"] == "int8"))
def test_a_recipe_is_refused_by_default_exactly_when_it_fails_the_rule(name):
    v = SUMMARY["recipes"][name]
    backend = backends.get(v["format"])
    why = backend.int8_refusal(_options(v["quant"]))
    assert (why is None) == v["passes"], (name, why, v["misses"])
    assert backend.int8_refusal(_options(v["quant"], accept_int8_loss=True)) is None
    if why:   # the reason quotes the committed agreements, model by model
        rows = {r["model"]: r for r in SUMMARY["rows"] if r["recipe"] == name}
        quoted = [f"{100 * rows[m]['agreement']['mean']:.1f} %" for m in ("demo-student", "demo-teacher", "real-student")]
        assert all(q in why for q in quoted), (why, quoted)


def test_auto_picks_static_with_calibration_images_and_dynamic_without():
    onnx = backends.get("onnx")
    assert onnx.int8_method(_options("auto")) == "dynamic"
    assert onnx.int8_method(ExportOptions(precision="int8", calib="calib/")) == "static"
    assert backends.get("tensorrt").int8_method(_options("auto")) == "static"   # QDQ only


def test_a_refused_recipe_is_a_clear_error_before_any_work(tmp_path):
    from mobileclip.export import export

    refused = [v for v in SUMMARY["recipes"].values() if v["precision"] == "int8" and not v["passes"]]
    if not refused:
        pytest.skip("no int8 recipe fails the rule on the committed tables")
    v = refused[0]
    with pytest.raises(ConfigError, match="refused by default") as e:
        export("mobileclip-tiny", tmp_path / "b", fmt=v["format"], precision="int8", quant=v["quant"],
               calib=str(tmp_path) if v["quant"] == "static" else None)
    assert "--accept-int8-loss" in str(e.value) and not (tmp_path / "b").exists()


def test_tensorrt_int8_is_refused_until_measured(tmp_path):
    """No GPU measured TensorRT's int8 recipe on trained models: refused before any work (TensorRT or not), with
    fp16 offered (its int8 has no dynamic method)."""
    from mobileclip.export import export

    with pytest.raises(ConfigError, match="TensorRT static int8 is refused by default: it has not been measured") as e:
        export("mobileclip-tiny", tmp_path / "t", fmt="tensorrt", precision="int8", calib=str(tmp_path))
    assert "or use --precision fp16" in str(e.value) and not (tmp_path / "t").exists()
