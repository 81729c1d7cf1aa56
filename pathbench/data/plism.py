"""Readers for the PLISM robustness dataset (Ochi et al., Scientific Data 2024).

PLISM holds 91 whole-slide images of the same tissue: 13 stainings x 7 scanners. Every
slide was registered to ``GMH_S60`` and cut into the same 16,278 tiles of 224 x 224 pixels,
so tile ``i`` of every slide shows the same tissue. Three sources are read here:

- the hub dataset ``owkin/plism-dataset-tiles`` (parquet shards; columns ``__key__``,
  ``stainer``, ``scanner``, ``slide_id``, ``tile_id``, ``png``), streamed with ``datasets``
  or read from a local folder of its shards (:func:`open_parquet_folder`);
- the hub dataset ``owkin/plism-dataset``: one ``<STAIN>_<SCANNER>_to_GMH_S60.tif.h5`` per
  slide, one h5 dataset per tile keyed by ``tile_id`` (:func:`open_h5_folder`);
- features already extracted in plismbench's layout, ``<dir>/<slide_id>/features.npy`` of
  shape ``(n_tiles, 3 + dim)``: deep-zoom level, x, y, then the features
  (:class:`PlismbenchFeatures`).

Each image reader gives one dataset per slide (``item_ids``, ``fingerprint``,
``__getitem__ -> (H, W, 3) uint8``), with its tiles in the canonical order: sorted by
``(x, y)`` parsed from ``tile_<level>_<x>_<y>``. :func:`check_alignment` refuses slides that
do not hold the same tiles in the same order, and :func:`load_tile_subset` gives plismbench's
official tile subsets, downloaded once from a pinned commit and checked by sha256.

Slide ids are handled without the ``.tif`` suffix that the hub files carry:
``GIVH_AT2_to_GMH_S60.tif`` and ``GIVH_AT2_to_GMH_S60`` name the same slide.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathbench._io import atomic_write
from pathbench.data.base import TileDataset, ids_digest
from pathbench.data.images import decode_image
from pathbench.data.parquet import RowGroupReader, parquet_file_identity
from pathbench.errors import DataError, PathbenchError
from pathbench.settings import cache_root

STAININGS: tuple[str, ...] = tuple("GIV GIVH GM GMH GV GVH HR HRH KR KRH LM LMH MY".split())
SCANNERS: tuple[str, ...] = tuple("AT2 GT450 P S210 S360 S60 SQ".split())
REFERENCE_SLIDE = "GMH_S60"
NUM_TILES_PER_SLIDE = 16_278

HUB_TILES_REPO = "owkin/plism-dataset-tiles"
HUB_H5_REPO = "owkin/plism-dataset"
PARQUET_COLUMNS = ("__key__", "stainer", "scanner", "slide_id", "tile_id", "png")

TILE_SUBSET_REPO = "owkin/plism-benchmark"
TILE_SUBSET_COMMIT = "b4f32b7c233e0f5ba8340da89ef65803cfc2ce49"
TILE_SUBSET_URL = "https://raw.githubusercontent.com/{repo}/{commit}/assets/tiles_subset_{n}.npy"
TILE_SUBSET_SHA256: dict[int, str] = {
    460: "6526e1c43f329c16d1282e59feb5688aca827bde678320e86b3fc5c12567807f",
    2713: "5299caccb226cd3f5ae466cf1d9b620167bde598f2d02e8fbbc7a84d0dbf3698",
    5426: "4941e90d717e846a0aab5ffd8fa121948619002cd1d07192a97cc074ab6b9f67",
    8139: "7d3c5cb3cd5364263a388d0bb4ad25b0dfa117f9718c4f69688e427a77ebb298",
}
DEFAULT_N_TILES = 8139

_SLIDE_SUFFIXES = (".h5", ".tif")
# plismbench reads ``tile_id.split("_")[1:]`` as (level, x, y): any one-word prefix
_TILE_ID = re.compile(r"^[^_]*_(-?\d+)_(-?\d+)_(-?\d+)$")


# ------------------------------------------------------------------------------------
# Slide and tile identifiers
# ------------------------------------------------------------------------------------
def canonical_slide_id(slide_id: str) -> str:
    """``"GIVH_AT2_to_GMH_S60.tif.h5"`` -> ``"GIVH_AT2_to_GMH_S60"`` (suffixes dropped)."""
    name = str(slide_id)
    changed = True
    while changed:
        changed = False
        for suffix in _SLIDE_SUFFIXES:
            if name.endswith(suffix):
                name, changed = name[: -len(suffix)], True
    return name


def slide_staining_scanner(slide_id: str) -> tuple[str, str]:
    """``"GIVH_AT2_to_GMH_S60"`` -> ``("GIVH", "AT2")``."""
    parts = canonical_slide_id(slide_id).split("_")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise DataError(
            f"slide id {slide_id!r} does not look like a PLISM slide id: expected "
            "'<STAIN>_<SCANNER>_to_GMH_S60' (e.g. 'GIVH_AT2_to_GMH_S60')."
        )
    return parts[0], parts[1]


def slide_id_for(staining: str, scanner: str) -> str:
    """The canonical slide id of one staining and scanner: ``GIVH_AT2_to_GMH_S60``."""
    return f"{staining}_{scanner}_to_{REFERENCE_SLIDE}"


def parse_tile_id(tile_id: str) -> tuple[int, int, int]:
    """``"tile_16_1024_3072"`` -> ``(16, 1024, 3072)``: deep-zoom level, x, y."""
    match = _TILE_ID.match(str(tile_id))
    if match is None:
        raise DataError(
            f"tile id {tile_id!r} does not follow PLISM's 'tile_<level>_<x>_<y>' pattern; "
            "check that the data is PLISM (or written by pathbench.data.synthetic_plism)."
        )
    level, x, y = (int(v) for v in match.groups())
    return level, x, y


def tile_id_from_coords(level: int, x: int, y: int) -> str:
    """Inverse of :func:`parse_tile_id`."""
    return f"tile_{int(level)}_{int(x)}_{int(y)}"


def canonical_order(tile_ids: Sequence[str]) -> np.ndarray:
    """Permutation that sorts tiles by ``(x, y)``: ``(n,) int64``, stable on ties.

    This is plismbench's row order: a subset index ``j`` means row ``j`` of the sorted tiles.
    """
    if len(tile_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    coords = np.array([parse_tile_id(t) for t in tile_ids], dtype=np.int64)
    return coords_order(coords[:, 1], coords[:, 2])


def coords_order(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stable permutation sorting by ``x`` then ``y``: ``(n,) int64``."""
    return np.lexsort((np.asarray(y), np.asarray(x))).astype(np.int64)


