"""eva's Camelyon16 and PANDA slide lists, slide bags as tile datasets, and eva's slide embedding format."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from pathbench.data.eva_slides import read_eva_coords, read_eva_slide_embeddings, write_eva_slide_embeddings
from pathbench.data.patching import PatchCoordinates
from pathbench.data.slide_bags import (
    CAM16_SMALL,
    PANDA_SMALL,
    SlideSkipError,
    bag_for_slide,
    open_bags,
    parse_item_id,
    slides_for_task,
)
from pathbench.data.slides import (
    CAMELYON16_VAL_SLIDES,
    Slide,
    camelyon16_slides,
    panda_slides,
    read_panda_labels,
    stratified_split,
)
from pathbench.data.synthetic_slides import write_pyramidal_tiff
from pathbench.errors import DataError
from pathbench.features import extract_features

# --------------------------------------------------------------------------------------
# Camelyon16


def camelyon16_layout(root, training=("normal_001", "normal_010", "tumor_001", "tumor_002"),
                      test=(("test_001", "Tumor"), ("test_002", "Normal"))):
    for name in training:
        path = root / "training" / name.split("_")[0] / f"{name}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    (root / "testing" / "images").mkdir(parents=True, exist_ok=True)
    for name, _ in test:
        (root / "testing" / "images" / f"{name}.tif").touch()
    lines = [f"{name},{label},Macro,Primary" if label == "Tumor" else f"{name},{label},," for name, label in test]
    (root / "testing" / "reference.csv").write_text("\n".join(lines) + "\n")
    return root


def test_evas_validation_list_has_its_54_slides():
    assert len(CAMELYON16_VAL_SLIDES) == 54
    assert sum(s.startswith("normal") for s in CAMELYON16_VAL_SLIDES) == 32
    assert {"normal_152", "tumor_001", "tumor_109"} <= CAMELYON16_VAL_SLIDES


def test_camelyon16_splits_follow_evas_validation_list_and_labels(tmp_path):
    root = camelyon16_layout(tmp_path)
    (root / "training" / "normal" / "deeper").mkdir()
    (root / "training" / "normal" / "deeper" / "normal_099.tif").touch()  # eva's glob does not recurse
    train, val, test = (camelyon16_slides(root, s) for s in ("train", "val", "test"))
    assert [(s.slide_id, s.label) for s in train] == [("normal_001", 0), ("tumor_002", 1)]
    assert [(s.slide_id, s.label) for s in val] == [("normal_010", 0), ("tumor_001", 1)]
    assert [(s.slide_id, s.label, s.origin) for s in test] == [("test_001", 1, "testing/images/test_001.tif"),
                                                               ("test_002", 0, "testing/images/test_002.tif")]
    everything = camelyon16_slides(root)
    assert [s.origin for s in everything] == sorted(s.origin for s in everything)
    assert {s.split for s in everything} == {"train", "val", "test"}
    with pytest.raises(DataError, match="expected 216 slides"):
        camelyon16_slides(root, "train", check_counts=True)


def test_camelyon16_layout_problems_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="training/normal"):
        camelyon16_slides(tmp_path, "train")
    root = camelyon16_layout(tmp_path / "a")
    (root / "testing" / "images" / "test_003.tif").touch()
    with pytest.raises(DataError, match="test_003.tif has no row"):
        camelyon16_slides(root, "test")
    root = camelyon16_layout(tmp_path / "b", training=("normal_001", "lymph_002"))
    (root / "training" / "tumor").mkdir()
    with pytest.raises(DataError, match="normal or tumor"):
        camelyon16_slides(root, "train")
    root = camelyon16_layout(tmp_path / "c")
    (root / "testing" / "reference.csv").unlink()
    with pytest.raises(DataError, match="reference.csv"):
        camelyon16_slides(root, "test")
    with pytest.raises(DataError, match="unknown split"):
        camelyon16_slides(root, "valid")


# --------------------------------------------------------------------------------------
# PANDA


def panda_layout(root, per_grade=(25, 22, 20, 21, 20, 23), noisy_every=7):
    images = root / "train_images"
    images.mkdir(parents=True)
    rows = []
    index = 0
    for grade, count in enumerate(per_grade):
        for _ in range(count):
            image_id = f"{index:032x}"
            (images / f"{image_id}.tiff").touch()
            rows.append({"image_id": image_id, "data_provider": "radboud", "isup_grade": grade,
                         "noise_ratio_10": 0 if index % noisy_every == 3 else 1})
            index += 1
    labels = root / "labels.csv"
    pd.DataFrame(rows).sample(frac=1, random_state=0).to_csv(labels)
    return root, labels, pd.DataFrame(rows)


def test_stratified_split_is_evas_per_class_shuffle_and_floor():
    targets = [0] * 10 + [1] * 3
    train, val, test = stratified_split(targets, 0.7, 0.15, 0.15, seed=42)
    # by hand: one generator; class 0 (indices 0..9) is shuffled first, then class 1 (10..12)
    rng = np.random.default_rng(42)
    class0, class1 = np.arange(10), np.arange(10, 13)
    rng.shuffle(class0)
    rng.shuffle(class1)
    # class 0: floor(7) = 7, floor(1.5) = 1, rest 2; class 1: floor(2.1) = 2, floor(0.45) or 1 = 1, rest 0
    assert train == class0[:7].tolist() + class1[:2].tolist()
    assert val == class0[7:8].tolist() + class1[2:3].tolist()
    assert test == class0[8:].tolist()
    # ratios not summing to 1: every part is floor(ratio * n) or 1, the rest unused
    small = stratified_split(targets, 0.1, 0.05, 0.05, seed=42)
    assert [len(part) for part in small] == [1 + 1, 1 + 1, 1 + 1]


def test_panda_keeps_noise_ratio_10_rows_and_splits_like_eva(tmp_path):
    root, labels, table = panda_layout(tmp_path)
    kept = table[table["noise_ratio_10"] != 0].reset_index(drop=True)  # sorted ids = sorted file names
    expected = stratified_split(kept["isup_grade"].tolist(), 0.1, 0.05, 0.05, seed=42)
    for split, indices in zip(("train", "val", "test"), expected, strict=True):
        slides = panda_slides(root, labels, split)
        assert [s.slide_id for s in slides] == kept["image_id"][indices].tolist()
        assert [s.label for s in slides] == kept["isup_grade"][indices].tolist()
        assert all(s.origin == f"train_images/{s.slide_id}.tiff" and s.split == split for s in slides)
    # PANDA-small holds 20 % of the kept slides (at least one per grade and part); PANDA all of them
    assert len(panda_slides(root, labels)) == sum(len(p) for p in expected)
    assert len(panda_slides(root, labels, small=False)) == len(kept)
    noisy = set(table.loc[table["noise_ratio_10"] == 0, "image_id"])
    assert not noisy & {s.slide_id for s in panda_slides(root, labels, small=False)}
    assert slides_for_task("panda-small", root, labels, "val") == panda_slides(root, labels, "val")


def test_slides_for_task_names_the_two_tasks(tmp_path):
    root = camelyon16_layout(tmp_path)
    assert slides_for_task("cam16-small", root, split="test") == camelyon16_slides(root, "test")
    with pytest.raises(DataError, match="cam16-small, panda-small"):
        slides_for_task("cam17", root)


def test_panda_label_problems_are_clear_errors(tmp_path):
    root, labels, table = panda_layout(tmp_path / "a", per_grade=(3,) * 6)
    with pytest.raises(DataError, match="analokmaus.*--panda-labels"):
        panda_slides(root, None)
    with pytest.raises(DataError, match="does not exist"):
        panda_slides(root, tmp_path / "nope.csv")
    (root / "train_images" / f"{'f' * 32}.tiff").touch()  # an image the table does not know
    with pytest.raises(DataError, match="no row in"):
        panda_slides(root, labels)
    (root / "train_images" / f"{'f' * 32}.tiff").unlink()
    (root / "train_images" / f"{table['image_id'][0]}.tiff").unlink()  # a row without its image
    with pytest.raises(DataError, match="lists 18 images but"):
        panda_slides(root, labels)
    bad = tmp_path / "bad.csv"
    table.drop(columns="noise_ratio_10").to_csv(bad)
    with pytest.raises(DataError, match="noise_ratio_10"):
        read_panda_labels(bad)
    table.assign(isup_grade=7).to_csv(bad)
    with pytest.raises(DataError, match="0..5"):
        read_panda_labels(bad)


# --------------------------------------------------------------------------------------
# Slide bags


def tissue_slide(path, layout, mpp=0.25, label=1, split="train", seed=0):
    cell = 224
    image = np.full((len(layout) * cell, len(layout[0]) * cell, 3), 245, np.uint8)
    rng = np.random.default_rng(seed)
    for r, row in enumerate(layout):
        for c, char in enumerate(row):
            if char == "#":
                image[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = rng.integers(
                    [150, 60, 120], [230, 140, 200], size=(cell, cell, 3))
    write_pyramidal_tiff(path, image, mpp)
    return Slide(slide_id=path.stem, path=path, label=label, split=split, origin=f"images/{path.name}")


def test_a_bag_is_a_tile_dataset_of_the_sampled_patches(tmp_path, tiny_extractor):
    slide = tissue_slide(tmp_path / "s1.tif", ["####"] * 3, mpp=0.24)
    bag = bag_for_slide(slide, CAM16_SMALL)
    # cells of int(0.25 / 0.24 * 224) = 233 pixels: 3 x 2 of them fit in 896 x 672
    assert len(bag) == 6 and bag.coords.width == 233
    assert {parse_item_id(i)[1:] for i in bag.item_ids} == set(bag.coords.x_y)
    assert all(parse_item_id(i)[0] == "s1" for i in bag.item_ids)
    patch = bag[0]
    assert patch.shape == (224, 224, 3) and patch.dtype == np.uint8
    # the fingerprint follows the slide's content and the task settings, not the file's name
    assert bag_for_slide(slide, PANDA_SMALL).fingerprint != bag.fingerprint
    renamed = bag_for_slide(tissue_slide(tmp_path / "copy.tif", ["####"] * 3, mpp=0.24), CAM16_SMALL)
    assert renamed.fingerprint == bag.fingerprint
    other = bag_for_slide(tissue_slide(tmp_path / "s2.tif", ["####"] * 3, mpp=0.24, seed=1), CAM16_SMALL)
    assert other.fingerprint != bag.fingerprint
    # DataLoader workers get a copy without the open slide, and reopen it
    clone = pickle.loads(pickle.dumps(bag))
    np.testing.assert_array_equal(clone[0], patch)
    features = extract_features(tiny_extractor, bag, pooling="cls", batch_size=4, shard_size=4, progress=False)
    assert np.asarray(features).shape == (6, tiny_extractor.output_dim("cls"))
    assert features.item_ids == bag.item_ids


def test_unusable_slides_are_recorded_skips_not_crashes(tmp_path):
    good = tissue_slide(tmp_path / "good.tif", ["##"])
    blank = tissue_slide(tmp_path / "blank.tif", [".."])
    no_mpp = tissue_slide(tmp_path / "nompp.tif", ["##"], mpp=None)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"not a slide")
    corrupt_slide = Slide("corrupt", corrupt, 0, "test", "images/corrupt.tif")
    with pytest.raises(SlideSkipError, match="no 224x224 grid cell"):
        bag_for_slide(blank, CAM16_SMALL)
    bags, skipped = open_bags([good, blank, no_mpp, corrupt_slide], CAM16_SMALL)
    assert [b.slide.slide_id for b in bags] == ["good"]
    assert [(s.slide_id, s.split) for s in skipped] == [("blank", "train"), ("nompp", "train"), ("corrupt", "test")]
    assert "foreground" in skipped[0].reason and "microns per pixel" in skipped[1].reason
    assert "cannot open slide" in skipped[2].reason
    with pytest.raises(SlideSkipError, match="microns per pixel"):
        open_bags([good, no_mpp], CAM16_SMALL, on_error="raise")


# --------------------------------------------------------------------------------------
# eva's slide-level embedding format


def test_eva_slide_format_round_trips_with_coords(tmp_path):
    rng = np.random.default_rng(0)
    slides = [Slide("normal_001", tmp_path / "a", 0, "train", "training/normal/normal_001.tif"),
              Slide("tumor_002", tmp_path / "b", 1, "train", "training/tumor/tumor_002.tif"),
              Slide("normal_010", tmp_path / "c", 0, "val", "training/normal/normal_010.tif"),
              Slide("tumor_005", tmp_path / "d", 1, "val", "training/tumor/tumor_005.tif")]
    coords = [PatchCoordinates([(0, 0), (230, 460), (460, 0)], 230, 230, 0, 2),
              PatchCoordinates([(230, 230)], 230, 230, 0, 2),
              PatchCoordinates([(0, 230), (690, 0)], 230, 230, 0, 2),
              PatchCoordinates([], 230, 230, 0, 2)]  # no foreground: coords row, no .pt, no manifest row
    bags = [rng.normal(size=(len(c.x_y), 8)).astype(np.float32) for c in coords]
    manifest = write_eva_slide_embeddings(tmp_path / "out", slides, bags, coords)
    frame = pd.read_csv(manifest)
    assert list(frame.columns) == ["origin", "embeddings", "target", "split", "wsi_id"]
    assert frame.values.tolist() == [["normal_001.tif", "normal_001.pt", 0, "train", "normal_001"],
                                     ["tumor_002.tif", "tumor_002.pt", 1, "train", "tumor_002"],
                                     ["normal_010.tif", "normal_010.pt", 0, "val", "normal_010"]]
    saved = torch.load(tmp_path / "out" / "normal_001.pt", weights_only=True)
    assert isinstance(saved, list) and len(saved) == 3 and saved[0].shape == (8,)
    assert (tmp_path / "out" / "coords_train.csv").read_text().splitlines() == [
        "file,x_y,width,height,level_idx",
        'training/normal/normal_001.tif,"[(0, 0), (230, 460), (460, 0)]",230,230,0',
        'training/tumor/tumor_002.tif,"[(230, 230)]",230,230,0']
    assert read_eva_coords(tmp_path / "out" / "coords_val.csv")["training/tumor/tumor_005.tif"].x_y == []
    splits = read_eva_slide_embeddings(tmp_path / "out")
    assert list(splits) == ["train", "val"]
    assert splits["train"].slide_ids == ["normal_001", "tumor_002"]
    np.testing.assert_array_equal(splits["train"].targets, [0, 1])
    for got, want in zip(splits["train"].bags + splits["val"].bags, bags[:3], strict=True):
        np.testing.assert_array_equal(got, want)


def test_reading_eva_folders_groups_rows_by_wsi_id_like_eva(tmp_path):
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(n, 4)).astype(np.float32) for n in (2, 3, 1)]
    torch.save([torch.from_numpy(r) for r in parts[0]], tmp_path / "s1_a.pt")  # a list of (D,) tensors
    torch.save(torch.from_numpy(parts[1]), tmp_path / "s1_b.pt")  # a stacked (n, D) tensor
    torch.save(torch.from_numpy(parts[2][0]), tmp_path / "s2.pt")  # one (D,) tensor: one row
    pd.DataFrame({"origin": ["s1.tif", "s1.tif", "s2.tif"], "embeddings": ["s1_a.pt", "s1_b.pt", "s2.pt"],
                  "target": [1, 1, 0], "split": ["test"] * 3, "wsi_id": ["s1", "s1", "s2"]}).to_csv(
        tmp_path / "manifest.csv", index=False)
    split = read_eva_slide_embeddings(tmp_path)["test"]
    assert split.slide_ids == ["s1", "s2"] and split.targets.tolist() == [1, 0]
    np.testing.assert_array_equal(split.bags[0], np.concatenate(parts[:2]))
    np.testing.assert_array_equal(split.bags[1], parts[2])
    frame = pd.read_csv(tmp_path / "manifest.csv")
    frame.assign(target=[1, 0, 0]).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match="several targets"):
        read_eva_slide_embeddings(tmp_path)
    frame.drop(columns="wsi_id").to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match="wsi_id"):
        read_eva_slide_embeddings(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_eva_slide_embeddings(tmp_path / "elsewhere")
