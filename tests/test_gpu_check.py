"""benchmarks/gpu_check.py: the GPU run's script must bring something back whatever happens (a deadline, a hung
step, a bad wheel, a missing prerequisite), and its commands must run; all checked here, without a GPU."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


G = _module()


def _rows(out: Path) -> dict:
    """summary.md's step table: {step: result}."""
    lines = (out / "summary.md").read_text().splitlines()
    start = lines.index("| step | result | time |") + 2
    table = lines[start:lines.index("", start) if "" in lines[start:] else len(lines)]
    return {ln.split(" | ")[0][2:]: ln.split(" | ")[1] for ln in table}


def test_without_a_gpu_it_says_so_and_still_reports_the_preflight(tmp_path):
    import torch

    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")   # no GPU, even on a GPU machine
    p = subprocess.run(["bash", str(script), str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert "gpu_check: done after" in p.stdout
    out = tmp_path / "out"
    assert sorted(f.name for f in out.iterdir()) == ["gpu_check.log", "preflight.json", "summary.md"]
    summary = (out / "summary.md").read_text()
    assert "**No CUDA GPU** (torch.cuda.is_available() is False): nothing was measured." in summary
    pf = json.loads((out / "preflight.json").read_text())
    assert pf["cuda_available"] is False and pf["imports"]["torch"] == torch.__version__
    assert pf["imports"]["mobileclip.distill"] == "ok" and "tensorrt" in pf["imports"]
    assert pf["dev_shm_mb"]["total"] > 0 and "cc" in pf and pf["ort_cuda"] is False and pf["seconds"] < 60


def test_a_step_past_the_deadline_is_killed_with_its_children_and_the_rest_are_skipped(tmp_path):
    """One deadline for all steps: a hung step (which started a child of its own) is killed, child and all, when
    the deadline comes; the next step is skipped, naming the deadline; summary.md holds both."""
    check = G.GpuCheck(tmp_path / "out", deadline_s=G.RESERVE_S + 8, work=tmp_path / "w")
    pid_file = tmp_path / "child.pid"
    hang = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(120)']); open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(120)")
    t = time.monotonic()
    assert not check.run("hangs", [sys.executable, "-c", hang], limit=300)
    assert time.monotonic() - t < 20
    child = int(pid_file.read_text())
    for _ in range(50):   # the group got SIGTERM then SIGKILL; the child may take a moment to be reaped
        if not Path(f"/proc/{child}").exists() or "zombie" in _state(child):
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "zombie" in _state(child), "the step's own child outlived it"
    assert not check.run("next", [sys.executable, "-c", "pass"], limit=60)
    rows = _rows(tmp_path / "out")
    assert rows["hangs"].startswith("timed out after ") and rows["hangs"].endswith("(the global deadline)")
    assert rows["next"].startswith("skipped: the global deadline")
    assert check.failed


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_summary_is_written_after_each_step_and_missing_prerequisites_skip(tmp_path):
    out = tmp_path / "out"
    check = G.GpuCheck(out, deadline_s=120, work=tmp_path / "w")
    assert check.run("first", [sys.executable, "-c", "print('hello')"], limit=30)
    # the second step sees the first one's row in summary.md while it runs
    probe = f"import sys; sys.exit(0 if '| first | ok |' in open({str(out / 'summary.md')!r}).read() else 3)"
    assert check.run("second", [sys.executable, "-c", probe], limit=30)
    assert not check.run("third", [sys.executable, "-c", "import sys; sys.exit(4)"], limit=30)
    assert not check.run("trt", [sys.executable, "-c", "pass"], limit=30, needs={"tensorrt": False, "onnx": True})
    rows = _rows(out)
    assert rows == {"first": "ok", "second": "ok", "third": "failed (exit 4; see gpu_check.log)",
                    "trt": "skipped: tensorrt is missing (see preflight.json)"}
    assert "hello" in (out / "gpu_check.log").read_text()


def _wheel(path: Path, name: str) -> Path:
    """A minimal, valid pure-Python wheel holding module ``name``."""
    whl = path / f"{name}-1.0-py3-none-any.whl"
    di = f"{name}-1.0.dist-info"
    files = {f"{name}.py": "VALUE = 42\n",
             f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(whl, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{di}/RECORD", "".join(f"{k},,\n" for k in files) + f"{di}/RECORD,,\n")
    return whl


def test_wheels_are_installed_one_at_a_time_so_a_bad_one_costs_only_itself(tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels, "gpucheck_good")
    (wheels / "gpucheck_bad-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    other = "cp27" if sys.version_info[:2] != (2, 7) else "cp39"   # a compiled wheel for another Python: left out
    (wheels / f"gpucheck_other-1.0-{other}-{other}-manylinux2014_x86_64.whl").write_bytes(b"never read")
    check = G.GpuCheck(tmp_path / "out", deadline_s=300, work=tmp_path / "w")
    site = tmp_path / "site"
    res = G.install_wheels(check, wheels, str(site))
    assert res["gpucheck_good-1.0-py3-none-any.whl"] == "ok"
    assert res["gpucheck_bad-1.0-py3-none-any.whl"].startswith("failed: ") and len(res) == 2
    assert check.env["PYTHONPATH"].split(os.pathsep)[0] == str(site)
    p = subprocess.run([sys.executable, "-c", "import gpucheck_good; print(gpucheck_good.VALUE)"], env=check.env,
                       capture_output=True, text=True)
    assert p.stdout.strip() == "42"
    assert any(n.startswith("Wheels: 1 of 2 installed; gpucheck_bad") for n in check.notes)


def test_loss_report_reads_the_fall_and_the_data_wait_share(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"steps": 40}))

    def write(losses):
        rows = [{"step": 5 * (i + 1), "loss": v, "samples_per_s": 100.0, "data_wait_s": 1.0, "bad_steps": 0}
                for i, v in enumerate(losses)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write([5.0, 4.9, 4.8, 4.7, 4.6, 3.0, 2.9, 2.8, 2.7, 2.6])
    assert G.loss_report(str(run), 20, str(tmp_path / "r.json")) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["loss_first5"] == pytest.approx(4.8) and rep["loss_last5"] == pytest.approx(2.8)
    # each later interval: 5 steps x 20 samples at 100 samples/s = 1 s, of which 1 s waiting: all of it
    assert rep["data_wait_share"] == pytest.approx(1.0) and rep["steps"] == 50
    write([3.0] * 5 + [3.1] * 5)
    assert G.loss_report(str(run), 20, str(tmp_path / "r.json")) == 1


@pytest.mark.slow
def test_the_gpu_runs_commands_all_run_in_a_cpu_rehearsal(tmp_path):
    """GPU_CHECK_REHEARSAL=1 runs every step's command on the CPU at toy sizes: a flag a script no longer takes
    fails here rather than in a rare GPU session (TensorRT's steps skip where it is not installed)."""
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(SCRIPT), str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, GPU_CHECK_REHEARSAL="1", PYTHON=sys.executable))
    rows = _rows(out)
    bad = {k: v for k, v in rows.items() if v != "ok" and not (k == "export tensorrt fp16" and v.startswith("skipped"))}
    assert not bad and p.returncode == 0, (bad, p.stdout[-3000:])
    assert len(rows) == 11 and len(list(out.iterdir())) <= 8
    assert {f.name for f in out.iterdir()} >= {"summary.md", "gpu_check.log", "preflight.json", "pytest.xml",
                                               "distill_throughput.json", "distill_200_steps.json",
                                               "data_throughput_gpu.json", "bench.json"}
