"""Readers for the patch-classification datasets in the layouts kaiko eva expects, and eva's
offline embedding format.

Point ``--data`` at the folders you already downloaded for eva:

- BACH: ``<root>/ICIAR2018_BACH_Challenge/Photos/{Benign,InSitu,Invasive,Normal}/*.tif``;
  the 400 images are listed class by class (sorted file names, as torchvision's
  ``make_dataset``) and split by eva's fixed index ranges (268 train, 132 val, patient-wise).
- CRC: ``<root>/NCT-CRC-HE-100K/<9 class folders>/*.tif`` (train) and
  ``<root>/CRC-VAL-HE-7K/<9 class folders>/*.tif`` (val).
- MHIST: ``<root>/images/*.png`` and ``<root>/annotations.csv`` (columns ``Image Name``,
  ``Majority Vote Label`` (SSA/HP), ``Partition`` (train/test)).
- PatchCamelyon: ``<root>/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``
  (``x``: (N, 96, 96, 3) uint8, ``y``: (N, 1, 1, 1) labels).

Every reader applies eva's geometric transform before the model's own normalisation:
resize the shorter side to 224 (bilinear, antialiased, on uint8 pixels as torchvision's
``Resize`` does) and centre-crop 224x224, so an extractor receives exactly the pixels eva
feeds its backbone.

eva's offline format (``eva predict`` writes it, ``eva fit`` reads it): a folder with
``manifest.csv`` (columns ``origin,embeddings,target,split``) and one ``.pt`` file per
patch holding a one-element list ``[tensor(D)]``. :func:`write_eva_embeddings` and
:func:`read_eva_embeddings` write and read it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pathbench._io import atomic_write, write_csv
from pathbench.data.base import TileDataset, read_image
from pathbench.errors import DataError

if TYPE_CHECKING:
    import torch

EVA_IMAGE_SIZE = 224

BACH_CLASSES = ("Benign", "InSitu", "Invasive", "Normal")
CRC_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
MHIST_CLASSES = ("SSA", "HP")
PCAM_CLASSES = ("no_tumor", "tumor")

# eva's fixed BACH split over the 400 images listed class by class (half-open ranges).
BACH_TRAIN_RANGES = ((0, 41), (59, 60), (90, 139), (169, 240), (258, 260), (273, 345), (368, 400))
BACH_VAL_RANGES = ((41, 59), (60, 90), (139, 169), (240, 258), (260, 273), (345, 368))
BACH_N_IMAGES = 400

CRC_SPLIT_DIRS = {"train": "NCT-CRC-HE-100K", "val": "CRC-VAL-HE-7K"}
PCAM_SPLIT_NAMES = {"train": "train", "val": "valid", "test": "test"}


@dataclass(frozen=True)
class EvaTaskData:
    """Where a task's data lives and how eva names things.

    Attributes:
        name: pathbench task name (``bach``, ``crc``, ``mhist``, ``pcam``).
        eva_dir: folder name eva uses for the task under ``DATA_ROOT`` and ``EMBEDDINGS_ROOT``.
        classes: class names, index = target.
        splits: eva's split names for this task, in ``dataloader_idx_map`` order.
    """

    name: str
    eva_dir: str
    classes: tuple[str, ...]
    splits: tuple[str, ...]


TASK_DATA: dict[str, EvaTaskData] = {
    "bach": EvaTaskData("bach", "bach", BACH_CLASSES, ("train", "val")),
    "crc": EvaTaskData("crc", "crc", CRC_CLASSES, ("train", "val")),
    # eva trains MHIST on its "train" partition and validates on its "test" partition.
    "mhist": EvaTaskData("mhist", "mhist", MHIST_CLASSES, ("train", "test")),
    "pcam": EvaTaskData("pcam", "patch_camelyon", PCAM_CLASSES, ("train", "val", "test")),
}


def resize_and_crop(image: np.ndarray, size: int = EVA_IMAGE_SIZE) -> np.ndarray:
    """eva's ``ResizeAndCrop`` geometry on uint8 pixels: shorter side to ``size``, centre crop.

    Args:
        image: ``(H, W, 3)`` uint8.

    Returns:
        ``(size, size, 3)`` uint8.
    """
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    if image.shape[0] == size and image.shape[1] == size:
        return image
    chw = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    chw = TF.resize(chw, [size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    chw = TF.center_crop(chw, [size, size])
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


def _ranges_to_indices(ranges: Sequence[tuple[int, int]]) -> list[int]:
    return [i for start, stop in ranges for i in range(start, stop)]


def _files_fingerprint(root: Path, paths: Sequence[Path], extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\0".encode())
    return "files:" + digest.hexdigest()


class EvaImageDataset(TileDataset):
    """Image files with class labels, transformed as eva does (224x224 uint8).

    Attributes:
        item_ids: ``"<split>/<origin>"`` per item.
        origins: eva's file name of each item (relative to the split's image folder), the
            ``origin`` column of an eva manifest.
        labels: ``(N,)`` int64 targets.
        classes: class names.
        split: eva split name.
    """

    def __init__(self, root: Path, paths: Sequence[Path], labels: Sequence[int], origins: Sequence[str],
                 classes: Sequence[str], split: str, task: str) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.origins = list(origins)
        self.classes = tuple(classes)
        self.split = split
        self.task = task
        self.item_ids = [f"{split}/{origin}" for origin in self.origins]
        self.fingerprint = _files_fingerprint(self.root, self.paths, f"eva:{task}:{split}:resize_and_crop_224\0")

    def load(self, index: int) -> np.ndarray:
        return resize_and_crop(read_image(self.paths[index]))

    def describe(self, index: int) -> str:
        return str(self.paths[index])


def _class_folder_files(directory: Path, classes: Sequence[str], suffixes: tuple[str, ...],
                        what: str) -> list[tuple[Path, int]]:
    """Files of each class folder, class by class, sorted like torchvision's ``make_dataset``."""
    if not directory.is_dir():
        raise DataError(f"{what}: folder {directory} does not exist; expected class folders "
                        f"{', '.join(classes)} in it (eva's layout). Check --data.")
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        class_dir = directory / name
        if not class_dir.is_dir():
            found = sorted(p.name for p in directory.iterdir() if p.is_dir())
            raise DataError(f"{what}: class folder {class_dir} is missing; expected folders "
                            f"{', '.join(classes)}, found {', '.join(found) or 'none'}.")
        for walk_root, _, files in sorted(os.walk(class_dir, followlinks=True)):
            for fname in sorted(files):
                if fname.lower().endswith(suffixes):
                    samples.append((Path(walk_root) / fname, index))
    return samples


