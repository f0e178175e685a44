from .datasets import (
    CaptionDataset, ImageFolderDataset, SyntheticDataset, collate_skip, write_synthetic,
)
from .synthetic import HELDOUT_COMBOS, SyntheticGenerator, SyntheticSample, classnames, heldout_classnames

__all__ = [
    "CaptionDataset", "HELDOUT_COMBOS", "ImageFolderDataset", "SyntheticDataset",
    "SyntheticGenerator", "SyntheticSample", "classnames", "collate_skip", "heldout_classnames", "write_synthetic",
]
