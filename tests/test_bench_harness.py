"""`mobileclip bench` (mobileclip.benchmarks.harness): statistics on known inputs, an end-to-end run
on a tiny bundle and PyTorch model, skipped cases with reasons, and clear errors for bad inputs."""
import argparse
import json
import math
import shutil
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobileclip.app import bench as B
from mobileclip.benchmarks import harness as H
from mobileclip.errors import ConfigError

QUICK = ["--batch", "1,2", "--min-runs", "3", "--min-seconds", "0.02", "--warmup", "1", "--threads", "1",
         "--peak-seconds", "0.1"]


# ----------------------------------------------------------------------------- statistics

def test_percentile_known_values():
    xs = [7, 1, 10, 3, 2, 9, 4, 8, 6, 5]  # 1..10, unsorted
    assert H.percentile(xs, 50) == pytest.approx(5.5)
    assert H.percentile(xs, 90) == pytest.approx(9.1)
    assert H.percentile(xs, 99) == pytest.approx(9.91)
    assert H.percentile(xs, 0) == 1.0 and H.percentile(xs, 100) == 10.0
    assert H.percentile([3.5], 99) == 3.5
    rng = np.random.default_rng(0)
    ys = rng.exponential(size=101).tolist()
    for q in (50, 90, 99, 12.5):
        assert H.percentile(ys, q) == pytest.approx(float(np.percentile(ys, q)), rel=1e-12)
    with pytest.raises(ConfigError):
        H.percentile([], 50)
    with pytest.raises(ConfigError):
        H.percentile([1.0], 101)


def test_latency_stats_throughput_limit_gap():
    s = H.latency_stats([4.0, 1.0, 3.0, 2.0])
    assert s == {"n_runs": 4, "timed_s": pytest.approx(0.01), "mean_ms": 2.5, "min_ms": 1.0,
                 "p50_ms": pytest.approx(2.5), "p90_ms": pytest.approx(3.7), "p99_ms": pytest.approx(3.97)}
    assert H.throughput(8, 20.0) == pytest.approx(400.0)        # 8 samples per 20 ms
    assert H.throughput(1, 0.5) == pytest.approx(2000.0)
    assert H.matmul_gflops(1000, 0.5) == pytest.approx(4.0)     # 2e9 FLOPs in 0.5 s
    assert H.limit_ms(4.0, 8, 1000.0) == pytest.approx(32.0)    # 32 GFLOP at 1 TFLOP/s
    assert H.gap(64.0, 32.0) == pytest.approx(2.0)


def test_parsers_accept_good_and_reject_bad_lists():
    assert H.parse_int_list("8, 1,32,8") == [1, 8, 32]
    for bad in ("1,x", "0", "", "1,-2", "1.5"):
        with pytest.raises(ConfigError, match="--batch"):
            H.parse_int_list(bad)
    with pytest.raises(ConfigError, match="'1,x'"):
        H.parse_int_list("1,x")
    assert H.parse_choices("text,image,text", H.TOWERS, "--towers") == ["text", "image"]
    with pytest.raises(ConfigError, match="'tflite'.*choose from"):
        H.parse_choices("torch,tflite", H.RUNTIMES, "--runtime")
    assert H.parse_accuracy(["a=0.5", "hf:x=y/int8=0.25"]) == {"a": 0.5, "hf:x=y/int8": 0.25}
    for bad in ("a", "a=1.5", "=0.3", "a=high"):
        with pytest.raises(ConfigError, match="LABEL=VALUE"):
            H.parse_accuracy([bad])


def test_tower_facts_on_a_model_with_known_counts():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)   # 108 params
            self.lin = nn.Linear(5, 7)                    # 42 params
            self.unused = nn.Linear(100, 100)             # touched by neither tower

        def encode_image(self, x):
            return self.conv(x).mean((2, 3))

        def encode_text(self, t):
            return self.lin(t.float())

    facts = H.tower_facts(M(), 8, lambda texts: torch.ones(len(texts), 5, dtype=torch.long))
    # conv: 4 x 6 x 6 outputs, 27 multiply-adds each; linear: 5 x 7 multiply-adds; 2 FLOPs per multiply-add
    assert facts["image"] == {"params": 108, "gflops": pytest.approx(2 * 144 * 27 / 1e9), "conv_fraction": 1.0}
    assert facts["text"] == {"params": 42, "gflops": pytest.approx(2 * 35 / 1e9), "conv_fraction": 0.0}