def select_slides(
    available: Iterable[str],
    stainings: Sequence[str] | None = None,
    scanners: Sequence[str] | None = None,
) -> list[str]:
    """Pick the slides of the asked stainings x scanners among ``available`` slide ids.

    ``None`` means every staining (or scanner) present. Every combination asked for must
    be present; a missing one is a :class:`DataError` naming it. Returns canonical slide
    ids, sorted.
    """
    by_pair: dict[tuple[str, str], str] = {}
    for slide in available:
        canonical = canonical_slide_id(slide)
        by_pair[slide_staining_scanner(canonical)] = canonical
    if not by_pair:
        raise DataError("no PLISM slide found in the data source.")
    present_stainings = sorted({s for s, _ in by_pair})
    present_scanners = sorted({s for _, s in by_pair})
    want_stainings = _normalise_codes(stainings, present_stainings, "staining")
    want_scanners = _normalise_codes(scanners, present_scanners, "scanner")
    chosen = [by_pair[k] for k in sorted(by_pair) if k[0] in want_stainings and k[1] in want_scanners]
    if stainings is not None and scanners is not None:
        # both axes named: every combination is expected
        missing = [
            slide_id_for(st, sc) for st in want_stainings for sc in want_scanners if (st, sc) not in by_pair
        ]
    else:
        missing = [f"any slide of staining {st}" for st in want_stainings if st not in present_stainings]
        missing += [f"any slide of scanner {sc}" for sc in want_scanners if sc not in present_scanners]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(
            f"{len(missing)} slide(s) asked for are missing from the data: {shown}. "
            "Download them, or narrow --stainings / --scanners to slides that are present."
        )
    if len(chosen) < 2:
        raise DataError(
            f"at least 2 slides are needed to form a pair; the selection holds {len(chosen)} "
            f"({', '.join(chosen) or 'none'}). Widen --stainings / --scanners."
        )
    return sorted(chosen)


