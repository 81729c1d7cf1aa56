"""pathbench: a benchmark-first evaluation toolkit for pathology foundation models."""

__version__ = "0.1.0"