def test_measure_peak_is_positive_and_best_of_repeats():
    p = H.measure_peak("cpu", threads=1, seconds=0.05, n=256)
    assert p["n"] == 256 and p["repeats"] >= 3
    assert p["gflops"] >= p["median_gflops"] > 0


def test_measure_peak_with_tf32_set_the_new_way(monkeypatch):
    """PyTorch >= 2.9: once TF32 is set with ``fp32_precision``, reading ``allow_tf32`` raises ("mix of the
    legacy and new APIs"). The peak turns TF32 off and restores the setting through the API in use."""
    from mobileclip.benchmarks.stats import ieee_fp32_matmul

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no torch.backends.cuda.matmul.fp32_precision")
    seen = []
    real_mm = torch.mm

    def mm(a, b):
        seen.append(matmul.fp32_precision)
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", mm)
    before = matmul.fp32_precision   # (monkeypatch cannot restore this attribute: torch serves it by __getattr__)
    matmul.fp32_precision = "tf32"
    try:
        assert H.measure_peak("cpu", threads=1, seconds=0.01, n=64)["gflops"] > 0
        assert set(seen) == {"ieee"} and matmul.fp32_precision == "tf32"
        with pytest.raises(ZeroDivisionError), ieee_fp32_matmul():   # restored after an error too
            1 / 0
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


def test_measure_peak_tf32_on_torch_without_the_new_api(monkeypatch):
    """Older torch: the ``allow_tf32`` flag is turned off for the peak and put back."""
    from mobileclip.benchmarks.stats import ieee_fp32_matmul

    old = types.SimpleNamespace(allow_tf32=True)
    monkeypatch.setattr(torch.backends.cuda, "matmul", old)
    with ieee_fp32_matmul():
        assert old.allow_tf32 is False
    assert old.allow_tf32 is True


def test_torch_fp32_cases_on_cuda_turn_off_tf32_convolutions_too(tf32_everywhere):
    """cuDNN runs fp32 convolutions in TF32 by default: the torch runtime's fp32 rows on CUDA run inside
    ieee_fp32(), which sets convolutions and matmuls to IEEE fp32 and restores both after."""
    from mobileclip.benchmarks.stats import ieee_fp32

    conv, matmul = tf32_everywhere
    with ieee_fp32():
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    # What TorchRuntime's fp32 case on a CUDA device runs under: the model's encoder records both settings
    # when it is called (the run is driven without a GPU: the inputs' .to() is a no-op stand-in).
    from mobileclip.benchmarks.runtimes import TorchRuntime

    seen = []

    class Tokens:
        def to(self, device):
            return self

    def encode_text(tokens):
        seen.append((conv.fp32_precision, matmul.fp32_precision))

    src = types.SimpleNamespace(tokenizer=lambda prompts: Tokens(),
                                model=types.SimpleNamespace(encode_text=encode_text))
    run = TorchRuntime(src, "cuda", precision="fp32").prepare("text", 2)
    run()
    assert seen == [("ieee", "ieee")]
    assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")   # put back after the call


def test_memory_probe_reads_and_resets_the_high_water_mark():
    probe = H.MemoryProbe()
    assert probe.peak_mb() >= probe.rss_mb() > 0
    if probe.mode != "per-case":
        pytest.skip("this kernel does not let a process reset its RSS high-water mark")
    import mmap

    # 300 MiB of fresh pages, touched, then unmapped: an allocation from the heap could reuse pages that
    # are already resident (after other tests freed memory) and leave RSS unchanged.
    big = mmap.mmap(-1, 300 * 2**20)
    np.frombuffer(big, dtype=np.uint8)[::4096] = 1
    peak_with = probe.peak_mb()
    big.close()
    probe.reset()
    assert probe.peak_mb() < peak_with - 200