def bach_dataset(root: str | os.PathLike, split: str) -> EvaImageDataset:
    """BACH (ICIAR 2018) photos, eva's ``train`` (268) or ``val`` (132) split."""
    ranges = {"train": BACH_TRAIN_RANGES, "val": BACH_VAL_RANGES}.get(split)
    if ranges is None:
        raise DataError(f"BACH has splits 'train' and 'val', not {split!r}.")
    photos = Path(root) / "ICIAR2018_BACH_Challenge" / "Photos"
    samples = _class_folder_files(photos, BACH_CLASSES, (".tif",), "BACH")
    if len(samples) != BACH_N_IMAGES:
        raise DataError(f"BACH: expected the {BACH_N_IMAGES} photos of ICIAR2018_BACH_Challenge under {photos} "
                        f"(eva's fixed split needs all of them), found {len(samples)} .tif files.")
    chosen = [samples[i] for i in _ranges_to_indices(ranges)]
    paths = [p for p, _ in chosen]
    origins = [p.relative_to(photos).as_posix() for p in paths]
    return EvaImageDataset(photos, paths, [c for _, c in chosen], origins, BACH_CLASSES, split, "bach")


def crc_dataset(root: str | os.PathLike, split: str) -> EvaImageDataset:
    """CRC: NCT-CRC-HE-100K (``train``) or CRC-VAL-HE-7K (``val``)."""
    if split not in CRC_SPLIT_DIRS:
        raise DataError(f"CRC has splits 'train' and 'val', not {split!r}.")
    directory = Path(root) / CRC_SPLIT_DIRS[split]
    samples = _class_folder_files(directory, CRC_CLASSES, (".tif",), f"CRC {split}")
    if not samples:
        raise DataError(f"CRC {split}: no .tif images found in the class folders of {directory}.")
    paths = [p for p, _ in samples]
    origins = [p.relative_to(directory).as_posix() for p in paths]
    return EvaImageDataset(directory, paths, [c for _, c in samples], origins, CRC_CLASSES, split, "crc")


