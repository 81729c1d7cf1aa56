"""The one image decoder, mode by mode, against plain numpy references."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from pathbench.data.base import ImageFolderDataset, as_rgb_uint8, read_image
from pathbench.data.images import decode_image, pil_to_rgb
from pathbench.errors import DataError

RNG = np.random.default_rng(0)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG written byte by byte: ``(H, W)`` grey or ``(H, W, C)`` with C = 2 (LA), 3, 4."""
    samples = samples if samples.ndim == 3 else samples[:, :, None]
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def round_half_up(value: Fraction) -> int:
    return int(value + Fraction(1, 2)) if value >= 0 else -int(-value + Fraction(1, 2))


def slow_over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """c * a / 255 + 255 * (1 - a / 255), rounded, one value at a time in exact arithmetic."""
    out = np.empty(colour.shape, dtype=np.uint8)
    for index in np.ndindex(colour.shape):
        a = Fraction(int(alpha[index[:2]]), 255)
        out[index] = round_half_up(int(colour[index]) * a + 255 * (1 - a))
    return out


def test_8_bit_rgb_and_greyscale_are_read_unchanged():
    rgb = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encoded(Image.fromarray(rgb))), rgb)
    grey = RNG.integers(0, 256, (9, 7), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encoded(Image.fromarray(grey))), np.repeat(grey[:, :, None], 3, 2))
    bilevel = Image.fromarray(grey > 127).convert("1")
    np.testing.assert_array_equal(decode_image(encoded(bilevel))[:, :, 0], np.where(grey > 127, 255, 0))


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_read_as_white():
    samples = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)
    samples[0, :4] = [0, 128, 129, 65535]  # rounding edges: 128/257 -> 0, 129/257 -> 1
    expected = np.array([[round_half_up(Fraction(int(v), 257)) for v in row] for row in samples], dtype=np.uint8)
    for payload in (png16(samples), encoded(Image.fromarray(samples))):  # written by hand and by Pillow
        tile = decode_image(payload)
        assert tile.shape == (12, 10, 3) and tile.dtype == np.uint8
        np.testing.assert_array_equal(tile[:, :, 0], expected)
        assert np.mean(tile == 255) < 0.05  # Pillow's convert("RGB") makes ~100 % of it white


