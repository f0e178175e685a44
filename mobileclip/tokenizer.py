"""The CLIP BPE tokenizer (open_clip's, with its shipped vocabulary), sized per model."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch

from .config import TokenizerConfig
from .errors import ConfigError


class Tokenizer:
    """Callable: ``tokenizer(["a photo of a cat", ...])`` → ``LongTensor [N, context_length]``.

    Sequences are ``<start> tokens… <end>`` padded with 0; longer texts are truncated with
    the end token kept (open_clip's rule), so ``argmax`` always finds the end token.
    """

    def __init__(self, cfg: TokenizerConfig | None = None) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.cfg = cfg or TokenizerConfig()
        if self.cfg.name != "clip-bpe":
            raise ConfigError(f"unknown tokenizer {self.cfg.name!r}; known: ['clip-bpe']")
        self._tok = SimpleTokenizer(context_length=self.cfg.context_length)

    @property
    def context_length(self) -> int:
        return self.cfg.context_length

    @property
    def vocab_size(self) -> int:
        return len(self._tok.encoder)

    @property
    def vocab_path(self) -> Path:
        """The BPE merges file, for bundling with exported models."""
        from open_clip.tokenizer import default_bpe

        return Path(default_bpe())

    @property
    def eot_token_id(self) -> int:
        return self._tok.eot_token_id

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("the tokenizer takes a string or a list of strings")
        return self._tok(texts, context_length=self.cfg.context_length)

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.cfg.name!r}, context_length={self.context_length})"
