"""Readers of eva's dataset layouts and eva's offline embedding format."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from pathbench.data.eva import (
    BACH_TRAIN_RANGES,
    BACH_VAL_RANGES,
    find_task_root,
    open_split,
    read_eva_embeddings,
    resize_and_crop,
    write_eva_embeddings,
)
from pathbench.data.synthetic_eva import make_synthetic_eva
from pathbench.errors import DataError

SMALL = {"crc": {"train": 3, "val": 2}, "mhist": {"train": 4, "test": 3}, "pcam": {"train": 5, "valid": 3, "test": 3}}


@pytest.fixture(scope="module")
def eva_root(tmp_path_factory):
    return make_synthetic_eva(tmp_path_factory.mktemp("eva-data"), sizes=SMALL)


@pytest.fixture
def fresh_copy(eva_root, tmp_path):
    def copy(task_dir: str):
        target = tmp_path / task_dir
        shutil.copytree(eva_root / task_dir, target)
        return target

    return copy


def test_bach_uses_evas_fixed_index_ranges_over_the_class_sorted_files(eva_root):
    root = find_task_root("bach", eva_root)
    assert root == eva_root / "bach"
    train, val = open_split("bach", root, "train"), open_split("bach", root, "val")
    assert (len(train), len(val)) == (268, 132)
    assert sum(b - a for a, b in BACH_TRAIN_RANGES) == 268 and sum(b - a for a, b in BACH_VAL_RANGES) == 132
    # index i of the 400 sorted files is class i // 100, file number i % 100 + 1
    expected_train = [i for a, b in BACH_TRAIN_RANGES for i in range(a, b)]
    prefixes = {"Benign": "b", "InSitu": "is", "Invasive": "iv", "Normal": "n"}
    classes = ["Benign", "InSitu", "Invasive", "Normal"]
    assert train.origins == [f"{classes[i // 100]}/{prefixes[classes[i // 100]]}{i % 100 + 1:03d}.tif"
                             for i in expected_train]
    assert train.labels.tolist() == [i // 100 for i in expected_train]
    assert not set(train.origins) & set(val.origins)
    image = train[0]
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8


def test_crc_mhist_and_pcam_splits_and_labels(eva_root):
    crc_train = open_split("crc", find_task_root("crc", eva_root), "train")
    crc_val = open_split("crc", find_task_root("crc", eva_root), "val")
    assert len(crc_train) == 27 and len(crc_val) == 18
    assert np.bincount(crc_train.labels).tolist() == [3] * 9
    assert crc_train.origins[0] == "ADI/ADI-TRAIN0000.tif"

    mhist_root = find_task_root("mhist", eva_root)
    annotations = pd.read_csv(mhist_root / "annotations.csv")
    test = open_split("mhist", mhist_root, "test")
    expected = annotations[annotations["Partition"] == "test"]
    assert test.origins == expected["Image Name"].tolist()
    assert test.labels.tolist() == [0 if v == "SSA" else 1 for v in expected["Majority Vote Label"]]

    pcam_root = find_task_root("pcam", eva_root)
    assert pcam_root == eva_root / "patch_camelyon"
    val = open_split("pcam", pcam_root, "val")  # read from the "valid" files
    with h5py.File(pcam_root / "camelyonpatch_level_2_split_valid_y.h5") as handle:
        assert val.labels.tolist() == handle["y"][:].reshape(-1).tolist()
    with h5py.File(pcam_root / "camelyonpatch_level_2_split_valid_x.h5") as handle:
        raw = handle["x"][2]
    assert np.array_equal(val[2], resize_and_crop(raw))
    assert val.origins[2] == "camelyonpatch_level_2_split_val_x_2"


def test_resize_and_crop_is_torchvision_resize_then_centre_crop_on_uint8():
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    for shape in [(96, 96, 3), (150, 200, 3), (300, 224, 3), (224, 224, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        reference = v2.Compose([v2.ToImage(), v2.Resize(224), v2.CenterCrop(224)])(image)
        ours = resize_and_crop(image)
        assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
        assert np.array_equal(ours, reference.permute(1, 2, 0).numpy())


def test_missing_class_folder_names_the_folder(fresh_copy):
    crc = fresh_copy("crc")
    shutil.rmtree(crc / "CRC-VAL-HE-7K" / "MUS")
    with pytest.raises(DataError, match=r"class folder .*CRC-VAL-HE-7K/MUS is missing"):
        open_split("crc", crc, "val")
    bach = fresh_copy("bach")
    shutil.rmtree(bach / "ICIAR2018_BACH_Challenge" / "Photos" / "InSitu")
    with pytest.raises(DataError, match="InSitu is missing"):
        open_split("bach", bach, "train")


def test_corrupt_image_names_the_file(fresh_copy):
    crc = fresh_copy("crc")
    broken = crc / "NCT-CRC-HE-100K" / "ADI" / "ADI-TRAIN0001.tif"
    broken.write_bytes(b"not an image")
    dataset = open_split("crc", crc, "train")
    with pytest.raises(DataError, match="ADI-TRAIN0001.tif"):
        dataset[dataset.origins.index("ADI/ADI-TRAIN0001.tif")]


def test_bach_refuses_an_incomplete_download(fresh_copy):
    bach = fresh_copy("bach")
    (bach / "ICIAR2018_BACH_Challenge" / "Photos" / "Normal" / "n100.tif").unlink()
    with pytest.raises(DataError, match="found 399"):
        open_split("bach", bach, "val")


def test_mhist_missing_image_and_bad_annotations(fresh_copy):
    mhist = fresh_copy("mhist")
    name = pd.read_csv(mhist / "annotations.csv").query("Partition == 'train'")["Image Name"].iloc[0]
    (mhist / "images" / name).unlink()
    with pytest.raises(DataError, match=name):
        open_split("mhist", mhist, "train")
    pd.DataFrame({"Image Name": ["a.png"], "Partition": ["train"]}).to_csv(mhist / "annotations.csv", index=False)
    with pytest.raises(DataError, match="Majority Vote Label"):
        open_split("mhist", mhist, "train")


def test_pcam_missing_file_is_a_clear_error(fresh_copy):
    pcam = fresh_copy("patch_camelyon")
    (pcam / "camelyonpatch_level_2_split_test_x.h5").unlink()
    with pytest.raises(DataError, match="camelyonpatch_level_2_split_test_x.h5 is missing"):
        open_split("pcam", pcam, "test")


def test_fingerprint_changes_when_a_file_changes(fresh_copy):
    crc = fresh_copy("crc")
    before = open_split("crc", crc, "val").fingerprint
    path = crc / "CRC-VAL-HE-7K" / "TUM" / "TUM-VAL0000.tif"
    path.write_bytes(path.read_bytes() + b"\0")
    assert open_split("crc", crc, "val").fingerprint != before


def test_synthetic_generator_is_deterministic_and_idempotent(tmp_path):
    a = make_synthetic_eva(tmp_path / "a", tasks=("mhist",), sizes=SMALL)
    b = make_synthetic_eva(tmp_path / "b", tasks=("mhist",), sizes=SMALL)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    stamp = (a / "mhist" / "annotations.csv").stat().st_mtime_ns
    make_synthetic_eva(tmp_path / "a", tasks=("mhist",), sizes=SMALL)
    assert (a / "mhist" / "annotations.csv").stat().st_mtime_ns == stamp


# ---------------------------------------------------------------------------- eva embedding format


def test_eva_manifest_written_and_read_back(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(7, 5)).astype(np.float32)
    origins = [f"ADI/ADI-{i}.tif" for i in range(4)] + [f"camelyonpatch_level_2_split_test_x_{i}" for i in range(3)]
    splits = ["train", "train", "val", "val", "test", "test", "test"]
    targets = [0, 1, 2, 0, 1, 1, 0]
    manifest = write_eva_embeddings(tmp_path / "crc", embeddings, targets, origins, splits, progress=False)

    frame = pd.read_csv(manifest)
    assert list(frame.columns) == ["origin", "embeddings", "target", "split"]
    assert frame["embeddings"].tolist()[0] == "ADI/ADI-0.pt"
    assert frame["embeddings"].tolist()[-1] == "camelyonpatch_level_2_split_test_x_2.pt"
    # each .pt file is what eva's writer saves: a one-element list holding a (D,) tensor
    stored = torch.load(tmp_path / "crc" / "ADI" / "ADI-1.pt", weights_only=True)
    assert isinstance(stored, list) and len(stored) == 1
    assert stored[0].shape == (5,) and torch.equal(stored[0], torch.from_numpy(embeddings[1]))

    back = read_eva_embeddings(tmp_path / "crc", progress=False)
    assert list(back) == ["train", "val", "test"]
    assert np.array_equal(back["val"].embeddings, embeddings[2:4])
    assert back["test"].targets.tolist() == [1, 1, 0]
    assert back["train"].origins == origins[:2]


def test_reader_accepts_evas_other_tensor_shapes_and_refuses_slide_files(tmp_path):
    folder = tmp_path / "emb"
    folder.mkdir()
    torch.save(torch.ones(1, 3), folder / "a.pt")  # (1, D)
    torch.save(torch.zeros(3), folder / "b.pt")  # bare (D,)
    pd.DataFrame({"origin": ["a.png", "b.png"], "embeddings": ["a.pt", "b.pt"], "target": [1, 0],
                  "split": ["train", "train"]}).to_csv(folder / "manifest.csv", index=False)
    back = read_eva_embeddings(folder, progress=False)
    assert back["train"].embeddings.tolist() == [[1, 1, 1], [0, 0, 0]]
    torch.save([torch.ones(3), torch.ones(3)], folder / "a.pt")
    with pytest.raises(DataError, match="one tensor"):
        read_eva_embeddings(folder, progress=False)
    with pytest.raises(DataError, match="manifest.csv does not exist"):
        read_eva_embeddings(tmp_path, progress=False)
