"""Released weights in: Apple's MobileCLIP checkpoints and open_clip's MobileCLIP/MobileCLIP2 files.

Three state-dict layouts are understood, detected from the keys:

* ``mobileclip`` — this package's own (``visual.trunk.*``, ``text.blocks.*``);
* ``apple`` — Apple's original ``mobileclip_s0.pt`` … ``mobileclip_blt.pt``
  (github ``apple/ml-mobileclip``: ``image_encoder.model.*``, ``text_encoder.*``);
* ``open_clip`` — open_clip's MobileCLIP / MobileCLIP2 files (``visual.trunk.*``,
  ``text.transformer.resblocks.*``), e.g. ``mobileclip2_s0.pt`` or ``open_clip_model.safetensors``.

Image towers reuse timm's own converters (``timm.models.fastvit.checkpoint_filter_fn`` for
MCi, ``timm.models.vision_transformer_hybrid.checkpoint_filter_fn`` for B); open_clip's
image trunks are already timm modules. The text towers are renamed here: Apple's
Conv2d ``[O, I, 1, k]`` weights are our Conv1d ``[O, I, k]``, layer scales ``[C, 1, 1]``
are ``[C, 1]``, open_clip's ``in_proj``/``c_fc``/``c_proj`` are our ``qkv``/``mlp.0``/``mlp.2``.

Conversion is exact (tests compare against Apple's model code and open_clip's) and strict:
a key that does not map, a missing key or a wrong shape is a :class:`CheckpointError`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import torch
from torch import nn

from .errors import CheckpointError

LAYOUTS = ("mobileclip", "apple", "open_clip")

# open_clip's MobileCLIP / MobileCLIP2 architectures and the registered model that is the same network.
# MobileCLIP-B's weights were trained with Apple's B (LayerNorm eps 1e-5, stem padding 1); open_clip runs
# them with timm's vit_base_mci_224 (1e-6, 0). We follow the architecture the weights were trained with.
OPEN_CLIP_ARCHS = {
    "MobileCLIP-S1": "mobileclip-s1", "MobileCLIP-S2": "mobileclip-s2", "MobileCLIP-B": "mobileclip-b",
    "MobileCLIP2-S0": "mobileclip2-s0", "MobileCLIP2-S2": "mobileclip2-s2", "MobileCLIP2-B": "mobileclip2-b",
    "MobileCLIP2-S3": "mobileclip2-s3", "MobileCLIP2-S4": "mobileclip2-s4", "MobileCLIP2-L-14": "mobileclip2-l-14",
}
# Apple's original checkpoint files (ml-mobileclip get_pretrained_models.sh) and their model.
APPLE_FILES = {"mobileclip_s0.pt": "mobileclip-s0", "mobileclip_s1.pt": "mobileclip-s1",
               "mobileclip_s2.pt": "mobileclip-s2", "mobileclip_b.pt": "mobileclip-b",
               "mobileclip_blt.pt": "mobileclip-b"}


@dataclass
class LoadReport:
    """What a (possibly partial) load did: the source layout, and the keys that did not load."""

    source: str
    layout: str
    loaded: int = 0
    missing: list = field(default_factory=list)      # model keys left at their initial values
    unexpected: list = field(default_factory=list)   # checkpoint keys the model has no place for
    mismatched: list = field(default_factory=list)   # (key, checkpoint shape, model shape)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def not_loaded_layers(self) -> list:
        """What was not loaded: module names for a module's weights (``visual.trunk.head.fc``), the full
        key for a tensor held directly by a larger module (``text.projection``)."""
        keys = self.missing + [k for k, _, _ in self.mismatched]
        leaves = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        return sorted({k.rsplit(".", 1)[0] if k.rsplit(".", 1)[-1] in leaves and "." in k else k for k in keys})

    def summary(self) -> str:
        parts = [f"{self.loaded} tensors loaded from {self.source} ({self.layout} layout)"]
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} with another shape, left as initialized: "
                         + ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched[:5]))
        if self.missing:
            parts.append(f"{len(self.missing)} not in the checkpoint: {self.missing[:5]}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unused: {self.unexpected[:5]}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"source": self.source, "layout": self.layout, "loaded": self.loaded, "missing": self.missing,
                "unexpected": self.unexpected,
                "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched],
                "not_loaded_layers": self.not_loaded_layers()}


# ------------------------------------------------------------------ detection

def detect_layout(state: dict, source: str = "the checkpoint") -> str:
    """``"mobileclip"``, ``"apple"`` or ``"open_clip"``; a clear error for anything else."""
    keys = list(state)
    if any(k.startswith(("image_encoder.model.", "text_encoder.")) for k in keys):
        return "apple"
    if any(k.startswith("text.transformer.resblocks.") for k in keys) or "text.text_projection" in state:
        return "open_clip"
    if any(k.startswith("text.blocks.") for k in keys) and any(k.startswith("visual.trunk.") for k in keys):
        return "mobileclip"
    sample = sorted(keys)[:6]
    raise CheckpointError(
        f"{source}: unrecognized state-dict layout ({len(keys)} keys, e.g. {sample}). Understood: this package's "
        "checkpoints, Apple's MobileCLIP .pt files (image_encoder.model.*, text_encoder.*) and open_clip "
        "MobileCLIP/MobileCLIP2 files (visual.trunk.*, text.transformer.*)"
    )


# ------------------------------------------------------------------ Apple -> ours

_APPLE_TEXT = [  # (Apple's key suffix regex, ours) inside text_encoder.transformer.<i>.
    (r"pre_norm_mha\.0\.", "ln_1."), (r"pre_norm_mha\.1\.qkv_proj\.", "attn.qkv."),
    (r"pre_norm_mha\.1\.out_proj\.", "attn.out."), (r"pre_norm_ffn\.0\.", "ln_2."),
    (r"pre_norm_ffn\.1\.", "mlp.0."), (r"pre_norm_ffn\.4\.", "mlp.2."),
    # MCt RepMixer blocks
    (r"token_mixer\.norm\.rbr_skip\.", "token_mixer.norm_skip."),
    (r"token_mixer\.mixer\.rbr_skip\.", "token_mixer.mix_skip."),
    (r"token_mixer\.mixer\.rbr_conv\.0\.conv\.", "token_mixer.mix_conv."),
    (r"token_mixer\.mixer\.rbr_conv\.0\.bn\.", "token_mixer.mix_conv_bn."),
    (r"token_mixer\.mixer\.rbr_scale\.conv\.", "token_mixer.mix_scale."),
    (r"token_mixer\.mixer\.rbr_scale\.bn\.", "token_mixer.mix_scale_bn."),
    (r"token_mixer\.layer_scale$", "token_mixer.layer_scale"),
    (r"convffn\.conv\.conv\.", "convffn.conv."), (r"convffn\.conv\.bn\.", "convffn.bn."),
    (r"convffn\.fc1\.", "convffn.fc1."), (r"convffn\.fc2\.", "convffn.fc2."),
    (r"layer_scale$", "layer_scale"),
]


def _apple_text(state: dict) -> tuple[dict, list]:
    out, unknown = {}, []
    top = {"embedding_layer.weight": "token_embedding.weight", "projection_layer": "projection",
           "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias",
           "positional_embedding.pos_embed.pos_embed": "positional_embedding"}
    for k, v in state.items():
        if not k.startswith("text_encoder."):
            continue
        rest = k[len("text_encoder."):]
        if rest in top:
            new = top[rest]
            if new == "positional_embedding":
                v = v.reshape(v.shape[-2], v.shape[-1])  # [1, 1, N, C] -> [N, C]
            out[f"text.{new}"] = v
            continue
        m = re.match(r"transformer\.(\d+)\.(.+)$", rest)
        if m is None:
            unknown.append(k)
            continue
        i, tail = m.groups()
        for pat, repl in _APPLE_TEXT:
            if re.match(pat, tail):
                new_tail = re.sub("^" + pat, repl, tail)
                break
        else:
            if "reparam_conv" in tail:
                raise CheckpointError(
                    f"{k}: this Apple checkpoint is reparameterized (inference form); convert the training-form "
                    "release (mobileclip_*.pt as downloaded), which this package reparameterizes itself at export")
            unknown.append(k)
            continue
        if v.dim() == 4 and v.shape[2] == 1:          # Conv2d [O, I, 1, k] -> Conv1d [O, I, k]
            v = v.squeeze(2)
        elif tail.endswith("layer_scale") and v.dim() == 3:   # [C, 1, 1] -> [C, 1]
            v = v.reshape(v.shape[0], 1)
        out[f"text.blocks.{i}.{new_tail}"] = v
    return out, unknown


def _apple_image(state: dict, model: nn.Module) -> tuple[dict, list]:
    from timm.models.fastvit import FastVit
    from timm.models.vision_transformer import VisionTransformer

    trunk = model.visual.trunk
    vit = "image_encoder.model.patch_emb.0.block.conv.weight" in state
    want = VisionTransformer if vit else FastVit
    if not isinstance(trunk, want):
        raise CheckpointError(f"this Apple checkpoint has {'a ViT-B' if vit else 'an MCi (FastViT)'} image tower; "
                              f"the model's is a {type(trunk).__name__}")
    icfg = getattr(getattr(model, "cfg", None), "image", None)
    if vit and icfg is not None and (icfg.layer_norm_eps, icfg.first_conv_padding) != (1e-5, 1):
        # Apple's B weights were trained on Apple's B; timm's vit_base_mci_224 (mobileclip2-b) is another network.
        raise CheckpointError(
            f"this is Apple's MobileCLIP-B checkpoint, whose network is Apple's B (LayerNorm eps 1e-5, stem padding 1: "
            f"mobileclip-b); {model.cfg.name} has timm's B (eps {icfg.layer_norm_eps or 1e-6}, padding "
            f"{icfg.first_conv_padding or 0}), on which these weights would be 1e-2 off. Load it as mobileclip-b")
    if vit:                                                            # B: a hybrid ViT
        from timm.models.vision_transformer_hybrid import checkpoint_filter_fn
    else:                                                              # S0/S1/S2: MCi (FastViT)
        from timm.models.fastvit import checkpoint_filter_fn
    image = {k: v for k, v in state.items() if k.startswith("image_encoder.model.")}
    out = {f"visual.trunk.{k}": v for k, v in checkpoint_filter_fn(image, trunk).items()}
    # timm's filters rename, and split Apple's bias-free head.proj into weight + zero bias; they only drop keys
    # they do not know. Fewer outputs than inputs means something was dropped: say so rather than lose it.
    dropped = [] if len(out) >= len(image) else [
        f"{len(image) - len(out)} image_encoder.model.* tensors dropped by timm's converter"]
    return out, dropped


def apple_to_ours(state: dict, model: nn.Module) -> tuple[dict, list]:
    """Apple's ``mobileclip_*.pt`` state dict in this package's layout; also the keys that did not map."""
    unknown = [k for k in state if not k.startswith(("image_encoder.model.", "text_encoder.")) and k != "logit_scale"]
    out, dropped = _apple_image(state, model)
    unknown += dropped
    text, bad = _apple_text(state)
    out.update(text)
    if "logit_scale" in state:
        out["logit_scale"] = state["logit_scale"].reshape(())
    return out, unknown + bad


# ------------------------------------------------------------------ open_clip -> ours

_OPEN_CLIP_TEXT = [(".ln_1.", ".ln_1."), (".attn.in_proj_weight", ".attn.qkv.weight"),
                   (".attn.in_proj_bias", ".attn.qkv.bias"), (".attn.out_proj.", ".attn.out."),
                   (".ln_2.", ".ln_2."), (".mlp.c_fc.", ".mlp.0."), (".mlp.c_proj.", ".mlp.2.")]


def open_clip_to_ours(state: dict) -> tuple[dict, list]:
    """An open_clip MobileCLIP/MobileCLIP2 state dict (timm image trunk, open_clip text tower) in our layout."""
    out, unknown = {}, []
    top = {"text.token_embedding.weight": "text.token_embedding.weight",
           "text.positional_embedding": "text.positional_embedding", "text.text_projection": "text.projection",
           "text.ln_final.weight": "text.ln_final.weight", "text.ln_final.bias": "text.ln_final.bias"}
    for k, v in state.items():
        if k.startswith("visual.trunk."):
            out[k] = v
        elif k in top:
            out[top[k]] = v
        elif k == "logit_scale":
            out[k] = v.reshape(())
        elif k.startswith("text.transformer.resblocks."):
            new = k.replace("text.transformer.resblocks.", "text.blocks.")
            for a, b in _OPEN_CLIP_TEXT:
                if a in new:
                    out[new.replace(a, b)] = v
                    break
            else:
                unknown.append(k)
        elif k == "text.attn_mask":   # a buffer some open_clip versions saved; ours is computed
            continue
        else:
            unknown.append(k)
    return out, unknown


# ------------------------------------------------------------------ loading

def to_our_layout(state: dict, model: nn.Module, source: str = "the checkpoint") -> tuple[dict, str, list]:
    """``(state in our layout, detected layout, keys that could not be mapped)``."""
    layout = detect_layout(state, source)
    if layout == "apple":
        out, unknown = apple_to_ours(state, model)
    elif layout == "open_clip":
        out, unknown = open_clip_to_ours(state)
    else:
        out, unknown = dict(state), []
    return out, layout, unknown


def _match(model: nn.Module, state: dict, unknown: list, source: str, layout: str) -> tuple[dict, LoadReport]:
    own = model.state_dict()
    report = LoadReport(source, layout)
    usable = {}
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            usable[k] = v
    report.unexpected = sorted(report.unexpected + unknown)
    report.missing = sorted(set(own) - set(state))
    report.loaded = len(usable)
    return usable, report


def load_pretrained(model: nn.Module, path: Union[str, Path], may_differ: Iterable[str] = (),
                    config_may_differ: Iterable[str] = ()) -> LoadReport:
    """Load a weights file in any understood layout into ``model`` (one of this package's CLIPs).

    Every key must map and match, else :class:`CheckpointError` naming what differs and, where
    it can tell, which registered model the file is. ``may_differ``: model keys allowed to be
    absent from the file or of another shape there (a student given a new embedding size gets
    new projections); they keep their fresh initialization and are listed in the returned
    :class:`LoadReport`. Nothing else may differ, so the wrong file never half-loads. One of our
    ``model.safetensors`` with its ``config.json`` beside it must also have been saved from the same
    network (``config_may_differ``: config keys an override changes).
    """
    from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_weights

    path = Path(path)
    cfg = getattr(model, "cfg", None)
    if cfg is not None and path.name == WEIGHTS_NAME and (path.parent / CONFIG_NAME).is_file():
        check_saved_network(path.parent, cfg, config_may_differ)   # before reading the weights
    state, layout, unknown = to_our_layout(load_weights(path), model, str(path))
    usable, report = _match(model, state, unknown, str(path), layout)
    allowed = set(may_differ)
    strict_view = LoadReport(report.source, layout, report.loaded, [k for k in report.missing if k not in allowed],
                             report.unexpected, [m for m in report.mismatched if m[0] not in allowed])
    if not strict_view.complete:
        report = strict_view
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        hint = ""
        guesses = [g for g in guess_models(state_in_layout=state) if g != name]
        if guesses:
            hint = f" It looks like a {' or '.join(repr(g) for g in guesses)} checkpoint."
        raise CheckpointError(
            f"{path} ({layout} layout) does not match {name!r}: {len(report.missing)} missing keys "
            f"{report.missing[:4]}, {len(report.unexpected)} unexpected keys {report.unexpected[:4]}, "
            f"{len(report.mismatched)} with other shapes "
            f"{[(k, tuple(a), tuple(b)) for k, a, b in report.mismatched[:3]]}.{hint}"
        )
    if report.loaded == 0:
        raise CheckpointError(f"{path}: no tensor of it fits the model ({report.summary()})")
    model.load_state_dict(usable, strict=False)
    return report


def check_saved_network(directory: Path, cfg, may_differ: Iterable[str] = ()) -> None:
    """One of our checkpoint directories may load into a model of ``cfg`` only if it was saved from the same
    network (``may_differ``: config keys an override changes, e.g. ``embed_dim``).

    A checkpoint saved before a registered model changed (``mobileclip-b`` before it became Apple's B) still
    loads with ``create_model(dir)``, which rebuilds its own network; its weights on today's would be wrong.
    """
    from .checkpoint import read_config
    from .config import architecture_differences

    config = read_config(directory)
    saved = config.get("architecture")
    if not isinstance(saved, dict):
        return   # not one of our configs: the tensors decide
    if saved.get("name") != cfg.name:
        raise CheckpointError(f"{str(directory)!r} holds a {saved.get('name')!r} checkpoint, not {cfg.name!r}; "
                              f"load it with create_model({str(directory)!r})")
    if config.get("reparameterized"):
        raise CheckpointError(f"{str(directory)!r} is reparameterized (inference form); load it with "
                              f"create_model({str(directory)!r}), or start from the checkpoint written before export")
    diff = architecture_differences(saved, cfg, ignore=may_differ)
    if diff:
        raise CheckpointError(f"{str(directory)!r} was saved from another {cfg.name} network ({'; '.join(diff[:3])}); "
                              f"load it with create_model({str(directory)!r}), which rebuilds its own")


def guess_models(state: Optional[dict] = None, state_in_layout: Optional[dict] = None,
                 source: str = "the checkpoint") -> list:
    """Registered models whose parameters (names and shapes) a state dict fills exactly.

    Models are built on the ``meta`` device (no memory). Architectures with the same layout
    (e.g. MobileCLIP-S2 and MobileCLIP2-S2) are all returned.
    """
    from .model import CLIP
    from .zoo import get_model_config, list_models

    found = []
    for name in list_models():
        with torch.device("meta"):
            model = CLIP(get_model_config(name))
        try:
            mapped = state_in_layout if state_in_layout is not None else to_our_layout(state, model, source)[0]
        except (CheckpointError, AttributeError, KeyError, IndexError, RuntimeError, TypeError, ValueError):
            continue   # timm's filters assume their own architecture: a failure means "not this model"
        own = model.state_dict()
        if set(own) == set(mapped) and all(tuple(own[k].shape) == tuple(mapped[k].shape) for k in own):
            found.append(name)
    return found


def convert_checkpoint(src: Union[str, Path], out: Union[str, Path], model: Optional[str] = None,
                       overwrite: bool = False) -> dict:
    """Write ``src`` (Apple ``.pt``, open_clip file) as one of our checkpoints in ``out``.

    ``model``: a registered name; when omitted it is taken from the keys (and, where layouts are
    shared, from Apple's file name), and an ambiguous file is an error listing the candidates.
    Returns ``{"model", "layout", "out", "sha256"}``.
    """
    from .checkpoint import load_weights, replace_dir, save_checkpoint, temp_dir_for
    from .errors import ConfigError
    from .hashing import sha256_file
    from .model import CLIP
    from .zoo import get_model_config

    src, out = Path(src).expanduser(), Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory {str(out)!r} already exists; pass --overwrite to replace it")
    if model is None:
        candidates = guess_models(load_weights(src), source=str(src))
        by_name = APPLE_FILES.get(src.name)
        if by_name in candidates:
            candidates = [by_name]
        if len(candidates) != 1:
            raise CheckpointError(
                f"{src}: " + (f"its layout fits several models {candidates}; name one with --model"
                              if candidates else "it fits no registered model; name one with --model to see "
                                                 "which keys differ"))
        model = candidates[0]
    net = CLIP(get_model_config(model))
    report = load_pretrained(net, src)
    digest = sha256_file(src)
    tmp = temp_dir_for(out)
    try:
        save_checkpoint(net, tmp, extra={"converted_from": {"file": src.name, "sha256": digest,
                                                            "layout": report.layout}})
        replace_dir(tmp, out)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return {"model": model, "layout": report.layout, "out": str(out), "sha256": digest}
