"""Third-party models as teachers: open_clip CLIPs (random weights, a pretrained tag, a local weights file),
Hugging Face ``CLIPModel``s, and ``py:`` models built by the user's own function. Each loader returns a
:class:`mobileclip.teachers.Teacher` carrying the model's own preprocessing and tokenizer.

The spec grammar that names them is :mod:`mobileclip.spec`'s; :func:`mobileclip.factory.load_teacher` dispatches
here.
"""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from . import spec as specs
from .config import OPENAI_MEAN, OPENAI_STD, PreprocessConfig, TokenizerConfig
from .errors import TeacherError
from .teachers import CallableTokenizer, Teacher, wrap_teacher
from .tokenizer import Tokenizer
from .transforms import ImagePreprocess


def _open_clip_arch(arch: str) -> None:
    import open_clip

    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5)
        raise TeacherError(
            f"open_clip has no architecture {arch!r}" + (f"; did you mean {close}?" if close else "")
            + " Run `mobileclip models` for the list."
        )


_PP_KEYS = ("mean", "std", "interpolation", "resize_mode")


def open_clip_preprocess(arch: str, tag: Optional[str] = None, weights_file: Optional[str] = None) -> dict:
    """The preprocessing open_clip's released weights for ``arch`` were trained with.

    From ``open_clip.get_pretrained_cfg(arch, tag)``; without a tag (a local weights file, or
    random weights) from the architecture's tags when they all agree. Returns ``{"mean", "std",
    "interpolation", "resize_mode", "from"}``, or ``{"from": "model default"}`` for an
    architecture with no released weights. A local file for an architecture whose tags disagree
    (e.g. ``ViT-L-14``: ``laion2b_s32b_b82k`` uses mean/std 0.5) is an error asking which tag the
    file is (``open_clip:<arch>:<tag>=<file>``): guessing would be silently wrong.
    """
    import open_clip

    tags = [tag] if tag else list(open_clip.list_pretrained_tags_by_model(arch))
    groups: dict = {}
    for t in tags:
        c = open_clip.get_pretrained_cfg(arch, t) or {}
        key = tuple(tuple(c[k]) if isinstance(c.get(k), (list, tuple)) else c.get(k) for k in _PP_KEYS)
        if key[0] is None:   # a tag without preprocessing settings: open_clip uses its defaults
            continue
        groups.setdefault(key, []).append(t)
    if not groups:
        return {"from": "open_clip model default"}
    if len(groups) > 1:
        if weights_file is None:   # random weights: nothing to match; the model's default
            return {"from": "open_clip model default (its pretrained tags disagree)"}
        listing = "; ".join(f"{ts}: mean {k[0]}, std {k[1]}, {k[2]}, resize {k[3]}" for k, ts in groups.items())
        raise TeacherError(
            f"{specs.open_clip(arch)}'s released weights use different preprocessing ({listing}). Say which tag "
            f"{weights_file} is: {specs.open_clip(arch, '<tag>=' + str(weights_file))}")
    (key, ts), = groups.items()
    out = dict(zip(_PP_KEYS, key))
    out["mean"], out["std"] = tuple(out["mean"]), tuple(out["std"])
    out["interpolation"] = out["interpolation"] or "bicubic"
    out["resize_mode"] = out["resize_mode"] or "shortest"
    out["from"] = f"open_clip pretrained cfg {arch}/{','.join(ts)}"
    return out


