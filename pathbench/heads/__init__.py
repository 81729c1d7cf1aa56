"""Trainable heads on frozen embeddings: one module per kind of head.

- :mod:`pathbench.heads.linear`: eva's linear probe for patch classification, batched over runs.
- :mod:`pathbench.heads.abmil`: eva's ABMIL for slide classification, runs batched where that is faster.
- :mod:`pathbench.heads.metrics`: the metrics eva reports for its slide tasks (torchmetrics' definitions).
"""

from pathbench.heads.abmil import ABMIL, AbmilHead, AbmilProtocol, train_abmil
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
from pathbench.heads.metrics import binary_balanced_accuracy, multiclass_macro_accuracy

__all__ = [
    "ABMIL",
    "AbmilHead",
    "AbmilProtocol",
    "BatchedEarlyStopping",
    "Head",
    "LinearProbe",
    "ProbeProtocol",
    "adamw_step_",
    "binary_balanced_accuracy",
    "epoch_learning_rate",
    "epoch_permutation",
    "init_linear",
    "macro_accuracy",
    "macro_accuracy_batched",
    "multiclass_macro_accuracy",
    "summarise_runs",
    "train_abmil",
]
