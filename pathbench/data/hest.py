"""Reader for HEST-Benchmark data (``MahmoodLab/hest-bench``) and HEST's embedding cache.

On-disk layout of one task (hub or local folder alike)::

    <root>/<TASK>/splits/train_<i>.csv, test_<i>.csv  sample_id, patches_path, expr_path (relative to <TASK>/)
    <root>/<TASK>/patches/<sample_id>.h5              img (N, 224, 224, 3) uint8, barcode (N,) or (N, 1) bytes,
                                                      coords (N, 2)
    <root>/<TASK>/adata/<sample_id>.h5ad              raw counts, spots x genes, obs names = barcodes
    <root>/<TASK>/var_50genes.json                    {"genes": [50 gene names]}

HEST's own embedding cache (what its ``benchmark.py`` writes) holds one file per sample,
``<dir>/<TASK>/<sample_id>.h5`` or ``<dir>/<TASK>/<model>/<sample_id>.h5``, with datasets
``embeddings`` (N, D), ``barcodes`` (N,) or (N, 1) and ``coords`` (N, 2).

Spots are matched by barcode, never by position: targets are read from the h5ad in the
order of the patch (or embedding) file's barcodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pathbench.data.base import TileDataset
from pathbench.errors import DataError

HEST_REPO_ID = "MahmoodLab/hest-bench"
HEST_DATASET_PAGE = f"https://huggingface.co/datasets/{HEST_REPO_ID}"
# The nine ranked tasks of the HEST-Benchmark leaderboard, in the leaderboard's order.
HEST_TASKS: tuple[str, ...] = ("IDC", "PRAD", "PAAD", "SKCM", "COAD", "READ", "CCRCC", "LUNG", "LYMPH_IDC")
GENE_LIST_FILE = "var_50genes.json"
SPLIT_COLUMNS = ("sample_id", "patches_path", "expr_path")
_FINGERPRINT_IMAGES = 64


# ---------------------------------------------------------------------------------------
# Tasks and splits


@dataclass(frozen=True)
class HestSample:
    """One sample (slide) of a task: its patch file and its expression file."""

    sample_id: str
    patches_path: Path
    expr_path: Path


@dataclass(frozen=True)
class HestFold:
    """One train/test split: the sample ids on each side, in the order of the csv files."""

    index: int
    train: tuple[str, ...]
    test: tuple[str, ...]


@dataclass
class HestTask:
    """A task folder read and checked: genes, folds and the samples they use."""

    name: str
    root: Path
    genes: list[str]
    folds: list[HestFold]
    samples: dict[str, HestSample] = field(default_factory=dict)

    @property
    def sample_ids(self) -> list[str]:
        """Every sample used by some fold, each once, in first-use order."""
        seen: dict[str, None] = {}
        for fold in self.folds:
            for sample_id in (*fold.train, *fold.test):
                seen.setdefault(sample_id, None)
        return list(seen)


def _read_split(path: Path, task_dir: Path) -> list[HestSample]:
    if path.stat().st_size == 0:
        raise DataError(f"split file {path} is empty; expected a csv with columns {', '.join(SPLIT_COLUMNS)} "
                        "and one row per sample. Re-download the task or fix the file.")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"split file {path} is empty; expected columns {', '.join(SPLIT_COLUMNS)}.") from exc
    missing = [c for c in SPLIT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"split file {path} lacks column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}.")
    if len(frame) == 0:
        raise DataError(f"split file {path} has a header but no samples; every split needs at least one sample.")
    return [HestSample(str(row.sample_id), task_dir / str(row.patches_path), task_dir / str(row.expr_path))
            for row in frame.itertuples(index=False)]


def load_task(root: str | os.PathLike, name: str) -> HestTask:
    """Read ``<root>/<name>``: its gene list and every ``train_<i>.csv``/``test_<i>.csv`` pair.

    The folds are the split pairs found, numbered 0..k-1 (as HEST counts them). Raises
    DataError for a missing folder or gene list, an unpaired or empty split file, or a
    sample listed with two different paths.
    """
    task_dir = Path(root) / name
    if not task_dir.is_dir():
        present = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise DataError(f"HEST task {name!r} not found: no folder {task_dir}. "
                        f"Tasks present in {root}: {', '.join(present) or 'none'}.")
    gene_file = task_dir / GENE_LIST_FILE
    if not gene_file.is_file():
        raise DataError(f"{gene_file} is missing; every HEST task folder holds its 50-gene list there.")
    try:
        genes = list(json.loads(gene_file.read_text())["genes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{gene_file} must hold {{\"genes\": [gene names]}}; could not read it ({exc}).") from exc
    if not genes:
        raise DataError(f"{gene_file} lists no genes.")

    split_dir = task_dir / "splits"
    pattern = re.compile(r"^(train|test)_(\d+)\.csv$")
    found: dict[str, set[int]] = {"train": set(), "test": set()}
    for path in split_dir.glob("*.csv") if split_dir.is_dir() else []:
        match = pattern.match(path.name)
        if match:
            found[match.group(1)].add(int(match.group(2)))
    if not found["train"] and not found["test"]:
        raise DataError(f"no split files in {split_dir}; expected train_<i>.csv and test_<i>.csv pairs.")
    unpaired = sorted(found["train"] ^ found["test"])
    if unpaired:
        raise DataError(f"split files of {name} are not paired: fold(s) {unpaired} have a train or a test csv "
                        f"but not both, in {split_dir}.")
    indices = sorted(found["train"])
    if indices != list(range(len(indices))):
        raise DataError(f"split files of {name} are numbered {indices}; expected 0..{len(indices) - 1}.")

    samples: dict[str, HestSample] = {}
    folds = []
    for i in indices:
        sides = []
        for side in ("train", "test"):
            rows = _read_split(split_dir / f"{side}_{i}.csv", task_dir)
            for sample in rows:
                known = samples.setdefault(sample.sample_id, sample)
                if known != sample:
                    raise DataError(f"sample {sample.sample_id} of {name} is listed with two different paths: "
                                    f"{known} and {sample}.")
            sides.append(tuple(s.sample_id for s in rows))
        overlap = set(sides[0]) & set(sides[1])
        if overlap:
            raise DataError(f"fold {i} of {name} has sample(s) {sorted(overlap)} in both train and test.")
        folds.append(HestFold(i, sides[0], sides[1]))
    return HestTask(name=name, root=task_dir, genes=genes, folds=folds, samples=samples)


def tasks_fingerprint(tasks: Sequence[HestTask]) -> str:
    """sha256 of what makes results comparable: task names, gene lists and fold memberships."""
    description = [[t.name, list(t.genes), [[f.index, list(f.train), list(f.test)] for f in t.folds]] for t in tasks]
    return "hest-splits:" + hashlib.sha256(json.dumps(description).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# Patch files


def decode_barcodes(values: np.ndarray) -> list[str]:
    """Barcodes from an h5 dataset of shape (N,) or (N, 1), bytes or str, as a list of str."""
    flat = np.asarray(values).reshape(-1)
    return [v.decode("utf-8") if isinstance(v, bytes | np.bytes_) else str(v) for v in flat]


def _first_key(handle: h5py.File, names: Sequence[str], path: Path) -> str:
    for key in names:
        if key in handle:
            return key
    raise DataError(f"{path} has none of the datasets {', '.join(names)}; found {', '.join(handle.keys())}.")


class HestPatchDataset(TileDataset):
    """The patches of one HEST sample, as a TileDataset.

    ``item_ids`` are the spot barcodes in file order; ``__getitem__(i)`` returns tile i,
    (224, 224, 3) uint8 RGB. ``fingerprint`` is a sha256 of the file's content: every
    barcode and coordinate, the image array's shape and dtype, and the bytes of up to 64
    tiles spread evenly through the file (so two copies of a sample share their cached
    embeddings, wherever they lie on disk). The h5 file is opened lazily in each process.
    """

    def __init__(self, path: str | os.PathLike, sample_id: str | None = None) -> None:
        self.path = Path(path)
        self.sample_id = sample_id or self.path.stem
        if not self.path.is_file():
            raise DataError(f"patch file {self.path} of sample {self.sample_id} is missing.")
        self._handle: h5py.File | None = None
        with h5py.File(self.path, "r") as handle:
            self._img_key = _first_key(handle, ("img", "imgs", "images"), self.path)
            barcode_key = _first_key(handle, ("barcode", "barcodes"), self.path)
            images = handle[self._img_key]
            if images.ndim != 4 or images.shape[-1] != 3:
                raise DataError(f"{self.path}: {self._img_key} has shape {images.shape}; expected (N, H, W, 3).")
            self.item_ids = decode_barcodes(handle[barcode_key][()])
            if len(self.item_ids) != images.shape[0]:
                raise DataError(f"{self.path}: {len(self.item_ids)} barcodes for {images.shape[0]} images.")
            if len(set(self.item_ids)) != len(self.item_ids):
                raise DataError(f"{self.path}: duplicate barcodes; each spot must appear once.")
            coords = handle["coords"][()] if "coords" in handle else np.zeros((0, 2))
            self.coords = np.asarray(coords)
            digest = hashlib.sha256()
            digest.update(f"hest-patches-v1|{images.shape}|{images.dtype}".encode())
            digest.update("\n".join(self.item_ids).encode())
            digest.update(np.ascontiguousarray(self.coords).tobytes())
            n = images.shape[0]
            for i in np.unique(np.linspace(0, n - 1, min(n, _FINGERPRINT_IMAGES)).astype(int)) if n else []:
                digest.update(np.ascontiguousarray(images[int(i)]).tobytes())
            self.fingerprint = digest.hexdigest()

    def load(self, index: int) -> np.ndarray:
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        return self._handle[self._img_key][index]

    def describe(self, index: int) -> str:
        return f"{self.path} (sample {self.sample_id}), spot {self.item_ids[index]!r}"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None   # h5py handles do not cross process boundaries
        return state

    def close(self) -> None:
        """Close the h5 file if it is open."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


