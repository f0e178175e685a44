"""Text towers: the CLIP text transformer and MobileCLIP's MCt variant.

MCt (MobileCLIP, Vasu et al. 2024) puts a RepMixer block before and after a short
stack of transformer layers: convolutional token mixing that folds into a single
depthwise convolution at inference (:meth:`RepMixerBlock.reparameterize`). Attention
is non-causal by default (as in MobileCLIP) and uses ``scaled_dot_product_attention``
without additive ``-inf`` masks, so the graph stays finite under fp16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextTowerConfig


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer (LayerNorm → attention, LayerNorm → GELU MLP)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, causal: bool) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def _fold_bn(kernel: torch.Tensor, bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a (bias-free) conv into (kernel, bias)."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return kernel * scale.reshape(-1, 1, 1), bn.bias - bn.running_mean * scale


def _identity_kernel(channels: int, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    k = torch.zeros(channels, 1, kernel_size, dtype=like.dtype, device=like.device)
    k[:, 0, kernel_size // 2] = 1.0
    return k


def _depthwise(channels: int, kernel_size: int, bias: bool) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)


class RepMixer(nn.Module):
    """``x + γ·(mixer(x) − norm(x))`` over the sequence axis; ``x`` is ``[B, C, N]``.

    ``mixer`` is a MobileOne block without activation: a depthwise k-conv + BN, optionally a
    depthwise 1-conv + BN ("scale" branch; Apple's MCt has none) and a BN skip branch. ``norm``
    is a BN skip branch.
    All of it folds into one depthwise k-conv with bias.
    """

    def __init__(self, dim: int, kernel_size: int, layer_scale_init: float = 1e-5, scale_branch: bool = True) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.norm_skip = nn.BatchNorm1d(dim)
        self.mix_conv = _depthwise(dim, kernel_size, bias=False)
        self.mix_conv_bn = nn.BatchNorm1d(dim)
        # Apple's MCt has no scale branch (see TextTowerConfig.repmixer_scale_branch).
        self.mix_scale = _depthwise(dim, 1, bias=False) if scale_branch else None
        self.mix_scale_bn = nn.BatchNorm1d(dim) if scale_branch else None
        self.mix_skip = nn.BatchNorm1d(dim)
        self.layer_scale = nn.Parameter(torch.full((dim, 1), layer_scale_init))
        self.reparam_conv: nn.Conv1d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        mixed = self.mix_conv_bn(self.mix_conv(x)) + self.mix_skip(x)
        if self.mix_scale is not None:
            mixed = mixed + self.mix_scale_bn(self.mix_scale(x))
        return x + self.layer_scale * (mixed - self.norm_skip(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:  # idempotent
            return
        k, pad = self.kernel_size, self.kernel_size // 2
        ident = _identity_kernel(self.dim, k, self.mix_conv.weight)
        w_conv, b_conv = _fold_bn(self.mix_conv.weight, self.mix_conv_bn)
        if self.mix_scale is not None:
            w_scale, b_scale = _fold_bn(F.pad(self.mix_scale.weight, (pad, pad)), self.mix_scale_bn)
        else:
            w_scale, b_scale = torch.zeros_like(w_conv), torch.zeros_like(b_conv)
        w_skip, b_skip = _fold_bn(ident, self.mix_skip)
        w_norm, b_norm = _fold_bn(ident, self.norm_skip)
        ls = self.layer_scale.reshape(-1)
        weight = ident + ls.reshape(-1, 1, 1) * (w_conv + w_scale + w_skip - w_norm)
        bias = ls * (b_conv + b_scale + b_skip - b_norm)
        conv = _depthwise(self.dim, k, bias=True).to(weight)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.reparam_conv = conv
        for name in ("norm_skip", "mix_conv", "mix_conv_bn", "mix_scale", "mix_scale_bn", "mix_skip", "layer_scale"):
            delattr(self, name)


class ConvFFN(nn.Module):
    """Depthwise k-conv + BN, then a pointwise GELU MLP (as 1x1 convs); ``x`` is ``[B, C, N]``."""

    def __init__(self, dim: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = _depthwise(dim, kernel_size, bias=False)
        self.bn: nn.BatchNorm1d | None = nn.BatchNorm1d(dim)
        self.fc1 = nn.Conv1d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv1d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.fc2(self.act(self.fc1(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is None:  # idempotent
            return
        weight, bias = _fold_bn(self.conv.weight, self.bn)
        conv = _depthwise(self.conv.in_channels, self.conv.kernel_size[0], bias=True).to(weight)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.conv, self.bn = conv, None


class RepMixerBlock(nn.Module):
    """MetaFormer block with RepMixer token mixing, on ``[B, N, C]`` sequences."""

    def __init__(self, dim: int, kernel_size: int = 11, mlp_ratio: float = 4.0, layer_scale_init: float = 1e-5,
                 scale_branch: bool = True) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init, scale_branch)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio), kernel_size)
        self.layer_scale = nn.Parameter(torch.full((dim, 1), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x.transpose(1, 2))
        x = x + self.layer_scale * self.convffn(x)
        return x.transpose(1, 2)

    def reparameterize(self) -> None:
        self.token_mixer.reparameterize()
        self.convffn.reparameterize()


class TextTransformer(nn.Module):
    """Token + position embedding → layers → LayerNorm → EOT token → projection."""

    def __init__(self, cfg: TextTowerConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        blocks: list[nn.Module] = [
            TransformerLayer(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.causal) for _ in range(cfg.layers)
        ]
        if cfg.variant == "mct":
            blocks = [RepMixerBlock(cfg.width, cfg.repmixer_kernel, cfg.mlp_ratio,
                                    scale_branch=cfg.repmixer_scale_branch), *blocks,
                      RepMixerBlock(cfg.width, cfg.repmixer_kernel, cfg.mlp_ratio,
                                    scale_branch=cfg.repmixer_scale_branch)]
        self.blocks = nn.ModuleList(blocks)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # CLIP's initialisation (Radford et al.; open_clip TextTransformer.init_parameters)
        w, n = self.cfg.width, max(1, self.cfg.layers)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std, proj_std, fc_std = w**-0.5, (w**-0.5) * ((2 * n) ** -0.5), (2 * w) ** -0.5
        for block in self.blocks:
            if isinstance(block, TransformerLayer):
                nn.init.normal_(block.attn.qkv.weight, std=attn_std)
                nn.init.zeros_(block.attn.qkv.bias)
                nn.init.normal_(block.attn.out.weight, std=proj_std)
                nn.init.zeros_(block.attn.out.bias)
                nn.init.normal_(block.mlp[0].weight, std=fc_std)
                nn.init.normal_(block.mlp[2].weight, std=proj_std)
        nn.init.normal_(self.projection, std=w**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.context_length:
            raise ValueError(f"got {n} tokens but the context length is {self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        # The end-of-text token has the largest id in CLIP's vocabulary: pool there.
        eot = tokens.argmax(dim=-1)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return x @ self.projection
