"""CoNSeP and MoNuSAC readers, polygon rasterisation and eva's transforms on image + mask."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pathbench.data.consep import CoNSePDataset, grid_patch_coords, merge_consep_classes
from pathbench.data.monusac import (
    MoNuSACDataset,
    PolygonRegion,
    parse_monusac_xml,
    polygon_mask,
    rasterise_regions,
)
from pathbench.data.segmentation import (
    ResizedSegmentationDataset,
    random_resized_crop_box,
    random_resized_crop_pair,
    resize_and_crop_pair,
    stack_items,
)
from pathbench.errors import DataError

# --------------------------------------------------------------------------------------
# CoNSeP


def test_consep_types_merge_into_eva_five_classes():
    type_map = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(merge_consep_classes(type_map), [[0, 1, 2, 3], [3, 4, 4, 4]])
    # eva's own two np.where calls give the same on every valid type
    rng = np.random.default_rng(0)
    random_map = rng.integers(0, 8, (30, 30))
    eva = np.where(random_map == 4, 3, random_map)
    eva = np.where(eva > 4, 4, eva)
    np.testing.assert_array_equal(merge_consep_classes(random_map), eva)


def test_consep_types_outside_0_to_7_are_an_error():
    with pytest.raises(DataError, match=r"0\.\.7"):
        merge_consep_classes(np.array([[0, 8]]))


def test_grid_patches_follow_eva_grid_sampler_order():
    # x-major corners, shuffled by numpy.random.default_rng(42): [3, 2, 1, 0] for four patches
    assert grid_patch_coords(500, 500) == [(250, 250), (250, 0), (0, 250), (0, 0)]
    coords = grid_patch_coords(1000, 1000)
    assert len(coords) == 16 and coords[:3] == [(250, 500), (750, 750), (500, 750)]
    assert grid_patch_coords(260, 510) == [(0, 250), (0, 0)]  # leftovers past the last full patch are dropped
    with pytest.raises(DataError, match="smaller than one"):
        grid_patch_coords(200, 300)


def _write_consep(root, names=("train_1", "train_10", "train_2"), test_names=("test_1",), size=500, seed=0):
    rng = np.random.default_rng(seed)
    truth = {}
    for folder, stems in (("Train", names), ("Test", test_names)):
        (root / folder / "Images").mkdir(parents=True, exist_ok=True)
        (root / folder / "Labels").mkdir(parents=True, exist_ok=True)
        for stem in stems:
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            types = rng.integers(0, 8, (size, size)).astype(np.float64)
            Image.fromarray(image).save(root / folder / "Images" / f"{stem}.png")
            scipy.io.savemat(root / folder / "Labels" / f"{stem}.mat", {"type_map": types, "inst_map": types * 0})
            truth[stem] = (image, types.astype(np.int64))
    return truth


def test_consep_reader_gives_eva_patches_and_merged_masks(tmp_path):
    truth = _write_consep(tmp_path)
    dataset = CoNSePDataset(tmp_path, "train", strict=False)
    assert len(dataset) == 12  # three 500 x 500 images, four 250 x 250 patches each
    # images in sorted path order (train_1, train_10, train_2), patches in eva's grid order
    assert dataset.item_ids[:5] == ["Train/train_1.png@250,250", "Train/train_1.png@250,0", "Train/train_1.png@0,250",
                                    "Train/train_1.png@0,0", "Train/train_10.png@250,250"]
    image, mask = dataset.item(9)  # train_2, patch (250, 0)
    source, types = truth["train_2"]
    np.testing.assert_array_equal(image, source[0:250, 250:500])
    np.testing.assert_array_equal(mask, merge_consep_classes(types[0:250, 250:500]))
    assert mask.dtype == np.int64 and dataset.num_classes == 5 and dataset.ignore_index is None
    assert len(CoNSePDataset(tmp_path, "val", strict=False)) == 4


def test_consep_fingerprint_is_stable_and_follows_the_label_content(tmp_path):
    _write_consep(tmp_path)
    first = CoNSePDataset(tmp_path, "train", strict=False).fingerprint
    assert CoNSePDataset(tmp_path, "train", strict=False).fingerprint == first
    scipy.io.savemat(tmp_path / "Train" / "Labels" / "train_2.mat", {"type_map": np.zeros((500, 500))})
    assert CoNSePDataset(tmp_path, "train", strict=False).fingerprint != first


def test_consep_strict_mode_wants_the_official_27_images(tmp_path):
    _write_consep(tmp_path)
    with pytest.raises(DataError, match="expected 27 images"):
        CoNSePDataset(tmp_path, "train")


def test_a_corrupt_mat_file_is_a_clear_error(tmp_path):
    _write_consep(tmp_path, names=("train_1",))
    (tmp_path / "Train" / "Labels" / "train_1.mat").write_bytes(b"MATLAB 5.0 but not really" + bytes(200))
    dataset = CoNSePDataset(tmp_path, "train", strict=False)
    with pytest.raises(DataError, match="cannot read .*train_1.mat"):
        dataset.mask(0)


def test_a_mat_file_without_type_map_is_a_clear_error(tmp_path):
    _write_consep(tmp_path, names=("train_1",))
    scipy.io.savemat(tmp_path / "Train" / "Labels" / "train_1.mat", {"inst_map": np.zeros((500, 500))})
    with pytest.raises(DataError, match="no 'type_map'.*inst_map"):
        CoNSePDataset(tmp_path, "train", strict=False).mask(0)


def test_a_mask_of_another_size_than_its_image_is_a_clear_error(tmp_path):
    _write_consep(tmp_path, names=("train_1",))
    scipy.io.savemat(tmp_path / "Train" / "Labels" / "train_1.mat", {"type_map": np.zeros((400, 500))})
    with pytest.raises(DataError, match="400 x 500 but its image .* is 500 x 500"):
        CoNSePDataset(tmp_path, "train", strict=False).item(0)


def test_a_missing_label_file_is_reported_when_the_reader_opens(tmp_path):
    _write_consep(tmp_path, names=("train_1", "train_2"))
    (tmp_path / "Train" / "Labels" / "train_2.mat").unlink()
    with pytest.raises(DataError, match="label files are missing.*train_2.mat"):
        CoNSePDataset(tmp_path, "train", strict=False)


# --------------------------------------------------------------------------------------
# Polygon rasterisation (skimage.draw.polygon's rule, as eva calls it)


def test_a_polygon_fills_its_inside_and_its_boundary():
    square = polygon_mask(np.array([[1, 1], [4, 1], [4, 3], [1, 3]]), height=5, width=6)
    expected = np.zeros((5, 6), bool)
    expected[1:4, 1:5] = True  # rows y = 1..3, columns x = 1..4, edges included
    np.testing.assert_array_equal(square, expected)

    triangle = polygon_mask(np.array([[0, 0], [4, 0], [0, 4]]), height=6, width=6)
    ys, xs = np.mgrid[0:6, 0:6]
    np.testing.assert_array_equal(triangle, xs + ys <= 4)  # the hypotenuse's pixels belong to it
    assert triangle.sum() == 15


def test_a_concave_polygon_and_fractional_vertices():
    corner = polygon_mask(np.array([[0, 0], [4, 0], [4, 1], [1, 1], [1, 4], [0, 4]]), height=6, width=6)
    expected = np.zeros((6, 6), bool)
    expected[0:2, 0:5] = True
    expected[0:5, 0:2] = True
    np.testing.assert_array_equal(corner, expected)
    assert corner.sum() == 16
    inner = polygon_mask(np.array([[0.5, 0.5], [2.5, 0.5], [2.5, 2.5], [0.5, 2.5]]), height=4, width=4)
    np.testing.assert_array_equal(np.argwhere(inner), [[1, 1], [1, 2], [2, 1], [2, 2]])


def test_a_polygon_crossing_the_border_is_clipped():
    mask = polygon_mask(np.array([[-3, -3], [2, -3], [2, 2], [-3, 2]]), height=4, width=4)
    expected = np.zeros((4, 4), bool)
    expected[0:3, 0:3] = True
    np.testing.assert_array_equal(mask, expected)


def test_regions_are_painted_in_file_order_and_a_polygon_outside_the_image_is_an_error():
    first = PolygonRegion("Epithelial", 1, np.array([[0, 0], [3, 0], [3, 3], [0, 3]], float))
    second = PolygonRegion("Lymphocyte", 2, np.array([[2, 2], [4, 2], [4, 4], [2, 4]], float))
    labels = rasterise_regions([first, second], height=5, width=5)
    assert labels[1, 1] == 1 and labels[3, 3] == 2 and labels[2, 2] == 2 and labels[4, 0] == 0
    outside = PolygonRegion("Epithelial", 1, np.array([[10, 1], [12, 1], [12, 3]], float))
    with pytest.raises(DataError, match="entirely outside the 5 x 5 image"):
        rasterise_regions([first, outside], height=5, width=5)


def _xml(annotations):
    parts = ["<?xml version='1.0' encoding='utf-8'?>\n<Annotations MicronsPerPixel=\"0.25\">"]
    for a, (label, polygons) in enumerate(annotations, start=1):
        parts.append(f'<Annotation Id="{a}"><Attributes><Attribute Name="{label}" Id="0" Value=""/></Attributes>'
                     '<Regions><RegionAttributeHeaders/>')
        for r, polygon in enumerate(polygons, start=1):
            vertices = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in polygon)
            parts.append(f'<Region Id="{r}"><Attributes/><Vertices>{vertices}</Vertices></Region>')
        parts.append("</Regions><Plots/></Annotation>")
    parts.append("</Annotations>")
    return "".join(parts)


def test_monusac_xml_names_classes_and_unknown_names_are_ambiguous(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(_xml([("Epithelial", [[(0, 0), (5, 0), (5, 5), (0, 5)]]),
                          ("Ambiguous", [[(6, 6), (8, 6), (8, 8)]]),
                          ("Mitosis", [[(1, 7), (2, 7), (2, 8)]]),
                          ("Macrophage", [[(2, 2), (3, 2), (3, 3), (2, 3)], [(9, 0), (9.5, 0), (9.5, 1)]])]))
    regions = parse_monusac_xml(path)
    assert [(r.label, r.class_index) for r in regions] == [
        ("Epithelial", 1), ("Ambiguous", 5), ("Mitosis", 5), ("Macrophage", 4), ("Macrophage", 4)]
    labels = rasterise_regions(regions, height=10, width=10)
    assert labels[1, 1] == 1 and labels[2, 2] == 4 and labels[7, 7] == 5 and labels[0, 9] == 4


def _write_monusac(root, split_folder="MoNuSAC_images_and_annotations", n=2, size=(30, 40)):
    for i in range(n):
        patient = root / split_folder / f"TCGA-AA-000{i}-01Z-00-DX1"
        patient.mkdir(parents=True, exist_ok=True)
        image = np.full((*size, 3), 200, np.uint8)
        Image.fromarray(image).save(patient / f"TCGA-AA-000{i}-01Z-00-DX1_1.tif", format="TIFF")
        (patient / f"TCGA-AA-000{i}-01Z-00-DX1_1.xml").write_text(
            _xml([("Lymphocyte", [[(2, 2), (6, 2), (6, 6), (2, 6)]]), ("Ambiguous", [[(10, 10), (12, 10), (12, 12)]])]))


def test_monusac_reader_rasterises_once_and_caches_by_content(tmp_path, _isolated_cache):
    _write_monusac(tmp_path)
    dataset = MoNuSACDataset(tmp_path, "train", strict=False)
    assert dataset.item_ids == ["train/TCGA-AA-0000-01Z-00-DX1/TCGA-AA-0000-01Z-00-DX1_1.tif",
                                "train/TCGA-AA-0001-01Z-00-DX1/TCGA-AA-0001-01Z-00-DX1_1.tif"]
    image, mask = dataset.item(0)
    assert image.shape == (30, 40, 3) and mask.shape == (30, 40) and mask.dtype == np.int64
    assert mask[4, 4] == 2 and mask[11, 11] == 5 and mask[20, 20] == 0
    cached = dataset.mask_cache_path(0)
    assert cached.is_file() and cached.is_relative_to(_isolated_cache)
    np.testing.assert_array_equal(np.load(cached), mask)
    # both files hold the same annotation and size: one content key
    assert dataset.mask_cache_path(1) == cached
    assert dataset.num_classes == 5 and dataset.ignore_index == 5


def test_monusac_image_without_its_annotation_is_a_clear_error(tmp_path):
    _write_monusac(tmp_path)
    next(tmp_path.rglob("*_1.xml")).unlink()
    with pytest.raises(DataError, match="have no annotation"):
        MoNuSACDataset(tmp_path, "train", strict=False)


def test_monusac_polygon_outside_its_image_is_a_clear_error(tmp_path):
    _write_monusac(tmp_path, n=1)
    xml = next(tmp_path.rglob("*.xml"))
    xml.write_text(_xml([("Epithelial", [[(100, 100), (120, 100), (120, 120)]])]))
    with pytest.raises(DataError, match="entirely outside the 40 x 30 image"):
        MoNuSACDataset(tmp_path, "train", strict=False).mask(0)


def test_monusac_strict_mode_and_missing_split(tmp_path):
    _write_monusac(tmp_path)
    with pytest.raises(DataError, match="expected 209 images"):
        MoNuSACDataset(tmp_path, "train")
    with pytest.raises(DataError, match="MoNuSAC Testing Data and Annotations"):
        MoNuSACDataset(tmp_path, "test", strict=False)


# --------------------------------------------------------------------------------------
# eva's transforms on (image, mask)


def test_resize_and_crop_pair_is_eva_resize_and_crop_on_image_and_mask():
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    mask = rng.integers(0, 6, (300, 410))
    eva = v2.Compose([v2.Resize(224), v2.CenterCrop(224)])
    eva_image, eva_mask = eva(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                              tv_tensors.Mask(torch.from_numpy(mask)))
    ours_image, ours_mask = resize_and_crop_pair(image, mask)
    np.testing.assert_array_equal(ours_image, eva_image.permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(ours_mask, eva_mask.numpy())
    assert ours_mask.dtype == np.int64


@pytest.mark.parametrize("seed", range(4))
def test_random_resized_crop_pair_is_torchvision_with_a_seeded_generator(seed):
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    mask = rng.integers(0, 6, (90, 130))
    torch.manual_seed(seed)
    tv_image, tv_mask = v2.RandomResizedCrop(64)(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                                                 tv_tensors.Mask(torch.from_numpy(mask)))
    ours_image, ours_mask = random_resized_crop_pair(image, mask, torch.Generator().manual_seed(seed), size=64)
    np.testing.assert_array_equal(ours_image, tv_image.permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(ours_mask, tv_mask.numpy())


def test_random_resized_crop_falls_back_to_a_centre_crop_when_no_box_fits():
    # every try needs a box at least ~24 px tall; the image is 10 px tall, so the ratio-limited centre crop is used
    assert random_resized_crop_box(10, 1000, torch.Generator().manual_seed(0)) == (0, 493, 10, 13)


def test_the_resized_view_stacks_eva_inputs_and_has_its_own_fingerprint(tmp_path):
    _write_consep(tmp_path, names=("train_1",))
    source = CoNSePDataset(tmp_path, "train", strict=False)
    view = ResizedSegmentationDataset(source, size=64)
    assert view.item_ids == source.item_ids and view.fingerprint != source.fingerprint
    assert view[0].shape == (64, 64, 3)
    images, masks = stack_items(view)
    assert images.shape == (4, 3, 64, 64) and images.dtype == np.uint8
    assert masks.shape == (4, 64, 64) and masks.dtype == np.int64
    np.testing.assert_array_equal(masks[2], resize_and_crop_pair(*source.item(2), size=64)[1])
    with pytest.raises(DataError, match="one size"):
        stack_items(_Mixed())


class _Mixed:
    def __len__(self):
        return 2

    def item(self, index):
        side = 8 + index
        return np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.int64)
