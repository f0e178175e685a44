"""Released weights in: Apple's checkpoints and open_clip's MobileCLIP/MobileCLIP2 files, checked against
Apple's own model code (a committed reference, see tests/apple_reference/README.md) and open_clip's."""
import copy
import gzip
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import mobileclip
from mobileclip.convert import OPEN_CLIP_ARCHS, detect_layout, open_clip_to_ours
from mobileclip.errors import CheckpointError, TeacherError

REF = Path(__file__).parent / "apple_reference"
_spec = importlib.util.spec_from_file_location("apple_recipe", REF / "recipe.py")
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)

APPLE = {"mobileclip_s0": "mobileclip-s0", "mobileclip_s1": "mobileclip-s1", "mobileclip_s2": "mobileclip-s2",
         "mobileclip_b": "mobileclip-b"}
TOL = 1e-5


@pytest.fixture(scope="module")
def apple_ref():
    with gzip.open(REF / "layouts.json.gz", "rt") as f:
        layouts = json.load(f)
    return layouts, dict(np.load(REF / "reference.npz"))


@pytest.fixture(scope="module")
def apple_files(tmp_path_factory, apple_ref):
    """Apple-layout ``.pt`` files by the recipe, written once per module (the B file is ~600 MB)."""
    root = tmp_path_factory.mktemp("apple")
    made = {}

    def get(name):
        if name not in made:
            made[name] = root / f"{name}.pt"
            torch.save(recipe.state_dict_for(apple_ref[0][name]), made[name])
        return made[name]

    yield get
    for p in made.values():
        p.unlink(missing_ok=True)


def _embed(model, size, context=77):
    x, t = recipe.fixed_images(size), recipe.fixed_tokens(context)
    with torch.no_grad():
        return model.encode_image(x).numpy(), model.encode_text(t).numpy()


@pytest.mark.parametrize("apple_name", list(APPLE))
def test_apple_checkpoint_loads_exactly(apple_name, apple_ref, apple_files):
    """convert -> load -> embeddings within 1e-5 of Apple's model code, plain and reparameterized."""
    _, ref = apple_ref
    ours = APPLE[apple_name]
    path = apple_files(apple_name)
    assert detect_layout(torch.load(path, weights_only=True)) == "apple"
    model, _, tokenizer = mobileclip.create_model(ours, pretrained=path)
    size = model.image_size
    img, txt = _embed(model, size)
    assert np.abs(img - ref[f"{apple_name}/image"]).max() < TOL
    assert np.abs(txt - ref[f"{apple_name}/text"]).max() < TOL
    fast = mobileclip.reparameterize(model)
    img_r, txt_r = _embed(fast, size)
    assert np.abs(img_r - ref[f"{apple_name}/image_reparam"]).max() < TOL
    assert np.abs(txt_r - ref[f"{apple_name}/text_reparam"]).max() < TOL
    # The reference is discriminative: another model's embeddings are far from it.
    assert np.abs(ref[f"{apple_name}/image"] - np.roll(ref[f"{apple_name}/image"], 1, axis=0)).max() > 1e-2


@pytest.mark.slow   # ~10-30 s; make test-slow (the suite's 15-minute budget)
def test_timm_b_is_not_apples_b(apple_ref, apple_files):
    """Apple's B differs from timm's vit_base_mci_224 (stem padding, LayerNorm eps): the reference sees it."""
    _, ref = apple_ref
    with pytest.raises(CheckpointError, match="Apple's MobileCLIP-B checkpoint.*Load it as mobileclip-b"):
        mobileclip.create_model("mobileclip2-b", pretrained=apple_files("mobileclip_b"))
    apple_b, _, _ = mobileclip.create_model("mobileclip-b", pretrained=apple_files("mobileclip_b"))
    timm_b, _, _ = mobileclip.create_model("mobileclip2-b")
    timm_b.load_state_dict(apple_b.state_dict())   # the same tensors on timm's network
    img, txt = _embed(timm_b, 224)
    assert np.abs(txt - ref["mobileclip_b/text"]).max() < TOL          # same text tower
    assert np.abs(img - ref["mobileclip_b/image"]).max() > 1e-3        # not the same image tower
    trunk = mobileclip.create_model("mobileclip-b")[0].visual.trunk
    assert trunk.patch_embed.backbone[0].conv.padding == (1, 1) and trunk.patch_embed.backbone[1].conv.padding == (0, 0)
    assert {m.eps for m in trunk.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}


