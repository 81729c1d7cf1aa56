"""The slide-level datasets of kaiko eva: Camelyon16 and PANDA (and PANDA-small), in eva's layouts.

Each function lists the slides of a split as :class:`Slide` records (id, path, label,
split), exactly as eva's ``Camelyon16``, ``PANDA`` and ``PANDASmall`` classes select them
(kaiko-ai/eva, ``eva/vision/data/datasets/classification``).

Camelyon16, ``<root>/training/{normal,tumor}/*.tif``, ``<root>/testing/images/*.tif`` and
``<root>/testing/reference.csv`` (no header; slide id, class, ...):

- train: every ``training/**/*.tif`` not in eva's fixed 54-slide validation list (the
  slides PatchCamelyon validates on); val: those 54; test: ``testing/images/*.tif``;
  216 / 54 / 129 slides on the full dataset;
- labels: ``normal`` = 0, ``tumor`` = 1, from the file name for training slides and from
  ``reference.csv`` (lower-cased) for test slides.

PANDA, ``<root>/train_images/<image_id>.tiff`` plus the label table eva downloads at run
time (``train_with_noisy_labels.csv`` from github.com/analokmaus/kaggle-panda-challenge-public,
columns ``image_id, isup_grade, noise_ratio_10, ...``), passed here as a path:

- the number of images must equal the number of rows of the table (eva checks it: the
  split is only eva's split on the complete image set);
- eva keeps the images whose ``noise_ratio_10`` is not 0 (in that table 1 marks a label
  kept at 10 % noise removal, 0 a label judged noisy: 9,555 of 10,616 images remain);
- stratified split by ISUP grade with seed 42 (eva's ``stratified_split``): per grade, in
  order of the sorted file list, shuffle with the one generator, take
  ``floor(ratio * n)`` (at least 1) for train, then val, then test. PANDA uses
  0.7 / 0.15 / 0.15 (6,686 / 1,430 / 1,439 slides); PANDA-small 0.1 / 0.05 / 0.05, i.e.
  20 % of the slides: 952 / 475 / 475. eva's documentation gives 955 / 477 / 477 (the
  ratios times 9,555); the per-grade floors of its code give 952 / 475 / 475 on the label
  table with eva's md5, and that code is what is followed here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pathbench.errors import DataError

CAMELYON16_CLASSES = ("normal", "tumor")
PANDA_CLASSES = ("0", "1", "2", "3", "4", "5")
SPLITS = ("train", "val", "test")

# eva's Camelyon16 validation slides: the training slides PatchCamelyon validates on.
CAMELYON16_VAL_SLIDES = frozenset(
    [f"normal_{i:03d}" for i in (10, 13, 16, 17, 19, 20, 25, 30, 31, 32, 52, 56, 57, 67, 76, 79, 85, 95, 98, 99,
                                  101, 102, 105, 106, 109, 129, 132, 137, 142, 143, 148, 152)]
    + [f"tumor_{i:03d}" for i in (1, 5, 11, 12, 13, 19, 31, 37, 43, 46, 57, 65, 69, 71, 73, 79, 80, 81, 82, 85,
                                   97, 109)]
)
CAMELYON16_SPLIT_SIZES = {"train": 216, "val": 54, "test": 129}

PANDA_LABELS_FILE = "train_with_noisy_labels.csv"
PANDA_LABELS_URL = "https://raw.githubusercontent.com/analokmaus/kaggle-panda-challenge-public/master/train.csv"
PANDA_LABELS_MD5 = "5e4bfc78bda9603d2e2faf3ed4b21dfa"
PANDA_SEED = 42
PANDA_RATIOS = {"panda": (0.7, 0.15, 0.15), "panda-small": (0.1, 0.05, 0.05)}


@dataclasses.dataclass(frozen=True)
class Slide:
    """One whole-slide image of a task.

    Attributes:
        slide_id: eva's ``wsi_id`` (the file name up to its first dot).
        path: absolute path of the image.
        label: class index.
        split: ``train``, ``val`` or ``test``.
        origin: the path relative to the dataset root (eva's ``file`` column in ``coords_<split>.csv``).
    """

    slide_id: str
    path: Path
    label: int
    split: str
    origin: str


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} (or None for all).")


def wsi_id(path: str | os.PathLike) -> str:
    """eva's slide id: the file name up to its first dot."""
    return os.path.basename(str(path)).split(".")[0]


# --------------------------------------------------------------------------------------
# Camelyon16


def _camelyon16_reference(root: Path) -> dict[str, str]:
    path = root / "testing" / "reference.csv"
    try:
        frame = pd.read_csv(path, header=None)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read {path}: {exc}. Expected rows 'test_001,Tumor,...' without a header.") from exc
    if frame.shape[1] < 2:
        raise DataError(f"{path}: expected at least two columns (slide id, Normal/Tumor), found {frame.shape[1]}.")
    return {str(k): str(v).lower() for k, v in frame[[0, 1]].itertuples(index=False)}


def camelyon16_slides(root: str | os.PathLike, split: str | None = None, check_counts: bool = False) -> list[Slide]:
    """The Camelyon16 slides of ``split`` (``None``: all), sorted by relative path as eva lists them.

    Args:
        root: the folder holding ``training/`` and ``testing/``.
        check_counts: require eva's 216 / 54 / 129 slides (true for the complete dataset).

    Raises:
        DataError: a folder or ``reference.csv`` is missing, a file name is neither
            ``normal_*`` nor ``tumor_*``, or a test slide has no row in ``reference.csv``.
    """
    _check_split(split)
    root = Path(root)
    for folder in ("training/normal", "training/tumor", "testing/images"):
        if not (root / folder).is_dir():
            raise DataError(f"Camelyon16: folder {root / folder} is missing; expected eva's layout "
                            "training/normal, training/tumor, testing/images and testing/reference.csv.")
    if not (root / "testing" / "reference.csv").is_file():
        raise DataError(f"Camelyon16: {root / 'testing' / 'reference.csv'} is missing; it holds the test labels "
                        "(it comes with the CAMELYON16 download, next to testing/images).")
    wanted = SPLITS if split is None else (split,)
    slides: list[Slide] = []
    for current in wanted:
        part = _camelyon16_split(root, current)
        if check_counts and len(part) != CAMELYON16_SPLIT_SIZES[current]:
            raise DataError(f"Camelyon16 {current}: expected {CAMELYON16_SPLIT_SIZES[current]} slides (eva), "
                            f"found {len(part)} under {root}.")
        slides.extend(part)
    # eva lists a split (and split=None, everything) as sorted paths relative to the root
    return sorted(slides, key=lambda s: s.origin)


def _camelyon16_split(root: Path, split: str) -> list[Slide]:
    if split == "test":
        reference = _camelyon16_reference(root)
        paths = list((root / "testing" / "images").glob("*.tif"))
    else:
        reference = {}
        # eva's glob "training/**/*.tif" is not recursive: "**" matches one folder level
        paths = [p for p in (root / "training").glob("*/*.tif")
                 if (p.name.replace(".tif", "") in CAMELYON16_VAL_SLIDES) == (split == "val")]
    slides = []
    for path in paths:
        name = path.name.replace(".tif", "")
        if split == "test":
            if name not in reference:
                raise DataError(f"Camelyon16: test slide {path.name} has no row in {root}/testing/reference.csv; "
                                "add its label or remove the slide.")
            class_name = reference[name]
        else:
            class_name = name.split("_")[0]
        if class_name not in CAMELYON16_CLASSES:
            raise DataError(f"Camelyon16: slide {path} has class {class_name!r}; expected normal or tumor "
                            "(training files are named normal_NNN.tif or tumor_NNN.tif).")
        slides.append(Slide(slide_id=wsi_id(path), path=path.resolve(), label=CAMELYON16_CLASSES.index(class_name),
                            split=split, origin=path.relative_to(root).as_posix()))
    return slides


# --------------------------------------------------------------------------------------
# PANDA


def read_panda_labels(labels: str | os.PathLike | None) -> pd.DataFrame:
    """eva's PANDA label table, indexed by ``image_id``, with ``isup_grade`` and ``noise_ratio_10``.

    Raises:
        DataError: no path given, the file is missing, or columns are missing.
    """
    where = (f"eva downloads it from {PANDA_LABELS_URL} as {PANDA_LABELS_FILE} (md5 {PANDA_LABELS_MD5}); "
             "download that file and pass its path (--panda-labels PATH).")
    if labels is None:
        raise DataError(f"PANDA needs its label table with the noisy-label flags: {where}")
    path = Path(labels).expanduser()
    if not path.is_file():
        raise DataError(f"PANDA label table {path} does not exist; {where}")
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read PANDA label table {path}: {exc}; {where}") from exc
    missing = [c for c in ("image_id", "isup_grade", "noise_ratio_10") if c not in frame.columns]
    if missing:
        raise DataError(f"PANDA label table {path} lacks columns {missing} (found {list(frame.columns)}); {where}")
    if frame["image_id"].duplicated().any():
        duplicated = frame.loc[frame["image_id"].duplicated(), "image_id"].tolist()[:3]
        raise DataError(f"PANDA label table {path} lists images twice, e.g. {duplicated}.")
    grades = frame["isup_grade"]
    if not grades.isin(range(len(PANDA_CLASSES))).all():
        raise DataError(f"PANDA label table {path}: isup_grade must be an integer 0..5, found "
                        f"{sorted(set(grades[~grades.isin(range(6))].tolist()))[:5]}.")
    return frame.set_index("image_id")


def file_md5(path: str | os.PathLike) -> str:
    """md5 of a file (to compare a label table with the one eva downloads)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stratified_split(targets: Sequence[int], train_ratio: float, val_ratio: float, test_ratio: float,
                     seed: int = PANDA_SEED) -> tuple[list[int], list[int], list[int]]:
    """eva's ``stratified_split`` (``eva/core/data/splitting/stratified.py``) without groups.

    Per class (in sorted class order) the item indices are shuffled in place by one
    ``numpy.random.default_rng(seed)``; the first ``floor(train_ratio * n) or 1`` go to
    train, the next ``floor(val_ratio * n) or 1`` to val and, when ``test_ratio > 0``, the
    next ``floor(test_ratio * n) or 1`` to test (all the rest when the ratios sum to 1).

    Returns:
        ``(train, val, test)`` index lists, class by class.
    """
    if train_ratio + val_ratio + test_ratio > 1.0:
        raise DataError("the split ratios must sum to at most 1.")
    use_all = train_ratio + val_ratio + test_ratio == 1
    generator = np.random.default_rng(seed)
    classes, inverse = np.unique(np.asarray(targets), return_inverse=True)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for c in range(len(classes)):
        members = np.where(inverse == c)[0]
        generator.shuffle(members)
        n = len(members)
        n_train = int(np.floor(train_ratio * n)) or 1
        n_val = n - n_train if (test_ratio == 0.0 and use_all) else int(np.floor(val_ratio * n)) or 1
        train.extend(int(i) for i in members[:n_train])
        val.extend(int(i) for i in members[n_train : n_train + n_val])
        if test_ratio > 0.0:
            n_test = n - n_train - n_val if use_all else int(np.floor(test_ratio * n)) or 1
            test.extend(int(i) for i in members[n_train + n_val : n_train + n_val + n_test])
    return train, val, test


def panda_slides(root: str | os.PathLike, labels: str | os.PathLike | None, split: str | None = None,
                 small: bool = True, seed: int = PANDA_SEED) -> list[Slide]:
    """The PANDA (``small=False``) or PANDA-small slides of ``split`` (``None``: every kept slide).

    Args:
        root: the folder holding ``train_images/`` (eva's ``prostate-cancer-grade-assessment``).
        labels: path of ``train_with_noisy_labels.csv`` (see :data:`PANDA_LABELS_URL`).
        seed: eva's split seed (42).

    Raises:
        DataError: missing folder or label table, an image without a label row or a row
            without an image (eva's split is only defined on the complete set).
    """
    _check_split(split)
    root = Path(root)
    image_dir = root / "train_images"
    if not image_dir.is_dir():
        raise DataError(f"PANDA: folder {image_dir} is missing; expected eva's layout "
                        "<root>/train_images/<image_id>.tiff (the Kaggle prostate-cancer-grade-assessment download).")
    table = read_panda_labels(labels)
    paths = sorted(image_dir.glob("*.tiff"))
    ids = [path.name.replace(".tiff", "") for path in paths]
    unlabelled = [i for i in ids if i not in table.index]
    if unlabelled:
        raise DataError(f"PANDA: {len(unlabelled)} images in {image_dir} have no row in {labels} (e.g. "
                        f"{unlabelled[:3]}); use the label table that matches the Kaggle download.")
    if len(paths) != len(table):
        raise DataError(f"PANDA: {labels} lists {len(table)} images but {image_dir} holds {len(paths)}; eva's split "
                        "is defined on the complete Kaggle set, so every image of the table must be present.")
    keep = set(table.index[table["noise_ratio_10"] != 0])
    kept = [(path, image_id) for path, image_id in zip(paths, ids, strict=True) if image_id in keep]
    targets = [int(table.at[image_id, "isup_grade"]) for _, image_id in kept]
    parts = stratified_split(targets, *PANDA_RATIOS["panda-small" if small else "panda"], seed=seed)
    split_of = {i: name for name, part in zip(SPLITS, parts, strict=True) for i in part}
    # a split lists its slides in eva's order (class by class, shuffled); None: file order,
    # leaving out the slides no split uses (80 % of them for PANDA-small)
    order = sorted(split_of) if split is None else parts[SPLITS.index(split)]
    return [Slide(slide_id=wsi_id(kept[i][0]), path=kept[i][0].resolve(), label=targets[i], split=split_of[i],
                  origin=kept[i][0].relative_to(root).as_posix()) for i in order]