def test_a_16_bit_greyscale_tiff_is_scaled_too():
    samples = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
    tile = decode_image(encoded(Image.fromarray(samples), "TIFF"))
    np.testing.assert_array_equal(tile[:, :, 1], ((samples.astype(np.int64) * 255 + 32767) // 65535))


def test_16_bit_rgb_rgba_and_grey_alpha_pngs_keep_the_high_byte_and_composite_alpha():
    rgb = RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    np.testing.assert_array_equal(decode_image(png16(rgb)), (rgb >> 8).astype(np.uint8))
    rgba = RNG.integers(0, 65536, (5, 6, 4), dtype=np.uint16)
    high = (rgba >> 8).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(png16(rgba)), slow_over_white(high[:, :, :3], high[:, :, 3]))
    grey_alpha = RNG.integers(0, 65536, (5, 6, 2), dtype=np.uint16)
    high = (grey_alpha >> 8).astype(np.uint8)
    grey = np.repeat(high[:, :, :1], 3, axis=2)
    np.testing.assert_array_equal(decode_image(png16(grey_alpha)), slow_over_white(grey, high[:, :, 1]))


def test_rgba_and_la_are_composited_over_white():
    rgba = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # fully transparent -> white; opaque -> the colour itself
    tile = decode_image(encoded(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(tile, slow_over_white(rgba[:, :, :3], rgba[:, :, 3]))
    assert tile[0, 0].tolist() == [255, 255, 255] and tile[0, 1].tolist() == rgba[0, 1, :3].tolist()
    la = RNG.integers(0, 256, (8, 8, 2), dtype=np.uint8)
    tile = decode_image(encoded(Image.fromarray(la, "LA")))
    np.testing.assert_array_equal(tile, slow_over_white(np.repeat(la[:, :, :1], 3, 2), la[:, :, 1]))


def test_palette_images_are_expanded_through_their_palette_and_transparency():
    rgb = RNG.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=6)
    indices = np.asarray(palette)
    colours = np.array(palette.getpalette()[: 3 * 6], dtype=np.uint8).reshape(6, 3)
    np.testing.assert_array_equal(decode_image(encoded(palette)), colours[indices])
    transparent = int(indices[0, 0])
    tile = decode_image(encoded(palette, transparency=transparent))
    expected = colours[indices].copy()
    expected[indices == transparent] = 255
    np.testing.assert_array_equal(tile, expected)


def test_cmyk_without_a_profile_uses_the_standard_formula():
    cmyk = RNG.integers(0, 256, (7, 9, 4), dtype=np.uint8)
    tile = decode_image(encoded(Image.fromarray(cmyk, "CMYK"), "TIFF"))
    ink, black = cmyk[:, :, :3].astype(object), cmyk[:, :, 3:].astype(object)
    expected = np.vectorize(lambda c, k: round_half_up(Fraction((255 - c) * (255 - k), 255)))(ink, black)
    np.testing.assert_array_equal(tile, expected.astype(np.uint8))


@pytest.mark.parametrize("mode", ["F", "I", "LAB", "HSV"])
def test_modes_without_a_faithful_conversion_are_refused_clearly(mode):
    image = Image.new(mode, (4, 4))
    with pytest.raises(DataError, match=f"cannot convert a '{mode}' image to 8-bit RGB.*Convert the image"):
        pil_to_rgb(image, "tile 3")
    if mode in ("F", "I"):
        with pytest.raises(DataError, match="tile 3"):
            decode_image(encoded(image, "TIFF"), "tile 3")


def test_cells_paths_and_broken_bytes():
    rgb = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    payload = encoded(Image.fromarray(rgb))
    np.testing.assert_array_equal(decode_image({"bytes": payload, "path": None}), rgb)
    with pytest.raises(DataError, match="neither image bytes nor a path"):
        decode_image({"bytes": None, "path": None}, "row 3")
    with pytest.raises(DataError, match=r"cannot read image row 7: it cannot be decoded.*truncated or corrupt"):
        decode_image(payload[:30], "row 7")
    with pytest.raises(DataError, match="expected image bytes"):
        decode_image(3.5, "row 8")


def test_array_tiles_are_checked_and_converted_losslessly():
    grey_alpha = RNG.integers(0, 256, (3, 3, 2), dtype=np.uint8)
    np.testing.assert_array_equal(
        as_rgb_uint8(grey_alpha, "x"), slow_over_white(np.repeat(grey_alpha[:, :, :1], 3, 2), grey_alpha[:, :, 1]))
    opaque = RNG.integers(0, 256, (3, 3, 4), dtype=np.uint8)
    opaque[:, :, 3] = 255
    np.testing.assert_array_equal(as_rgb_uint8(opaque, "x"), opaque[:, :, :3])
    with pytest.raises(DataError, match="expected uint8 pixels, got uint16"):
        as_rgb_uint8(np.zeros((3, 3, 3), np.uint16), "x")
    with pytest.raises(DataError, match=r"shape \(H, W, 3\)"):
        as_rgb_uint8(np.zeros((3, 3, 5), np.uint8), "x")


def test_an_image_folder_reads_a_16_bit_png_as_its_8_bit_values(tmp_path):
    samples = np.tile(np.arange(0, 65536, 4096, dtype=np.uint16), (16, 1))  # a grey ramp, black to white
    (tmp_path / "ramp.png").write_bytes(png16(samples))
    dataset = ImageFolderDataset(tmp_path)
    np.testing.assert_array_equal(dataset[0][:, :, 2], (samples.astype(np.int64) * 255 + 32767) // 65535)
    np.testing.assert_array_equal(read_image(tmp_path / "ramp.png"), dataset[0])