def test_s0_text_tower_has_apples_blocks():
    """Apple's MCt RepMixer has no 1x1 scale branch (its kernel is (1, 11)); ours for S0 neither."""
    model = mobileclip.create_model("mobileclip-s0")[0]
    assert not any("mix_scale" in k for k in model.state_dict())
    tiny = mobileclip.create_model("mobileclip-tiny")[0]   # our own demo student keeps it
    assert any("mix_scale" in k for k in tiny.state_dict())


def test_convert_cli_writes_a_checkpoint(tmp_path, apple_ref, apple_files, capsys):
    from mobileclip.app.cli import main

    _, ref = apple_ref
    out = tmp_path / "s0"
    assert main(["convert", str(apple_files("mobileclip_s0")), "--out", str(out)]) == 0   # model from the keys
    assert "mobileclip-s0 converted" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"]["name"] == "mobileclip-s0"
    assert cfg["extra"]["converted_from"]["layout"] == "apple"
    assert len(cfg["extra"]["converted_from"]["sha256"]) == 64
    img, txt = _embed(mobileclip.load_checkpoint(out), 256)
    assert np.abs(img - ref["mobileclip_s0/image"]).max() < TOL
    assert np.abs(txt - ref["mobileclip_s0/text"]).max() < TOL
    assert main(["convert", str(apple_files("mobileclip_s0")), "--out", str(out)]) == 2   # exists
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow   # ~10-30 s; make test-slow (the suite's 15-minute budget)
def test_b_files_convert_to_the_right_b(tmp_path, apple_files, capsys):
    """Apple's B and B (LT) files are Apple's B; a bare file in our layout fits both Bs and must name --model."""
    from safetensors.torch import save_file

    from mobileclip.app.cli import main

    blt = tmp_path / "mobileclip_blt.pt"
    blt.symlink_to(apple_files("mobileclip_b"))
    assert main(["convert", str(blt), "--out", str(tmp_path / "blt")]) == 0
    assert json.loads((tmp_path / "blt" / "config.json").read_text())["architecture"]["name"] == "mobileclip-b"
    state = mobileclip.load_checkpoint(tmp_path / "blt").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.safetensors")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "weights.safetensors"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "mobileclip-b" in err and "mobileclip2-b" in err and "--model" in err and err.count("\n") == 1


# ------------------------------------------------------------------ hostile and wrong files

