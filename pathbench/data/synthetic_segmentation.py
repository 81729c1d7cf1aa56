"""Small CoNSeP-like and MoNuSAC-like datasets cut from real H&E tissue, for tests and the demo.

They are NOT CoNSeP or MoNuSAC: the images are the real CC0 tissue tiles shipped in
``pathbench/data/assets/cmu_small_region_tiles.npz`` (skin, 0.5 um/px; see the NOTICE there),
and the labels are computed from the tissue itself, so that a decoder has something real to
learn:

- nuclei: the haematoxylin concentration (Ruifrok-Johnston colour deconvolution, the numpy
  version in :mod:`pathbench.data.synthetic_plism`), smoothed, kept where it is both high
  (> 1.0 optical density) and well above its surroundings (> 0.3 over a Gaussian
  background of sigma 10 px), opened, holes filled, components of at least 12 pixels;
- a type per nucleus from its shape and stain: elongated (axis ratio >= 2.5) ones are
  spindle-like, small dark round ones inflammatory / lymphocytes, large ones epithelial,
  the others miscellaneous / neutrophils (see :func:`consep_type` and :func:`monusac_label`).

Images are 2 x 2 mosaics of neighbouring tiles (448 x 448 px of contiguous tissue), enlarged
twice (bilinear) to the 0.25 um/px of both datasets, then cropped; train and test images come
from different mosaics. Everything is a deterministic function of the seed.

Layouts (see :mod:`pathbench.data.consep` and :mod:`pathbench.data.monusac`):

- ``consep/{Train,Test}/Images/{train,test}_<n>.png`` and ``Labels/<name>.mat`` (``type_map``
  with CoNSeP's types 0..7 and ``inst_map``, written with ``scipy.io.savemat``);
  500 x 500 images, four 250 x 250 grid patches each;
- ``monusac/MoNuSAC_images_and_annotations/<patient>/<patient>_<n>.tif`` and ``.xml`` (and
  the same under ``MoNuSAC Testing Data and Annotations``): images of 150 to 450 px a side,
  one ImageScope ``<Annotation>`` per class holding one 16-vertex polygon per nucleus (the
  ellipse of the nucleus' second moments); in the test split some mid-sized nuclei are
  annotated "Ambiguous", as in the real test set.

Open them with ``strict=False``: they hold fewer images than the real datasets.
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from pathbench.data.monusac import MONUSAC_SPLIT_FOLDERS
from pathbench.data.synthetic import write_task_folder

GENERATOR_VERSION = 1
DEFAULT_SIZES: dict[str, dict[str, int]] = {
    "consep": {"train": 4, "val": 2},
    "monusac": {"train": 8, "test": 4},
}
CONSEP_IMAGE_SIZE = 500
MONUSAC_SIDE_RANGE = (150, 450)
TASK_DIRS = {"consep": "consep", "monusac": "monusac"}

_MIN_AREA = 12  # pixels at the tiles' 0.5 um/px
_ELONGATED = 2.5  # axis ratio above which a nucleus is spindle-like


def tissue_mosaics() -> list[np.ndarray]:
    """Every 2 x 2 block of neighbouring shipped tiles as one ``(448, 448, 3)`` uint8 image, in grid order."""
    from pathbench.data.synthetic_plism import load_demo_tiles

    tiles, grid = load_demo_tiles()
    where = {(int(c), int(r)): i for i, (c, r) in enumerate(grid)}
    mosaics = []
    for col, row in sorted(where, key=lambda cr: (cr[1], cr[0])):
        block = [(col, row), (col + 1, row), (col, row + 1), (col + 1, row + 1)]
        if all(b in where for b in block):
            top = np.concatenate([tiles[where[block[0]]], tiles[where[block[1]]]], axis=1)
            bottom = np.concatenate([tiles[where[block[2]]], tiles[where[block[3]]]], axis=1)
            mosaics.append(np.concatenate([top, bottom], axis=0))
    return mosaics


def find_nuclei(image: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Nuclei of an H&E image: instance labels ``(H, W)`` int32 (0 = none) and per-nucleus features.

    Features: ``area`` (pixels), ``darkness`` (mean haematoxylin), ``elongation`` (ratio of
    the principal axes), ``cy``, ``cx`` (centroid) and ``cov`` (2 x 2 covariance of the
    pixel coordinates, (y, x) order).
    """
    from pathbench.data.synthetic_plism import rgb_to_hed

    haematoxylin = ndi.gaussian_filter(rgb_to_hed(image)[..., 0], 1.0)
    contrast = haematoxylin - ndi.gaussian_filter(haematoxylin, 10.0)
    nuclei = ndi.binary_fill_holes(ndi.binary_opening((haematoxylin > 1.0) & (contrast > 0.3)))
    labels, count = ndi.label(nuclei)
    instances = np.zeros(labels.shape, dtype=np.int32)
    features = []
    for index, region in enumerate(ndi.find_objects(labels), start=1):
        ys, xs = np.nonzero(labels[region] == index)
        if len(ys) < _MIN_AREA:
            continue
        ys, xs = ys + region[0].start, xs + region[1].start
        cov = np.cov(np.stack([ys, xs]).astype(np.float64))
        low, high = np.linalg.eigvalsh(cov)
        instances[ys, xs] = len(features) + 1
        features.append({"area": float(len(ys)), "darkness": float(haematoxylin[ys, xs].mean()),
                         "elongation": float(np.sqrt(high / max(low, 1e-6))), "cy": float(ys.mean()),
                         "cx": float(xs.mean()), "cov": cov})
    return instances, features


