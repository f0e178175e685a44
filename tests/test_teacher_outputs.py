"""A teacher's embeddings are checked where they enter (issue 20): finite, one row per input, the teacher's size,
non-zero. A violation is one line naming the teacher and what it returned, exit 2, and cache-teacher leaves nothing."""
import pytest
import torch

from mobileclip.errors import TeacherError

HOSTILE = '''
import torch
import mobileclip


def _base():
    return mobileclip.create_model("clip-hybrid-tiny")


def nan():
    model, pre, tok = _base()
    model.encode_image = lambda x: torch.full((x.shape[0], 256), float("nan"))
    return model, pre, tok


def inf_text():
    model, pre, tok = _base()
    good = model.encode_text
    model.encode_text = lambda t: good(t, normalize=False) * float("inf")
    return model, pre, tok


def raises():
    model, pre, tok = _base()

    def boom(x):
        raise ValueError("my teacher broke")
    model.encode_image = boom
    return model, pre, tok


def wide():
    model, pre, tok = _base()
    model.encode_image = lambda x: torch.ones(x.shape[0], 100)
    return model, pre, tok


def short():
    model, pre, tok = _base()
    good = model.encode_image
    model.encode_image = lambda x: good(x, normalize=False)[:1]
    return model, pre, tok


def zeros():
    model, pre, tok = _base()
    model.encode_image = lambda x: torch.zeros(x.shape[0], 256)
    return model, pre, tok
'''

CASES = [("nan", "encode_image", "non-finite values (NaN or inf) in 16 of 16 rows"),
         ("inf_text", "encode_text", "non-finite values"),
         ("raises", "encode_image", "raised ValueError: my teacher broke"),
         ("wide", "encode_image", "100-d embeddings where the teacher's embedding size is 256"),
         ("short", "encode_image", "shape (1, 256), not (16, dim)"),
         ("zeros", "encode_image", "all-zero embeddings in 16 of 16 rows")]


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    (tmp_path / "hostile_teachers.py").write_text(HOSTILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("fn,what,msg", CASES)
def test_cache_teacher_refuses_a_teacher_output_and_writes_nothing(hostile, capsys, fn, what, msg):
    from mobileclip.app.cli import main

    rc = main(["cache-teacher", "--teacher", f"py:hostile_teachers:{fn}", "--data", "synthetic", "--size", "16",
               "--augs", "1", "--shard-size", "16", "--batch-size", "16", "--out", "cache", "--workers", "0",
               "--device", "cpu"])
    lines = capsys.readouterr().err.splitlines()   # the progress bar closes before the error line
    err = lines[-1]
    assert rc == 2 and err.startswith("mobileclip: error: ") and sum("error" in x for x in lines) == 1, lines
    assert f"teacher 'py:hostile_teachers:{fn}'" in err and what in err and msg in err, err
    assert not (hostile / "cache").exists()   # nothing written: the corrected command starts afresh


def test_cache_teacher_into_an_existing_folder_removes_only_its_manifest(hostile, capsys):
    from mobileclip.app.cli import main

    (hostile / "cache").mkdir()
    (hostile / "cache" / "mine.txt").write_text("the user's")
    assert main(["cache-teacher", "--teacher", "py:hostile_teachers:nan", "--data", "synthetic", "--size", "16",
                 "--augs", "1", "--shard-size", "16", "--batch-size", "16", "--out", "cache", "--workers", "0",
                 "--device", "cpu"]) == 2
    assert sorted(p.name for p in (hostile / "cache").iterdir()) == ["mine.txt"]


def test_online_distillation_refuses_a_nan_teacher(hostile):
    from mobileclip.distill import load_config, train

    with pytest.raises(TeacherError, match=r"teacher 'py:hostile_teachers:nan': encode_image on \d+ input\(s\) "
                                           r"returned non-finite values"):
        train(load_config(None, ["teachers=[py:hostile_teachers:nan]", "losses.kd=1.0", "losses.clip=0.0",
                                 "steps=2", "batch_size=8", "data.size=16", "data.workers=0", "eval.size=8",
                                 "progress=false", "out=run"]))


def test_a_good_teacher_passes_unchanged():
    import mobileclip
    from mobileclip.teachers import wrap_teacher

    model, pre, tok = mobileclip.create_model("clip-hybrid-tiny")
    t = wrap_teacher(model, pre, tok, name="ok")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(t.encode_image(x, normalize=False), model.encode_image(x, normalize=False))
        oom = wrap_teacher(model, pre, tok, name="oom")
        oom._encode_image = lambda x: (_ for _ in ()).throw(RuntimeError("CUDA out of memory. Tried to allocate"))
        with pytest.raises(RuntimeError, match="out of memory"):   # not dressed up as a teacher defect
            oom.encode_image(x)
