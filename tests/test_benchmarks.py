"""The benchmark scripts run and write well-formed results (numbers, not timings, are checked)."""
import json
import sys

import pytest


def test_synthetic_throughput_writes_results(tmp_path, monkeypatch):
    from mobileclip.benchmarks import synthetic_throughput

    monkeypatch.setattr(sys, "argv", ["x", "--seconds", "0.2", "--out", str(tmp_path)])
    synthetic_throughput.main()
    res = json.loads((tmp_path / "synthetic_throughput.json").read_text())
    assert [r["image_size"] for r in res["rows"]] == [64, 128, 256]
    for r in res["rows"]:
        assert r["images"] > 0 and r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["images_per_s"] == pytest.approx(r["images"] / (r["images"] / r["images_per_s"]))
    assert res["environment"]["cores"] >= 1


def test_distill_throughput_writes_results(tmp_path, monkeypatch):
    from mobileclip.benchmarks import distill_throughput

    monkeypatch.setattr(sys, "argv", ["x", "--student", "mobileclip-tiny", "--image-size", "64", "--batch", "4",
                                      "--steps", "1", "--workers", "0", "--teachers", "clip-vit-tiny",
                                      "--out", str(tmp_path)])
    distill_throughput.main()
    res = json.loads((tmp_path / "distill_throughput.json").read_text())
    modes = [r["mode"] for r in res["rows"]]
    assert modes == ["student only", "cache: clip-vit-tiny", "online: clip-vit-tiny"]
    rows = {r["mode"]: r for r in res["rows"]}
    assert rows["student only"]["step_vs_student_only"] == 1.0
    assert rows["student only"]["student_train_gflops_per_sample"] > 0
    import torch

    if not torch.cuda.is_available():
        assert rows["student only"]["mfu"] is None  # no peak known for a CPU
    assert rows["student only"]["teacher"] < rows["online: clip-vit-tiny"]["teacher"]  # only online runs one
    for r in res["rows"]:
        assert r["total"] == pytest.approx(r["data"] + r["teacher"] + r["student"], rel=1e-6)
        assert r["samples_per_s"] == pytest.approx(4 / r["total"])
