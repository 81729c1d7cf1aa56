"""Whole-slide reading and eva's ForegroundGridSampler, on real pyramidal TIFFs read by OpenSlide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from pathbench.data.eva import resize_and_crop
from pathbench.data.patching import (
    ForegroundGridSampler,
    Mask,
    foreground_mask,
    grid_coordinates,
    hsv_saturation,
    is_foreground,
    mask_level,
    sample_patches,
)
from pathbench.data.synthetic_slides import write_pyramidal_tiff
from pathbench.data.wsi import closest_level, mpp_from_properties, open_slide, patch_geometry, read_patch
from pathbench.errors import DataError

PINK = (230, 150, 200)  # saturation 89: foreground
WHITE = (245, 245, 245)  # saturation 0: background


def mosaic(cells: list[str], cell: int) -> np.ndarray:
    """An image of ``cell``-pixel squares, one row per string: '#' tissue (pink), '.' background."""
    image = np.zeros((len(cells) * cell, len(cells[0]) * cell, 3), np.uint8)
    for r, row in enumerate(cells):
        for c, char in enumerate(row):
            image[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = PINK if char == "#" else WHITE
    return image


# --------------------------------------------------------------------------------------
# mpp and level selection


def test_mpp_comes_from_openslide_properties_then_from_tiff_resolution():
    assert mpp_from_properties({"openslide.mpp-x": "0.24", "openslide.mpp-y": "0.26"}) == pytest.approx(0.25)
    tiff = {"tiff.XResolution": "40000", "tiff.YResolution": "20000", "tiff.ResolutionUnit": "centimeter"}
    assert mpp_from_properties(tiff) == pytest.approx((0.25 + 0.5) / 2)
    assert mpp_from_properties({**tiff, "tiff.ResolutionUnit": "millimeter"}) == pytest.approx((0.025 + 0.05) / 2)


@pytest.mark.parametrize("properties, message", [
    ({}, "no microns per pixel"),
    ({"openslide.mpp-x": "0.25"}, "no microns per pixel"),  # y missing: eva needs both
    ({"tiff.XResolution": "1", "tiff.YResolution": "1", "tiff.ResolutionUnit": "none"}, "no microns per pixel"),
    ({"tiff.XResolution": "100", "tiff.YResolution": "100", "tiff.ResolutionUnit": "inch"}, "not supported"),
    ({"openslide.mpp-x": "0", "openslide.mpp-y": "0"}, "positive"),
])
def test_missing_or_unusable_mpp_is_a_clear_error(properties, message):
    with pytest.raises(DataError, match=message):
        mpp_from_properties(properties, "slide.tif")


@pytest.mark.parametrize("level_mpps, target, expected", [
    ([0.25, 0.5, 1.0, 2.0], 0.5, 1),  # exact match
    ([0.25, 0.5, 1.0, 2.0], 0.9, 1),  # the coarsest level not coarser than the target
    ([0.25, 0.5, 1.0, 2.0], 5.0, 3),
    ([0.25, 0.5, 1.0, 2.0], 0.2, 0),  # every level is coarser: the finest one
    ([0.243, 0.972, 3.888], 0.25, 0),  # Camelyon16-like: level 0 and a resize
    ([0.5, 2.0, 8.0], 0.25, 0),  # upsampling from the finest level
])
def test_closest_level_is_the_coarsest_not_coarser_than_the_target(level_mpps, target, expected):
    assert closest_level(np.array(level_mpps), target) == expected


def test_patch_geometry_reads_the_scaled_region_on_the_chosen_level(tmp_path):
    path = tmp_path / "slide.tif"
    write_pyramidal_tiff(path, np.full((1024, 1024, 3), 128, np.uint8), mpp=0.1, downsamples=(1, 4, 16))
    with open_slide(path) as reader:
        assert reader.level_dimensions == ((1024, 1024), (256, 256), (64, 64))
        assert reader.mpp == pytest.approx(0.1)
        # level mpps 0.1, 0.4, 1.6: 0.5 um/px reads level 1, int(0.5 / 0.4 * 224) = 280 pixels
        assert patch_geometry(reader, 0.5) == (1, 280, 280)
        assert patch_geometry(reader, 0.25) == (0, 560, 560)
        assert patch_geometry(reader, 1.6) == (2, 224, 224)


def test_read_patch_is_the_region_resized_to_224_as_eva(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(600, 700, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(1e4 / 0.243, 1e4 / 0.243), resolutionunit="CENTIMETER")
    with open_slide(path) as reader:
        level, width, height = patch_geometry(reader, 0.25)
        assert (level, width, height) == (0, 230, 230)
        patch = read_patch(reader, (100, 50), level, (width, height))
        assert patch.shape == (224, 224, 3) and patch.dtype == np.uint8
        np.testing.assert_array_equal(patch, resize_and_crop(image[50:280, 100:330]))
        # outside the scanned area OpenSlide returns transparent pixels: they read as white
        edge = reader.read_region((650, 580), 0, (100, 100))
        np.testing.assert_array_equal(edge[:20, :50], image[580:600, 650:700])
        assert (edge[30:, :] == 255).all() and (edge[:, 60:] == 255).all()


def test_unreadable_truncated_and_corrupt_slides_are_clear_errors(tmp_path):
    missing = tmp_path / "missing.tif"
    with pytest.raises(DataError, match="does not exist"):
        open_slide(missing)
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + bytes(200))
    with pytest.raises(DataError, match="cannot open slide"):
        open_slide(garbage)
    good = tmp_path / "good.tif"
    write_pyramidal_tiff(good, np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8), 0.5)
    data = bytearray(good.read_bytes())
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(DataError, match="cannot open slide"):
        open_slide(truncated)
    with tifffile.TiffFile(good) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data[offset + 20 : offset + count] = bytes(count - 20)  # a tile with a broken JPEG stream
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(bytes(data))
    with open_slide(corrupt) as reader:
        with pytest.raises(DataError, match="corrupt"):
            reader.read_region((0, 0), 0, (100, 100))
        with pytest.raises(DataError, match="corrupt"):  # OpenSlide stays in its error state
            _ = reader.level_dimensions
    with pytest.raises(DataError, match="unknown slide backend"):
        open_slide(good, backend="cucim")


def test_content_hash_follows_the_pixels(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_pyramidal_tiff(a, mosaic(["#.", ".#"], 64), 0.5)
    write_pyramidal_tiff(b, mosaic([".#", "#."], 64), 0.5)
    with open_slide(a) as ra, open_slide(b) as rb, open_slide(a) as ra2:
        assert ra.content_hash() == ra2.content_hash() != rb.content_hash()


# --------------------------------------------------------------------------------------
# Foreground mask


def test_saturation_is_opencvs_fixed_point_hsv():
    pixels = np.array([[255, 0, 0], [100, 100, 100], [0, 0, 0], [255, 235, 235], [255, 234, 234],
                       [200, 180, 180], [1, 0, 0], [3, 2, 1]], np.uint8)
    # s = (diff * round(255 * 4096 / v) + 2048) >> 12, written out by hand for each pixel
    expected = [255, 0, 0, 20, 21, (20 * 5222 + 2048) >> 12, 255, (2 * 348160 + 2048) >> 12]
    assert hsv_saturation(pixels).tolist() == expected
    # everywhere within one level of 255 * (max - min) / max
    v, m = np.meshgrid(np.arange(1, 256), np.arange(256), indexing="ij")
    ok = m <= v
    rgb = np.stack([v, m, m], -1).astype(np.uint8)[ok]
    assert np.abs(hsv_saturation(rgb) - 255 * (v - m)[ok] / v[ok]).max() <= 1.0
    # the channel order does not matter, only max and min
    np.testing.assert_array_equal(hsv_saturation(rgb[:, [2, 0, 1]]), hsv_saturation(rgb))


def test_foreground_is_saturation_strictly_above_20():
    pixels = np.array([[[255, 235, 235], [255, 234, 234], [*WHITE], [*PINK]]], np.uint8)
    assert foreground_mask(pixels).tolist() == [[0, 1, 0, 1]]


def test_mask_level_is_the_coarsest_with_3_by_3_pixels_per_patch():
    # at 16 um/px a 224-pixel patch at 0.25 um/px spans int(3.5) = 3 pixels: 3 x 3 = 9 is enough
    assert mask_level([0.25, 1.0, 4.0, 16.0], 224, 224, 0.25) == 3
    # at 32 um/px it spans 1 pixel: the next finer level (4 um/px, 14 pixels)
    assert mask_level([0.25, 1.0, 4.0, 32.0], 224, 224, 0.25) == 2
    with pytest.raises(DataError, match="no slide level"):
        mask_level([100.0], 224, 224, 0.25)


# --------------------------------------------------------------------------------------
# Grid and sampler


def test_grid_is_x_major_and_holds_only_whole_cells():
    cells = grid_coordinates((10, 7), 3, 3)
    assert cells.tolist() == [[0, 0], [0, 3], [3, 0], [3, 3], [6, 0], [6, 3]]
    assert grid_coordinates((9, 3), 3, 3).tolist() == [[0, 0], [3, 0], [6, 0]]
    assert grid_coordinates((2, 9), 3, 3).shape == (0, 2)


def test_is_foreground_maps_the_box_onto_the_mask_by_truncation():
    array = np.zeros((4, 6), np.uint8)
    array[0:2, 2:4] = 1  # a 2x2 foreground block
    mask = Mask(array=array, level=1, scale_factors=(2.0, 2.0))
    assert is_foreground(mask, 4, 0, 4, 4, 1.0)  # -> mask[0:2, 2:4]: all foreground
    assert is_foreground(mask, 6, 0, 4, 4, 0.5)  # -> mask[0:2, 3:5]: 2 of 4 pixels
    assert not is_foreground(mask, 6, 0, 4, 4, 0.51)
    assert not is_foreground(mask, 8, 0, 4, 4, 0.01)  # -> mask[0:2, 4:6]: none
    assert is_foreground(mask, 5, 1, 5, 3, 0.5)  # -> int(2.5)=2, int(0.5)=0, 2x1 window mask[0:1, 2:4]
    assert not is_foreground(mask, 0, 0, 1, 1, 0.0)  # maps to an empty window: never foreground
    assert not is_foreground(mask, 0, 0, 4, 4, 0.35)  # mask[0:2, 0:2]: no foreground


def test_sampler_keeps_foreground_cells_in_grid_order_without_shuffle():
    array = np.array([[1, 0, 1], [1, 1, 0]], np.uint8)  # mask at level-0 scale / 10
    mask = Mask(array=array, level=1, scale_factors=(10.0, 10.0))
    sampler = ForegroundGridSampler(max_samples=10, shuffle=False)
    # cells of 10 px over a 30 x 20 layer: x-major (0,0),(0,10),(10,0),(10,10),(20,0),(20,10)
    assert sampler.sample(10, 10, (30, 20), mask) == [(0, 0), (0, 10), (10, 10), (20, 0)]
    assert ForegroundGridSampler(max_samples=2, shuffle=False).sample(10, 10, (30, 20), mask) == [(0, 0), (0, 10)]
    with pytest.raises(DataError, match="does not fit"):
        sampler.sample(40, 10, (30, 20), mask)


def test_sampler_visits_cells_in_evas_seeded_order_and_stops_at_the_cap():
    array = np.ones((5, 7), np.uint8)
    array[2, 3] = 0
    mask = Mask(array=array, level=0, scale_factors=(1.0, 1.0))
    cells = grid_coordinates((7, 5), 1, 1)
    for seed in (42, 7):
        order = list(range(len(cells)))
        np.random.default_rng(seed).shuffle(order)  # eva shuffles a list of indices in place
        expected = [tuple(cells[i]) for i in order if tuple(cells[i]) != (3, 2)]
        sampler = ForegroundGridSampler(max_samples=1000, seed=seed)
        assert sampler.sample(1, 1, (7, 5), mask) == expected
        assert ForegroundGridSampler(max_samples=5, seed=seed).sample(1, 1, (7, 5), mask) == expected[:5]
    assert ForegroundGridSampler().sample(1, 1, (7, 5), mask) != ForegroundGridSampler(seed=1).sample(1, 1, (7, 5), mask)


def test_sampling_a_slide_keeps_exactly_its_tissue_cells(tmp_path):
    layout = ["..##.", "####.", "....#", "#...."]
    path = tmp_path / "slide.tif"
    write_pyramidal_tiff(path, mosaic(layout, 224), mpp=0.25, downsamples=(1, 4, 16))
    with open_slide(path) as reader:
        coords = sample_patches(reader, ForegroundGridSampler(max_samples=1000, shuffle=False), 0.25)
    expected = sorted((c * 224, r * 224) for r, row in enumerate(layout) for c, ch in enumerate(row) if ch == "#")
    assert sorted(coords.x_y) == expected
    assert coords.x_y == sorted(expected)  # no shuffle: x-major order
    assert (coords.width, coords.height, coords.level_idx, coords.mask_level) == (224, 224, 0, 2)
    with open_slide(path) as reader:
        capped = sample_patches(reader, ForegroundGridSampler(max_samples=3), 0.5)  # 448-pixel cells
    # at 0.5 um/px the grid is 2 x 2 cells of 448 pixels (2 x 2 tiles each), holding 50 %, 100 %,
    # 25 % and 0 % tissue: the first two reach 35 %
    assert sorted(capped.x_y) == [(0, 0), (448, 0)] and capped.width == 448
    with open_slide(path) as reader:
        assert len(sample_patches(reader, ForegroundGridSampler(max_samples=1), 0.5).x_y) == 1


def test_a_blank_slide_samples_no_patch(tmp_path):
    path = tmp_path / "blank.tif"
    write_pyramidal_tiff(path, mosaic(["...", "..."], 224), mpp=0.5)
    with open_slide(path) as reader:
        assert sample_patches(reader, ForegroundGridSampler(max_samples=10), 0.5).x_y == []
