"""Released models as students (fine-tuning, new projections), and bring-your-own teachers from the CLI."""
import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import mobileclip
from mobileclip.distill import Trainer, load_config, train
from mobileclip.errors import ConfigError

REF = Path(__file__).parent / "apple_reference"
_spec = importlib.util.spec_from_file_location("apple_recipe", REF / "recipe.py")
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)


@pytest.fixture(scope="module")
def apple_s0(tmp_path_factory):
    with gzip.open(REF / "layouts.json.gz", "rt") as f:
        layout = json.load(f)["mobileclip_s0"]
    path = tmp_path_factory.mktemp("s0") / "mobileclip_s0.pt"
    torch.save(recipe.state_dict_for(layout), path)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def four_pairs(synth_folder, tmp_path_factory):
    """A caption file of four real image files: fine-tuning on "your own data"."""
    rows = (synth_folder / "captions.csv").read_text().splitlines()
    d = tmp_path_factory.mktemp("pairs")
    (d / "pairs.csv").write_text("\n".join([rows[0]] + rows[1:5]) + "\n")
    return d / "pairs.csv", synth_folder


def test_fine_tune_a_converted_apple_checkpoint_loss_goes_down(tmp_path, apple_s0, four_pairs):
    csv, root = four_pairs
    cfg = load_config(None, [
        "student=mobileclip-s0", f"student_pretrained={apple_s0}", "data.source=captions", f"data.path={csv}",
        f"data.image_root={root}", "batch_size=4", "steps=5", "optim.lr=5e-4", "optim.warmup_steps=1",
        "aug.scale=[1.0, 1.0]", "aug.flip_prob=0.0", "data.workers=0", "log_every=1", "progress=false",
        f"out={tmp_path}"])
    summary = train(cfg)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.05, losses
    init = json.loads((tmp_path / "student_init.json").read_text())
    assert init["layout"] == "apple" and init["missing"] == [] and init["not_loaded_layers"] == []
    assert summary["student_init"]["loaded"] == init["loaded"] > 800
    # the fine-tuned student is a plain checkpoint of the same architecture, and it moved
    tuned = mobileclip.create_model(str(tmp_path / "student"))[0]
    start = mobileclip.create_model("mobileclip-s0", pretrained=apple_s0)[0]
    assert tuned.cfg.name == "mobileclip-s0"
    assert not torch.equal(tuned.text.projection, start.text.projection)


def test_layers_that_do_not_load_are_listed(tmp_path, apple_s0, capsys):
    cfg = load_config(None, ["student=mobileclip-s0", f"student_pretrained={apple_s0}", "student_embed_dim=256",
                             "data.workers=0", "progress=false", f"out={tmp_path}"])
    trainer = Trainer(cfg)
    report = trainer.init_report
    assert trainer.student.embed_dim == 256
    assert report.not_loaded_layers() == ["text.projection", "visual.trunk.head.fc"]   # the two new projections
    assert {k for k, _, _ in report.mismatched} == {"text.projection", "visual.trunk.head.fc.weight",
                                                    "visual.trunk.head.fc.bias"}
    out = capsys.readouterr().out
    assert "not loaded" in out and "visual.trunk.head.fc" in out
    # everything else is Apple's
    ref = mobileclip.create_model("mobileclip-s0", pretrained=apple_s0)[0]
    w = "text.blocks.1.attn.qkv.weight"
    assert torch.equal(trainer.student.state_dict()[w], ref.state_dict()[w])
    # another model's file never half-loads into a student: only what an override reshapes may differ
    cfg = load_config(None, ["student=mobileclip-s1", f"student_pretrained={apple_s0}", "data.workers=0",
                             "progress=false", f"out={tmp_path / 's1'}"])
    with pytest.raises(mobileclip.CheckpointError, match="looks like a 'mobileclip-s0' checkpoint"):
        Trainer(cfg)