def _normalise_codes(asked: Sequence[str] | None, present: list[str], what: str) -> list[str]:
    if asked is None:
        return present
    codes: list[str] = []
    for item in asked:
        for code in str(item).split(","):
            code = code.strip().upper()
            if code and code not in codes:
                codes.append(code)
    known = STAININGS if what == "staining" else SCANNERS
    unknown = [c for c in codes if c not in known and c not in present]
    if unknown:
        raise PathbenchError(
            f"unknown {what} code(s) {', '.join(unknown)}: PLISM {what}s are {', '.join(known)}."
        )
    if not codes:
        raise PathbenchError(f"--{what}s was given but lists no {what}.")
    return codes


def check_alignment(tile_ids_by_slide: Mapping[str, Sequence[str]]) -> None:
    """Refuse slides that do not hold exactly the same tile ids in the same order.

    Raises :class:`DataError` naming the two slides and the first differing position.
    """
    items = list(tile_ids_by_slide.items())
    if not items:
        return
    ref_slide, ref_ids = items[0]
    ref_ids = list(ref_ids)
    for slide, ids in items[1:]:
        ids = list(ids)
        if ids == ref_ids:
            continue
        position = next(
            (i for i, (a, b) in enumerate(zip(ref_ids, ids, strict=False)) if a != b),
            min(len(ref_ids), len(ids)),
        )
        first_ref = ref_ids[position] if position < len(ref_ids) else "<end of slide>"
        first_other = ids[position] if position < len(ids) else "<end of slide>"
        raise DataError(
            f"slides {ref_slide} and {slide} are not aligned: {ref_slide} has {len(ref_ids)} tiles, "
            f"{slide} has {len(ids)}, and in (x, y) order they first differ at row {position} "
            f"({first_ref} vs {first_other}). PLISM slides must hold the same registered tiles; "
            "re-download the slide, or check that the features were extracted on the whole slide."
        )


# ------------------------------------------------------------------------------------
# Tile subsets
# ------------------------------------------------------------------------------------
def _download_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - pinned https URL
        return response.read()


