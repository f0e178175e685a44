"""mobileclip.spec: the one reader of model specs, and the hints it gives."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mobileclip import spec as specs
from mobileclip.errors import ConfigError


@pytest.mark.parametrize("text, kind, target, weights", [
    ("mobileclip-s0", "registered", "mobileclip-s0", None),
    ("open_clip:ViT-B-32", "open_clip", "ViT-B-32", None),
    ("open_clip:ViT-L-14:laion2b_s32b_b82k", "open_clip", "ViT-L-14", "laion2b_s32b_b82k"),
    ("open_clip:ViT-L-14:laion2b_s32b_b82k=/w/l14.safetensors", "open_clip", "ViT-L-14",
     "laion2b_s32b_b82k=/w/l14.safetensors"),
    ("open_clip:ViT-B-32:/w/b32.safetensors", "open_clip", "ViT-B-32", "/w/b32.safetensors"),
    ("hf:/models/clip", "hf", "/models/clip", None),
    ("hf:openai/clip-vit-base-patch32", "hf", "openai/clip-vit-base-patch32", None),
    ("py:my_pkg.teachers:build", "py", "my_pkg.teachers:build", None),
    ("runs/x/student", "checkpoint", "runs/x/student", None),
    ("./student", "checkpoint", "./student", None),
])
def test_every_form_parses_and_prints_back(text, kind, target, weights):
    s = specs.parse(text)
    assert (s.kind, s.target, s.weights) == (kind, target, weights)
    assert str(s) == text and specs.parse(str(s)) == s
    assert s.third_party == (kind in ("open_clip", "hf", "py")) == specs.is_third_party(text)


def test_weights_of_an_open_clip_spec(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    assert specs.parse(f"open_clip:ViT-B-32:{f}").weights_file() == (None, str(f))
    assert specs.parse("open_clip:ViT-B-32:tag=/x.pt").weights_file() == ("tag", "/x.pt")
    assert specs.parse("open_clip:ViT-B-32:openai").weights_file() == ("openai", None)
    assert specs.parse("open_clip:ViT-B-32").weights_file() == (None, None)
    assert str(specs.parse("open_clip:ViT-B-32").with_weights("openai")) == "open_clip:ViT-B-32:openai"
    assert specs.open_clip("ViT-B-32", "openai") == "open_clip:ViT-B-32:openai" and specs.hf("/d") == "hf:/d"
    with pytest.raises(ConfigError, match="only open_clip specs carry weights"):
        specs.parse("hf:/d").with_weights("x")


def test_a_checkpoint_directory_wins_over_a_same_named_registered_model_unless_weights_are_given(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mobileclip-tiny").mkdir()
    assert specs.parse("mobileclip-tiny").kind == "registered"          # a folder without config.json
    (tmp_path / "mobileclip-tiny" / "config.json").write_text("{}")
    assert specs.parse("mobileclip-tiny").kind == "checkpoint"
    assert specs.parse("mobileclip-tiny", pretrained="w.pt").kind == "registered"
    assert specs.parse("not-a-model").kind == "registered"              # the registry's own error names the known


@pytest.mark.parametrize("text, message", [
    ("", "an empty model spec"),
    ("open_clip:", "open_clip:<arch>"),
    ("open_clip::openai", "open_clip:<arch>"),
    ("hf:", "hf:<local dir or hub id>"),
    ("py:", "py:<module or file.py>:<callable>"),
])
def test_malformed_specs_are_refused_with_the_grammar(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        specs.parse(text)


def test_a_python_file_without_py_gets_the_spelling_it_meant(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher.py").write_text("def build():\n    pass\n")
    with pytest.raises(ConfigError, match=r"'teacher.py' is a Python file.*py:teacher.py:<callable>"):
        specs.parse("teacher.py")
    import mobileclip

    with pytest.raises(ConfigError, match="py:teacher.py:<callable>"):
        mobileclip.load_teacher("teacher.py")


def test_the_spec_module_agrees_with_the_checkpoint_module_and_stays_torch_free():
    from mobileclip.checkpoint import CONFIG_NAME

    assert specs.CONFIG_FILE == CONFIG_NAME
    code = ("import sys; from mobileclip import spec; spec.parse('mobileclip-s0'); spec.parse('open_clip:ViT-B-32'); "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize("argv", [["cache-teacher", "--help"], ["export", "--help"], ["zeroshot", "--help"],
                                  ["bench", "--help"]])
def test_every_model_and_teacher_help_lists_every_form(argv):
    out = subprocess.run([sys.executable, "-m", "mobileclip", *argv], capture_output=True, text=True, timeout=120,
                         env={"COLUMNS": "1000", **__import__("os").environ})
    text = " ".join(out.stdout.split())
    for form in specs.FORMS:
        assert " ".join(form.split()) in text, (argv, form)