# ---------------------------------------------------------------------------------------
# Expression


def read_expression(expr_path: str | os.PathLike, genes: Sequence[str], barcodes: Sequence[str],
                    sample_id: str) -> np.ndarray:
    """Raw counts of ``genes`` for ``barcodes``, in that order: (n_barcodes, n_genes) float64.

    Like HEST, spots are selected by barcode (the h5ad's obs names) and genes by name.
    Raises DataError naming the sample when the file is missing, or a barcode or gene is absent.
    """
    import anndata  # slow import, only when expression is read

    expr_path = Path(expr_path)
    if not expr_path.is_file():
        raise DataError(f"expression file {expr_path} of sample {sample_id} is missing; every sample of a "
                        "split needs its adata/<sample_id>.h5ad.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")   # handled below
        adata = anndata.read_h5ad(expr_path)
    obs = pd.Index(adata.obs_names.astype(str))
    if not obs.is_unique:
        raise DataError(f"{expr_path} (sample {sample_id}) has duplicate spot barcodes in obs_names.")
    rows = obs.get_indexer(list(barcodes))
    absent = [b for b, r in zip(barcodes, rows, strict=True) if r < 0]
    if absent:
        raise DataError(f"sample {sample_id}: {len(absent)} of {len(barcodes)} patch barcodes are absent from "
                        f"{expr_path} (first: {', '.join(absent[:3])}). The patches and the h5ad must describe "
                        "the same spots.")
    var = pd.Index(adata.var_names.astype(str))
    # other genes may repeat (gene symbols often do); the benchmark's genes must not
    repeated = sorted(set(genes) & set(var[var.duplicated()]))
    if repeated:
        raise DataError(f"sample {sample_id}: gene(s) {', '.join(repeated[:5])} appear more than once in "
                        f"{expr_path}; each benchmark gene needs one column.")
    position = {name: i for i, name in enumerate(var)}
    cols = np.array([position.get(g, -1) for g in genes], dtype=np.int64)
    missing_genes = [g for g, c in zip(genes, cols, strict=True) if c < 0]
    if missing_genes:
        raise DataError(f"sample {sample_id}: gene(s) {', '.join(missing_genes[:5])} of the gene list are "
                        f"absent from {expr_path} ({len(missing_genes)} missing).")
    matrix = adata.X[rows][:, cols]
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    return np.asarray(matrix, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# HEST's embedding cache


def find_hest_embeddings(embeddings_dir: str | os.PathLike, task: str, sample_id: str,
                         model_name: str | None = None) -> Path:
    """Path of a sample's file in HEST's embedding cache.

    Looks for ``<dir>/<task>/<sample_id>.h5``, then ``<dir>/<task>/<model_name>/<sample_id>.h5``
    (HEST's ``embed_dataroot`` layout).
    """
    base = Path(embeddings_dir) / task
    candidates = [base / f"{sample_id}.h5"]
    if model_name:
        candidates.append(base / model_name / f"{sample_id}.h5")
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"no embeddings for sample {sample_id} of {task}: looked for "
                    f"{' and '.join(str(p) for p in candidates)}.")