def load_tile_subset(
    spec: int | str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    fetch: Callable[[str], bytes] | None = None,
) -> np.ndarray | None:
    """Row indices of a tile subset: ``(n,) int64`` into a slide's ``(x, y)``-sorted tiles.

    ``spec`` is ``"all"`` (returns ``None``: every row), one of plismbench's official sizes
    460 / 2713 / 5426 / 8139, or the path of a ``.npy`` index file. An official file is
    downloaded once from the pinned commit of ``owkin/plism-benchmark``, its sha256 checked,
    and cached under ``<cache>/plism/``; a checksum mismatch is an error and nothing is
    cached. ``fetch(url) -> bytes`` replaces the HTTP download (for tests).
    """
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return None
    path: Path | None = None
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and not spec.strip().isdigit()):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DataError(
                f"tile subset {str(spec)!r} is neither 'all', one of "
                f"{', '.join(map(str, TILE_SUBSET_SHA256))}, nor an existing .npy file."
            )
        return _validate_subset(_load_npy(path), str(path))
    n = int(spec)
    if n == NUM_TILES_PER_SLIDE:
        return None
    if n not in TILE_SUBSET_SHA256:
        raise PathbenchError(
            f"--n-tiles {n}: plismbench's official subsets have "
            f"{', '.join(map(str, TILE_SUBSET_SHA256))} tiles; use one of them, 'all', "
            "or --tile-subset PATH for your own index file."
        )
    expected = TILE_SUBSET_SHA256[n]
    cached = cache_root(cache_dir) / "plism" / f"tiles_subset_{n}.npy"
    if cached.is_file():
        digest = hashlib.sha256(cached.read_bytes()).hexdigest()
        if digest != expected:
            raise DataError(
                f"cached tile subset {cached} has sha256 {digest}, expected {expected}: the file "
                "is corrupt. Delete it and run again to download a fresh copy."
            )
        return _validate_subset(_load_npy(cached), str(cached), n)
    url = TILE_SUBSET_URL.format(repo=TILE_SUBSET_REPO, commit=TILE_SUBSET_COMMIT, n=n)
    try:
        payload = (fetch or _download_bytes)(url)
    except Exception as exc:  # noqa: BLE001 - any network failure becomes one clear message
        raise DataError(
            f"could not download the official {n}-tile subset from {url} ({exc}). Without network, "
            f"copy tiles_subset_{n}.npy from plismbench's assets/ to {cached}, "
            "or pass --tile-subset PATH, or --n-tiles all."
        ) from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != expected:
        raise DataError(
            f"the {n}-tile subset downloaded from {url} has sha256 {digest}, expected {expected}; "
            "nothing was cached. Retry later, or pass --tile-subset PATH with a file you trust."
        )
    with atomic_write(cached, "wb") as handle:
        handle.write(payload)
    return _validate_subset(np.load(io.BytesIO(payload), allow_pickle=False), url, n)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read tile subset {path} as a .npy array ({exc}).") from exc


def _validate_subset(indices: np.ndarray, source: str, n: int | None = None) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise DataError(
            f"tile subset {source} must be a 1-D integer array of row indices; found shape "
            f"{indices.shape} and dtype {indices.dtype}."
        )
    if indices.size == 0 or indices.min() < 0:
        raise DataError(f"tile subset {source} is empty or holds negative indices.")
    if len(np.unique(indices)) != len(indices):
        raise DataError(f"tile subset {source} holds duplicate row indices.")
    if n is not None and len(indices) != n:
        raise DataError(f"tile subset {source} holds {len(indices)} indices, expected {n}.")
    return indices.astype(np.int64)


def apply_tile_subset(n_rows: int, subset: np.ndarray | None, what: str = "the slides") -> np.ndarray:
    """Rows kept by ``subset`` among ``n_rows`` canonical rows: ``(k,) int64``, in subset order.

    ``None`` keeps every row. A subset reaching past ``n_rows`` is an error (PLISM's subsets
    index 16,278 rows; the demo data has far fewer, hence ``--n-tiles all`` there).
    """
    if subset is None:
        return np.arange(n_rows, dtype=np.int64)
    if int(subset.max()) >= n_rows:
        raise DataError(
            f"the tile subset holds {len(subset)} row indices up to {int(subset.max())}, but "
            f"{what} have only {n_rows} tiles. Official subsets index PLISM's 16,278 tiles per "
            "slide; on smaller data (such as the demo) use --n-tiles all."
        )
    return np.asarray(subset, dtype=np.int64)