def consep_type(f: dict[str, float]) -> int:
    """CoNSeP nucleus type (1..7) of a nucleus from its features."""
    if f["elongation"] >= _ELONGATED:
        if f["area"] >= 150:
            return 6  # muscle
        return 7 if f["darkness"] < 1.3 else 5  # endothelial / fibroblast
    if f["area"] < 60 and f["darkness"] >= 1.45:
        return 2  # inflammatory
    if f["area"] >= 90:
        return 3 if f["darkness"] < 1.5 else 4  # healthy / malignant epithelial
    return 1  # miscellaneous


def monusac_label(f: dict[str, float]) -> str:
    """MoNuSAC class name of a nucleus from its features (before "Ambiguous" is assigned)."""
    if f["elongation"] >= _ELONGATED:
        return "Macrophage"
    if f["area"] < 60 and f["darkness"] >= 1.45:
        return "Lymphocyte"
    if f["area"] >= 90:
        return "Epithelial"
    return "Neutrophil"


def _enlarge(image: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Twice the size: bilinear image (0.5 -> 0.25 um/px), nearest labels."""
    height, width = instances.shape
    big = np.asarray(Image.fromarray(image).resize((2 * width, 2 * height), Image.BILINEAR))
    return big, np.repeat(np.repeat(instances, 2, axis=0), 2, axis=1)


def _split_mosaics(mosaics: list[np.ndarray], rng: np.random.Generator) -> tuple[list[int], list[int]]:
    order = rng.permutation(len(mosaics)).tolist()
    n_test = max(1, len(order) // 3)
    return order[n_test:], order[:n_test]


def _write_consep(folder: Path, rng: np.random.Generator, sizes: dict[str, int]) -> None:
    mosaics = tissue_mosaics()
    train_ids, test_ids = _split_mosaics(mosaics, rng)
    for split, split_folder, prefix, pool in (("train", "Train", "train", train_ids), ("val", "Test", "test", test_ids)):
        (folder / split_folder / "Images").mkdir(parents=True, exist_ok=True)
        (folder / split_folder / "Labels").mkdir(parents=True, exist_ok=True)
        for n in range(sizes[split]):
            mosaic = mosaics[pool[n % len(pool)]]
            instances, features = find_nuclei(mosaic)
            types = np.array([0] + [consep_type(f) for f in features], dtype=np.int64)
            image, instances = _enlarge(mosaic, instances)
            top, left = (int(v) for v in rng.integers(0, image.shape[0] - CONSEP_IMAGE_SIZE + 1, size=2))
            window = (slice(top, top + CONSEP_IMAGE_SIZE), slice(left, left + CONSEP_IMAGE_SIZE))
            name = f"{prefix}_{n + 1}"
            Image.fromarray(image[window]).save(folder / split_folder / "Images" / f"{name}.png")
            # MATLAB stores label maps as double; CoNSeP's readers take any integer-valued numbers
            _save_mat(folder / split_folder / "Labels" / f"{name}.mat",
                      {"type_map": types[instances[window]].astype(np.float64),
                       "inst_map": instances[window].astype(np.float64)})


def _save_mat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``scipy.io.savemat`` (MAT 5, compressed) with a fixed header text instead of the creation time,
    so that the same labels always give the same bytes."""
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, arrays, do_compression=True)
    content = bytearray(buffer.getvalue())
    content[:116] = b"MATLAB 5.0 MAT-file, written by pathbench".ljust(116)  # the free-text description field
    path.write_bytes(bytes(content))


def _ellipse(f: dict[str, float], vertices: int = 16) -> np.ndarray:
    """``(vertices, 2)`` (x, y) points on the ellipse with the nucleus' centroid and second moments."""
    values, vectors = np.linalg.eigh(f["cov"])
    axes = 2.0 * np.sqrt(np.maximum(values, 0.25))  # a filled ellipse has variance (semi-axis / 2)^2
    angles = np.linspace(0.0, 2.0 * np.pi, vertices, endpoint=False)
    yx = np.array([f["cy"], f["cx"]]) + (np.cos(angles)[:, None] * axes[0] * vectors[:, 0]
                                         + np.sin(angles)[:, None] * axes[1] * vectors[:, 1])
    return yx[:, ::-1]


