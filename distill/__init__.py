"""DINO + iBOT distillation of a large pathology foundation model into a ViT-B student.

The seed paper's recipe (H0-mini: H-Optimus-0 -> ViT-B/14 with 4 registers). The student is
exported to the students folder and registered as ``distilled:<name>`` through pathbench's
``pathbench.extractors`` entry point; pathbench itself never imports this package.

    python -m distill --config smoke --data tiles/ --teacher vit-tiny-random
    pathbench distill --config default --data /data/tcga_tiles --teacher-heads heads.safetensors
"""

from distill.config import DistillConfig, load_config

__all__ = ["DistillConfig", "load_config"]