def test_model_label_and_source_accuracy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "run" / "student"
    ckpt.mkdir(parents=True)
    assert H.model_label(str(ckpt)) == "run/student"
    assert H.model_label("hf:" + str(ckpt)) == "hf:run/student"
    assert H.model_label("open_clip:ViT-B-32") == "open_clip:ViT-B-32"
    assert H.source_accuracy(str(ckpt)) is None
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"eval": {"zeroshot_top1": 0.3125}}))
    assert H.source_accuracy(str(ckpt)) == (0.3125, "run/summary.json")
    assert H.source_accuracy("mobileclip-s0") is None


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("argv, message", [
    ([], "nothing to benchmark"),
    (["does/not/exist"], "does not exist"),
    (["--model", "mobileclip-tiny", "--batch", "1,x"], "'x' is not a whole number"),
    (["--model", "mobileclip-tiny", "--runtime", "torch,tvm"], "'tvm' not known"),
    (["--model", "mobileclip-tiny", "--towers", "audio"], "'audio' not known"),
    (["--model", "mobileclip-tiny", "--export", "int4"], "'int4' not known"),
    (["--model", "mobileclip-tiny", "--accuracy", "oops"], "LABEL=VALUE"),
    (["--model", "mobileclip-tiny", "--min-runs", "0"], "--min-runs >= 1"),
    (["--export", "fp32"], "nothing to benchmark"),
    (["--model", "mobileclip-s9"], "unknown model 'mobileclip-s9'"),
    (["--model", "open_clip:ViT-Q-99"], "no architecture 'ViT-Q-99'"),
    (["--model", "mobileclip-tiny", "--eval", "no/such/folder"], "--eval 'no/such/folder' is not a folder"),
])
def test_bad_inputs_fail_with_a_clear_message(argv, message, capsys, tmp_path):
    assert B.main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_without_model_and_missing_bundle_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="give at least one --model"):
        H.BenchConfig(bundles=[str(tmp_path)], export=["fp32"]).check()
    with pytest.raises(ConfigError, match="bundle directory .*nope.* does not exist"):
        H.BenchConfig(bundles=[str(tmp_path / "nope")]).check()


def test_add_commands_wires_the_bench_subcommand():
    p = argparse.ArgumentParser(prog="mobileclip")
    sub = p.add_subparsers(dest="command", required=True)
    B.add_commands(sub)
    args = p.parse_args(["bench", "b1", "b2", "--model", "m", "--model", "open_clip:ViT-B-32", "--batch", "1,8"])
    assert args.func is B.cmd_bench and args.bundles == ["b1", "b2"]
    cfg = B.config_from_args(args)
    assert cfg.models == ["m", "open_clip:ViT-B-32"] and cfg.batches == [1, 8]
    assert cfg.command == "mobileclip bench b1 b2 --model m --model open_clip:ViT-B-32"  # 1,8 is the default
    bad = p.parse_args(["bench", "--model", "m", "--batch", "1,x"])
    with pytest.raises(ConfigError, match="--batch"):
        bad.func(bad)


# ----------------------------------------------------------------------------- end to end

