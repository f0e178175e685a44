"""The architecture, checked from the source: layers, no import cycles (imports inside functions count), no
module aliasing, no private names across modules, argparse only in the app, spec prefixes only in the spec
module, and modules that each hold one idea (at most MAX_LINES lines). The allow-lists below may only shrink:
an entry that no longer needs its exception fails the test until it is removed."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Source folder -> the package it is installed as (export/, distill/, benchmarks/ are mapped into mobileclip).
FOLDERS = {"mobileclip": "mobileclip", "export": "mobileclip.export", "distill": "mobileclip.distill",
           "benchmarks": "mobileclip.benchmarks"}
MAX_LINES = 600
# Modules over MAX_LINES (none since issue 22). May only shrink: a new long module must be split.
LONG_MODULES: set = set()
# Modules outside the app that still parse arguments: the measurement scripts (each a `python -m` program of its
# own). The bench product's parser is the app's (app/bench.py). May only shrink.
ARGPARSE_OUTSIDE_APP = {
    "mobileclip.benchmarks.data_scale", "mobileclip.benchmarks.data_throughput",
    "mobileclip.benchmarks.distill_real", "mobileclip.benchmarks.distill_real_trap",
    "mobileclip.benchmarks.distill_throughput", "mobileclip.benchmarks.export_latency",
    "mobileclip.benchmarks.mobile_backends", "mobileclip.benchmarks.released", "mobileclip.benchmarks.robustness",
    "mobileclip.benchmarks.synthetic_throughput", "mobileclip.benchmarks.token_cache"}
SPEC_PREFIXES = ("open_clip:", "hf:", "py:")


# ----------------------------------------------------------------------------- reading the source

def modules() -> dict:
    """``{module name: path}`` for every module of the package (a package is its ``__init__``)."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = modules()
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _skipped(tree: ast.AST) -> set:
    """Nodes under ``if TYPE_CHECKING:`` (never executed)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for n in ast.walk(node)}
    return out


def imports(name: str) -> dict:
    """``{imported module of this package: line}`` for module ``name``, imports inside functions included.
    ``from pkg import x`` counts as importing ``pkg.x`` when that is a module, else ``pkg``."""
    is_pkg = MODULES[name].name == "__init__.py"
    base_pkg = name if is_pkg else name.rpartition(".")[0]
    tree, skip, out = TREES[name], _skipped(TREES[name]), {}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    out.setdefault(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base_pkg.split(".")
                mod = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                if f"{mod}.{a.name}" in MODULES:
                    out.setdefault(f"{mod}.{a.name}", node.lineno)
                elif mod in MODULES:
                    out.setdefault(mod, node.lineno)
    out.pop(name, None)
    return out


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> int:
    """0 core, 1 backends and runtime, 2 export / distill / benchmarks, 3 the app and the package facade."""
    if name in ("mobileclip", "mobileclip.__main__") or name.startswith("mobileclip.app"):
        return 3
    if name.split(".")[1] in ("export", "distill", "benchmarks"):
        return 2
    if name.split(".")[1] in ("backends", "runtime"):
        return 1
    return 0


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _docstrings(tree: ast.AST) -> set:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


# ----------------------------------------------------------------------------- the checks

def test_the_checks_see_the_whole_package():
    assert len(MODULES) > 80 and "mobileclip.spec" in MODULES and "mobileclip.distill.samples" in MODULES
    assert "mobileclip.teachers" in GRAPH["mobileclip.third_party"]     # module-level import
    assert "mobileclip.third_party" in GRAPH["mobileclip.factory"]      # an import inside a function counts
    # the checkers find what they are for, on made-up graphs
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    found = cycles(GRAPH)
    detail = [" -> ".join(c) + ":\n    " + "\n    ".join(f"{v} imports {w} (line {GRAPH[v][w]})"
                                                         for v in c for w in GRAPH[v] if w in c) for c in found]
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(detail)


def test_no_module_imports_a_layer_above_it():
    bad = [f"{v} (layer {layer(v)}) imports {w} (layer {layer(w)}), line {line}"
           for v, targets in GRAPH.items() for w, line in targets.items() if layer(w) > layer(v)]
    assert not bad, ("imports go app -> export/distill/benchmarks -> backends/runtime -> core; the package facade "
                     "(mobileclip/__init__.py) is the top:\n" + "\n".join(bad))


def test_no_module_replaces_itself_in_sys_modules():
    bad = []
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "sys.modules" and (
                            "__name__" in ast.unparse(t.slice) or "import_module" in ast.unparse(node.value)):
                        bad.append(f"{name}, line {node.lineno}: {ast.unparse(node)}")
    assert not bad, "module aliasing (a shim): point users at the real module\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = []
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mobileclip")):
                bad += [f"{name}, line {node.lineno}: {a.name} from {'.' * node.level}{node.module or ''}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "a private name used by another module is not private: make it public\n" + "\n".join(bad)


def _uses_argparse(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names)
               or isinstance(n, ast.ImportFrom) and n.module == "argparse" for n in ast.walk(tree))


def test_argparse_only_in_the_app():
    users = {name for name, tree in TREES.items() if _uses_argparse(tree) and layer(name) < 3}
    assert not users - ARGPARSE_OUTSIDE_APP, f"argument parsing belongs in mobileclip/app: {sorted(users - ARGPARSE_OUTSIDE_APP)}"
    assert not ARGPARSE_OUTSIDE_APP - users, ("no longer parse arguments: remove them from ARGPARSE_OUTSIDE_APP: "
                                              f"{sorted(ARGPARSE_OUTSIDE_APP - users)}")


def test_spec_prefixes_are_known_only_to_the_spec_module():
    """A bare prefix ("open_clip:", "hf:", "py:") in code means a module parses or builds specs itself; a whole
    spec such as "open_clip:ViT-B-32" is a value, and docstrings may explain the grammar."""
    bad = []
    for name, tree in TREES.items():
        if name == "mobileclip.spec":
            continue
        docs = _docstrings(tree)
        bad += [f"{name}, line {n.lineno}: {n.value!r}" for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in SPEC_PREFIXES
                and id(n) not in docs]
    assert not bad, "parse specs with mobileclip.spec (parse, open_clip, hf):\n" + "\n".join(bad)


def test_modules_hold_one_idea():
    sizes = {name: len(MODULES[name].read_text().splitlines()) for name in MODULES}
    long = {name for name, n in sizes.items() if n > MAX_LINES}
    assert not long - LONG_MODULES, {name: sizes[name] for name in long - LONG_MODULES}
    assert not LONG_MODULES - long, f"now within {MAX_LINES} lines: remove from LONG_MODULES: {LONG_MODULES - long}"


def test_the_bundle_contract_names_its_tensors_once():
    """The towers' tensor names are the bundle contract's (backends/bundle.py): no other module spells them."""
    names = {"image_embedding", "text_embedding"}
    where = sorted({name for name, tree in TREES.items() for n in ast.walk(tree)
                    if isinstance(n, ast.Constant) and n.value in names and id(n) not in _docstrings(tree)})
    assert where == ["mobileclip.backends.bundle"], where


BENCH_PRODUCT = {"mobileclip.benchmarks.harness", "mobileclip.benchmarks.cases", "mobileclip.benchmarks.runtimes",
                 "mobileclip.benchmarks.stats", "mobileclip.benchmarks.report", "mobileclip.benchmarks.plots",
                 "mobileclip.benchmarks.common", "mobileclip.benchmarks.accuracy", "mobileclip.benchmarks"}


def test_the_bench_product_never_imports_a_measurement_script():
    """benchmarks/ holds the `mobileclip bench` product and one-off measurement scripts (docs/layout.md): the product
    imports only itself and the layers below, so a script can change or go without touching `mobileclip bench`."""
    bad = [f"{v} imports {w}" for v in BENCH_PRODUCT for w in GRAPH[v]
           if w.startswith("mobileclip.benchmarks.") and w not in BENCH_PRODUCT]
    assert not bad, bad
    assert {"mobileclip.app.bench"} <= {v for v, ws in GRAPH.items() if "mobileclip.benchmarks.harness" in ws}
