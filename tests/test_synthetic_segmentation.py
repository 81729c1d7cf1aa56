"""Synthetic CoNSeP- and MoNuSAC-like sets: real formats, labels from the tissue, learnable."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from torch.nn import functional as F

from pathbench.data.consep import CoNSePDataset
from pathbench.data.monusac import MoNuSACDataset, parse_monusac_xml
from pathbench.data.segmentation import ResizedSegmentationDataset, stack_items
from pathbench.data.synthetic_segmentation import make_synthetic_segmentation
from pathbench.heads import ProbeProtocol
from pathbench.heads.segmentation import CachedSplit, normalise_images, train_segmentation


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return make_synthetic_segmentation(tmp_path_factory.mktemp("synthetic-seg"))


def test_synthetic_consep_is_read_by_the_consep_reader(synthetic_root):
    train = CoNSePDataset(synthetic_root / "consep", "train", strict=False)
    val = CoNSePDataset(synthetic_root / "consep", "val", strict=False)
    assert (len(train), len(val)) == (16, 8)  # 4 and 2 images of 500 x 500, four 250 x 250 patches each
    types = scipy.io.loadmat(synthetic_root / "consep" / "Train" / "Labels" / "train_1.mat")["type_map"]
    assert types.shape == (500, 500) and set(np.unique(types).astype(int)) <= set(range(8))
    labels = np.concatenate([train.mask(i).ravel() for i in range(len(train))])
    counts = np.bincount(labels, minlength=5)
    assert (counts > 0).all()  # every eva class occurs
    assert 0.02 < 1 - counts[0] / counts.sum() < 0.3  # nuclei are a minority of the pixels


def test_synthetic_monusac_is_read_by_the_monusac_reader_with_ambiguous_only_in_test(synthetic_root):
    train = MoNuSACDataset(synthetic_root / "monusac", "train", strict=False)
    test = MoNuSACDataset(synthetic_root / "monusac", "test", strict=False)
    assert (len(train), len(test)) == (8, 4)
    sizes = {train[i].shape[:2] for i in range(len(train))}
    assert len(sizes) > 1 and all(150 <= min(s) and max(s) <= 450 for s in sizes)
    train_labels = np.concatenate([train.mask(i).ravel() for i in range(len(train))])
    test_labels = np.concatenate([test.mask(i).ravel() for i in range(len(test))])
    assert set(np.unique(train_labels)) == {0, 1, 2, 3, 4}
    assert 5 in set(np.unique(test_labels))
    regions = parse_monusac_xml(test.xml_paths[0])
    assert all(len(r.vertices) == 16 for r in regions)


def test_generation_is_deterministic_and_a_second_call_is_free(tmp_path, synthetic_root):
    other = make_synthetic_segmentation(tmp_path / "again")
    for split in ("train", "val"):
        assert CoNSePDataset(other / "consep", split, strict=False).fingerprint == \
            CoNSePDataset(synthetic_root / "consep", split, strict=False).fingerprint
    assert MoNuSACDataset(other / "monusac", "test", strict=False).fingerprint == \
        MoNuSACDataset(synthetic_root / "monusac", "test", strict=False).fingerprint
    marker = other / "consep" / "synthetic.json"
    stamp = marker.stat().st_mtime_ns
    make_synthetic_segmentation(tmp_path / "again")
    assert marker.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_decoder_learns_the_synthetic_nuclei(synthetic_root, one_torch_thread):
    def cached(split):
        dataset = ResizedSegmentationDataset(CoNSePDataset(synthetic_root / "consep", split, strict=False), 64)
        images, masks = stack_items(dataset)
        pixels = normalise_images(torch.from_numpy(images), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        grids = torch.cat([F.avg_pool2d(pixels, 16), F.avg_pool2d(pixels * pixels, 16)], dim=1)
        return CachedSplit(grids, masks, images)

    train, val = cached("train"), cached("val")
    protocol = ProbeProtocol(lr=2e-3, batch_size=8, max_steps=40, patience=50, runs=1)
    trained = train_segmentation(train, val, num_classes=5, protocol=protocol, device="cpu")[0]
    untrained = train_segmentation(train, val, num_classes=5, device="cpu",
                                   protocol=ProbeProtocol(lr=2e-3, batch_size=8, max_steps=1, runs=1))[0]
    assert trained["val_dice"] > 0.1
    assert trained["val_dice"] > untrained["val_dice"] + 0.05