def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def e2e(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-run")
    out = root / "out"
    code = B.main([str(tiny_bundle), "--model", "mobileclip-tiny", "--export", "int8", "--export-dir",
                   str(root / "exports"), "--accuracy", "mobileclip-tiny=0.27", "--accuracy",
                   "mobileclip-tiny/int8=0.25", "--out", str(out)] + QUICK)
    return code, out, json.loads((out / "bench.json").read_text()), root


def test_bench_end_to_end_rows(e2e, tiny_bundle):
    code, out, res, root = e2e
    assert code == 0
    rows = res["rows"]
    assert all(set(r) == set(H.ROW_KEYS) for r in rows)
    got = sorted((r["runtime"], r["precision"], r["tower"], r["batch"]) for r in rows)
    want = sorted((rt, p, t, b) for rt, p in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))
                  for t in ("image", "text") for b in (1, 2))
    assert got == want
    peak = res["peak"]["fp32"]["gflops"]
    assert peak > 0
    for r in rows:
        assert r["status"] == "ok", r
        assert r["model"] == "mobileclip-tiny" and r["threads"] == 1 and r["device"] == "cpu"
        assert r["n_runs"] >= 3 and r["timed_s"] >= 0.02
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_sps"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"])
        if r["runtime"] == "onnxruntime":   # the bundle's own parity: its cosine to PyTorch, beside its latency
            report = json.loads((Path(r["bundle"].split(" (")[0]) / "parity.json").read_text())
            assert r["min_cosine"] == min(x["min_cosine"] for x in report[r["tower"]]) and 0.9 < r["min_cosine"] < 1.0001
        else:
            assert r["min_cosine"] is None
        assert r["gflops_per_sample"] > 0 and r["params"] > 0
        assert r["limit_ms"] == pytest.approx(r["gflops_per_sample"] * r["batch"] / peak * 1000)
        assert r["gap"] == pytest.approx(r["p50_ms"] / r["limit_ms"])
        assert r["peak_rss_mb"] > 100 and r["run_rss_mb"] >= 0
        assert r["accuracy"] == (0.25 if r["precision"] == "int8" else 0.27)
        if r["runtime"] == "torch":
            assert r["artifact_mb"] is None and r["bundle"] is None and r["load_rss_mb"] is not None
            assert r["providers"] is None and r["nodes_by_provider"] is None
        else:
            assert r["artifact_mb"] > 0.1 and r["bundle_mb"] > r["artifact_mb"]
            # where the session really ran its nodes, from ONNX Runtime's profiler: all on the CPU here
            assert r["providers"] == ["CPUExecutionProvider"]
            assert list(r["nodes_by_provider"]) == ["CPUExecutionProvider"] and r["nodes_by_provider"][
                "CPUExecutionProvider"] >= 10
    # params are what each tower's forward touches: the whole reparameterized tower of our CLIP
    from mobileclip.export.source import load_source
    from mobileclip.model import count_params

    counts = count_params(load_source({"model": "mobileclip-tiny", "seed": 0}).model)
    for r in rows:
        assert r["params"] == counts[r["tower"]]
    fp32 = [r for r in rows if r["runtime"] == "onnxruntime" and r["precision"] == "fp32"]
    assert {r["bundle"] for r in fp32} == {str(tiny_bundle)}
    assert fp32[0]["artifact_mb"] == pytest.approx((tiny_bundle / f"{fp32[0]['tower']}.onnx").stat().st_size / 1e6)
    # --export int8: tiny's image tower is convolutional -> static QDQ; text -> dynamic
    int8 = {r["tower"]: r for r in rows if r["precision"] == "int8"}
    assert int8["image"]["quant"] == "static" and int8["text"]["quant"] == "dynamic"
    assert (root / "exports" / "mobileclip-tiny-int8" / "manifest.json").is_file()
    env = res["environment"]
    assert env["threads"] == 1 and env["cores"] >= 1 and env["torch"] == torch.__version__ and env["onnxruntime"]
    assert "--export int8" in res["command"] and "--batch 1,2" in res["command"]


def test_bench_end_to_end_markdown_and_plots(e2e):
    code, out, res, _ = e2e
    md = (out / "bench.md").read_text()
    assert res["command"] in md and res["environment"]["cpu"] in md
    table = [ln for ln in md.splitlines() if ln.startswith("| mobileclip-tiny | ")]
    assert len(table) == 12 + 2  # 12 timed rows + the accuracy table's fp32 and int8 lines
    r = next(r for r in res["rows"] if r["runtime"] == "onnxruntime" and r["precision"] == "int8"
             and r["tower"] == "image" and r["batch"] == 2)
    assert (f"| mobileclip-tiny | onnxruntime | int8 (static) | image | 2 | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} |") in md
    assert "Where ONNX Runtime ran each tower's nodes" in md and "| CPUExecutionProvider | CPUExecutionProvider: " in md
    for name, min_w in (("latency_vs_batch.png", 1000), ("accuracy_vs_latency.png", 600)):
        path = out / name
        assert res["plots"][name.split("_vs")[0] + "_plot"] == str(path)
        w, h = _png_size(path)
        assert w >= min_w and h >= 400
        assert path.stat().st_size > 20_000  # lines, labels and legend drawn, not an empty canvas


def test_export_dir_bundles_are_reused(e2e, tmp_path):
    """A second run finds the bundle --export wrote and times it again without exporting."""
    _, _, _, root = e2e
    res = H.run_bench(B.config_from_args(_args(["--model", "mobileclip-tiny", "--export", "int8", "--export-dir",
                                                str(root / "exports"), "--runtime", "onnxruntime", "--towers",
                                                "text", "--out", str(tmp_path)] + QUICK)))
    assert [(r["runtime"], r["precision"], r["batch"], r["status"]) for r in res["rows"]] == [
        ("onnxruntime", "int8", 1, "ok"), ("onnxruntime", "int8", 2, "ok")]
    assert res["plots"]["accuracy_plot"].startswith("no accuracy known")
    assert not (tmp_path / "accuracy_vs_latency.png").exists()


def _args(argv):
    p = argparse.ArgumentParser()
    B.add_arguments(p)
    return p.parse_args(argv)


