"""PLISM readers, alignment, tile subsets and the simulated demo data."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pathbench.data import plism
from pathbench.data import synthetic_plism as synth
from pathbench.errors import DataError, PathbenchError

OFFICIAL_SUBSETS = Path("/work/shared/data/plism-tile-subsets")
PNG_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png_bytes(tile: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="PNG")
    return buffer.getvalue()


def make_tiles(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)


# coordinates stored in a deliberately unsorted order; canonical order sorts by (x, y)
COORDS = [(3, 0), (1, 2), (1, 0), (2, 5), (0, 7), (2, 1)]
TILE_IDS = [f"tile_16_{x}_{y}" for x, y in COORDS]
CANONICAL = sorted(TILE_IDS, key=lambda t: (int(t.split("_")[2]), int(t.split("_")[3])))


def write_hub_parquet(
    root: Path, slides: dict[str, np.ndarray], struct_png: bool = True, shards: int = 2
) -> None:
    """Write ``slides`` in owkin/plism-dataset-tiles' schema, rows grouped by slide, split over shards."""
    rows = {name: [] for name in plism.PARQUET_COLUMNS}
    for slide_id, tiles in slides.items():
        staining, scanner = slide_id.split("_")[:2]
        for tile_id, tile in zip(TILE_IDS, tiles, strict=True):
            rows["__key__"].append(f"{slide_id}/{tile_id}")
            rows["stainer"].append(staining)
            rows["scanner"].append(scanner)
            rows["slide_id"].append(f"{slide_id}.tif")
            rows["tile_id"].append(tile_id)
            payload = png_bytes(tile)
            rows["png"].append({"bytes": payload, "path": None} if struct_png else payload)
    n = len(rows["tile_id"])
    bounds = np.linspace(0, n, shards + 1).astype(int)
    (root / "data").mkdir(parents=True)
    for i in range(shards):
        part = {k: v[bounds[i] : bounds[i + 1]] for k, v in rows.items()}
        columns = {k: pa.array(v, pa.string()) for k, v in part.items() if k != "png"}
        columns["png"] = pa.array(part["png"], PNG_STRUCT if struct_png else pa.binary())
        pq.write_table(
            pa.table(columns), root / "data" / f"train-{i:05d}-of-{shards:05d}.parquet", row_group_size=4
        )