def test_wrong_files_are_refused_with_what_differs(tmp_path, apple_files, capsys):
    from mobileclip.app.cli import main

    s0 = torch.load(apple_files("mobileclip_s0"), weights_only=True)
    # another model's weights: says which model the file is
    with pytest.raises(CheckpointError, match="looks like a 'mobileclip-s0' checkpoint"):
        mobileclip.create_model("mobileclip-s1", pretrained=apple_files("mobileclip_s0"))
    # a tensor of another shape
    bad = dict(s0)
    bad["text_encoder.projection_layer"] = torch.zeros(512, 256)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"text\.projection', \(512, 256\), \(512, 512\)"):
        mobileclip.create_model("mobileclip-s0", pretrained=tmp_path / "shape.pt")
    # a missing layer
    bad = {k: v for k, v in s0.items() if ".transformer.2." not in k}
    torch.save(bad, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['text\.blocks\.2\."):
        mobileclip.create_model("mobileclip-s0", pretrained=tmp_path / "missing.pt")
    # an inference-form (reparameterized) Apple file
    bad = dict(s0)
    bad["text_encoder.transformer.0.token_mixer.reparam_conv.weight"] = torch.zeros(512, 1, 1, 11)
    torch.save(bad, tmp_path / "reparam.pt")
    with pytest.raises(CheckpointError, match="reparameterized"):
        mobileclip.create_model("mobileclip-s0", pretrained=tmp_path / "reparam.pt")
    # a truncated download
    data = Path(apple_files("mobileclip_s0")).read_bytes()
    (tmp_path / "mobileclip_s0.pt").write_bytes(data[: len(data) // 3])
    del data
    assert main(["convert", str(tmp_path / "mobileclip_s0.pt"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "could not be read as a checkpoint" in err and err.count("\n") == 1 and not (tmp_path / "t").exists()
    # an unrecognized layout: lists a few of its keys; the CLI says it in one line, exit 2
    from safetensors.torch import save_file

    save_file({"encoder.layer.0.weight": torch.zeros(2), "head.bias": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match=r"unrecognized state-dict layout.*encoder\.layer\.0\.weight"):
        mobileclip.create_model("mobileclip-s0", pretrained=tmp_path / "odd.safetensors")
    assert main(["convert", str(tmp_path / "odd.safetensors"), "--model", "mobileclip-s0",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mobileclip: error:") and err.count("\n") == 1 and not (tmp_path / "o").exists()


class _Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_with_code_is_refused_before_it_runs(tmp_path, monkeypatch, capsys):
    from mobileclip.app.cli import main

    monkeypatch.chdir(tmp_path)
    with open("mobileclip_s0.pt", "wb") as f:
        pickle.dump({"image_encoder.model.x": _Boom()}, f)
    assert main(["convert", "mobileclip_s0.pt", "--out", "out"]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not Path("PWNED").exists() and not Path("out").exists()


# ------------------------------------------------------------------ open_clip's MobileCLIP / MobileCLIP2

def _open_clip_meta(arch):
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(open_clip.get_model_config(arch))
    cls = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    with torch.device("meta"):
        return cls(**cfg)


@pytest.mark.parametrize("arch", sorted(OPEN_CLIP_ARCHS))
def test_every_open_clip_mobileclip_layout_maps_onto_its_model(arch):
    """All nine configs, on the meta device: names and shapes map one to one."""
    from mobileclip.model import CLIP

    theirs = _open_clip_meta(arch).state_dict()
    assert detect_layout(theirs) == "open_clip"
    mapped, unknown = open_clip_to_ours(theirs)
    with torch.device("meta"):
        ours = CLIP(mobileclip.get_model_config(OPEN_CLIP_ARCHS[arch])).state_dict()
    assert unknown == [] and set(mapped) == set(ours)
    assert all(tuple(mapped[k].shape) == tuple(ours[k].shape) for k in ours)


SLOW_OPEN_CLIP = {"MobileCLIP-S2", "MobileCLIP2-S2", "MobileCLIP2-B", "MobileCLIP2-S3", "MobileCLIP2-S4",
                  "MobileCLIP2-L-14"}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_OPEN_CLIP else a
                                  for a in sorted(OPEN_CLIP_ARCHS)])
def test_open_clip_file_loads_exactly(arch, tmp_path):
    """open_clip's own model is the reference: an open_clip file loads into ours with equal embeddings."""
    import open_clip
    from safetensors.torch import save_file

    ref = open_clip.create_model(arch)
    layout = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in ref.state_dict().items()]
    state = recipe.state_dict_for(layout, seed=1)
    ref.load_state_dict(state)
    ref.eval()
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    del state
    name = OPEN_CLIP_ARCHS[arch]
    # open_clip runs MobileCLIP-B's weights on timm's B; ours follows Apple's B (what they were trained with)
    timm_twin = "mobileclip2-b" if name == "mobileclip-b" else name
    model, _, tok = mobileclip.create_model(timm_twin, pretrained=path)
    size = model.image_size
    x, t = recipe.fixed_images(size), recipe.fixed_tokens(model.context_length)
    with torch.no_grad():
        want_i, want_t = ref.encode_image(x, normalize=True).numpy(), ref.encode_text(t, normalize=True).numpy()
        got_i, got_t = _embed(model, size)
        fast_i, fast_t = _embed(mobileclip.reparameterize(model), size)
    assert np.abs(got_i - want_i).max() < TOL and np.abs(got_t - want_t).max() < TOL
    assert np.abs(fast_i - want_i).max() < TOL and np.abs(fast_t - want_t).max() < TOL
    assert float(model.logit_scale) == pytest.approx(float(ref.logit_scale))
    if name != timm_twin:
        apple_b, _, _ = mobileclip.create_model(name, pretrained=path)
        img, txt = _embed(apple_b, size)
        assert np.abs(txt - want_t).max() < TOL and np.abs(img - want_i).max() > 1e-3


# ------------------------------------------------------------------ preprocessing that follows the weights

@pytest.mark.parametrize("arch", sorted(OPEN_CLIP_ARCHS))
def test_preprocessing_follows_open_clips_pretrained_config(arch):
    import open_clip

    from mobileclip.third_party import open_clip_preprocess

    (tag,) = open_clip.list_pretrained_tags_by_model(arch)[:1]
    want = open_clip.get_pretrained_cfg(arch, tag)
    got = open_clip_preprocess(arch, weights_file="w.safetensors")
    assert got["mean"] == tuple(want["mean"]) and got["std"] == tuple(want["std"])
    assert got["interpolation"] == want["interpolation"] and got["resize_mode"] == want["resize_mode"]
    # the registered model a converted file becomes carries the same preprocessing
    pp = mobileclip.get_model_config(OPEN_CLIP_ARCHS[arch]).preprocess
    assert (pp.mean, pp.std, pp.interpolation, pp.resize_mode) == (
        tuple(want["mean"]), tuple(want["std"]), want["interpolation"], want["resize_mode"])


def test_open_clip_teacher_from_a_file_uses_the_weights_preprocessing(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    m = open_clip.create_model("MobileCLIP2-S0")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "w.safetensors")
    t = mobileclip.load_teacher(f"open_clip:MobileCLIP2-S0:{tmp_path / 'w.safetensors'}")
    cfg = t.model.visual.preprocess_cfg
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0) and cfg["interpolation"] == "bilinear"
    normalize = t.preprocess.transforms[-1]   # open_clip's own transform is built with them
    assert tuple(normalize.mean) == (0.0, 0.0, 0.0) and tuple(normalize.std) == (1.0, 1.0, 1.0)
    assert "dfndr2b" in cfg["preprocess_from"]


def test_a_file_for_an_architecture_with_disagreeing_tags_must_name_its_tag(tmp_path):
    from mobileclip.third_party import open_clip_preprocess, split_open_clip_pretrained

    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(TeacherError, match=r"laion2b_s32b_b82k.*open_clip:ViT-L-14:<tag>="):
        mobileclip.load_teacher(f"open_clip:ViT-L-14:{tmp_path / 'w.safetensors'}")
    tag, file = split_open_clip_pretrained("ViT-L-14", f"laion2b_s32b_b82k={tmp_path / 'w.safetensors'}")
    assert tag == "laion2b_s32b_b82k" and file.endswith("w.safetensors")
    assert open_clip_preprocess("ViT-L-14", tag, file)["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(TeacherError, match="no pretrained tag 'nope'"):
        split_open_clip_pretrained("ViT-L-14", f"nope={tmp_path / 'w.safetensors'}")


def test_checkpoint_saved_with_an_older_network_is_not_loaded_into_todays(tmp_path):
    """A mobileclip-b checkpoint from before B became Apple's keeps timm's B: create_model(dir) rebuilds it,
    create_model("mobileclip-b", pretrained=dir) would run its weights on another network and refuses."""
    model, _, _ = mobileclip.create_model("mobileclip-tiny")
    mobileclip.save_checkpoint(model, tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    del cfg["architecture"]["image"]["layer_norm_eps"]          # as written before the field existed
    cfg["architecture"]["image"]["timm_kwargs"]["layers"] = [1, 1, 2, 1]
    cfg["architecture"]["text"]["repmixer_scale_branch"] = True
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    assert mobileclip.create_model(str(tmp_path / "ck"))[0].cfg.image.layer_norm_eps is None
    cfg["architecture"]["image"]["layer_norm_eps"] = 1e-3
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"another mobileclip-tiny network \(image\.layer_norm_eps: 0\.001"):
        mobileclip.create_model("mobileclip-tiny", pretrained=tmp_path / "ck")
    with pytest.raises(CheckpointError, match="saved from another mobileclip-tiny network"):   # its weights file too
        mobileclip.create_model("mobileclip-tiny", pretrained=tmp_path / "ck" / "model.safetensors")
    assert mobileclip.create_model(str(tmp_path / "ck"))[0].cfg.image.layer_norm_eps == 1e-3   # its own network