def _fake_bundle(src, dst, **edit):
    """A copy of ``src`` whose manifest claims another backend or a fixed batch."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for tower in ("image", "text"):
        art = m["artifacts"][tower]
        if "backend" in edit:
            art["backend"] = edit["backend"]
        if "fixed" in edit:
            art["inputs"][0]["shape"][0] = edit["fixed"]
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_cases_that_cannot_run_are_skipped_with_a_reason(tiny_bundle, tmp_path):
    trt = _fake_bundle(tiny_bundle, tmp_path / "trt", backend="tensorrt")
    cml = _fake_bundle(tiny_bundle, tmp_path / "cml", backend="coreml")
    fixed = _fake_bundle(tiny_bundle, tmp_path / "fixed", fixed=1)
    code = B.main([str(trt), str(cml), str(fixed), "--towers", "image", "--out", str(tmp_path / "o")] + QUICK)
    assert code == 0  # skipped is not failed
    rows = json.loads((tmp_path / "o" / "bench.json").read_text())["rows"]
    by = {(r["runtime"], r["bundle"], r["batch"]): r for r in rows}
    for b in (1, 2):
        assert by[("tensorrt", str(trt), b)]["status"] == "skipped"
        assert "TensorRT" in by[("tensorrt", str(trt), b)]["reason"]
        if sys.platform != "darwin":
            assert by[("coreml", str(cml), b)]["status"] == "skipped"
            assert "macOS" in by[("coreml", str(cml), b)]["reason"]
    assert by[("onnxruntime", str(fixed), 1)]["status"] == "ok"
    assert by[("onnxruntime", str(fixed), 2)]["status"] == "skipped"
    assert "fixed batch of 1" in by[("onnxruntime", str(fixed), 2)]["reason"]
    md = (tmp_path / "o" / "bench.md").read_text()
    assert "Not timed:" in md and "fixed batch of 1" in md


def test_runtime_filter_and_compile_failure_recorded_as_skipped(tmp_path, monkeypatch):
    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("inductor: no C++ compiler found\nmore details")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    res = H.run_bench(B.config_from_args(_args(["--model", "mobileclip-tiny", "--runtime", "torch", "--towers", "text",
                                                "--compile", "--out", str(tmp_path)] + QUICK)))
    status = {(r["runtime"], r["batch"]): (r["status"], r["reason"]) for r in res["rows"]}
    assert status[("torch", 1)] == ("ok", None) and status[("torch", 2)] == ("ok", None)
    for b in (1, 2):
        assert status[("torch.compile", b)] == ("skipped",
                                                "torch.compile failed: RuntimeError: inductor: no C++ compiler found")
    compiled = [r for r in res["rows"] if r["runtime"] == "torch.compile"]
    assert all(r["compile"] and r["p50_ms"] is None and r["gap"] is None for r in compiled)
    assert all(not math.isnan(r["p50_ms"]) for r in res["rows"] if r["status"] == "ok")


def test_a_failed_export_precision_loses_neither_the_torch_rows_nor_the_other_precisions(tmp_path, monkeypatch, capsys):
    """--export fp32,fp16 where the fp16 export raises: the torch and fp32 rows are timed, fp16's rows are failed
    with the export's reason, and the exit status is 2 with one line naming it."""
    import mobileclip.export as export_mod

    real = export_mod.export

    def export(name, d, precision="fp32", **kw):
        if precision == "fp16":
            raise RuntimeError("onnxscript: fp16 conversion crashed")
        return real(name, d, precision=precision, **kw)

    monkeypatch.setattr(export_mod, "export", export)
    code = B.main(["--model", "mobileclip-tiny", "--export", "fp32,fp16", "--export-dir", str(tmp_path / "x"),
                   "--towers", "text", "--out", str(tmp_path / "o")] + QUICK)
    assert code == 2
    rows = json.loads((tmp_path / "o" / "bench.json").read_text())["rows"]
    status = {(r["runtime"], r["precision"], r["batch"]): (r["status"], r["reason"]) for r in rows}
    assert status[("torch", "fp32", 1)][0] == status[("torch", "fp32", 2)][0] == "ok"
    assert status[("onnxruntime", "fp32", 1)][0] == status[("onnxruntime", "fp32", 2)][0] == "ok"
    for b in (1, 2):
        assert status[("onnxruntime", "fp16", b)] == (
            "failed", "export to ONNX fp16 failed: RuntimeError: onnxscript: fp16 conversion crashed")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of 6 cases failed" in err[0] and "fp16 conversion crashed" in err[0]


