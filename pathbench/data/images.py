"""The one image decoder: encoded bytes, files, PIL images and arrays -> ``(H, W, 3)`` uint8 RGB.

Every reader (image folders, PLISM parquet shards, eva's datasets, distillation data) turns
its cells into tiles through :func:`decode_image`, so every mode is handled the same way:

- 8-bit RGB, greyscale (``L``) and bilevel (``1``) images are converted losslessly;
- 16-bit greyscale (Pillow's ``I;16`` modes, and ``I`` read from a PNG) is scaled to
  8 bits, ``round(v / 257)``; Pillow's own ``convert("RGB")`` clips it at 255, turning a
  typical 16-bit tile almost entirely white. Pillow already reads 16-bit RGB(A) and
  greyscale-with-alpha PNGs as 8-bit ``RGB``/``RGBA`` (the high byte of each sample);
- images with an alpha channel (``RGBA``, ``LA``, ``PA``, palette images with a transparent
  colour, premultiplied modes) are composited over white, the colour of empty glass:
  ``round(c * a / 255 + 255 * (1 - a / 255))``; an opaque alpha changes nothing;
- palette images (``P``) are expanded through their palette;
- CMYK is converted through its embedded ICC profile to sRGB when it has one, otherwise
  with Pillow's ``(255 - C)(255 - K) / 255`` formula;
- 32-bit integer images not read from a PNG, floating-point images and every other mode
  (``LAB``, ``HSV``, ...) are refused with a message that says how to convert them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from pathbench.errors import DataError

SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_PLAIN = ("RGB", "L", "1", "YCbCr", "RGBX")


def decode_image(source: Any, where: str | None = None) -> np.ndarray:
    """Decode one image to ``(H, W, 3)`` uint8 RGB.

    Args:
        source: encoded bytes (PNG, JPEG, TIFF, ...), a file path, a ``{"bytes", "path"}`` cell
            (the on-disk form of Hugging Face's ``Image`` feature), a PIL image, or an array
            (checked by :func:`as_rgb_uint8`).
        where: what the image is, for error messages (default: the path, or "image bytes").

    Raises:
        DataError: the image cannot be decoded, or its mode cannot be converted faithfully.
    """
    from PIL import Image

    if isinstance(source, dict):
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path"):
            source = Path(source["path"])
        else:
            raise DataError(f"{where or 'image cell'}: the cell has neither image bytes nor a path.")
    if isinstance(source, Image.Image):
        return pil_to_rgb(source, where or "image")
    if isinstance(source, np.ndarray):
        return as_rgb_uint8(source, where or "image array")
    if isinstance(source, (bytes, bytearray, memoryview)):
        where, opened = where or "image bytes", io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        where, opened = where or str(source), source
    else:
        raise DataError(f"{where or 'image'}: expected image bytes, a path, a PIL image or an array; "
                        f"found {type(source).__name__}.")
    try:
        with Image.open(opened) as image:
            image.load()
            return pil_to_rgb(image, where)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken images
        raise DataError(f"cannot read image {where}: it cannot be decoded as an image ({exc}). The file is "
                        "probably truncated or corrupt: download it again, or remove it.") from exc


def pil_to_rgb(image: Any, where: str) -> np.ndarray:
    """A PIL image in any supported mode -> ``(H, W, 3)`` uint8 RGB (see the module docstring)."""
    mode = image.mode
    if mode in SIXTEEN_BIT_GREY_MODES or (mode == "I" and image.format == "PNG"):
        grey = np.asarray(image).astype(np.int64)  # 16-bit samples (a PNG's 'I' holds 0..65535)
        grey8 = ((np.clip(grey, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "P":
        mode, image = ("RGBA", image.convert("RGBA")) if "transparency" in image.info else ("RGB", image.convert("RGB"))
    if mode == "CMYK":
        return np.ascontiguousarray(np.asarray(_cmyk_to_rgb(image), dtype=np.uint8))
    if mode in _WITH_ALPHA:
        return _over_white(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    if mode in _PLAIN:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    hint = ("a floating-point image has no fixed range" if mode == "F" else
            "a 32-bit integer image has no fixed bit depth" if mode == "I" else f"mode {mode} is not supported")
    raise DataError(f"{where}: cannot convert a {mode!r} image to 8-bit RGB faithfully ({hint}). Convert the "
                    f"image to 8-bit RGB (or 8/16-bit greyscale) first, e.g. with Pillow or tifffile.")


def _cmyk_to_rgb(image: Any) -> Any:
    profile = image.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile falls back to the plain formula
            pass
    return image.convert("RGB")


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8 straight alpha -> ``(H, W, 3)`` uint8 composited over white."""
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    colour = rgba[:, :, :3].astype(np.uint32)
    # exact integer rounding of c * a / 255 + 255 - a
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def as_rgb_uint8(image: np.ndarray, where: str) -> np.ndarray:
    """Check an array tile and convert it where that is lossless: ``(H, W, 3)`` uint8 RGB.

    Accepted: ``(H, W)`` or ``(H, W, 1)`` greyscale, ``(H, W, 2)`` greyscale + alpha,
    ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA (alpha composited over white), all uint8. Other
    dtypes are refused: the bit depth of a wider integer array is not known.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 pixels, got {image.dtype}; convert the tiles to 8-bit RGB.")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"{where}: expected an RGB image of shape (H, W, 3), got shape {image.shape}.")
    channels = image.shape[2]
    if channels in (1, 2):
        grey = np.repeat(image[:, :, :1], 3, axis=2)
        image = grey if channels == 1 else np.concatenate([grey, image[:, :, 1:2]], axis=2)
    if image.shape[2] == 4:
        image = _over_white(image)
    return np.ascontiguousarray(image)


__all__ = ["SIXTEEN_BIT_GREY_MODES", "as_rgb_uint8", "decode_image", "pil_to_rgb"]