def write_h5(root: Path, slides: dict[str, np.ndarray]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for slide_id, tiles in slides.items():
        with h5py.File(root / f"{slide_id}.tif.h5", "w") as handle:
            for tile_id, tile in zip(TILE_IDS, tiles, strict=True):
                handle.create_dataset(tile_id, data=tile)


SLIDES = ["GMH_S60_to_GMH_S60", "GMH_AT2_to_GMH_S60", "HR_S60_to_GMH_S60", "HR_AT2_to_GMH_S60"]


@pytest.fixture
def slide_tiles():
    return {slide: make_tiles(len(TILE_IDS), seed) for seed, slide in enumerate(SLIDES)}


def canonical_pixels(tiles: np.ndarray) -> np.ndarray:
    return tiles[[TILE_IDS.index(t) for t in CANONICAL]]


# ------------------------------------------------------------------------------------
def test_slide_and_tile_ids_parse_and_sort_by_x_then_y():
    assert plism.canonical_slide_id("GIVH_AT2_to_GMH_S60.tif.h5") == "GIVH_AT2_to_GMH_S60"
    assert plism.slide_staining_scanner("GIVH_AT2_to_GMH_S60.tif") == ("GIVH", "AT2")
    assert plism.parse_tile_id("tile_16_1024_3072") == (16, 1024, 3072)
    assert plism.parse_tile_id("t_0_-1_2") == (0, -1, 2)
    with pytest.raises(DataError, match="tile_<level>_<x>_<y>"):
        plism.parse_tile_id("tile_a_b")
    order = plism.canonical_order(TILE_IDS)
    assert [TILE_IDS[i] for i in order] == CANONICAL


@pytest.mark.parametrize("struct_png", [True, False])
def test_parquet_folder_reader_gives_each_slide_in_xy_order(tmp_path, slide_tiles, struct_png):
    write_hub_parquet(tmp_path, slide_tiles, struct_png=struct_png, shards=3)
    slides = plism.open_parquet_folder(tmp_path)
    assert sorted(slides) == sorted(SLIDES)
    for slide_id, tiles in slide_tiles.items():
        dataset = slides[slide_id]
        assert dataset.item_ids == CANONICAL
        assert (dataset.staining, dataset.scanner) == tuple(slide_id.split("_")[:2])
        expected = canonical_pixels(tiles)
        for i in range(len(dataset)):
            np.testing.assert_array_equal(dataset[i], expected[i])
    assert len({d.fingerprint for d in slides.values()}) == len(SLIDES)
    # workers get a picklable copy that reads the same pixels
    clone = pickle.loads(pickle.dumps(slides[SLIDES[0]]))
    np.testing.assert_array_equal(clone[2], slides[SLIDES[0]][2])
    sub = slides[SLIDES[1]].subset(np.array([4, 1]))
    assert sub.item_ids == [CANONICAL[4], CANONICAL[1]]
    np.testing.assert_array_equal(sub[0], canonical_pixels(slide_tiles[SLIDES[1]])[4])


def test_h5_folder_reader_gives_each_slide_in_xy_order(tmp_path, slide_tiles):
    write_h5(tmp_path / "h5", slide_tiles)
    slides = plism.open_h5_folder(tmp_path / "h5")
    assert sorted(slides) == sorted(SLIDES)
    for slide_id, tiles in slide_tiles.items():
        dataset = slides[slide_id]
        assert dataset.item_ids == CANONICAL
        expected = canonical_pixels(tiles)
        np.testing.assert_array_equal(np.stack([dataset[i] for i in range(len(dataset))]), expected)
    clone = pickle.loads(pickle.dumps(slides[SLIDES[0]]))
    np.testing.assert_array_equal(clone[0], slides[SLIDES[0]][0])
    assert plism.detect_folder_format(tmp_path / "h5") == "h5"


def test_folder_format_detection_and_its_errors(tmp_path, slide_tiles):
    write_hub_parquet(tmp_path / "pq", slide_tiles)
    assert plism.detect_folder_format(tmp_path / "pq") == "parquet"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither"):
        plism.detect_folder_format(tmp_path / "empty")
    with pytest.raises(DataError, match="no such folder"):
        plism.detect_folder_format(tmp_path / "nope")


def test_an_undecodable_tile_is_a_clear_error(tmp_path, slide_tiles):
    write_hub_parquet(tmp_path, {SLIDES[0]: slide_tiles[SLIDES[0]]}, struct_png=False, shards=1)
    shard = next((tmp_path / "data").glob("*.parquet"))
    table = pq.read_table(shard)
    broken = table.column("png").to_pylist()
    broken[0] = b"\x89PNG not really"
    table = table.set_column(table.schema.get_field_index("png"), "png", pa.array(broken, pa.binary()))
    pq.write_table(table, shard)
    dataset = plism.open_parquet_folder(tmp_path)[SLIDES[0]]
    bad = dataset.item_ids.index(TILE_IDS[0])
    with pytest.raises(DataError, match=f"tile {TILE_IDS[0]} of slide {SLIDES[0]}.*cannot be decoded"):
        dataset[bad]


def _rewrite_png_column(shard: Path, change) -> None:
    table = pq.read_table(shard)
    cells = change(table.column("png").to_pylist())
    table = table.set_column(table.schema.get_field_index("png"), "png", pa.array(cells, pa.binary()))
    pq.write_table(table, shard, row_group_size=4, compression="none")


def test_a_changed_tile_is_not_served_from_the_old_feature_cache(tmp_path, slide_tiles, tiny_extractor):
    from pathbench.features import extract_features

    write_hub_parquet(tmp_path, {SLIDES[0]: slide_tiles[SLIDES[0]]}, struct_png=False, shards=1)
    shard = next((tmp_path / "data").glob("*.parquet"))
    _rewrite_png_column(shard, lambda cells: cells)  # the layout the rewrite below produces
    before = plism.open_parquet_folder(tmp_path)[SLIDES[0]]
    cached = extract_features(tiny_extractor, before, pooling="cls", cache_dir=tmp_path / "cache", progress=False)
    size = shard.stat().st_size

    def swap_first_two(cells):  # same bytes, same file size, same row-group sizes and statistics
        cells[0], cells[1] = cells[1], cells[0]
        return cells

    _rewrite_png_column(shard, swap_first_two)
    assert shard.stat().st_size == size
    after = plism.open_parquet_folder(tmp_path)[SLIDES[0]]
    assert after.fingerprint != before.fingerprint
    fresh = extract_features(tiny_extractor, after, pooling="cls", cache_dir=tmp_path / "cache", progress=False)
    assert fresh.key != cached.key
    first, second = after.item_ids.index(TILE_IDS[0]), after.item_ids.index(TILE_IDS[1])
    np.testing.assert_allclose(fresh.array[first], cached.array[second], atol=1e-6)
    np.testing.assert_allclose(fresh.array[second], cached.array[first], atol=1e-6)


def test_a_changed_tile_changes_the_fingerprint_even_when_the_file_time_is_kept(tmp_path, slide_tiles):
    import os

    write_hub_parquet(tmp_path, {SLIDES[0]: slide_tiles[SLIDES[0]]}, struct_png=False, shards=1)
    shard = next((tmp_path / "data").glob("*.parquet"))
    before = plism.open_parquet_folder(tmp_path)[SLIDES[0]].fingerprint
    stat = shard.stat()

    def blank_first(cells):  # a flat tile compresses to fewer bytes: the row group's size changes
        cells[0] = png_bytes(np.full((16, 16, 3), 200, dtype=np.uint8))
        return cells

    _rewrite_png_column(shard, blank_first)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plism.open_parquet_folder(tmp_path)[SLIDES[0]].fingerprint != before


def test_a_16_bit_png_tile_is_read_as_its_8_bit_values(tmp_path, slide_tiles):
    write_hub_parquet(tmp_path, {SLIDES[0]: slide_tiles[SLIDES[0]]}, struct_png=True, shards=1)
    shard = next((tmp_path / "data").glob("*.parquet"))
    ramp = np.tile(np.arange(0, 65536, 4096, dtype=np.uint16), (16, 1))
    table = pq.read_table(shard)
    cells = table.column("png").to_pylist()
    cells[0] = {"bytes": png_bytes(ramp), "path": None}
    pq.write_table(table.set_column(table.schema.get_field_index("png"), "png", pa.array(cells, PNG_STRUCT)), shard)
    dataset = plism.open_parquet_folder(tmp_path)[SLIDES[0]]
    tile = dataset[dataset.item_ids.index(TILE_IDS[0])]
    np.testing.assert_array_equal(tile[:, :, 0], (ramp.astype(np.int64) * 255 + 32767) // 65535)


def test_an_unreadable_h5_tile_is_a_clear_error(tmp_path, slide_tiles):
    write_h5(tmp_path, {SLIDES[0]: slide_tiles[SLIDES[0]]})
    dataset = plism.open_h5_folder(tmp_path)[SLIDES[0]]
    with h5py.File(dataset.path, "a") as handle:
        del handle[CANONICAL[0]]
    with pytest.raises(DataError, match=f"tile {CANONICAL[0]} of slide {SLIDES[0]}"):
        dataset[0]


def test_misaligned_slides_are_refused_naming_slides_and_first_differing_ids():
    ids = {
        "A_S60_to_GMH_S60": ["tile_0_0_0", "tile_0_0_1", "tile_0_1_0"],
        "B_S60_to_GMH_S60": ["tile_0_0_0", "tile_0_0_2", "tile_0_1_0"],
    }
    with pytest.raises(DataError) as info:
        plism.check_alignment(ids)
    message = str(info.value)
    assert "A_S60_to_GMH_S60" in message and "B_S60_to_GMH_S60" in message
    assert "row 1" in message and "tile_0_0_1" in message and "tile_0_0_2" in message
    with pytest.raises(DataError, match="3 tiles.*2"):
        plism.check_alignment({"A_S60": ids["A_S60_to_GMH_S60"], "B_S60": ids["A_S60_to_GMH_S60"][:2]})
    plism.check_alignment({"A_S60": ids["A_S60_to_GMH_S60"], "B_S60": list(ids["A_S60_to_GMH_S60"])})


def test_slide_selection_by_stainings_and_scanners():
    available = [f"{st}_{sc}_to_GMH_S60.tif" for st in ("GMH", "HR", "KR") for sc in ("S60", "AT2")]
    assert plism.select_slides(available, ["GMH,HR"], ["S60"]) == ["GMH_S60_to_GMH_S60", "HR_S60_to_GMH_S60"]
    assert len(plism.select_slides(available, ["kr"])) == 2
    assert len(plism.select_slides(available)) == 6
    with pytest.raises(DataError, match="missing.*GIV_S60_to_GMH_S60"):
        plism.select_slides(available, ["GMH", "GIV"], ["S60"])
    with pytest.raises(PathbenchError, match="unknown staining code"):
        plism.select_slides(available, ["XYZ"])
    with pytest.raises(DataError, match="at least 2 slides"):
        plism.select_slides(available, ["GMH"], ["S60"])


# ------------------------------------------------------------------------------------
# Tile subsets
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", sorted(plism.TILE_SUBSET_SHA256))
def test_official_subset_is_read_from_the_cache_after_its_checksum(tmp_path, n):
    cache = tmp_path / "cache"
    (cache / "plism").mkdir(parents=True)
    shutil.copy(OFFICIAL_SUBSETS / f"tiles_subset_{n}.npy", cache / "plism")

    def no_network(url):
        raise AssertionError("a cached subset must not be downloaded again")

    subset = plism.load_tile_subset(str(n), cache_dir=cache, fetch=no_network)
    assert subset.dtype == np.int64 and len(subset) == n and len(np.unique(subset)) == n
    assert subset.max() < plism.NUM_TILES_PER_SLIDE


def test_official_subset_download_is_checked_and_cached(tmp_path):
    payload = (OFFICIAL_SUBSETS / "tiles_subset_460.npy").read_bytes()
    urls = []
    subset = plism.load_tile_subset(460, cache_dir=tmp_path, fetch=lambda url: urls.append(url) or payload)
    assert urls == [
        f"https://raw.githubusercontent.com/owkin/plism-benchmark/{plism.TILE_SUBSET_COMMIT}/assets/tiles_subset_460.npy"
    ]
    cached = tmp_path / "plism" / "tiles_subset_460.npy"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == plism.TILE_SUBSET_SHA256[460]
    np.testing.assert_array_equal(plism.load_tile_subset("460", cache_dir=tmp_path), subset)


def test_a_bad_checksum_is_an_error_and_nothing_is_cached(tmp_path):
    payload = bytearray((OFFICIAL_SUBSETS / "tiles_subset_460.npy").read_bytes())
    payload[-1] ^= 1
    with pytest.raises(DataError, match="sha256.*nothing was cached"):
        plism.load_tile_subset(460, cache_dir=tmp_path, fetch=lambda url: bytes(payload))
    assert not (tmp_path / "plism" / "tiles_subset_460.npy").exists()
    (tmp_path / "plism").mkdir(parents=True, exist_ok=True)
    (tmp_path / "plism" / "tiles_subset_460.npy").write_bytes(bytes(payload))
    with pytest.raises(DataError, match="corrupt"):
        plism.load_tile_subset(460, cache_dir=tmp_path)


def test_a_failed_download_says_what_to_do(tmp_path):
    def offline(url):
        raise OSError("network unreachable")

    with pytest.raises(DataError, match="--tile-subset PATH"):
        plism.load_tile_subset(8139, cache_dir=tmp_path, fetch=offline)


def test_all_tiles_custom_files_and_bad_sizes(tmp_path):
    assert plism.load_tile_subset("all") is None
    assert plism.load_tile_subset(16278) is None
    custom = tmp_path / "mine.npy"
    np.save(custom, np.array([5, 1, 3]))
    np.testing.assert_array_equal(plism.load_tile_subset(str(custom)), [5, 1, 3])
    np.save(custom, np.array([1, 1]))
    with pytest.raises(DataError, match="duplicate"):
        plism.load_tile_subset(str(custom))
    with pytest.raises(PathbenchError, match="official subsets"):
        plism.load_tile_subset(1000)


def test_a_subset_larger_than_the_slides_is_a_clear_error():
    np.testing.assert_array_equal(plism.apply_tile_subset(4, None), [0, 1, 2, 3])
    np.testing.assert_array_equal(plism.apply_tile_subset(4, np.array([3, 0])), [3, 0])
    with pytest.raises(DataError, match="--n-tiles all"):
        plism.apply_tile_subset(44, np.arange(8139))


# ------------------------------------------------------------------------------------
# plismbench-layout features
# ------------------------------------------------------------------------------------
def write_features_dir(
    root: Path, slides: list[str], dim: int = 5, seed: int = 0, shuffle: bool = True
) -> dict:
    rng = np.random.default_rng(seed)
    coords = np.array([(16, x, y) for x, y in COORDS], dtype=np.float32)
    truth = {}
    for slide in slides:
        feats = rng.normal(size=(len(COORDS), dim)).astype(np.float32)
        order = rng.permutation(len(COORDS)) if shuffle else np.arange(len(COORDS))
        (root / f"{slide}.tif").mkdir(parents=True)
        np.save(root / f"{slide}.tif" / "features.npy", np.concatenate([coords, feats], axis=1)[order])
        truth[slide] = feats[[TILE_IDS.index(t) for t in CANONICAL]]
    return truth


def test_plismbench_features_are_read_lazily_in_xy_order_with_subsets(tmp_path):
    truth = write_features_dir(tmp_path, SLIDES)
    features = plism.PlismbenchFeatures(tmp_path)
    assert list(features) == sorted(SLIDES) and features.dim == 5
    assert features.tile_ids == CANONICAL
    for slide in SLIDES:
        np.testing.assert_array_equal(features[slide], truth[slide])
    subset = plism.PlismbenchFeatures(tmp_path, stainings=["HR"], tile_subset=np.array([5, 0, 2]))
    assert list(subset) == ["HR_AT2_to_GMH_S60", "HR_S60_to_GMH_S60"]
    np.testing.assert_array_equal(subset["HR_S60_to_GMH_S60"], truth["HR_S60_to_GMH_S60"][[5, 0, 2]])
    assert subset.tile_ids == [CANONICAL[i] for i in (5, 0, 2)]


def test_plismbench_features_with_different_coordinates_are_refused(tmp_path):
    write_features_dir(tmp_path, SLIDES[:2])
    path = tmp_path / f"{SLIDES[1]}.tif" / "features.npy"
    array = np.load(path)
    array[array[:, 1] == 3, 2] = 9  # move tile (3, 0) to (3, 9)
    np.save(path, array)
    with pytest.raises(
        DataError,
        match=r"GMH_AT2_to_GMH_S60 and GMH_S60_to_GMH_S60 are not aligned.*row 5 \(tile_16_3_9 vs tile_16_3_0\)",
    ):
        plism.PlismbenchFeatures(tmp_path)


def test_plismbench_features_with_nan_are_reported(tmp_path):
    write_features_dir(tmp_path, SLIDES[:2])
    path = tmp_path / f"{SLIDES[0]}.tif" / "features.npy"
    array = np.load(path)
    array[2, 4] = np.nan
    np.save(path, array)
    features = plism.PlismbenchFeatures(tmp_path)
    with pytest.raises(DataError, match=f"{SLIDES[0]}.*NaN"):
        features.check_finite()


def test_written_plismbench_features_read_back(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    for slide in SLIDES[:2]:
        plism.write_plismbench_features(tmp_path, slide, TILE_IDS, feats)
    features = plism.PlismbenchFeatures(tmp_path)
    np.testing.assert_array_equal(features[SLIDES[0]], feats[[TILE_IDS.index(t) for t in CANONICAL]])


# ------------------------------------------------------------------------------------
# Hub streaming path, exercised offline through the datasets parquet builder
# ------------------------------------------------------------------------------------
def test_streamed_rows_are_materialised_one_parquet_per_slide(tmp_path, slide_tiles):
    import datasets

    write_hub_parquet(tmp_path / "hub", slide_tiles)
    files = sorted(str(p) for p in (tmp_path / "hub" / "data").glob("*.parquet"))
    stream = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    wanted = ["HR_S60_to_GMH_S60", "GMH_AT2_to_GMH_S60"]
    out = plism.materialise_slides(stream, wanted, tmp_path / "cache", progress=False)
    assert sorted(p.stem for p in out.glob("*.parquet")) == sorted(wanted)
    slides = plism.open_parquet_folder(out)
    np.testing.assert_array_equal(
        slides["HR_S60_to_GMH_S60"][1], canonical_pixels(slide_tiles["HR_S60_to_GMH_S60"])[1]
    )
    # everything already on disk: the stream is not read at all
    assert plism.materialise_slides(iter(()), wanted, out, progress=False) == out
    with pytest.raises(DataError, match="ended without"):
        plism.materialise_slides(iter(()), ["KR_S60_to_GMH_S60"], out, progress=False)


# ------------------------------------------------------------------------------------
# Simulated demo data
# ------------------------------------------------------------------------------------
def test_shipped_demo_tiles_are_real_tissue_tiles():
    tiles, grid = synth.load_demo_tiles()
    assert tiles.shape == (44, 224, 224, 3) and tiles.dtype == np.uint8
    assert grid.shape == (44, 2) and len({tuple(g) for g in grid}) == 44
    # mostly tissue: stained (darker than glass) pixels dominate
    assert (tiles.mean(axis=-1) < 220).mean() > 0.5


def test_hed_conversion_round_trips():
    rgb = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    back = synth.hed_to_rgb(synth.rgb_to_hed(rgb))
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1


def test_synthetic_plism_is_deterministic_and_readable_by_the_hub_reader(tmp_path):
    kwargs = dict(stainings=("GMH", "HR"), scanners=("S60", "AT2"), n_tiles=4)
    first = synth.write_synthetic_plism(tmp_path / "a", seed=3, **kwargs)
    second = synth.write_synthetic_plism(tmp_path / "b", seed=3, **kwargs)
    other = synth.write_synthetic_plism(tmp_path / "c", seed=4, **kwargs)
    shards = sorted((first / "data").glob("*.parquet"))
    assert len(shards) == 4
    for shard in shards:
        a = pq.read_table(shard)
        b = pq.read_table(second / "data" / shard.name)
        assert a.equals(b)
        assert a.column_names == list(plism.PARQUET_COLUMNS)
        assert not a.column("png").equals(pq.read_table(other / "data" / shard.name).column("png"))
    slides = plism.open_parquet_folder(first)
    assert sorted(slides) == [
        "GMH_AT2_to_GMH_S60",
        "GMH_S60_to_GMH_S60",
        "HR_AT2_to_GMH_S60",
        "HR_S60_to_GMH_S60",
    ]
    plism.check_alignment({s: d.item_ids for s, d in slides.items()})
    images = [slides[s][0] for s in sorted(slides)]
    assert all(im.shape == (224, 224, 3) for im in images)
    # the same tissue, rendered differently on every slide
    assert len({hashlib.sha256(im.tobytes()).hexdigest() for im in images}) == 4
    # datasets decodes the png column as images, as on the hub
    import datasets

    rows = datasets.load_dataset("parquet", data_files=[str(shards[0])], split="train")
    assert rows.features["png"] == datasets.Image()


def test_synthetic_slides_differ_more_across_stainings_than_scanners():
    tiles, _ = synth.load_demo_tiles()
    tiles = tiles[:6]
    base = synth.render_slide(tiles, "GMH", "S60").astype(float)
    scanner_change = np.abs(synth.render_slide(tiles, "GMH", "AT2").astype(float) - base).mean()
    both_change = np.abs(synth.render_slide(tiles, "HR", "AT2").astype(float) - base).mean()
    assert 0 < scanner_change < both_change


def test_only_the_shards_holding_the_asked_slides_are_streamed(tmp_path, slide_tiles):
    import fsspec

    write_hub_parquet(tmp_path, slide_tiles, shards=4)  # 6 tiles per slide, so one slide per shard
    fs = fsspec.filesystem("file")
    root = str(tmp_path / "data")
    shards = plism.shards_holding_slides(["HR_S60_to_GMH_S60"], fs=fs, root=root)
    assert len(shards) == 1
    assert pq.read_table(shards[0], columns=["slide_id"]).column(0)[0].as_py() == "HR_S60_to_GMH_S60.tif"
    assert len(plism.shards_holding_slides(SLIDES, fs=fs, root=root)) == 4
    assert plism.shards_holding_slides(["KR_P_to_GMH_S60"], fs=fs, root=root) == []
