"""Checks of a spec against the facts around it: the data's resolution and the hub's own config.

Both checks are advisory: they return what disagrees (a message, a list of mismatches) and
let the caller warn and record it; nothing here stops a run. The module imports nothing
heavy: timm and huggingface_hub are imported by the functions that need them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from pathbench.extractors.spec import ModelSpec

# A data resolution within this factor of the training resolution is "the same": nominal 20x
# differs between scanners by about 10 % (0.44-0.55 um/px), while one magnification step is a
# factor of 2, which is what changes what a model sees.
MPP_TOLERANCE = 1.25

# Normalisation constants on the hub are written with 4-6 decimals; closer than this is equal.
_NORM_ATOL = 1e-4


def resolution_warning(spec: ModelSpec, data_mpp: float | None, tolerance: float = MPP_TOLERANCE) -> str | None:
    """A warning when the data's resolution differs from the one ``spec`` was trained at.

    Args:
        spec: the model's spec; ``spec.mpp`` is its training resolution in microns per pixel.
        data_mpp: resolution of the tiles fed to the model (microns per pixel), if known.
        tolerance: ratio (>= 1) within which two resolutions count as the same; the default
            :data:`MPP_TOLERANCE` accepts scanner-to-scanner spread at one magnification and
            flags any change of magnification.

    Returns:
        ``None`` when the resolutions agree or either is unknown, else one sentence saying
        both resolutions and what to do.
    """
    if tolerance < 1:
        raise ValueError(f"tolerance is a ratio >= 1, got {tolerance}.")
    if spec.mpp is None or data_mpp is None:
        return None
    if not data_mpp > 0:
        raise ValueError(f"data_mpp is microns per pixel (> 0), got {data_mpp}.")
    ratio = data_mpp / spec.mpp
    if 1 / tolerance <= ratio <= tolerance:
        return None
    scale = f"{ratio:.2g}x coarser" if ratio > 1 else f"{1 / ratio:.2g}x finer"
    return (
        f"{spec.name} was trained on tiles at {spec.mpp:g} um/px but these data are at {data_mpp:g} um/px "
        f"({scale}); its embeddings may not reflect what it learnt. Resample the tiles to {spec.mpp:g} um/px "
        "where the benchmark allows it, and compare models at the data's own resolution with care."
    )


def timm_transform(pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """The eval transform timm builds from ``pretrained_cfg``, in the spec's terms.

    Uses timm's ``resolve_data_config`` (so missing keys take timm's defaults, e.g.
    ``crop_pct`` 0.875) and the arithmetic of timm's eval transform: the shorter side is
    resized to ``floor(crop / crop_pct)``, then the centre ``crop`` is kept.

    Returns:
        ``{"resize", "crop", "interpolation", "mean", "std", "crop_mode", "crop_pct"}``.
    """
    from timm.data import resolve_data_config

    config = resolve_data_config(pretrained_cfg=dict(pretrained_cfg))
    crop = int(config["input_size"][-1])
    crop_pct = float(config["crop_pct"])
    return {
        "resize": math.floor(crop / crop_pct),
        "crop": crop,
        "interpolation": str(config["interpolation"]),
        "mean": tuple(float(v) for v in config["mean"]),
        "std": tuple(float(v) for v in config["std"]),
        "crop_mode": str(config.get("crop_mode", "center")),
        "crop_pct": crop_pct,
    }


def cached_hub_config(hub_id: str, cache_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The hub repository's ``config.json`` if it is in the local Hugging Face cache, else ``None``.

    Never touches the network (``huggingface_hub.try_to_load_from_cache``); an unreadable
    file counts as absent.
    """
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(hub_id, "config.json", cache_dir=None if cache_dir is None else str(cache_dir))
    if not isinstance(path, str):  # None (never fetched) or the "known missing" sentinel
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


@dataclasses.dataclass(frozen=True)
class PreprocessingMismatch:
    """One preprocessing value on which a spec and the hub's timm config disagree.

    ``stated`` is False when the hub config does not give the value and timm's default
    decided it; the model's owner may never have meant it.
    """

    field: str
    spec_value: Any
    hub_value: Any
    stated: bool

    def __str__(self) -> str:
        source = "the hub config" if self.stated else "timm's default (the hub config states none)"
        return f"{self.field}: pathbench uses {self.spec_value}, {source} gives {self.hub_value}"


# Which pretrained_cfg keys decide each compared field.
_SOURCES = {
    "resize": ("crop_pct",),
    "crop": ("input_size",),
    "crop_mode": ("crop_mode",),
    "interpolation": ("interpolation",),
    "mean": ("mean",),
    "std": ("std",),
}


def check_preprocessing(spec: ModelSpec, config: dict[str, Any] | None = None,
                        cache_dir: str | os.PathLike | None = None) -> list[PreprocessingMismatch]:
    """Compare ``spec``'s resize, crop, interpolation and normalisation with its hub config.

    Args:
        spec: a timm-family spec with a ``hub_id``; other specs are not checked.
        config: the hub's ``config.json`` content; by default read from the local cache only.
        cache_dir: Hugging Face cache folder (default: the user's).

    Returns:
        The mismatches, empty when everything agrees or when there is nothing to compare
        (no cached config, or a config without ``pretrained_cfg``).
    """
    if spec.family != "timm" or not spec.hub_id:
        return []
    if config is None:
        config = cached_hub_config(spec.hub_id, cache_dir)
    pretrained_cfg = (config or {}).get("pretrained_cfg")
    if not isinstance(pretrained_cfg, dict):
        return []
    hub = timm_transform(pretrained_cfg)
    ours = {
        "resize": spec.resize,
        "crop": spec.crop,
        "crop_mode": "center",  # pathbench resizes the shorter side, then centre-crops
        "interpolation": spec.interpolation,
        "mean": spec.mean,
        "std": spec.std,
    }
    mismatches = []
    for field, value in ours.items():
        other = hub[field]
        if field in ("mean", "std"):
            same = len(value) == len(other) and all(abs(a - b) <= _NORM_ATOL for a, b in zip(value, other, strict=True))
        else:
            same = value == other
        if not same:
            stated = any(key in pretrained_cfg for key in _SOURCES[field])
            mismatches.append(PreprocessingMismatch(field, value, other, stated))
    return mismatches
