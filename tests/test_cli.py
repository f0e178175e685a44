"""The command line: models, synth, zeroshot, retrieval, errors with exit code 2."""
import json
import subprocess
import sys

import pytest

import mobileclip
from mobileclip.app.cli import main


def test_models_lists_students_and_teachers(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mobileclip-s0"]["image_size"] == 256
    assert abs(rows["mobileclip-s0"]["image_params"] / 1e6 - 11.4) < 0.2
    assert set(mobileclip.list_models()) <= set(rows)
    assert rows["open_clip:ViT-B-32"]["role"] == "teacher" and rows["open_clip:ViT-B-32"]["image_size"] == 224
    assert abs(rows["open_clip:ViT-B-32"]["params"] / 1e6 - 151.3) < 0.5
    assert main(["models", "--students-only"]) == 0
    out = capsys.readouterr().out
    assert "mobileclip-s2" in out and "35.8M" in out and "open_clip:ViT-L-14 " not in out


def test_shipped_teacher_table_matches_open_clip():
    from mobileclip.catalog import open_clip_param_count, teacher_rows

    rows = {r["name"]: r for r in teacher_rows(compute_missing=False)}
    for arch in ("ViT-B-32", "ViT-L-14", "MobileCLIP-S1"):
        assert rows[f"open_clip:{arch}"]["params"] == open_clip_param_count(arch)["params"]


def test_synth_zeroshot_retrieval_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--n", "40", "--split", "val", "--two-object-prob", "0.3"]) == 0
    assert (data / "captions.csv").is_file()
    out_json = tmp_path / "zs.json"
    assert main(["zeroshot", "--model", "mobileclip-tiny", "--data", str(data), "--json", str(out_json),
                 "--workers", "0", "--batch-size", "16"]) == 0
    res = json.loads(out_json.read_text())
    assert res["n"] == 40 and 0.0 <= res["top1"] <= res["top5"] <= 1.0 and res["model"] == "mobileclip-tiny"
    assert "top-1" in capsys.readouterr().out
    r_json = tmp_path / "r.json"
    assert main(["retrieval", "--model", "mobileclip-tiny", "--data", str(data / "captions.csv"),
                 "--json", str(r_json), "--workers", "0"]) == 0
    r = json.loads(r_json.read_text())
    assert r["images"] == 40 and 0.0 <= r["image_to_text_R@1"] <= r["image_to_text_R@10"] <= 1.0


@pytest.mark.parametrize("argv,message", [
    (["zeroshot", "--model", "mobileclip-s9", "--data", "."], "unknown model 'mobileclip-s9'"),
    (["zeroshot", "--model", "mobileclip-tiny", "--data", "/nonexistent/folder"], "does not exist"),
    (["zeroshot", "--model", "./no/such/checkpoint", "--data", "."], "does not exist"),
])
def test_errors_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobileclip: error:") and message in err


def test_console_script_and_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "mobileclip", "models", "--students-only"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "mobileclip-s0" in r.stdout


def test_cache_teacher_then_distill_cli(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["cache-teacher", "--teacher", "clip-vit-tiny", "--data", "synthetic", "--size", "32", "--augs", "2",
                 "--shard-size", "16", "--out", str(cache), "--workers", "0", "--flip-prob", "0"]) == 0
    assert (cache / "shard_00001" / "img_0.npy").is_file()
    out = tmp_path / "run"
    assert main(["distill", f"out={out}", "student=mobileclip-tiny", f"data.cache={cache}", "steps=2",
                 "batch_size=8", "data.workers=0", "losses.kd=1.0", "progress=false", "eval.size=36"]) == 0
    assert (out / "student" / "model.safetensors").is_file()
    assert main(["distill", "losses.kdd=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
