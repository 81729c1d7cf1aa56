"""Trainable heads on frozen embeddings: one module per kind of head.

- :mod:`pathbench.heads.linear`: eva's linear probe for patch classification, batched over runs.
- :mod:`pathbench.heads.decoders`: eva's segmentation decoders and ViT tokens as feature maps.
- :mod:`pathbench.heads.segmentation`: training those decoders (cached token grids or online crops).
- :mod:`pathbench.heads.dice`: eva's Dice loss and ``MonaiDiceScore`` (MONAI underneath).
"""

from pathbench.heads.decoders import (
    ConvDecoderMS,
    ConvDecoderWithImage,
    build_decoder,
    grid_from_tokens,
    patch_grid,
    tokens_to_grid,
)
from pathbench.heads.dice import EvaDiceLoss, MonaiDiceScore, monai_dice_score
from pathbench.heads.linear import (
    BatchedEarlyStopping,
    Head,
    LinearProbe,
    ProbeProtocol,
    adamw_step_,
    epoch_learning_rate,
    epoch_permutation,
    init_linear,
    macro_accuracy,
    macro_accuracy_batched,
    summarise_runs,
)
from pathbench.heads.segmentation import (
    CONSEP_PROTOCOL,
    MONUSAC_PROTOCOL,
    CachedSplit,
    CropSplit,
    train_segmentation,
)

__all__ = [
    "CONSEP_PROTOCOL",
    "MONUSAC_PROTOCOL",
    "BatchedEarlyStopping",
    "CachedSplit",
    "ConvDecoderMS",
    "ConvDecoderWithImage",
    "CropSplit",
    "EvaDiceLoss",
    "MonaiDiceScore",
    "Head",
    "LinearProbe",
    "ProbeProtocol",
    "adamw_step_",
    "build_decoder",
    "epoch_learning_rate",
    "epoch_permutation",
    "grid_from_tokens",
    "init_linear",
    "macro_accuracy",
    "macro_accuracy_batched",
    "monai_dice_score",
    "patch_grid",
    "summarise_runs",
    "tokens_to_grid",
    "train_segmentation",
]