def mhist_dataset(root: str | os.PathLike, split: str) -> EvaImageDataset:
    """MHIST: images of ``annotations.csv`` whose ``Partition`` is ``split`` (train/test)."""
    if split not in ("train", "test"):
        raise DataError(f"MHIST has partitions 'train' and 'test', not {split!r}.")
    root = Path(root)
    annotations = root / "annotations.csv"
    if not annotations.is_file():
        raise DataError(f"MHIST: {annotations} is missing; expected eva's layout <root>/annotations.csv "
                        f"and <root>/images/*.png.")
    try:
        frame = pd.read_csv(annotations)
    except Exception as exc:  # pandas raises several parser errors
        raise DataError(f"MHIST: cannot read {annotations}: {exc}") from exc
    needed = ["Image Name", "Majority Vote Label", "Partition"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"MHIST: {annotations} lacks columns {missing}; found {list(frame.columns)}.")
    frame = frame[frame["Partition"].astype(str).str.strip() == split]
    if frame.empty:
        raise DataError(f"MHIST: no image has Partition == {split!r} in {annotations}.")
    labels = []
    for label in frame["Majority Vote Label"].astype(str).str.strip():
        if label not in MHIST_CLASSES:
            raise DataError(f"MHIST: unknown label {label!r} in {annotations}; expected SSA or HP.")
        labels.append(MHIST_CLASSES.index(label))
    images = root / "images"
    names = frame["Image Name"].astype(str).str.strip().tolist()
    paths = [images / name for name in names]
    for path in paths:
        if not path.is_file():
            raise DataError(f"MHIST: image {path} listed in {annotations} does not exist.")
    return EvaImageDataset(images, paths, labels, names, MHIST_CLASSES, split, "mhist")


class PcamDataset(TileDataset):
    """PatchCamelyon h5 files (``train``, ``val`` = the ``valid`` files, ``test``); 96 -> 224 px.

    The h5 file is opened lazily in each process (h5py handles do not survive a fork).
    """

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        if split not in PCAM_SPLIT_NAMES:
            raise DataError(f"PatchCamelyon has splits 'train', 'val' and 'test', not {split!r}.")
        import h5py

        self.root = Path(root)
        self.split = split
        self.task = "pcam"
        self.classes = PCAM_CLASSES
        stem = f"camelyonpatch_level_2_split_{PCAM_SPLIT_NAMES[split]}"
        self.x_path = self.root / f"{stem}_x.h5"
        self.y_path = self.root / f"{stem}_y.h5"
        for path in (self.x_path, self.y_path):
            if not path.is_file():
                raise DataError(f"PatchCamelyon {split}: {path} is missing; expected eva's layout "
                                f"<root>/camelyonpatch_level_2_split_{{train,valid,test}}_{{x,y}}.h5.")
        try:
            with h5py.File(self.y_path, "r") as handle:
                self.labels = np.asarray(handle["y"][:]).reshape(-1).astype(np.int64)
            with h5py.File(self.x_path, "r") as handle:
                shape = handle["x"].shape
        except (OSError, KeyError) as exc:
            raise DataError(f"PatchCamelyon {split}: cannot read {self.x_path} / {self.y_path} "
                            f"(datasets 'x' and 'y'): {exc}") from exc
        if len(shape) != 4 or shape[-1] != 3 or shape[0] != len(self.labels):
            raise DataError(f"PatchCamelyon {split}: expected x of shape (N, H, W, 3) with N = {len(self.labels)} "
                            f"labels, got {shape} in {self.x_path}.")
        if len(self.labels) and not set(np.unique(self.labels)) <= {0, 1}:
            raise DataError(f"PatchCamelyon {split}: labels in {self.y_path} must be 0 or 1.")
        # eva's file name for item i (its .pt file is this name + ".pt").
        self.origins = [f"camelyonpatch_level_2_split_{split}_x_{i}" for i in range(len(self.labels))]
        self.item_ids = [f"{split}/{i}" for i in range(len(self.labels))]
        self.fingerprint = _files_fingerprint(self.root, [self.x_path, self.y_path],
                                              f"eva:pcam:{split}:resize_and_crop_224\0")
        self._handle = None
        self._pid = None

    def load(self, index: int) -> np.ndarray:
        import h5py

        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.x_path, "r")
            self._pid = os.getpid()
        try:
            tile = np.asarray(self._handle["x"][index])
        except Exception as exc:
            raise DataError(f"PatchCamelyon: cannot read tile {index} of {self.x_path}: {exc}") from exc
        return resize_and_crop(tile)

    def describe(self, index: int) -> str:
        return f"{self.x_path}[{index}]"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state


