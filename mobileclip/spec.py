"""Model specs: the one module that knows their grammar.

A spec names a model on the command line and in configs. :func:`parse` reads it once into a
:class:`ModelSpec`; everything else dispatches on ``ModelSpec.kind`` (:mod:`mobileclip.factory` is the
only dispatcher) and never looks at prefixes itself.

================  ===============================================  ======================================
kind              spelling                                         what it is
================  ===============================================  ======================================
``registered``    ``mobileclip-s0``                                a registered architecture (random
                                                                   weights unless ``pretrained=``)
``checkpoint``    ``runs/x/student`` (a directory)                 one of our checkpoints (config.json +
                                                                   model.safetensors)
``open_clip``     ``open_clip:<arch>[:<tag> | :<file> |            an open_clip model: random weights, a
                  :<tag>=<file>]``                                 pretrained tag, or a local weights file
``hf``            ``hf:<directory or hub id>``                     a transformers ``CLIPModel``
``py``            ``py:<module or file.py>:<callable>``            your own model, built by your function
================  ===============================================  ======================================
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import ConfigError

OPEN_CLIP, HF, PY = "open_clip", "hf", "py"
REGISTERED, CHECKPOINT = "registered", "checkpoint"
PREFIXES = {OPEN_CLIP: "open_clip:", HF: "hf:", PY: "py:"}
THIRD_PARTY = (OPEN_CLIP, HF, PY)
CONFIG_FILE = "config.json"   # == mobileclip.checkpoint.CONFIG_NAME (checked by a test; importing it here would
                              # make this torch-free module import torch)

# One line per form, for every --model / --teacher / student= help text.
FORMS = ("a registered name (`mobileclip models`; random weights)", "a checkpoint directory",
         "open_clip:<arch>[:<tag> | :<weights file> | :<tag>=<file>]", "hf:<CLIPModel directory or hub id>",
         "py:<module or file.py>:<callable>")
HELP = "; ".join(FORMS)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``target`` is the registered name, the checkpoint path, the open_clip architecture,
    the Hugging Face directory or hub id, or the ``module:callable`` of a ``py:`` spec; ``weights`` is an
    open_clip spec's third part (a pretrained tag, a weights file, or ``tag=file``)."""

    kind: str
    target: str
    weights: Optional[str] = None

    @property
    def third_party(self) -> bool:
        """open_clip, Hugging Face and ``py:`` models: teachers (and export sources), not trainable students."""
        return self.kind in THIRD_PARTY

    def __str__(self) -> str:
        if self.kind in PREFIXES:
            return PREFIXES[self.kind] + self.target + (f":{self.weights}" if self.weights else "")
        return self.target

    def with_weights(self, weights: Optional[str]) -> "ModelSpec":
        if self.kind != OPEN_CLIP:
            raise ConfigError(f"{self}: only open_clip specs carry weights in the spec")
        return ModelSpec(OPEN_CLIP, self.target, weights or None)

    def weights_file(self) -> tuple[Optional[str], Optional[str]]:
        """An open_clip spec's weights as ``(tag, file)``: ``tag=file``, a file that exists, or a tag."""
        w = self.weights
        if not w:
            return None, None
        if Path(w).expanduser().is_file():
            return None, w
        if "=" in w:
            tag, file = w.split("=", 1)
            return tag, file
        return w, None


def is_third_party(text) -> bool:
    """Whether ``text`` is an open_clip, Hugging Face or ``py:`` spec (without parsing the rest)."""
    return isinstance(text, str) and text.startswith(tuple(PREFIXES.values()))


def parse(text: Union[str, Path], pretrained: Optional[Union[str, Path]] = None) -> ModelSpec:
    """Read a spec. Without a prefix: a directory holding ``config.json`` is a checkpoint (unless ``pretrained``
    weights are given for a registered name of the same spelling), then a registered name, then anything
    path-like is a checkpoint (whose loader says clearly what is missing). A ``.py`` file without ``py:`` gets
    the spelling it probably meant."""
    text = str(text)
    if not text:
        raise ConfigError(f"an empty model spec; give {HELP}")
    for kind, prefix in PREFIXES.items():
        if text.startswith(prefix):
            body = text[len(prefix):]
            if kind == OPEN_CLIP:
                arch, _, weights = body.partition(":")
                if not arch:
                    raise ConfigError(f"{text!r}: an open_clip spec is open_clip:<arch>[:<pretrained tag or file>]")
                return ModelSpec(OPEN_CLIP, arch, weights or None)
            if not body:
                raise ConfigError(f"{text!r}: " + ("a Hugging Face spec is hf:<local dir or hub id>" if kind == HF
                                                  else "a Python spec is py:<module or file.py>:<callable>"))
            return ModelSpec(kind, body)
    from .zoo import list_models

    path = Path(text).expanduser()
    if path.suffix == ".py" and path.is_file():
        raise ConfigError(f"{text!r} is a Python file, not a model: a model built by your own code is "
                          f"py:{text}:<callable> (the function that returns it)")
    if (pretrained is None and (path / CONFIG_FILE).is_file()) or (text not in list_models() and (
            path.is_dir() or "/" in text or text.startswith("."))):
        return ModelSpec(CHECKPOINT, text)
    return ModelSpec(REGISTERED, text)


def open_clip(arch: str, weights: Optional[str] = None) -> str:
    """The spec text of an open_clip model."""
    return str(ModelSpec(OPEN_CLIP, arch, weights or None))


def hf(path_or_id: Union[str, Path]) -> str:
    """The spec text of a Hugging Face CLIPModel."""
    return str(ModelSpec(HF, str(path_or_id)))
