"""Trainable heads on frozen embeddings: one module per kind of head.

- :mod:`pathbench.heads.linear`: eva's linear probe for patch classification, batched over runs.
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
