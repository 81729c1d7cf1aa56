"""MoNuSAC, read as kaiko eva reads it (``eva.vision.datasets.MoNuSAC``).

Layout (the challenge's release)::

    <root>/MoNuSAC_images_and_annotations/<patient>/<patient>_<n>.tif (+ .xml)         (209 images)
    <root>/MoNuSAC Testing Data and Annotations/<patient>/<patient>_<n>.tif (+ .xml)   (85 images)

eva reads the ``.tif`` copy of each image (the ``.svs`` files beside them are not used) and
its ``.xml`` annotation (Aperio ImageScope format): each ``<Annotation>`` names its class in
its first ``<Attribute Name=...>`` and holds ``<Region>`` polygons whose ``<Vertex X Y>`` are
pixel coordinates. The label mask starts as background and every polygon is filled, in file
order, with its annotation's class: ``Epithelial`` 1, ``Lymphocyte`` 2, ``Neutrophil`` 3,
``Macrophage`` 4; ``Ambiguous`` (added to the test set for unclear regions) and any unknown
name are 5, the ignore index. A decoder predicts the 5 classes 0..4.

Filling follows ``skimage.draw.polygon`` as eva calls it: a pixel ``(x, y)`` belongs to a
polygon when the point ``(x, y)`` lies inside it or on its boundary, and parts of a polygon
beyond the image are clipped (:func:`polygon_mask`, written with numpy so that scikit-image
is not a dependency). Masks are rasterised once and cached as ``.npy`` files under
``<pathbench cache>/segmentation-masks/monusac/``, keyed by the annotation's bytes, the
image size and the rasteriser version; they are written atomically.

Beyond eva: a missing ``.xml``, an annotation without a class name or a region without
vertices, and a polygon lying entirely outside its image are reported as
:class:`~pathbench.errors.DataError` rather than crashing or being dropped silently.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathbench._io import save_npy
from pathbench.data.base import read_image
from pathbench.data.segmentation import SegmentationDataset, check_root, files_digest
from pathbench.errors import DataError

MONUSAC_CLASSES = ("Background", "Epithelial", "Lymphocyte", "Neutrophil", "Macrophage", "Ambiguous")
MONUSAC_IGNORE_INDEX = 5
MONUSAC_SPLIT_FOLDERS = {"train": "MoNuSAC_images_and_annotations", "test": "MoNuSAC Testing Data and Annotations"}
MONUSAC_EXPECTED_IMAGES = {"train": 209, "test": 85}
RASTERISER_VERSION = 1

_CLASS_TO_INDEX = {name: i for i, name in enumerate(MONUSAC_CLASSES)}
_VERTEX_EPS = 1e-12  # skimage's tolerance for a point that is a vertex
_MAX_PAIRS = 1 << 22  # points x vertices compared per chunk: bounds the memory of one fill


@dataclass(frozen=True)
class PolygonRegion:
    """One annotated polygon.

    Attributes:
        label: the annotation's class name as written in the file.
        class_index: its label value (unknown names -> Ambiguous, as eva).
        vertices: ``(V, 2)`` float64 ``(x, y)`` pixel coordinates.
    """

    label: str
    class_index: int
    vertices: np.ndarray


def parse_monusac_xml(path: str | os.PathLike) -> list[PolygonRegion]:
    """Every polygon of a MoNuSAC ``.xml`` file, in drawing order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {path} is missing; every MoNuSAC image needs the .xml beside it.")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise DataError(f"cannot parse {path} as XML ({exc}); re-download the MoNuSAC annotations.") from exc
    regions: list[PolygonRegion] = []
    for a, annotation in enumerate(root):
        attributes = annotation.find("Attributes")
        names = [item.attrib.get("Name") for item in attributes] if attributes is not None else []
        if not names or names[0] is None:
            raise DataError(f"{path}: annotation {a + 1} names no class (expected <Attributes><Attribute "
                            "Name=\"Epithelial\" .../></Attributes> as its first child).")
        label = names[0]
        class_index = _CLASS_TO_INDEX.get(label, MONUSAC_IGNORE_INDEX)
        for r, region in enumerate(item for child in annotation for item in child if item.tag == "Region"):
            vertices_element = region.find("Vertices")
            points = [] if vertices_element is None else [
                (vertex.attrib.get("X"), vertex.attrib.get("Y")) for vertex in vertices_element]
            try:
                vertices = np.array(points, dtype=np.float64).reshape(-1, 2)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{path}: region {r + 1} of annotation {a + 1} ({label}) has vertices without "
                                f"numeric X and Y ({exc}).") from exc
            if len(vertices) == 0:
                raise DataError(f"{path}: region {r + 1} of annotation {a + 1} ({label}) has no vertices.")
            regions.append(PolygonRegion(label, class_index, vertices))
    return regions