def read_hest_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read one HEST embedding file: (barcodes, embeddings (N, D) float32)."""
    path = Path(path)
    with h5py.File(path, "r") as handle:
        for key in ("embeddings", "barcodes"):
            if key not in handle:
                raise DataError(f"{path} has no {key!r} dataset; HEST embedding files hold "
                                f"'embeddings', 'barcodes' and 'coords'. Found: {', '.join(handle.keys())}.")
        embeddings = np.asarray(handle["embeddings"][()], dtype=np.float32)
        barcodes = decode_barcodes(handle["barcodes"][()])
    if embeddings.ndim != 2 or embeddings.shape[0] != len(barcodes):
        raise DataError(f"{path}: embeddings of shape {embeddings.shape} for {len(barcodes)} barcodes; "
                        "expected (n_barcodes, dim).")
    return barcodes, embeddings


# ---------------------------------------------------------------------------------------
# Locating the data


def hub_patterns(tasks: Sequence[str], include_patches: bool = True) -> list[str]:
    """``allow_patterns`` selecting ``tasks`` in the hub repository (without the patch files if asked)."""
    if include_patches:
        return [f"{task}/*" for task in tasks]
    return [pattern for task in tasks
            for pattern in (f"{task}/splits/*", f"{task}/adata/*", f"{task}/{GENE_LIST_FILE}")]


def download_hest_bench(tasks: Sequence[str], local_dir: str | os.PathLike | None = None,
                        include_patches: bool = True) -> Path:
    """Fetch only ``tasks`` of ``MahmoodLab/hest-bench`` from the hub; return the root folder.

    Uses ``huggingface_hub.snapshot_download`` with ``allow_patterns`` naming only those
    tasks (and, with ``include_patches=False``, only their splits, h5ad files and gene
    list: what evaluating precomputed embeddings needs), into the user's hub cache (or
    ``local_dir``); honours ``HF_HUB_OFFLINE`` and a cached copy.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    access = (f"The dataset is gated: accept its terms at {HEST_DATASET_PAGE}, then run `huggingface-cli login` "
              "(or set HF_TOKEN). Or download it yourself and pass --data /path/to/hest-bench.")
    try:
        root = snapshot_download(repo_id=HEST_REPO_ID, repo_type="dataset",
                                 allow_patterns=hub_patterns(tasks, include_patches),
                                 local_dir=None if local_dir is None else str(local_dir))
    except GatedRepoError as exc:
        raise DataError(f"no access to {HEST_REPO_ID}. {access}") from exc
    except RepositoryNotFoundError as exc:
        raise DataError(f"{HEST_REPO_ID} not found or not accessible with your token. {access}") from exc
    except LocalEntryNotFoundError as exc:
        raise DataError(f"cannot download {HEST_REPO_ID} (offline, or HF_HUB_OFFLINE is set) and no cached copy "
                        f"holds tasks {', '.join(tasks)}. Connect to the internet, or pass --data PATH to a local "
                        f"copy. {access}") from exc
    except HfHubHTTPError as exc:
        raise DataError(f"downloading {HEST_REPO_ID} failed: {exc}. {access}") from exc
    root = Path(root)
    absent = [t for t in tasks if not (root / t / "splits").is_dir()]
    if absent:
        raise DataError(f"task(s) {', '.join(absent)} not found in {root}, the copy of {HEST_REPO_ID} downloaded "
                        f"or found in the hub cache. The leaderboard tasks are {', '.join(HEST_TASKS)} (HCC is also "
                        "shipped); offline (HF_HUB_OFFLINE=1), only tasks downloaded before are there.")
    return root
