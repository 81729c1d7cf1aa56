"""Trainable heads on frozen embeddings: one module per kind of head.

- :mod:`pathbench.heads.linear`: eva's linear probe for patch classification, batched over runs;
- :mod:`pathbench.heads.knn`: DINO's weighted kNN probe (one deterministic run);
- :mod:`pathbench.heads.eva_metrics`: eva's full metric set (loss, AUROC, accuracy, balanced
  accuracy, F1, precision, recall) from a head's logits or class scores;
- :mod:`pathbench.heads.abmil`: eva's ABMIL for slide classification from bags of patch embeddings;
- :mod:`pathbench.heads.segmentation` (with :mod:`.decoders` and :mod:`.dice`): eva's
  segmentation decoders trained with MONAI's Dice loss and scored with its Dice metric.

The slide and segmentation heads are imported where they are used (MONAI and the slide
readers are not needed for patch classification).
"""

from pathbench.heads.eva_metrics import METRIC_NAMES, classification_metrics, run_metrics
from pathbench.heads.knn import KnnProbe
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
    "KnnProbe",
    "METRIC_NAMES",
    "LinearProbe",
    "ProbeProtocol",
    "classification_metrics",
    "epoch_learning_rate",
    "epoch_permutation",
    "init_linear",
    "macro_accuracy",
    "macro_accuracy_batched",
    "protocol_adamw",
    "run_metrics",
    "summarise_runs",
]