def split_open_clip_pretrained(arch: str, pretrained: str) -> tuple:
    """``tag``, ``file`` or ``tag=file`` → ``(tag, file)`` (each may be None)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if Path(pretrained).expanduser().is_file():
        return None, str(Path(pretrained).expanduser())
    if "=" in pretrained:
        tag, file = pretrained.split("=", 1)
        if tag not in tags:
            raise TeacherError(f"{specs.open_clip(arch)} has no pretrained tag {tag!r}; known tags: {tags}")
        if not Path(file).expanduser().is_file():
            raise TeacherError(f"weights file {file!r} for {specs.open_clip(arch)} does not exist")
        return tag, str(Path(file).expanduser())
    if any(sep in pretrained for sep in ("/", os.sep)) or pretrained.endswith(
            (".pt", ".pth", ".bin", ".safetensors", ".ckpt")):
        raise TeacherError(f"weights file {pretrained!r} for {specs.open_clip(arch)} does not exist")
    if pretrained not in tags:
        raise TeacherError(f"{specs.open_clip(arch)} has no pretrained tag {pretrained!r}; known tags: {tags}")
    return pretrained, None


def load_open_clip_teacher(arch: str, pretrained: Optional[str] = None) -> Teacher:
    """An open_clip CLIP: random weights, a pretrained tag (download), a local file, or ``tag=file``.

    The preprocessing is the one the released weights use (:func:`open_clip_preprocess`), not
    open_clip's model default, which for most MobileCLIP/MobileCLIP2 configs is OpenAI's mean/std
    and bicubic while their weights expect mean 0 / std 1 and bilinear.
    """
    import open_clip

    from .checkpoint import load_state_into, load_weights

    _open_clip_arch(arch)
    tag, weights_file = split_open_clip_pretrained(arch, pretrained) if pretrained else (None, None)
    pp = open_clip_preprocess(arch, tag, weights_file)
    pp_kwargs = {} if "mean" not in pp else dict(
        image_mean=pp["mean"], image_std=pp["std"], image_interpolation=pp["interpolation"],
        image_resize_mode=pp["resize_mode"])
    download = tag if weights_file is None else None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=download, **pp_kwargs)
    except Exception as e:  # network failures surface as many exception types
        if download is None:
            raise
        raise TeacherError(
            f"could not get the pretrained weights {tag!r} for {specs.open_clip(arch)} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Without network access, download the checkpoint elsewhere "
            f"and pass its path: {specs.open_clip(arch, '/path/to/open_clip_model.safetensors')}"
        ) from e
    if weights_file is not None:
        load_state_into(model, load_weights(weights_file), str(weights_file))
    model.visual.preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {}, preprocess_from=pp["from"])
    tok = open_clip.get_tokenizer(arch)
    context = int(getattr(tok, "context_length", None) or open_clip.get_model_config(arch)["text_cfg"].get(
        "context_length", 77))
    cfg = open_clip.get_model_config(arch)
    image_size = cfg["vision_cfg"].get("image_size", 224)
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    return Teacher(model, preprocess, CallableTokenizer(tok, context, specs.open_clip(arch)),
                   specs.open_clip(arch, pretrained),
                   embed_dim=cfg.get("embed_dim"), image_size=image_size)


def load_hf_teacher(path_or_id: str) -> Teacher:
    """A transformers ``CLIPModel`` from a local directory (or a hub id, with network)."""
    from transformers import CLIPModel

    local = Path(path_or_id).expanduser()
    try:
        model = CLIPModel.from_pretrained(str(local) if local.is_dir() else path_or_id,
                                          local_files_only=local.is_dir())
    except (OSError, ValueError) as e:
        where = "directory" if local.is_dir() else "hub id (needs network)"
        raise TeacherError(f"could not load a transformers CLIPModel from {where} {path_or_id!r}: "
                           f"{str(e).splitlines()[0][:300]}") from e
    vcfg, tcfg = model.config.vision_config, model.config.text_config
    context = int(tcfg.max_position_embeddings)
    mean, std, interpolation = OPENAI_MEAN, OPENAI_STD, "bicubic"
    pp = local / "preprocessor_config.json"
    if local.is_dir() and pp.is_file():
        spec = json.loads(pp.read_text())
        mean = tuple(spec.get("image_mean", mean))
        std = tuple(spec.get("image_std", std))
        interpolation = {2: "bilinear", 3: "bicubic", 0: "nearest"}.get(spec.get("resample", 3), "bicubic")
    preprocess = ImagePreprocess(PreprocessConfig(int(vcfg.image_size), mean, std, interpolation, "shortest"))
    tokenizer = _hf_tokenizer(local if local.is_dir() else path_or_id, context, int(tcfg.vocab_size))

    def image_fn(images):
        return _tensor(model.get_image_features(pixel_values=images))

    def text_fn(tokens):
        return _tensor(model.get_text_features(input_ids=tokens))

    return Teacher(model, preprocess, tokenizer, specs.hf(path_or_id), encode_image=image_fn, encode_text=text_fn,
                   embed_dim=int(model.config.projection_dim), image_size=int(vcfg.image_size))


def _tensor(out: Any) -> torch.Tensor:
    # transformers 5 returns a model output object; 4.x a tensor.
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]


def _hf_tokenizer(source: Union[Path, str], context: int, vocab_size: int):
    has_files = isinstance(source, Path) and any((source / f).is_file() for f in (
        "tokenizer.json", "vocab.json", "tokenizer_config.json"))
    if has_files or not isinstance(source, Path):
        from transformers import AutoTokenizer

        try:
            hf_tok = AutoTokenizer.from_pretrained(str(source), local_files_only=isinstance(source, Path))
        except (OSError, ValueError) as e:
            raise TeacherError(f"could not load the tokenizer of {source}: {str(e).splitlines()[0][:300]}") from e

        def fn(texts):
            return hf_tok(texts, padding="max_length", truncation=True, max_length=context,
                          return_tensors="pt")["input_ids"]

        return CallableTokenizer(fn, context, specs.hf(source))
    # A directory with weights only: CLIP checkpoints share the CLIP BPE vocabulary.
    if vocab_size < 49408:
        raise TeacherError(
            f"{source} has no tokenizer files and its vocabulary ({vocab_size}) is smaller than CLIP's BPE "
            "(49408); save the tokenizer beside the model (tokenizer.save_pretrained)"
        )
    return Tokenizer(TokenizerConfig("clip-bpe", context))


def _import_callable(spec: str) -> Callable:
    """``py:package.module:function`` or ``py:path/to/file.py:function`` → the function."""
    import importlib
    import importlib.util
    import sys

    parsed = specs.parse(spec)
    target, sep, attr = parsed.target.rpartition(":") if parsed.kind == specs.PY else ("", "", "")
    if not sep or not target or not attr:
        raise TeacherError(f"{spec!r}: a Python teacher is py:<module or file.py>:<callable>, e.g. "
                           "py:my_pkg.teachers:build or py:teachers.py:build")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise TeacherError(f"{spec!r}: {str(path)!r} does not exist")
        mod_name = f"_mobileclip_teacher_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name != target.split(".")[0] and e.name != target:
                raise   # the teacher's own module failed to import one of its dependencies: a real error
            if os.getcwd() not in sys.path:   # console scripts do not put the working directory on the path
                sys.path.append(os.getcwd())    # last, so files there never shadow installed modules
                try:
                    module = importlib.import_module(target)
                except ModuleNotFoundError:
                    raise TeacherError(f"{spec!r}: no module named {target!r} (on sys.path or in the working "
                                       "directory)") from None
            else:
                raise TeacherError(f"{spec!r}: no module named {target!r}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TeacherError(f"{spec!r}: {target} has no callable {attr!r}")
    return fn


def load_py_teacher(spec: str) -> Teacher:
    """Bring your own teacher from the command line: ``py:<module or file.py>:<callable>``.

    The callable takes no arguments and returns a :class:`Teacher`, a module with ``encode_image``,
    ``encode_text`` and its own ``preprocess`` and ``tokenizer`` attributes, or a tuple
    ``(module, preprocess, tokenizer)``.
    """
    obj = _import_callable(spec)()
    if isinstance(obj, Teacher):
        return obj
    if isinstance(obj, tuple) and len(obj) == 3:
        module, preprocess, tokenizer = obj
    elif isinstance(obj, nn.Module):
        module, preprocess, tokenizer = obj, getattr(obj, "preprocess", None), getattr(obj, "tokenizer", None)
        if preprocess is None or tokenizer is None:
            raise TeacherError(f"{spec!r} returned a {type(obj).__name__} without its own preprocess and tokenizer "
                               "attributes; return (module, preprocess, tokenizer) or set module.preprocess and "
                               "module.tokenizer")
    else:
        raise TeacherError(f"{spec!r} returned a {type(obj).__name__}; expected a module with encode_image/"
                           "encode_text (and preprocess/tokenizer attributes), a (module, preprocess, tokenizer) "
                           "tuple, or a mobileclip Teacher")
    if not isinstance(module, nn.Module):
        raise TeacherError(f"{spec!r}: the teacher must be a torch.nn.Module, got {type(module).__name__}")
    image_size = getattr(module, "image_size", None)
    return wrap_teacher(module, preprocess, tokenizer, name=spec, embed_dim=getattr(module, "embed_dim", None),
                        image_size=image_size if isinstance(image_size, int) else None)