def subset_description(spec: int | str | os.PathLike | None, subset: np.ndarray | None) -> dict[str, Any]:
    """A JSON-able record of a tile subset: how it was asked for, its size and its sha256."""
    record: dict[str, Any] = {"spec": "all" if subset is None else str(spec)}
    if subset is not None:
        record["n_tiles"] = int(len(subset))
        record["sha256"] = hashlib.sha256(np.ascontiguousarray(subset, dtype=np.int64).tobytes()).hexdigest()
        if str(spec).isdigit() and int(spec) in TILE_SUBSET_SHA256:
            record["source"] = TILE_SUBSET_URL.format(
                repo=TILE_SUBSET_REPO, commit=TILE_SUBSET_COMMIT, n=spec
            )
    return record


# ------------------------------------------------------------------------------------
# Image readers: one dataset per slide
# ------------------------------------------------------------------------------------
class PlismSlide(TileDataset):
    """The tiles of one PLISM slide, in canonical ``(x, y)`` order.

    Attributes: ``slide_id`` (canonical), ``staining``, ``scanner``, ``item_ids`` (tile ids),
    ``fingerprint`` (identity of the source, keys the feature cache with the item ids).
    ``__getitem__(i)`` returns tile ``i`` as ``(H, W, 3) uint8`` RGB.
    """

    def __init__(self, slide_id: str, item_ids: Sequence[str], source_identity: Mapping[str, Any]):
        self.slide_id = canonical_slide_id(slide_id)
        self.staining, self.scanner = slide_staining_scanner(self.slide_id)
        self.item_ids = list(item_ids)
        self._source_identity = dict(source_identity)
        self.fingerprint = _fingerprint({"slide_id": self.slide_id, **self._source_identity})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.slide_id!r}, n_tiles={len(self)})"

    def describe(self, index: int) -> str:
        return f"tile {self.item_ids[index]} of slide {self.slide_id}"

    def subset(self, rows: np.ndarray) -> PlismSlide:
        """A new dataset holding only ``rows`` (indices into this one's canonical order)."""
        raise NotImplementedError


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class ParquetPlismSlide(PlismSlide):
    """One slide of a folder of ``owkin/plism-dataset-tiles`` parquet shards.

    Reads the ``png`` column row group by row group (:class:`pathbench.data.parquet.RowGroupReader`
    keeps the last few), so a slide streams from disk in about one pass when its rows are
    stored together.
    """

    def __init__(
        self,
        slide_id: str,
        tile_ids: Sequence[str],
        locations: Sequence[tuple[str, int, int]],
        source_identity: Mapping[str, Any],
    ):
        super().__init__(slide_id, tile_ids, source_identity)
        self._locations = list(locations)  # (file, row_group, row_in_group) per item
        self._reader = RowGroupReader("png")

    def subset(self, rows: np.ndarray) -> ParquetPlismSlide:
        rows = np.asarray(rows, dtype=np.int64)
        return ParquetPlismSlide(
            self.slide_id,
            [self.item_ids[i] for i in rows],
            [self._locations[i] for i in rows],
            self._source_identity,
        )

    def load(self, index: int) -> np.ndarray:
        file, row_group, row = self._locations[index]
        where = f"tile {self.item_ids[index]} of slide {self.slide_id} in {file}"
        payload = self._reader.cell(file, row_group, row)
        if payload is None or (isinstance(payload, dict) and payload.get("bytes") is None):
            raise DataError(f"{where} has no image bytes; download the shard again.")
        return decode_image(payload, where)