def polygon_mask(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels of an ``height x width`` image covered by a polygon: ``(H, W)`` bool.

    The rule of ``skimage.draw.polygon(x, y, shape=(width, height))`` as eva calls it: the
    candidate pixels are the integer points of the polygon's bounding box (clipped to the
    image), and a point is kept when O'Rourke's crossing test (the one scikit-image uses,
    with its 1e-12 vertex tolerance and the same floating-point expressions) puts it
    inside, on an edge or on a vertex.

    Args:
        vertices: ``(V, 2)`` ``(x, y)`` coordinates; the polygon closes itself.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    mask = np.zeros((height, width), dtype=bool)
    xs, ys = vertices[:, 0], vertices[:, 1]
    x_lo, x_hi = int(max(0, xs.min())), min(width - 1, int(math.ceil(xs.max())))
    y_lo, y_hi = int(max(0, ys.min())), min(height - 1, int(math.ceil(ys.max())))
    if x_lo > x_hi or y_lo > y_hi:
        return mask
    # eva passes x as skimage's rows, so the test runs with (y, x) as its (x, y); kept for
    # bit-identical decisions on points that lie on an edge.
    pa = ys[None, :]  # the test's "x" of each vertex
    pb = xs[None, :]  # the test's "y" of each vertex
    x_pixels = np.arange(x_lo, x_hi + 1, dtype=np.float64)
    rows_per_chunk = max(1, _MAX_PAIRS // (len(x_pixels) * len(vertices)))
    for start in range(y_lo, y_hi + 1, rows_per_chunk):
        y_pixels = np.arange(start, min(start + rows_per_chunk, y_hi + 1), dtype=np.float64)
        py, px = (grid.ravel()[:, None] for grid in np.meshgrid(y_pixels, x_pixels, indexing="ij"))
        x0, y0 = pa - py, pb - px  # vertex i relative to the point
        x1, y1 = np.roll(x0, 1, axis=1), np.roll(y0, 1, axis=1)  # vertex i - 1 (the last for i = 0)
        vertex = ((np.abs(x0) < _VERTEX_EPS) & (np.abs(y0) < _VERTEX_EPS)).any(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = (x0 * y1 - x1 * y0) / (y1 - y0)
        right = (((y0 > 0) != (y1 > 0)) & (cross > 0)).sum(axis=1) & 1
        left = (((y0 < 0) != (y1 < 0)) & (cross < 0)).sum(axis=1) & 1
        inside = vertex | (right != left) | (right == 1)
        mask[start : start + len(y_pixels), x_lo : x_hi + 1] = inside.reshape(len(y_pixels), len(x_pixels))
    return mask


def rasterise_regions(regions: list[PolygonRegion], height: int, width: int, where: str = "annotation") -> np.ndarray:
    """The label mask of one image: ``(H, W)`` uint8, background 0, regions painted in order.

    A region whose polygon lies entirely outside the image is a DataError: the annotation
    does not belong to the image (eva would drop it silently).
    """
    labels = np.zeros((height, width), dtype=np.uint8)
    for r, region in enumerate(regions):
        xs, ys = region.vertices[:, 0], region.vertices[:, 1]
        if xs.max() < 0 or ys.max() < 0 or xs.min() > width - 1 or ys.min() > height - 1:
            raise DataError(
                f"{where}: polygon {r + 1} ({region.label}) lies entirely outside the {width} x {height} image "
                f"(x {xs.min():.1f}..{xs.max():.1f}, y {ys.min():.1f}..{ys.max():.1f}); the annotation does not "
                "belong to this image."
            )
        labels[polygon_mask(region.vertices, height, width)] = region.class_index
    return labels


class MoNuSACDataset(SegmentationDataset):
    """MoNuSAC images with their rasterised label masks (5 classes + ignored "Ambiguous").

    Args:
        root: the folder holding the two split folders.
        split: ``"train"`` or ``"test"`` (eva validates on the test split).
        strict: require the official number of images (209 / 85), as eva does.
        cache_dir: the pathbench cache (default ``$PATHBENCH_CACHE`` or ``~/.cache/pathbench``),
            where rasterised masks are kept.

    Items: one per image, of its own size (113 x 81 to 1398 x 1956 pixels in the real data).
    ``item_ids`` are the image paths relative to the split folder; the fingerprint hashes
    every ``.tif`` and ``.xml`` of the split.
    """

    classes = MONUSAC_CLASSES
    num_classes = MONUSAC_IGNORE_INDEX  # 0..4; the decoder has no "Ambiguous" output
    ignore_index = MONUSAC_IGNORE_INDEX

    def __init__(self, root: str | os.PathLike, split: str, strict: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> None:
        if split not in MONUSAC_SPLIT_FOLDERS:
            raise DataError(f"unknown MoNuSAC split {split!r}; expected 'train' or 'test'.")
        self.root = check_root(root, "MoNuSAC")
        self.split = split
        self.split_dir = self.root / MONUSAC_SPLIT_FOLDERS[split]
        if not self.split_dir.is_dir():
            raise DataError(f"MoNuSAC {split}: folder {self.split_dir} does not exist; expected "
                            f"<root>/{MONUSAC_SPLIT_FOLDERS[split]}/<patient>/<image>.tif with .xml annotations.")
        self.image_paths = [Path(p) for p in sorted(glob.glob(os.path.join(self.split_dir, "**", "*.tif"),
                                                              recursive=True))]
        if not self.image_paths:
            svs = list(self.split_dir.rglob("*.svs"))
            hint = f" (found {len(svs)} .svs files: eva reads the .tif copies)" if svs else ""
            raise DataError(f"MoNuSAC {split}: no .tif images under {self.split_dir}{hint}.")
        expected = MONUSAC_EXPECTED_IMAGES[split]
        if strict and len(self.image_paths) != expected:
            raise DataError(f"MoNuSAC {split}: expected {expected} images under {self.split_dir}, found "
                            f"{len(self.image_paths)}; pass strict=False to use a partial copy.")
        self.xml_paths = [p.with_suffix(".xml") for p in self.image_paths]
        missing = [p for p in self.xml_paths if not p.is_file()]
        if missing:
            raise DataError(f"MoNuSAC {split}: {len(missing)} images have no annotation, e.g. {missing[0].name} is "
                            f"missing beside {missing[0].with_suffix('.tif')}; every image needs its .xml.")
        self.item_ids = [f"{split}/{p.relative_to(self.split_dir).as_posix()}" for p in self.image_paths]
        self.fingerprint = files_digest(self.root, self.image_paths + self.xml_paths, f"monusac:{split}\0")
        from pathbench.settings import cache_root

        self.mask_dir = cache_root(cache_dir) / "segmentation-masks" / "monusac"

    def load(self, index: int) -> np.ndarray:
        return read_image(self.image_paths[index])

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index``, read from its header."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.image_paths[index]) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {self.image_paths[index]}: {exc}. Re-download it.") from exc
        return height, width

    def mask_cache_path(self, index: int) -> Path:
        """Where the rasterised mask of image ``index`` is cached (its content key is the file name)."""
        height, width = self.image_size(index)
        digest = hashlib.sha256(f"monusac-mask-v{RASTERISER_VERSION}|{height}x{width}\0".encode())
        digest.update(self.xml_paths[index].read_bytes())
        return self.mask_dir / f"{digest.hexdigest()[:32]}.npy"

    def load_mask(self, index: int) -> np.ndarray:
        path = self.mask_cache_path(index)
        height, width = self.image_size(index)
        if path.is_file():
            mask = np.load(path, allow_pickle=False)
            if mask.shape == (height, width):
                return mask.astype(np.int64)
        mask = rasterise_regions(parse_monusac_xml(self.xml_paths[index]), height, width,
                                 str(self.xml_paths[index]))
        save_npy(path, mask)
        return mask.astype(np.int64)

    def prepare(self) -> None:
        """Rasterise (and cache) every mask now rather than on first use."""
        for index in range(len(self)):
            self.load_mask(index)

    def describe(self, index: int) -> str:
        return str(self.image_paths[index])
