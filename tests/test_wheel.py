"""What ships installs: the built wheel holds every package and its data, and installed with
the `runtime` extra into a fresh virtual environment without torch it runs `mobileclip
classify`, `index` and `search` on an ONNX bundle.

The wheel is built from a copy of the source tree (so no build/ or egg-info lands in the
repository); installing it fetches onnxruntime, numpy, Pillow, regex and ftfy with pip, and
the install test skips, saying so, when no package index can be reached.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DIST = PYPROJECT["project"]["name"]
PACKAGE_DIR = PYPROJECT["tool"]["setuptools"]["package-dir"]      # import name -> folder
TORCH_STACK = ("torch", "torchvision", "timm", "open_clip", "transformers")
NETWORK_ERRORS = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
                            r"resolution|Name or service not known|Network is unreachable|ConnectTimeout|"
                            r"Read timed out|ProxyError|No route to host")


def _env() -> dict:
    """The environment for commands in the fresh venv: nothing from the repo's own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd, cwd, timeout=300):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=_env(),
                          timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in set(PACKAGE_DIR.values()):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist",
              src], cwd=root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,) = (root / "dist").glob("*.whl")
    return whl


def _packages_in_tree() -> set:
    """Every package the source tree holds, by import name."""
    found = set()
    for name, folder in PACKAGE_DIR.items():
        base = REPO / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if "__pycache__" not in rel.parts:
                found.add(".".join((name,) + rel.parts))
    return found


def test_wheel_holds_every_package_and_its_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    want = _packages_in_tree()
    assert {"mobileclip", "mobileclip.data", "mobileclip.runtime", "mobileclip.export",
            "mobileclip.distill", "mobileclip.benchmarks"} <= want
    missing = sorted(p for p in want if p.replace(".", "/") + "/__init__.py" not in names)
    assert not missing, f"packages left out of the wheel: {missing}"
    for f in ("mobileclip/runtime/core.py", "mobileclip/runtime/commands.py", "mobileclip/export/api.py",
              "mobileclip/distill/samples.py", "mobileclip/open_clip_params.json"):
        assert f in names, f
    # Only the `mobileclip` package: no generic top-level export/, distill/ or tests/ in site-packages.
    assert {n.split("/")[0] for n in names} == {"mobileclip", f"{DIST.replace('-', '_')}-0.1.0.dist-info"}
    assert not any(n.endswith(".pyc") for n in names)

    meta = zipfile.ZipFile(wheel).read(f"{DIST.replace('-', '_')}-0.1.0.dist-info/METADATA").decode()
    assert f"Name: {DIST}" in meta
    base = [ln.split(":", 1)[1].strip() for ln in meta.splitlines()
            if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert base and not [d for d in base if re.split(r"[<>=!~; \[]", d)[0].lower().replace("_", "-")
                         in ("torch", "torchvision", "timm", "open-clip-torch", "transformers")], base
    assert any(ln.startswith("Requires-Dist: torch") and 'extra == "train"' in ln for ln in meta.splitlines())
    entry = zipfile.ZipFile(wheel).read(f"{DIST.replace('-', '_')}-0.1.0.dist-info/entry_points.txt").decode()
    assert "mobileclip = mobileclip.app.cli:main" in entry


@pytest.fixture(scope="module")
def runtime_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) with ``WHEEL[runtime]`` installed; returns its bin/."""
    root = tmp_path_factory.mktemp("venv")
    venv = root / "v"
    r = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    # The repo venv's pip installs into the new one (--python): no pip bootstrap there.
    r = _run([sys.executable, "-m", "pip", "--python", py, "install", "--retries", "1", "--timeout", "60",
              "--no-input", f"{wheel}[runtime]"], cwd=root, timeout=600)
    if r.returncode != 0 and NETWORK_ERRORS.search(r.stdout + r.stderr):
        pytest.skip(f"pip cannot reach a package index to install the runtime's dependencies: "
                    f"{NETWORK_ERRORS.search(r.stdout + r.stderr).group(0)}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return venv / "bin"


def test_runtime_extra_installs_without_torch(runtime_venv, tmp_path):
    code = ("import importlib.util, importlib.resources, json, mobileclip, mobileclip.runtime.core as core\n"
            f"absent = [m for m in {TORCH_STACK!r} if importlib.util.find_spec(m) is None]\n"
            "data = importlib.resources.files('mobileclip').joinpath('open_clip_params.json').read_text()\n"
            "print(json.dumps({'absent': absent, 'core': core.__file__, 'data': len(json.loads(data))}))\n")
    r = _run([runtime_venv / "python", "-c", code], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["absent"] == list(TORCH_STACK), "the runtime extra must not install torch or its stack"
    assert Path(out["core"]).is_relative_to(runtime_venv.parent), out["core"]   # the installed copy
    assert out["data"] > 0
    r = _run([runtime_venv / "python", "-c", "import torch"], cwd=tmp_path)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr


def test_installed_cli_classify_index_search(runtime_venv, request, tmp_path):
    pytest.importorskip("onnx", reason="the onnx extra is not installed (needed to export the test bundle)")
    bundle = request.getfixturevalue("tiny_bundle")   # exported with the repo's own venv (torch)
    cli = runtime_venv / "mobileclip"
    pics = tmp_path / "pics"
    (pics / "sub").mkdir(parents=True)
    Image.fromarray(np.full((64, 64, 3), (220, 20, 20), np.uint8)).save(pics / "red.png")
    Image.fromarray(np.full((60, 80, 3), (20, 20, 220), np.uint8)).save(pics / "blue.jpg")
    Image.fromarray(np.full((50, 50, 3), (20, 200, 20), np.uint8)).save(pics / "sub" / "green.png")
    files = {str(pics / "red.png"), str(pics / "blue.jpg"), str(pics / "sub" / "green.png")}

    r = _run([cli, "--help"], cwd=tmp_path)
    assert r.returncode == 0 and all(c in r.stdout for c in ("classify", "index", "search")), r.stderr

    r = _run([cli, "classify", bundle, pics / "red.png", pics / "blue.jpg", "--labels", "cat, dog,car"],
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == str(pics / "red.png") and lines[4] == str(pics / "blue.jpg") and len(lines) == 8, r.stdout
    for ln in lines[1:4] + lines[5:8]:
        label, pct = ln.split()
        assert label in ("cat", "dog", "car") and pct.endswith("%") and 0 <= float(pct[:-1]) <= 100
    r = _run([cli, "classify", bundle, pics / "red.png", "--labels", "cat,dog,car", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    preds = json.loads(r.stdout)["results"][0]["predictions"]
    assert sorted(p["label"] for p in preds) == ["car", "cat", "dog"]
    assert sum(p["probability"] for p in preds) == pytest.approx(1.0, abs=1e-4)

    idx = tmp_path / "pics.idx"
    r = _run([cli, "index", bundle, pics, "--out", idx, "--no-progress"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith(f"built {idx}: 3 images") and idx.is_file(), r.stdout

    r = _run([cli, "search", idx, "a red square", "-k", "2"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("text query 'a red square': top 2 of 3") and len(lines) == 3, r.stdout
    assert all(ln.split()[-1] in files for ln in lines[1:]), r.stdout
    r = _run([cli, "search", idx, pics / "blue.jpg", "-k", "3", "--json"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout)
    assert data["kind"] == "image" and {h["path"] for h in data["results"]} == files
    top = data["results"][0]
    assert top["path"] == str(pics / "blue.jpg") and top["score"] == pytest.approx(1.0, abs=1e-3)