def open_parquet_folder(root: str | os.PathLike) -> dict[str, ParquetPlismSlide]:
    """Every slide found in a folder of ``owkin/plism-dataset-tiles`` parquet shards.

    The folder is searched recursively for ``*.parquet``; only the small columns are read
    to index it. Returns ``{canonical slide id: dataset}`` with tiles in ``(x, y)`` order.

    A slide's fingerprint covers the identity of every file holding its rows (name, size,
    modification time and parquet footer, :func:`pathbench.data.parquet.parquet_file_identity`),
    so a rewritten shard, or a changed tile, is not served from an old feature cache.
    """
    import pyarrow.parquet as pq

    root = Path(root).expanduser()
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise DataError(f"no .parquet file under {root}: expected a copy of {HUB_TILES_REPO}'s data/ shards.")
    per_slide: dict[str, dict[str, Any]] = {}
    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read parquet shard {file} ({exc}); download it again.") from exc
        names = set(parquet.schema_arrow.names)
        missing = {"slide_id", "tile_id", "png"} - names
        if missing:
            raise DataError(
                f"parquet shard {file} lacks column(s) {', '.join(sorted(missing))}: expected the "
                f"columns of {HUB_TILES_REPO} ({', '.join(PARQUET_COLUMNS)})."
            )
        identity = parquet_file_identity(file)
        for row_group in range(parquet.num_row_groups):
            table = parquet.read_row_group(row_group, columns=["slide_id", "tile_id"])
            slides = table.column("slide_id").to_pylist()
            tiles = table.column("tile_id").to_pylist()
            for row, (slide, tile) in enumerate(zip(slides, tiles, strict=True)):
                entry = per_slide.setdefault(
                    canonical_slide_id(slide), {"tiles": [], "locations": [], "files": {}}
                )
                entry["tiles"].append(tile)
                entry["locations"].append((str(file), row_group, row))
                entry["files"][str(file.relative_to(root))] = identity
    synthetic = _synthetic_identity(root)
    datasets_by_slide: dict[str, ParquetPlismSlide] = {}
    for slide, entry in sorted(per_slide.items()):
        order = canonical_order(entry["tiles"])
        tiles = [entry["tiles"][i] for i in order]
        _check_unique(slide, tiles)
        identity = {"format": "plism-parquet", "tile_ids": ids_digest(tiles), "files": sorted(entry["files"].items())}
        identity.update(synthetic or {})
        datasets_by_slide[slide] = ParquetPlismSlide(
            slide, tiles, [entry["locations"][i] for i in order], identity
        )
    return datasets_by_slide


def _synthetic_identity(root: Path) -> dict[str, Any] | None:
    """A generated demo folder also records its generator parameters."""
    manifest = root / "synthetic_plism.json"
    if not manifest.is_file():
        return None
    with open(manifest, encoding="utf-8") as handle:
        return {"synthetic": json.load(handle).get("key")}


def _check_unique(slide: str, tile_ids: Sequence[str]) -> None:
    for previous, current in zip(tile_ids, tile_ids[1:], strict=False):
        if previous == current:
            raise DataError(f"slide {slide} holds tile {current} more than once; the data is corrupt.")


class H5PlismSlide(PlismSlide):
    """One ``<STAIN>_<SCANNER>_to_GMH_S60.tif.h5`` file of ``owkin/plism-dataset``.

    Each tile is an h5 dataset keyed by its tile id, holding ``(H, W, 3) uint8``. The file
    is opened lazily in each process (DataLoader workers open their own handle).
    """

    def __init__(self, path: str | os.PathLike, tile_ids: Sequence[str], source_identity: Mapping[str, Any]):
        self.path = Path(path)
        super().__init__(self.path.name, tile_ids, source_identity)
        self._handle: Any = None
        self._pid: int | None = None

    def subset(self, rows: np.ndarray) -> H5PlismSlide:
        return H5PlismSlide(self.path, [self.item_ids[i] for i in np.asarray(rows)], self._source_identity)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"], state["_pid"] = None, None
        return state

    def _file(self) -> Any:
        import h5py

        if self._handle is None or self._pid != os.getpid():
            try:
                self._handle = h5py.File(self.path, "r")
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"cannot open {self.path} ({exc}); download it again.") from exc
            self._pid = os.getpid()
        return self._handle

    def load(self, index: int) -> np.ndarray:
        tile_id = self.item_ids[index]
        try:
            tile = np.asarray(self._file()[tile_id][()])
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DataError(
                f"tile {tile_id} of slide {self.slide_id} in {self.path} cannot be read ({exc}). "
                "The file is probably truncated or corrupt: download it again."
            ) from exc
        return tile


