"""Whole-slide image reading: a small reader interface and its OpenSlide implementation.

A :class:`SlideReader` exposes what kaiko eva's WSI backends expose (level sizes, level
downsamples, microns per pixel at level 0, ``read_region``) plus a cheap content hash, so
another library (tiffslide, cuCIM) can be added by implementing its abstract members and
registering the class in :data:`BACKENDS`.

Reading a patch at a target resolution follows eva's ``PatchCoordinates.from_file`` and
``Wsi.get_closest_level`` (kaiko-ai/eva, ``eva/vision/data/wsi``):

1. the slide's level-0 mpp is the mean of its x and y mpp, taken from ``openslide.mpp-x/y``
   or, failing that, from ``tiff.XResolution/YResolution`` and ``tiff.ResolutionUnit``;
2. the read level is the coarsest level whose mpp does not exceed the target mpp (the
   finest level when every level is coarser than the target);
3. the region read at that level is ``int(target_mpp / level_mpp * 224)`` pixels wide and
   high, and eva's ``ResizeAndCrop`` then resizes its shorter side to 224 (bilinear,
   antialiased, on uint8 pixels) and centre-crops 224 x 224;
4. transparent pixels (OpenSlide's answer outside the scanned area) become white.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path

import numpy as np

from pathbench.errors import DataError

# eva's table of TIFF resolution units (micrometres per unit); "inch" is absent from it.
RESOLUTION_UNIT_MICRONS: dict[str, float] = {
    "meter": 1e6,
    "decimeter": 1e5,
    "centimeter": 1e4,
    "millimeter": 1e3,
    "micrometer": 1.0,
    "nanometer": 1e-3,
    "picometer": 1e-6,
    "femtometer": 1e-9,
}


def mpp_from_properties(properties: Mapping[str, str], where: str = "slide") -> float:
    """Microns per pixel at level 0 from OpenSlide properties, as eva's OpenSlide backend reads them.

    ``openslide.mpp-x`` and ``openslide.mpp-y`` when both are set, else the TIFF resolution
    tags converted with eva's unit table; the result is the mean of x and y.

    Raises:
        DataError: neither source is present, or the unit is not one eva understands.
    """
    mpp_x, mpp_y = properties.get("openslide.mpp-x"), properties.get("openslide.mpp-y")
    if mpp_x and mpp_y:
        values = (float(mpp_x), float(mpp_y))
    else:
        x_res, y_res = properties.get("tiff.XResolution"), properties.get("tiff.YResolution")
        unit = properties.get("tiff.ResolutionUnit")
        if not (x_res and y_res and unit) or unit == "none":
            raise DataError(
                f"{where}: the slide metadata gives no microns per pixel (no openslide.mpp-x/mpp-y and no "
                f"tiff.XResolution/YResolution with a ResolutionUnit; unit found: {unit!r}). Patches are read at a target mpp, so "
                "the slide cannot be used as it is; re-export it with its resolution, or remove it."
            )
        if unit not in RESOLUTION_UNIT_MICRONS:
            raise DataError(
                f"{where}: TIFF resolution unit {unit!r} is not supported (expected one of "
                f"{', '.join(RESOLUTION_UNIT_MICRONS)}, as eva); re-export the slide with a metric unit."
            )
        factor = RESOLUTION_UNIT_MICRONS[unit]
        values = (factor / float(x_res), factor / float(y_res))
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise DataError(f"{where}: microns per pixel must be positive, found x={values[0]}, y={values[1]}.")
    return (values[0] + values[1]) / 2.0


def closest_level(level_mpps: np.ndarray, target_mpp: float) -> int:
    """The level eva reads patches from: the coarsest one not coarser than ``target_mpp``.

    Args:
        level_mpps: ``(n_levels,)`` microns per pixel of each level, finest first.

    Returns:
        The level index; the finest level when every level is coarser than the target.
    """
    level_mpps = np.asarray(level_mpps, dtype=np.float64)
    allowed = np.where(level_mpps > target_mpp, 0.0, level_mpps)
    if allowed.max() == 0:
        return int(np.argmin(level_mpps))
    return int(np.argmax(allowed))


def scaled_size(size: int, target_mpp: float, mpp: float) -> int:
    """Pixels at resolution ``mpp`` covering ``size`` pixels at ``target_mpp`` (truncated, as eva)."""
    return int(target_mpp / mpp * size)


class SlideReader(abc.ABC):
    """One open whole-slide image.

    Subclasses implement :attr:`level_dimensions`, :attr:`level_downsamples`,
    :attr:`properties`, :meth:`_read`, :meth:`content_hash` and :meth:`close`; everything eva-specific
    (mpp, level choice, patch geometry) lives here.
    """

    backend: str = ""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of every level, finest first."""

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of every level relative to level 0."""

    @property
    @abc.abstractmethod
    def properties(self) -> Mapping[str, str]:
        """The slide's metadata as OpenSlide names it (``openslide.mpp-x``, ``tiff.XResolution``, ...)."""

    @abc.abstractmethod
    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Pixels ``(h, w, 3 or 4)`` uint8 of a region; ``location`` is in level-0 pixels."""

    @abc.abstractmethod
    def content_hash(self) -> str:
        """A hash of the slide's content, cheap to compute (it keys the feature cache)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file handle."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @cached_property
    def mpp(self) -> float:
        """Microns per pixel at level 0 (mean of x and y)."""
        return mpp_from_properties(self.properties, str(self.path))

    @property
    def level_mpps(self) -> np.ndarray:
        """``(n_levels,)`` float64 microns per pixel of each level."""
        return self.mpp * np.asarray(self.level_downsamples, dtype=np.float64)

    def closest_level(self, target_mpp: float) -> int:
        """See :func:`closest_level`."""
        return closest_level(self.level_mpps, target_mpp)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size = (width, height)`` pixels of ``level`` whose top-left is ``location`` (level 0).

        Returns:
            ``(height, width, 3)`` uint8 RGB; pixels outside the scanned area are white.
        """
        if not 0 <= level < len(self.level_dimensions):
            raise DataError(f"{self.path}: level {level} does not exist (the slide has "
                            f"{len(self.level_dimensions)} levels).")
        pixels = np.asarray(self._read((int(location[0]), int(location[1])), level, (int(size[0]), int(size[1]))))
        if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
            raise DataError(f"{self.path}: the reader returned pixels of shape {pixels.shape}, expected (h, w, 3|4).")
        if pixels.shape[2] == 4:
            pixels = pixels.copy()
            pixels[pixels[:, :, 3] == 0] = 255
            pixels = pixels[:, :, :3]
        return np.ascontiguousarray(pixels, dtype=np.uint8)

    def read_level(self, level: int) -> np.ndarray:
        """The whole of ``level``: ``(height, width, 3)`` uint8 RGB."""
        return self.read_region((0, 0), level, self.level_dimensions[level])


class OpenSlideReader(SlideReader):
    """:class:`SlideReader` through ``openslide-python`` (the library itself comes from ``openslide-bin``)."""

    backend = "openslide"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        try:
            import openslide
        except ImportError as exc:  # pragma: no cover - both are dependencies of pathbench
            raise DataError("reading whole-slide images needs openslide-python and openslide-bin: "
                            "pip install openslide-python openslide-bin") from exc
        self._openslide = openslide
        if not self.path.is_file():
            raise DataError(f"slide {self.path} does not exist.")
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise DataError(
                f"cannot open slide {self.path} with OpenSlide ({type(exc).__name__}: {exc}). Expected a "
                "whole-slide image OpenSlide reads (pyramidal TIFF, SVS, NDPI, MRXS, ...); the file may be "
                "truncated or corrupt: download it again, or remove it from the dataset folder."
            ) from exc

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        # After one failed read OpenSlide keeps the handle in an error state: every later
        # call fails with the same message, so each one must become a DataError too.
        try:
            yield
        except self._openslide.OpenSlideError as exc:
            raise DataError(f"cannot {what} of slide {self.path}: {exc}. The file is probably corrupt; "
                            "download it again or remove it.") from exc

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        with self._errors("read the level sizes"):
            return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        with self._errors("read the level downsamples"):
            return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> Mapping[str, str]:
        with self._errors("read the properties"):
            return dict(self._slide.properties)

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        with self._errors(f"read a region (level {level}, at {location}, size {size})"):
            return np.asarray(self._slide.read_region(location, level, size))

    def content_hash(self) -> str:
        """OpenSlide's ``quickhash-1`` (a hash of the slide's properties and lowest-resolution level).

        Formats without a quickhash fall back to the sha256 of the file size and its first
        and last MiB: hashing whole slides (gigabytes each) would cost more than embedding them.
        """
        quickhash = self.properties.get("openslide.quickhash-1")
        if quickhash:
            return f"openslide-quickhash-1:{quickhash}"
        return "head-tail-sha256:" + head_tail_sha256(self.path)

    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None


def head_tail_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's size, first ``chunk`` bytes and last ``chunk`` bytes."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode() + b"\0")
    with open(path, "rb") as handle:
        digest.update(handle.read(chunk))
        if size > chunk:
            handle.seek(max(chunk, size - chunk))
            digest.update(handle.read(chunk))
    return digest.hexdigest()


BACKENDS: dict[str, Callable[[str | os.PathLike], SlideReader]] = {"openslide": OpenSlideReader}


def open_slide(path: str | os.PathLike, backend: str = "openslide") -> SlideReader:
    """Open a whole-slide image with the reader registered as ``backend``."""
    if backend not in BACKENDS:
        raise DataError(f"unknown slide backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
    return BACKENDS[backend](path)


def patch_geometry(reader: SlideReader, target_mpp: float, width: int = 224, height: int = 224) -> tuple[int, int, int]:
    """Where and how large eva reads a ``width x height`` patch at ``target_mpp``.

    Returns:
        ``(level, read_width, read_height)``: the read level and the region size in that
        level's pixels.
    """
    level = reader.closest_level(target_mpp)
    level_mpp = reader.mpp * reader.level_downsamples[level]
    read_width, read_height = scaled_size(width, target_mpp, level_mpp), scaled_size(height, target_mpp, level_mpp)
    if read_width < 1 or read_height < 1:
        raise DataError(f"{reader.path}: a {width}x{height} patch at {target_mpp} um/px covers less than one "
                        f"pixel of level {level} ({level_mpp:.4g} um/px).")
    return level, read_width, read_height


def read_patch(reader: SlideReader, location: tuple[int, int], level: int, read_size: tuple[int, int],
               size: int = 224) -> np.ndarray:
    """Read one patch and bring it to ``size x size`` as eva's ``ResizeAndCrop`` geometry does.

    Args:
        location: top-left ``(x, y)`` in level-0 pixels.
        level, read_size: from :func:`patch_geometry`.

    Returns:
        ``(size, size, 3)`` uint8 RGB.
    """
    from pathbench.data.eva import resize_and_crop

    return resize_and_crop(reader.read_region(location, level, read_size), size)
