"""The backend registry: every backend exports, runs and passes parity where its tools are present
(and says why not elsewhere); the Runner lifecycle; backends and the runtime import no torch."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobileclip import backends
from mobileclip.backends import Runner
from mobileclip.errors import ConfigError, MobileCLIPError

REPO = Path(__file__).resolve().parents[1]


def test_registry_lists_backends_without_importing_them():
    code = ("import sys; from mobileclip import backends; names = backends.names(); "
            "assert 'onnx' in names and backends.all_precisions() == ['fp32', 'fp16', 'int8'], names; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'coremltools', 'tensorrt') if m in sys.modules]; "
            "assert not heavy, heavy; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize("name", backends.names())
def test_each_backend_module_matches_its_registry_line(name):
    b = backends.get(name)
    assert b.name == name and b.precisions == backends.precisions(name)
    assert b.runtime == backends.runtime_name(name) and b.extra and b.summary and b.io
    assert callable(b.export) and callable(b.unavailable)
    why = b.unavailable()
    assert why is None or (isinstance(why, str) and why)


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"format 'tflite' is not known; choose from \['onnx'"):
        backends.get("tflite")


@pytest.mark.parametrize("name", backends.names())
def test_every_backend_exports_and_passes_parity_here_or_says_why(name, backend_bundle):
    """Parametrized over the registry: a new backend is covered by this test without editing it."""
    from mobileclip.backends.bundle import load_manifest

    b = backends.get(name)
    try:
        b.prepare_export()
    except MobileCLIPError as e:
        pytest.skip(f"{name} cannot export here: {e}")
    m = load_manifest(backend_bundle(name))   # export() raised had parity failed
    assert m["parity"]["passed"], m["parity"]
    assert all(m["artifacts"][t]["backend"] == name for t in ("image", "text"))
    if b.unavailable():   # exported, but predictions cannot run here: the report says which checks ran
        assert m["parity"]["mode"] != "predictions"
    else:
        assert m["parity"]["mode"] == "predictions"


class _Doubler(Runner):
    """A runner over a fake artifact: doubles its input; counts lifecycle calls and call sizes."""

    def __init__(self, fixed=0, max_batch=None):
        super().__init__(".", {"file": "x", "inputs": [{"shape": [fixed or "batch", 3]}]})
        self.max_batch = max_batch
        self.calls, self.activations, self.deactivations = [], 0, 0

    def _activate(self):
        self.activations += 1

    def _infer(self, x):
        self.calls.append(len(x))
        return x * 2

    def _deactivate(self):
        self.deactivations += 1


@pytest.mark.parametrize("fixed, max_batch, n, calls", [
    (0, None, 7, [7]), (4, None, 7, [4, 4]), (4, None, 4, [4]), (0, 3, 7, [3, 3, 1]), (0, 8, 7, [7]),
])
def test_runner_chunks_to_the_artifacts_batch(fixed, max_batch, n, calls):
    r = _Doubler(fixed, max_batch)
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    with r:
        out = r(x)
        assert r.active
    np.testing.assert_array_equal(out, x * 2)   # padding rows are cut off again
    assert r.calls == calls and r.activations == 1 and r.deactivations == 1 and not r.active
    r.infer(x[:1])   # used again: activated again, once
    assert r.activations == 2


# ------------------------------------------------------------------ torch-free at import
# (the layers and import cycles: tests/test_architecture.py)

def _imports(path: Path, package: str, top_level_only: bool = False) -> list:
    """Modules imported by ``path`` (relative imports resolved against ``package``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return out


def _modules(folder: str, package: str):
    for p in sorted((REPO / folder).rglob("*.py")):
        rel = p.relative_to(REPO / folder).with_suffix("")
        yield p, ".".join([package, *rel.parts[:-1]])   # the package a relative import starts from


def test_backends_and_runtime_are_torch_free_at_import():
    bad = []
    for sub in ("backends", "runtime"):
        for path, pkg in _modules(f"mobileclip/{sub}", f"mobileclip.{sub}"):
            if path.name in ("coreml.py", "coreml_fp16.py", "tensorrt.py", "onnx_graph.py", "quantize.py",
                             "towers.py"):
                continue   # export-side modules of a backend: loaded only to export or to run that format
            bad += [f"{path.relative_to(REPO)}: {m}" for m in _imports(path, pkg, top_level_only=True)
                    if m.split(".")[0] in ("torch", "torchvision", "timm", "open_clip", "transformers")]
    assert not bad, bad
    code = ("import sys; import mobileclip.backends.onnx, mobileclip.backends.bundle, mobileclip.runtime; "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