def open_h5_folder(root: str | os.PathLike) -> dict[str, H5PlismSlide]:
    """Every ``*_to_GMH_S60.tif.h5`` slide under ``root`` (searched recursively)."""
    import h5py

    root = Path(root).expanduser()
    files = sorted(p for p in root.rglob("*.h5") if not p.name.startswith("."))
    if not files:
        raise DataError(
            f"no .h5 file under {root}: expected files like GIVH_AT2_to_GMH_S60.tif.h5 ({HUB_H5_REPO})."
        )
    slides: dict[str, H5PlismSlide] = {}
    for file in files:
        try:
            with h5py.File(file, "r") as handle:
                keys = list(handle.keys())
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot open {file} as an h5 file ({exc}); download it again.") from exc
        order = canonical_order(keys)
        tiles = [keys[i] for i in order]
        slide = canonical_slide_id(file.name)
        if slide in slides:
            raise DataError(f"slide {slide} appears twice under {root}: {slides[slide].path} and {file}.")
        identity = {
            "format": "plism-h5",
            "file": file.name,
            "size": file.stat().st_size,
            "tile_ids": ids_digest(tiles),
        }
        slides[slide] = H5PlismSlide(file, tiles, identity)
    return slides


def detect_folder_format(root: str | os.PathLike) -> str:
    """``"parquet"``, ``"h5"`` or ``"features"`` for a local folder; a clear error otherwise."""
    root = Path(root).expanduser()
    if root.is_file():
        raise DataError(
            f"--data {root} is a file; PLISM data is a folder of parquet shards or .h5 files (one per slide). "
            "Pass the folder that holds it, or --data hf / hf-h5 / synthetic."
        )
    if not root.is_dir():
        raise DataError(
            f"--data {root}: no such folder. Use --data hf, --data hf-h5, --data synthetic, "
            "or a folder of PLISM parquet shards or .h5 files."
        )
    if next(root.rglob("*.parquet"), None) is not None:
        return "parquet"
    if next(root.rglob("*.h5"), None) is not None:
        return "h5"
    if next(root.glob("*/features.npy"), None) is not None:
        return "features"
    raise DataError(
        f"{root} holds neither .parquet shards ({HUB_TILES_REPO}) nor .h5 files ({HUB_H5_REPO}); "
        "for plismbench-layout features use --features-dir."
    )


# The hub downloads and plismbench's feature layout live in their own modules; their names
# stay importable from here.


# The hub downloads and plismbench's feature layout live in their own modules; their names
# stay importable from here.
from pathbench.data.plism_features import PlismbenchFeatures, write_plismbench_features  # noqa: E402
from pathbench.data.plism_hub import (  # noqa: E402
    download_h5_slides,
    download_tile_slides,
    hub_slide_ids,
    materialise_slides,
    plism_hub_rows,
    shards_holding_slides,
)

__all__ = [
    "DEFAULT_N_TILES",
    "HUB_H5_REPO",
    "HUB_TILES_REPO",
    "NUM_TILES_PER_SLIDE",
    "SCANNERS",
    "STAININGS",
    "TILE_SUBSET_COMMIT",
    "TILE_SUBSET_SHA256",
    "H5PlismSlide",
    "ParquetPlismSlide",
    "PlismSlide",
    "PlismbenchFeatures",
    "apply_tile_subset",
    "canonical_order",
    "canonical_slide_id",
    "check_alignment",
    "detect_folder_format",
    "download_h5_slides",
    "download_tile_slides",
    "hub_slide_ids",
    "load_tile_subset",
    "materialise_slides",
    "open_h5_folder",
    "open_parquet_folder",
    "parse_tile_id",
    "plism_hub_rows",
    "select_slides",
    "shards_holding_slides",
    "slide_id_for",
    "slide_staining_scanner",
    "subset_description",
    "tile_id_from_coords",
    "write_plismbench_features",
]
