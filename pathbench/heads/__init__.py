"""Trainable heads on frozen embeddings: one module per kind of head.

- :mod:`pathbench.heads.linear`: eva's linear probe for patch classification, batched over runs;
- :mod:`pathbench.heads.abmil`: eva's ABMIL for slide classification from bags of patch embeddings;
- :mod:`pathbench.heads.segmentation` (with :mod:`.decoders` and :mod:`.dice`): eva's
  segmentation decoders trained with MONAI's Dice loss and scored with its Dice metric.

Only the linear probe is imported here; the others are imported where they are used (MONAI
and the slide readers are not needed for patch classification).
"""

from pathbench.heads.linear import (
    BatchedEarlyStopping,
    Head,
    LinearProbe,
    ProbeProtocol,
    epoch_learning_rate,
    epoch_permutation,
    init_linear,
    macro_accuracy,
    macro_accuracy_batched,
    protocol_adamw,
    summarise_runs,
)

__all__ = [
    "BatchedEarlyStopping",
    "Head",
    "LinearProbe",
    "ProbeProtocol",
    "epoch_learning_rate",
    "epoch_permutation",
    "init_linear",
    "macro_accuracy",
    "macro_accuracy_batched",
    "protocol_adamw",
    "summarise_runs",
]
