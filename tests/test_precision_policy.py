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


def _options(quant, variant=None, **kw):
    assert variant in (None, "exactgelu"), variant   # the variants precision_table.sh exports
    return ExportOptions(precision="int8", quant=quant, calib="calib/" if quant == "static" else None,
                         exact_gelu=variant == "exactgelu", **kw)


def test_the_summary_is_what_the_committed_tables_say():
    from mobileclip.benchmarks.precision_summary import summarize

    assert summarize(ROOT) == SUMMARY


def test_the_summary_covers_every_int8_method_of_the_cpu_backends_on_three_trained_models():
    int8 = {(v["format"], v["quant"]) for v in SUMMARY["recipes"].values() if v["precision"] == "int8"
            and not v["variant"]}
    assert int8 == {(f, q) for f in ("onnx", "ort", "litert", "executorch") for q in ("static", "dynamic")}
    assert len(SUMMARY["models"]) >= 3 and any(m.startswith("real") for m in SUMMARY["models"])


@pytest.mark.parametrize("name", sorted(k for k, v in SUMMARY["recipes"].items() if v["precision"] == "int8"))
def test_a_recipe_is_refused_by_default_exactly_when_it_fails_the_rule(name):
    v = SUMMARY["recipes"][name]
    backend = backends.get(v["format"])
    why = backend.int8_refusal(_options(v["quant"], v["variant"]))
    assert (why is None) == v["passes"], (name, why, v["misses"])
    assert backend.int8_refusal(_options(v["quant"], v["variant"], accept_int8_loss=True)) is None
    if why and not v["variant"]:   # the reason quotes the committed agreements, model by model (a variant's
        # refusal is its recipe's, which it quotes)
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


def test_the_rule_on_made_up_tables(tmp_path):
    """Agreement below 98 % or an R@1 loss past 1 point fails; a recipe one model's table lacks has not passed on
    that model; ``+option`` names a variant of a recipe."""
    from mobileclip.benchmarks.precision_summary import summarize

    def row(bundle, agreement, r1=0.0):
        return {"bundle": f"runs/{bundle}", "eval_top1_agreement": agreement, "eval_images": 720,
                "eval_delta_zeroshot_top1": 0.0, "eval_delta_text_to_image_R@1": r1, "eval_text_to_image_lost": 1,
                "eval_text_to_image_gained": 0, "eval_delta_image_to_text_R@1": 0.0, "eval_image_to_text_lost": 0,
                "eval_image_to_text_gained": 0}

    tables = {"a": [row("onnx-int8-dynamic", 0.99), row("onnx-int8-static", 0.985, r1=-1.5),
                    row("onnx-int8-static+exactgelu", 0.99)],
              "b": [row("onnx-int8-dynamic", 0.981), row("onnx-int8-static", 0.97)]}
    for model, rows in tables.items():
        (tmp_path / model).mkdir()
        (tmp_path / model / "bench.json").write_text(json.dumps({"rows": rows}))
    v = summarize(tmp_path)["recipes"]
    assert v["onnx-int8-dynamic"]["passes"] and v["onnx-int8-dynamic"]["variant"] is None
    assert v["onnx-int8-static"]["misses"] == ["a: text to image R@1 -1.5 points", "b: agreement 97.0 % < 98 %"]
    gelu = v["onnx-int8-static+exactgelu"]
    assert (gelu["quant"], gelu["variant"], gelu["misses"]) == ("static", "exactgelu", ["b: not measured"])


def test_precision_table_refuses_an_unknown_job_before_writing(tmp_path):
    """``ONLY=`` with a name that is not a job of benchmarks/precision_table.sh: exit 2, naming it, and nothing
    written (its OUT folder holds earlier tables)."""
    import subprocess

    script = ROOT.parents[1] / "precision_table.sh"
    out = tmp_path / "out"
    out.mkdir()
    (out / "exports.txt").write_text("an earlier run\n")
    p = subprocess.run(["bash", str(script), "student", str(out), str(tmp_path / "work")], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "ONLY": "onnx-int8-static onnx-int8-statik",
                                       "MOBILECLIP": "false"})
    assert p.returncode == 2 and "ONLY names onnx-int8-statik, which is not a job" in p.stderr
    assert (out / "exports.txt").read_text() == "an earlier run\n" and not (tmp_path / "work").exists()