def test_a_gpu_row_with_nodes_on_the_cpu_says_so():
    """A CUDA session that ONNX Runtime partly placed on the CPU is timed, and its row names the CPU's share."""
    from mobileclip.benchmarks.cases import _placed
    from mobileclip.benchmarks.runtimes import BundleRuntime

    class Placed(BundleRuntime):
        def __init__(self):
            """No bundle behind it: only placement() is asked."""

        def placement(self, tower):
            return {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                    "nodes": {"CPUExecutionProvider": 3, "CUDAExecutionProvider": 97}}

    row = dict.fromkeys(H.ROW_KEYS)
    row.update(tower="image", status="ok", device="cuda")
    _placed(row, Placed())
    assert row["nodes_by_provider"] == {"CPUExecutionProvider": 3, "CUDAExecutionProvider": 97}
    assert row["reason"].startswith("3 of 100 nodes ran on the CPU") and row["status"] == "ok"
    cpu_row = dict(row, device="cpu", reason=None)
    assert _placed(cpu_row, Placed())["reason"] is None   # on the CPU, the CPU is where they belong


def test_eval_folder_without_classes_is_refused(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"not read")
    assert B.main(["--model", "mobileclip-tiny", "--eval", str(tmp_path / "flat"), "--out", str(tmp_path / "o")]) == 2
    assert "has no class sub-folders" in capsys.readouterr().err


def test_bench_eval_gives_each_artifact_its_accuracy_change(e2e, tiny_bundle, tmp_path):
    """--eval: the fp32 bundle agrees with its source on every image (no change in any metric); an int8 bundle gets
    its own numbers; the bundle side's top-1 equals what the torch-free runtime's classify gives on the same
    images with the same prompts (an independent path through the bundle)."""
    from mobileclip import runtime
    from mobileclip.data import write_synthetic
    from mobileclip.data.datasets import ImageFolderDataset
    from mobileclip.zeroshot import TEMPLATES

    folder = tmp_path / "eval"
    write_synthetic(folder, 24, split="val", seed=3)
    int8 = next(p.parent for p in (e2e[3] / "exports").rglob("manifest.json"))
    out = tmp_path / "out"
    code = B.main([str(tiny_bundle), str(int8), "--model", "mobileclip-tiny", "--eval", str(folder),
                   "--runtime", "torch,onnxruntime", "--out", str(out)] + QUICK + ["--batch", "1"])
    assert code == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    by = {}
    for r in rows:
        by.setdefault((r["runtime"], r["bundle"] and r["bundle"].split(" ")[0]), r)
    src, fp32, q = by[("torch", None)], by[("onnxruntime", str(tiny_bundle))], by[("onnxruntime", str(int8))]
    for r in (src, fp32, q):
        assert r["eval_images"] == 24 and r["eval_captions"] == 24
        assert 0 <= r["eval_zeroshot_top1"] <= 1 and 0 <= r["eval_text_to_image_R@1"] <= 1
    assert src["eval_top1_agreement"] == fp32["eval_top1_agreement"] == 1.0
    assert all(abs(fp32[f"eval_delta_{k}"]) < 1e-9 for k in ("zeroshot_top1", "text_to_image_R@1",
                                                             "image_to_text_R@1"))
    assert 0 <= q["eval_top1_agreement"] <= 1 and q["accuracy"] == q["eval_zeroshot_top1"]
    # the paired counts: none moved for fp32; for int8 they account for the change in R@1 exactly
    assert all(fp32[f"eval_{w}_{c}"] == 0 for w in ("text_to_image", "image_to_text") for c in ("lost", "gained"))
    for way, n in (("text_to_image", q["eval_captions"]), ("image_to_text", q["eval_images"])):
        assert q[f"eval_delta_{way}_R@1"] == pytest.approx(100 * (q[f"eval_{way}_gained"] - q[f"eval_{way}_lost"]) / n)
    # the bundle side, again through the runtime's own classify
    ds = ImageFolderDataset(folder)
    model = runtime.load(int8)
    got = model.classify([p for p, _ in ds.samples], ds.classnames, templates=TEMPLATES, top=1)
    top1 = sum(g[0][0] == ds.classnames[label] for g, (_, label) in zip(got, ds.samples)) / len(ds.samples)
    assert q["eval_zeroshot_top1"] == pytest.approx(top1)
    md = (out / "bench.md").read_text()
    assert "Accuracy on the evaluation folder (24 images, 24 captions)" in md and str(int8) in md
