"""Checkpoint round trip, atomic writes, and refusing malicious pickles."""
import json
import os
import pickle

import pytest
import torch

import mobileclip
from mobileclip.checkpoint import CONFIG_NAME, WEIGHTS_NAME

from conftest import randomize_batchnorm


def _probe(model):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, model.image_size, model.image_size, generator=g)
    t = mobileclip.Tokenizer(model.cfg.tokenizer)(["a green star", "a white ring at the top"])
    with torch.no_grad():
        return model.encode_image(x), model.encode_text(t)


@pytest.mark.parametrize("reparam", [False, True])
def test_round_trip_is_identical(tmp_path, reparam):
    model, _, _ = mobileclip.create_model("mobileclip-tiny")
    randomize_batchnorm(model)
    with torch.no_grad():
        model.logit_scale.fill_(3.3)
    if reparam:
        model = mobileclip.reparameterize(model)
    mobileclip.save_checkpoint(model, tmp_path / "ck")
    assert sorted(os.listdir(tmp_path / "ck")) == [CONFIG_NAME, WEIGHTS_NAME]  # no temporary files left
    cfg = json.loads((tmp_path / "ck" / CONFIG_NAME).read_text())
    for key in ("architecture", "embed_dim", "image_size", "mean", "std", "tokenizer", "context_length",
                "logit_scale"):
        assert key in cfg
    assert cfg["embed_dim"] == 256 and cfg["image_size"] == 64 and cfg["context_length"] == 16
    assert cfg["logit_scale"] == pytest.approx(torch.tensor(3.3).exp().item(), rel=1e-6)
    assert cfg["reparameterized"] is reparam
    loaded = mobileclip.load_checkpoint(tmp_path / "ck")
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    model.eval()
    for a, b in zip(_probe(model), _probe(loaded)):
        assert torch.equal(a, b)
    # create_model on the directory, and pretrained= on the registry name, give the same model.
    m2, pp, tok = mobileclip.create_model(str(tmp_path / "ck"))
    assert torch.equal(_probe(m2)[0], _probe(loaded)[0]) and tok.context_length == 16
    if not reparam:
        m3, _, _ = mobileclip.create_model("mobileclip-tiny", pretrained=tmp_path / "ck")
        assert torch.equal(_probe(m3)[1], _probe(loaded)[1])


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, _, _ = mobileclip.create_model("mobileclip-tiny")
    mobileclip.save_checkpoint(model, tmp_path / "ck")
    before = (tmp_path / "ck" / WEIGHTS_NAME).read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("mobileclip.checkpoint._safetensors_bytes", boom)
    with torch.no_grad():
        model.logit_scale.fill_(1.0)
    with pytest.raises(OSError, match="disk full"):
        mobileclip.save_checkpoint(model, tmp_path / "ck")
    assert (tmp_path / "ck" / WEIGHTS_NAME).read_bytes() == before
    assert sorted(os.listdir(tmp_path / "ck")) == [CONFIG_NAME, WEIGHTS_NAME]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        # Unpickling this would create the marker file: proof that code ran.
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "model.pt"
    with open(f, "wb") as fh:
        pickle.dump({"visual.weight": torch.zeros(2), "payload": _Evil(str(marker))}, fh)
    with pytest.raises(mobileclip.UnsafeCheckpointError, match="refused to load.*Nothing from it was executed"):
        mobileclip.load_weights(f)
    assert not marker.exists()
    with pytest.raises(mobileclip.UnsafeCheckpointError):
        mobileclip.create_model("mobileclip-tiny", pretrained=f)
    assert not marker.exists()


def test_plain_torch_state_dict_loads(tmp_path):
    model, _, _ = mobileclip.create_model("mobileclip-tiny")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")
    m2, _, _ = mobileclip.create_model("mobileclip-tiny", pretrained=tmp_path / "w.pt")
    assert torch.equal(_probe(m2)[0], _probe(model.eval())[0])


def test_checkpoint_errors(tmp_path):
    with pytest.raises(mobileclip.CheckpointError, match="does not exist"):
        mobileclip.load_checkpoint(tmp_path / "nope")
    with pytest.raises(mobileclip.CheckpointError, match="does not exist"):
        mobileclip.create_model("./nope/ckpt")
    with pytest.raises(mobileclip.CheckpointError, match="does not exist"):
        mobileclip.create_model("mobileclip-tiny", pretrained=tmp_path / "missing.safetensors")
    model, _, _ = mobileclip.create_model("mobileclip-tiny")
    ck = mobileclip.save_checkpoint(model, tmp_path / "ck")
    (ck / WEIGHTS_NAME).unlink()
    with pytest.raises(mobileclip.CheckpointError, match="model.safetensors' is missing"):
        mobileclip.load_checkpoint(ck)
    mobileclip.save_checkpoint(model, ck)
    data = (ck / WEIGHTS_NAME).read_bytes()
    (ck / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(mobileclip.CheckpointError, match="truncated"):
        mobileclip.load_checkpoint(ck)
    (tmp_path / "empty").mkdir()
    with pytest.raises(mobileclip.CheckpointError, match="config.json' is missing"):
        mobileclip.load_checkpoint(tmp_path / "empty")
    s0, _, _ = mobileclip.create_model("mobileclip-tiny")
    mobileclip.save_checkpoint(s0, tmp_path / "tiny")
    with pytest.raises(mobileclip.CheckpointError, match="'mobileclip-tiny' checkpoint, not 'clip-vit-tiny'"):
        mobileclip.create_model("clip-vit-tiny", pretrained=tmp_path / "tiny")
    with pytest.raises(mobileclip.CheckpointError, match="saves this package's students"):
        mobileclip.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "lin")


def test_save_unwraps_compiled_model(tmp_path):
    from mobileclip.checkpoint import unwrap

    model, _, _ = mobileclip.create_model("mobileclip-tiny")
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it is called
    assert unwrap(compiled) is model
    mobileclip.save_checkpoint(compiled, tmp_path / "ck")
    loaded = mobileclip.load_checkpoint(tmp_path / "ck")
    assert loaded.state_dict().keys() == model.state_dict().keys()  # no "_orig_mod." prefixes
