"""The synthetic Camelyon16 and PANDA slides: eva's layouts, OpenSlide-readable pyramids, label-dependent tissue."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from pathbench.data.slide_bags import CAM16_SMALL, PANDA_SMALL, open_bags
from pathbench.data.slides import camelyon16_slides, panda_slides
from pathbench.data.synthetic_plism import rgb_to_hed
from pathbench.data.synthetic_slides import (
    CAMELYON16_MPPS,
    GENERATOR_VERSION,
    PANDA_MPP,
    make_synthetic_slides,
    synthetic_slides_root,
    synthetic_task_paths,
)
from pathbench.data.wsi import open_slide


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    start = time.perf_counter()
    make_synthetic_slides(root)
    return root, time.perf_counter() - start


def test_written_quickly_small_and_only_once(synthetic):
    root, seconds = synthetic
    assert seconds < 30
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 8 * 2**20
    marker = root / "camelyon16" / "synthetic.json"
    before = marker.stat().st_mtime_ns
    make_synthetic_slides(root)
    assert marker.stat().st_mtime_ns == before
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    assert synthetic_slides_root("/cache").as_posix().endswith(f"datasets/synthetic-eva-slides-v{GENERATOR_VERSION}")


def test_every_slide_is_a_pyramid_openslide_reads_with_its_mpp(synthetic):
    root, _ = synthetic
    paths = synthetic_task_paths(root)
    slides = sorted(paths["camelyon16"].rglob("*.tif")) + sorted(paths["panda"].rglob("*.tiff"))
    assert len(slides) == 14 + 20
    for path in slides:
        with open_slide(path) as reader:
            assert reader.properties["openslide.vendor"] == "generic-tiff"
            assert len(reader.level_dimensions) == 3
            assert reader.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
            expected = (PANDA_MPP,) if path.suffix == ".tiff" else CAMELYON16_MPPS
            assert any(reader.mpp == pytest.approx(mpp) for mpp in expected)


def test_evas_splits_hold_both_classes_and_every_grade(synthetic):
    paths = synthetic_task_paths(synthetic[0])
    for split, size in (("train", 6), ("val", 4), ("test", 4)):
        slides = camelyon16_slides(paths["camelyon16"], split)
        assert len(slides) == size and {s.label for s in slides} == {0, 1}
    table = pd.read_csv(paths["panda_labels"], index_col=0)
    assert list(table.columns) == ["image_id", "data_provider", "isup_grade", "gleason_score", "loss_rank", "weight",
                                   "weight2", "noise_ratio_5", "noise_ratio_10", "noise_ratio_15", "noise_ratio_20"]
    assert (table["noise_ratio_10"] == 0).sum() == 2
    for split in ("train", "val", "test"):
        assert sorted(s.label for s in panda_slides(paths["panda"], paths["panda_labels"], split)) == list(range(6))


def test_tissue_depends_on_the_label(synthetic):
    paths = synthetic_task_paths(synthetic[0])

    def haematoxylin_to_eosin(slide) -> float:
        with open_slide(slide.path) as reader:
            pixels = reader.read_level(1).reshape(-1, 3).astype(np.int64)
        tissue = pixels[pixels.max(1) - pixels.min(1) > 30].astype(np.uint8)
        concentrations = rgb_to_hed(tissue).mean(axis=0)
        return float(concentrations[0] / concentrations[1])

    # tumour lesions are hyperchromatic: more haematoxylin for the eosin on every tumour slide
    slides = camelyon16_slides(paths["camelyon16"])
    normal = [haematoxylin_to_eosin(s) for s in slides if s.label == 0]
    tumour = [haematoxylin_to_eosin(s) for s in slides if s.label == 1]
    assert min(tumour) > max(normal)
    bags, skipped = open_bags(slides, CAM16_SMALL)
    assert not skipped and all(6 <= len(b) <= 20 for b in bags)
    panda = panda_slides(paths["panda"], paths["panda_labels"])
    bags, skipped = open_bags(panda, PANDA_SMALL)
    assert not skipped and all(4 <= len(b) <= 9 for b in bags)


@pytest.mark.slow
def test_an_abmil_learns_camelyon16_from_a_random_vit(synthetic, tiny_extractor):
    from pathbench.features import extract_features
    from pathbench.heads.abmil import AbmilProtocol, train_abmil

    paths = synthetic_task_paths(synthetic[0])
    bags, _ = open_bags(camelyon16_slides(paths["camelyon16"]), CAM16_SMALL)
    embeddings = [np.asarray(extract_features(tiny_extractor, b, pooling="cls", batch_size=8, shard_size=8,
                                              progress=False)) for b in bags]
    splits = {s: ([e for e, b in zip(embeddings, bags, strict=True) if b.slide.split == s],
                  [b.slide.label for b in bags if b.slide.split == s]) for s in ("train", "val", "test")}
    rows = train_abmil(splits["train"], splits["val"], splits["test"], num_classes=2,
                       protocol=AbmilProtocol(runs=5), device="cpu")
    assert np.mean([r["val_value"] for r in rows]) > 0.75
    assert np.mean([r["value"] for r in rows]) > 0.6
