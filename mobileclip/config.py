"""Typed, validated model configuration.

A :class:`ModelConfig` fully describes a dual encoder: enough to rebuild it from
``config.json`` next to ``model.safetensors``. Loading a dict checks every key and
value before any model is built; an unknown key is an error naming the valid ones.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from .errors import ConfigError

# OpenAI CLIP normalization; MobileCLIP v1 towers use mean 0 / std 1 instead.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)


@dataclass
class ImageTowerConfig:
    """An image tower built by timm; its classifier head is the projection to ``embed_dim``."""

    timm_model_name: str
    image_size: int
    timm_kwargs: dict = field(default_factory=dict)  # e.g. {"patch_size": 8} for small ViTs
    drop_path_rate: float = 0.0
    # Architecture details timm's definition does not take as arguments, applied after it is built.
    # Apple's MobileCLIP-B: LayerNorm eps 1e-5 (timm's ViT: 1e-6) and padding 1 on the stem's first
    # convolution (timm's vit_base_mci_224: 0). None keeps timm's.
    layer_norm_eps: Optional[float] = None
    first_conv_padding: Optional[int] = None


@dataclass
class TextTowerConfig:
    """A CLIP text transformer; ``variant='mct'`` wraps it in RepMixer blocks (MobileCLIP MCt)."""

    variant: Literal["base", "mct"] = "base"
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    causal: bool = False
    repmixer_kernel: int = 11
    # MobileOne's 1x1 "scale" branch in the RepMixer's mixer. Apple's MCt has none (its (1, 11) kernel
    # makes MobileOneBlock skip it); True only for checkpoints saved before this field existed.
    repmixer_scale_branch: bool = True


@dataclass
class PreprocessConfig:
    image_size: int
    mean: tuple = IDENTITY_MEAN
    std: tuple = IDENTITY_STD
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    resize_mode: Literal["shortest", "squash"] = "shortest"  # shortest side + center crop, or plain resize


@dataclass
class TokenizerConfig:
    name: Literal["clip-bpe"] = "clip-bpe"  # open_clip's CLIP BPE vocabulary (49408 tokens)
    context_length: int = 77


@dataclass
class ModelConfig:
    name: str
    embed_dim: int
    image: ImageTowerConfig
    text: TextTowerConfig
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig
    init_logit_scale: float = 2.659260036932778  # ln(1 / 0.07)
    init_logit_bias: Optional[float] = None  # set for sigmoid (SigLIP-style) training
    description: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return from_dict(cls, data)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _check_value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_value(args[0], value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is tuple:
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise ConfigError(f"{where}: expected a list of finite numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys here: {sorted(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required config key {key!r}")
            continue
        kwargs[name] = _check_value(hints[name], data[name], key)
    obj = cls(**kwargs)
    _validate(obj, where)
    return obj


def _validate(obj: Any, where: str) -> None:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where + '.' if where else ''}{key}: {msg}")

    if isinstance(obj, TextTowerConfig):
        if obj.width % obj.heads:
            raise bad("width", f"{obj.width} is not divisible by heads={obj.heads}")
        for k in ("vocab_size", "context_length", "width", "heads", "layers"):
            if getattr(obj, k) <= 0:
                raise bad(k, "must be positive")
        if obj.repmixer_kernel % 2 == 0:
            raise bad("repmixer_kernel", "must be odd so the sequence length is kept")
    if isinstance(obj, ImageTowerConfig):
        if obj.layer_norm_eps is not None and not 0 < obj.layer_norm_eps < 1:
            raise bad("layer_norm_eps", f"{obj.layer_norm_eps} is not in (0, 1)")
        if obj.first_conv_padding is not None and obj.first_conv_padding < 0:
            raise bad("first_conv_padding", "must be >= 0")
    if isinstance(obj, PreprocessConfig):
        if len(obj.mean) != 3 or len(obj.std) != 3:
            raise bad("mean/std", "need three values (R, G, B)")
        if any(s <= 0 for s in obj.std):
            raise bad("std", "values must be positive")
    if isinstance(obj, ModelConfig):
        if obj.image.image_size != obj.preprocess.image_size:
            raise bad("preprocess.image_size", "must equal image.image_size")
        if obj.tokenizer.context_length != obj.text.context_length:
            raise bad("tokenizer.context_length", "must equal text.context_length")
        if obj.embed_dim <= 0:
            raise bad("embed_dim", "must be positive")


def architecture_differences(saved: dict, cfg: ModelConfig, ignore=()) -> list:
    """Dotted keys where a checkpoint's saved architecture differs from ``cfg`` (descriptions and
    ``ignore`` aside), as readable lines.

    A checkpoint saved before a registered model changed (e.g. ``mobileclip-b`` before it became
    Apple's B) still loads with ``create_model(dir)``, which rebuilds its own architecture; loading
    its weights into today's registered model would run them on another network.
    """
    try:
        mine = ModelConfig.from_dict(saved).to_dict()
    except ConfigError as e:
        return [f"unreadable architecture ({e})"]
    want = cfg.to_dict()
    skip = {"description", *ignore}

    def walk(a: dict, b: dict, prefix: str = "") -> list:
        out = []
        for k in sorted(set(a) | set(b)):
            key = f"{prefix}{k}"
            if k == "description" or key in skip:
                continue
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                out += walk(a[k], b[k], f"{key}.")
            elif a.get(k) != b.get(k):
                out.append(f"{key}: {a.get(k)!r} there, {b.get(k)!r} in {cfg.name}")
        return out

    return walk(mine, want)
