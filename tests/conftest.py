"""Shared fixtures: every test gets its own feature cache and never touches the network."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("pathbench-cache")
    monkeypatch.setenv("PATHBENCH_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield cache


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread; the setting is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_extractor():
    """The random-weight ViT-Ti used across tests (built once per session)."""
    import torch

    from pathbench.extractors import load_extractor

    torch.set_num_threads(1)
    return load_extractor("vit-tiny-random", device="cpu")


@pytest.fixture
def random_tiles():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(40, 224, 224, 3), dtype=np.uint8)
