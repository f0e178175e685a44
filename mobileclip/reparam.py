"""Fold train-time branches (MobileOne / RepMixer / conv+BN) into single convolutions."""
from __future__ import annotations

from copy import deepcopy

from torch import nn


def _already_folded(m: nn.Module) -> bool:
    # timm's MobileOne-style blocks and our RepMixer set `reparam_conv` when folded.
    return getattr(m, "reparam_conv", None) is not None


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every reparameterizable block folded, in eval mode.

    Covers timm's MCi / FastViT / MobileOne blocks (``reparameterize()``), RepVGG-style
    ``switch_to_deploy()`` and ``fuse()`` modules, and this package's RepMixer text blocks.
    Idempotent: blocks already folded are skipped (some timm blocks fail if folded twice).
    ``inplace=False`` (the default) deep-copies first.
    """
    if not inplace:
        model = deepcopy(model)

    def walk(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if not _already_folded(child):
                if hasattr(child, "fuse") and callable(child.fuse):
                    child = child.fuse()
                    setattr(parent, name, child)
                elif hasattr(child, "reparameterize"):
                    child.reparameterize()
                elif hasattr(child, "switch_to_deploy"):
                    child.switch_to_deploy()
            walk(child)

    walk(model)
    model.eval()
    model.reparameterized = True
    return model


def unfolded_branches(model: nn.Module) -> list[str]:
    """Names of modules that still carry train-time branches (empty after :func:`reparameterize`)."""
    names = []
    for name, m in model.named_modules():
        if not hasattr(m, "reparameterize"):
            continue
        # Folded blocks hold a `reparam_conv`; our ConvFFN drops its BatchNorm when folded.
        if getattr(m, "reparam_conv", "n/a") is None or getattr(m, "bn", None) is not None:
            names.append(name or type(m).__name__)
    return names