def test_open_clip_mobileclip_architecture_as_a_student(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    m = open_clip.create_model("MobileCLIP2-S0")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "w.safetensors")
    cfg = load_config(None, [f"student=open_clip:MobileCLIP2-S0:{tmp_path / 'w.safetensors'}", "data.workers=0",
                             "progress=false", f"out={tmp_path / 'run'}"])
    trainer = Trainer(cfg)
    assert trainer.student.cfg.name == "mobileclip2-s0" and trainer.init_report.complete
    assert trainer.init_report.layout == "open_clip"
    assert all(p.requires_grad for p in trainer.student.parameters())   # trainable, not a frozen teacher
    with pytest.raises(ConfigError, match="open_clip architectures that train as students"):
        load_config(None, ["student=open_clip:ViT-B-32"])
    with pytest.raises(ConfigError, match="teachers only"):
        load_config(None, ["student=hf:some/dir"])
    with pytest.raises(ConfigError, match="looks like an open_clip pretrained tag"):
        load_config(None, ["student=open_clip:MobileCLIP2-S0:dfndr2b"])
    with pytest.raises(mobileclip.CheckpointError, match="does not exist"):
        Trainer(load_config(None, ["student=mobileclip-tiny", "student_pretrained=/nope.pt", "data.workers=0",
                                   f"out={tmp_path / 'nope'}"]))


# ------------------------------------------------------------------ py: teachers from the CLI

TEACHER_MODULE = '''
import mobileclip

def build():
    model, preprocess, tokenizer = mobileclip.create_model("clip-hybrid-tiny")
    model.preprocess, model.tokenizer = preprocess, tokenizer
    return model

def build_tuple():
    return mobileclip.create_model("clip-hybrid-tiny")

def not_a_model():
    return 42
'''


def test_py_teacher_for_zeroshot_retrieval_cache_and_distill(tmp_path, monkeypatch, capsys, synth_folder):
    from mobileclip.app.cli import main

    (tmp_path / "my_teachers.py").write_text(TEACHER_MODULE)
    monkeypatch.chdir(tmp_path)   # the dotted form is found in the working directory
    for spec in ("py:my_teachers:build", "py:my_teachers.py:build_tuple"):
        assert main(["zeroshot", "--model", spec, "--data", str(synth_folder), "--workers", "0"]) == 0
        assert "zero-shot on 72 images" in capsys.readouterr().out
    assert main(["retrieval", "--model", "py:my_teachers:build", "--data", str(synth_folder / "captions.csv"),
                 "--workers", "0"]) == 0
    assert "retrieval on 72 images" in capsys.readouterr().out
    assert main(["cache-teacher", "--teacher", "py:my_teachers:build", "--data", "synthetic", "--size", "16",
                 "--augs", "1", "--shard-size", "16", "--batch-size", "16", "--out", "cache", "--workers", "0",
                 "--device", "cpu"]) == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert "py:my_teachers:build" in json.dumps(manifest["teachers"])
    summary = train(load_config(None, ["teachers=[py:my_teachers:build]", "losses.kd=1.0", "losses.clip=0.0",
                                       "steps=2", "batch_size=8", "data.size=16", "data.workers=0", "eval.size=8",
                                       "progress=false", "out=run"]))
    assert summary["steps"] == 2 and summary["bad_steps"] == 0
    capsys.readouterr()
    # errors: one line, exit 2
    for spec, msg in [("py:my_teachers:nope", "has no callable 'nope'"),
                      ("py:my_teachers:not_a_model", "returned a int"),
                      ("py:no_such_module:build", "no module named 'no_such_module'"),
                      ("py:missing.py:build", "does not exist"),
                      ("py:just_a_module", "py:<module or file.py>:<callable>")]:
        assert main(["zeroshot", "--model", spec, "--data", str(synth_folder)]) == 2, spec
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (spec, err)


def test_resume_continues_on_the_runs_own_network(tmp_path, capsys):
    """A run resumes on the network it was started with, even if the registered model has changed since."""
    base = ["student=mobileclip-tiny", "batch_size=8", "data.size=16", "data.workers=0", "eval.size=8",
            "progress=false", f"out={tmp_path}"]
    train(load_config(None, base + ["steps=2"]))
    cfg_path = tmp_path / "last" / "student" / "config.json"
    saved = json.loads(cfg_path.read_text())
    saved["architecture"]["image"]["layer_norm_eps"] = 1e-3   # as if the run predates a change to the zoo
    cfg_path.write_text(json.dumps(saved))
    trainer = Trainer(load_config(None, base + ["steps=3"]), resume=str(tmp_path))
    assert trainer.student.cfg.image.layer_norm_eps == 1e-3 and trainer.step == 2
    assert "resuming on the run's own mobileclip-tiny network" in capsys.readouterr().out
    from mobileclip.distill import TrainingError

    with pytest.raises(TrainingError, match="trained 'mobileclip-tiny'.*student is 'clip-vit-tiny'"):
        Trainer(load_config(None, base + ["steps=3", "student=clip-vit-tiny"]), resume=str(tmp_path))