def _has_layout(task: str, folder: Path) -> bool:
    if task == "bach":
        return (folder / "ICIAR2018_BACH_Challenge" / "Photos").is_dir()
    if task == "crc":
        return (folder / CRC_SPLIT_DIRS["train"]).is_dir() or (folder / CRC_SPLIT_DIRS["val"]).is_dir()
    if task == "mhist":
        return (folder / "annotations.csv").is_file()
    if task == "pcam":
        return (folder / "camelyonpatch_level_2_split_train_y.h5").is_file()
    raise DataError(f"unknown eva task {task!r}; expected one of {', '.join(TASK_DATA)}.")


def find_task_root(task: str, data_root: str | os.PathLike) -> Path | None:
    """The folder holding ``task``'s data: ``<data_root>/<eva folder>`` (eva's ``DATA_ROOT``
    convention: ``bach``, ``crc``, ``mhist``, ``patch_camelyon``; ``pcam`` also accepted) or
    ``data_root`` itself. ``None`` when the task's layout is found in neither."""
    data_root = Path(data_root)
    names = [TASK_DATA[task].eva_dir, task]
    for name in dict.fromkeys(names):
        if _has_layout(task, data_root / name):
            return data_root / name
    if _has_layout(task, data_root):
        return data_root
    return None


def open_split(task: str, task_root: str | os.PathLike, split: str) -> TileDataset:
    """The reader of one split of one task (``task_root`` as returned by :func:`find_task_root`).

    The returned dataset has ``labels`` ((N,) int64), ``origins`` (eva file names) and
    ``classes`` besides the :class:`TileDataset` interface.
    """
    if task == "bach":
        return bach_dataset(task_root, split)
    if task == "crc":
        return crc_dataset(task_root, split)
    if task == "mhist":
        return mhist_dataset(task_root, split)
    if task == "pcam":
        return PcamDataset(task_root, split)
    raise DataError(f"unknown eva task {task!r}; expected one of {', '.join(TASK_DATA)}.")


# --------------------------------------------------------------------------------------
# eva's offline embedding format

MANIFEST_COLUMNS = ["origin", "embeddings", "target", "split"]


def eva_save_name(origin: str) -> str:
    """eva's ``.pt`` path for an item: its origin with the extension replaced by ``.pt``."""
    return os.path.splitext(origin)[0] + ".pt"


def _save_pt(path: Path, embedding: torch.Tensor) -> None:
    import torch

    with atomic_write(path, "wb") as handle:
        torch.save([embedding], handle)