def _annotation_xml(polygons: dict[str, list[np.ndarray]]) -> bytes:
    """Aperio ImageScope XML with one ``<Annotation>`` per class, as in MoNuSAC."""
    root = ElementTree.Element("Annotations", MicronsPerPixel="0.250000")
    for a, (label, shapes) in enumerate(polygons.items(), start=1):
        annotation = ElementTree.SubElement(root, "Annotation", Id=str(a), Name="", ReadOnly="0",
                                            LineColorReadOnly="0", Incremental="0", Type="4", LineColor="65280",
                                            Visible="1", Selected="0", MarkupImagePath="", MacroName="")
        attributes = ElementTree.SubElement(annotation, "Attributes")
        ElementTree.SubElement(attributes, "Attribute", Name=label, Id="0", Value="")
        regions = ElementTree.SubElement(annotation, "Regions")
        headers = ElementTree.SubElement(regions, "RegionAttributeHeaders")
        ElementTree.SubElement(headers, "AttributeHeader", Id="9999", Name="Region", ColumnWidth="-1")
        for r, shape in enumerate(shapes, start=1):
            region = ElementTree.SubElement(regions, "Region", Id=str(r), Type="0", Zoom="1", Selected="0",
                                            ImageLocation="", ImageFocus="-1", Text="", NegativeROA="0",
                                            InputRegionId="0", Analyze="0", DisplayId=str(r))
            ElementTree.SubElement(region, "Attributes")
            vertices = ElementTree.SubElement(region, "Vertices")
            for x, y in shape:
                ElementTree.SubElement(vertices, "Vertex", X=f"{x:.3f}", Y=f"{y:.3f}", Z="0")
        ElementTree.SubElement(annotation, "Plots")
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def _write_monusac(folder: Path, rng: np.random.Generator, sizes: dict[str, int]) -> None:
    mosaics = tissue_mosaics()
    train_ids, test_ids = _split_mosaics(mosaics, rng)
    for split, pool in (("train", train_ids), ("test", test_ids)):
        for n in range(sizes[split]):
            block = pool[n % len(pool)]
            patient = f"SYN-{block:02d}-01Z-00-DX1"
            (folder / MONUSAC_SPLIT_FOLDERS[split] / patient).mkdir(parents=True, exist_ok=True)
            _, features = find_nuclei(mosaics[block])
            image = np.asarray(Image.fromarray(mosaics[block]).resize((896, 896), Image.BILINEAR))
            height, width = (int(v) for v in rng.integers(MONUSAC_SIDE_RANGE[0], MONUSAC_SIDE_RANGE[1] + 1, 2))
            top = int(rng.integers(0, image.shape[0] - height + 1))
            left = int(rng.integers(0, image.shape[1] - width + 1))
            polygons: dict[str, list[np.ndarray]] = {}
            for f in features:
                # the nucleus in the enlarged crop: pixel i covers 2i and 2i + 1
                cy, cx = 2.0 * f["cy"] + 0.5 - top, 2.0 * f["cx"] + 0.5 - left
                if not (0.0 <= cy <= height - 1 and 0.0 <= cx <= width - 1):
                    continue  # kept only when its centre is in the crop; its ellipse may cross the border
                label = monusac_label(f)
                if split == "test" and label == "Neutrophil" and rng.random() < 0.3:
                    label = "Ambiguous"
                cov = 4.0 * f["cov"] + 0.25 * np.eye(2)
                polygons.setdefault(label, []).append(_ellipse({"cy": cy, "cx": cx, "cov": cov}))
            stem = folder / MONUSAC_SPLIT_FOLDERS[split] / patient / f"{patient}_{n + 1}"
            Image.fromarray(image[top : top + height, left : left + width]).save(stem.with_suffix(".tif"),
                                                                                 format="TIFF")
            stem.with_suffix(".xml").write_bytes(_annotation_xml(polygons))


_WRITERS = {"consep": _write_consep, "monusac": _write_monusac}


def make_synthetic_segmentation(
    root: str | os.PathLike,
    tasks: tuple[str, ...] = ("consep", "monusac"),
    seed: int = 0,
    sizes: dict[str, dict[str, int]] | None = None,
) -> Path:
    """Write the synthetic segmentation sets under ``root/consep`` and ``root/monusac``; return ``root``.

    Each task folder is staged beside its final place and renamed in when complete
    (``synthetic.json`` inside records the parameters); a folder already written with the
    same parameters is kept, so a second call costs nothing.
    """
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        if task not in _WRITERS:
            raise ValueError(f"unknown segmentation task {task!r}; expected one of {', '.join(_WRITERS)}.")
        params = {"generator_version": GENERATOR_VERSION, "seed": seed, "task": task, "sizes": sizes[task]}
        rng = np.random.default_rng([seed, list(_WRITERS).index(task)])
        write_task_folder(root / TASK_DIRS[task], params,
                          lambda staging, task=task, rng=rng: _WRITERS[task](staging, rng, sizes[task]))
    return root


def synthetic_segmentation_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``--data synthetic`` keeps these sets: ``<pathbench cache>/datasets/synthetic-segmentation-v<N>``."""
    from pathbench.settings import cache_root

    return cache_root(cache_dir) / "datasets" / f"synthetic-segmentation-v{GENERATOR_VERSION}"