def write_eva_embeddings(
    out_dir: str | os.PathLike,
    embeddings: np.ndarray | torch.Tensor,
    targets: Sequence[int],
    origins: Sequence[str],
    splits: Sequence[str],
    progress: bool = True,
    num_threads: int = 8,
) -> Path:
    """Write embeddings in eva's offline format under ``out_dir``.

    Args:
        out_dir: the folder eva reads (``${EMBEDDINGS_ROOT}/${MODEL_NAME}/<task>``).
        embeddings: ``(N, D)`` float32.
        targets: ``(N,)`` class indices.
        origins: N source file names (eva's ``origin`` column).
        splits: N split names (``train``, ``val``, ``test``).

    Every ``.pt`` file holds ``[tensor(D)]`` (float32, CPU) and is written atomically;
    ``manifest.csv`` is written last, so a folder with a manifest is complete.

    Returns:
        The path of ``manifest.csv``.
    """
    out_dir = Path(out_dir)
    import torch

    tensor = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
    tensor = tensor.detach().to(torch.float32).cpu()
    n = tensor.shape[0]
    if tensor.ndim != 2 or not (len(targets) == len(origins) == len(splits) == n):
        raise DataError(f"eva export: expected (N, D) embeddings with N targets, origins and splits; got "
                        f"{tuple(tensor.shape)}, {len(targets)}, {len(origins)}, {len(splits)}.")
    save_names = [eva_save_name(o) for o in origins]
    if len(set(save_names)) != n:
        raise DataError("eva export: two items map to the same .pt file name; origins must be unique.")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    if manifest.exists():
        manifest.unlink()  # the folder is incomplete until the new manifest lands

    def save(i: int) -> None:
        _save_pt(out_dir / save_names[i], tensor[i].clone())

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        for _ in tqdm(pool.map(save, range(n)), total=n, desc=f"eva .pt -> {out_dir.name}",
                      disable=not progress, leave=False):
            pass
    frame = pd.DataFrame({"origin": list(origins), "embeddings": save_names,
                          "target": [int(t) for t in targets], "split": list(splits)})
    write_csv(manifest, frame)
    return manifest


@dataclass
class EvaEmbeddingSplit:
    """The embeddings of one split of an eva manifest."""

    embeddings: np.ndarray  # (N, D) float32
    targets: np.ndarray  # (N,) int64
    origins: list[str]


def _load_pt(path: Path) -> torch.Tensor:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read eva embedding file {path}: {exc}") from exc
    if isinstance(obj, (list, tuple)):
        if len(obj) != 1:
            raise DataError(f"{path}: expected a patch embedding file holding one tensor, found a list of "
                            f"{len(obj)} (slide-level embeddings are not patch classification).")
        obj = obj[0]
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{path}: expected a tensor or [tensor], found {type(obj).__name__}.")
    if obj.ndim == 2 and obj.shape[0] == 1:
        obj = obj[0]
    if obj.ndim != 1:
        raise DataError(f"{path}: expected an embedding of shape (D,) or (1, D), found {tuple(obj.shape)}.")
    return obj.to(torch.float32)


def read_eva_embeddings(
    folder: str | os.PathLike, progress: bool = True, num_threads: int = 8
) -> dict[str, EvaEmbeddingSplit]:
    """Read an eva embeddings folder (``manifest.csv`` + ``.pt`` files) into memory.

    Returns:
        ``{split: EvaEmbeddingSplit}`` with the rows of each split in manifest order.
    """
    folder = Path(folder)
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest} does not exist; expected an eva embeddings folder "
                        f"(manifest.csv with columns {','.join(MANIFEST_COLUMNS)} and .pt files).")
    frame = pd.read_csv(manifest)
    missing = [c for c in ("embeddings", "target", "split") if c not in frame.columns]
    if missing:
        raise DataError(f"{manifest}: missing columns {missing}; found {list(frame.columns)}.")
    if frame.empty:
        raise DataError(f"{manifest} lists no embeddings.")
    paths = [folder / str(p) for p in frame["embeddings"]]
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        tensors = list(tqdm(pool.map(_load_pt, paths), total=len(paths), desc=f"reading {folder.name}",
                            disable=not progress, leave=False))
    dims = {int(t.shape[0]) for t in tensors}
    if len(dims) != 1:
        raise DataError(f"{folder}: embeddings of different sizes {sorted(dims)}.")
    import torch

    matrix = torch.stack(tensors).numpy()
    targets = frame["target"].to_numpy()
    if not np.all(np.equal(np.mod(targets, 1), 0)):
        raise DataError(f"{manifest}: targets must be class indices (integers).")
    targets = targets.astype(np.int64)
    origins = frame["origin"].astype(str).tolist() if "origin" in frame.columns else [str(p) for p in paths]
    out: dict[str, EvaEmbeddingSplit] = {}
    split_col = frame["split"].astype(str).to_numpy()
    for split in dict.fromkeys(split_col):
        rows = np.flatnonzero(split_col == split)
        out[split] = EvaEmbeddingSplit(matrix[rows], targets[rows], [origins[i] for i in rows])
    return out
