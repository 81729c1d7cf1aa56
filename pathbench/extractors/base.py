"""The Extractor: uint8 RGB tiles in, float32 embeddings out."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
import torch.nn.functional as F

from pathbench.errors import PathbenchError
from pathbench.extractors.spec import ModelSpec, check_pooling, resolve_precision

GRID = "grid"  # the patch-token grid, for dense tasks (a storage form, not a pooling users choose)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pool_tokens(tokens: torch.Tensor, num_prefix_tokens: int, pooling: str) -> torch.Tensor:
    """Pool a token sequence into one embedding per image.

    Args:
        tokens: ``(B, T, D)``: class token, ``num_prefix_tokens - 1`` registers, patch tokens.
        num_prefix_tokens: 1 class token + registers. Registers are never averaged.
        pooling: ``"cls"`` -> ``(B, D)``; ``"mean"`` (patch tokens only) -> ``(B, D)``;
            ``"cls+mean"`` -> ``(B, 2D)``, class token first.
    """
    check_pooling(pooling)
    if tokens.ndim != 3 or tokens.shape[1] <= num_prefix_tokens:
        raise PathbenchError(
            f"expected tokens of shape (batch, {num_prefix_tokens} prefix + patches, dim), "
            f"got {tuple(tokens.shape)}."
        )
    cls = tokens[:, 0]
    if pooling == "cls":
        return cls
    patch_mean = tokens[:, num_prefix_tokens:].mean(dim=1)
    if pooling == "mean":
        return patch_mean
    return torch.cat([cls, patch_mean], dim=1)


def resize_crop(images: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Resize the shorter side to ``spec.resize`` and centre-crop ``spec.crop``.

    ``images``: ``(..., 3, H, W)`` uint8 or float; uint8 in, uint8 out. A no-op for tiles
    already at the crop size when the spec does not resize before cropping.
    """
    height, width = images.shape[-2:]
    if (height, width) == (spec.crop, spec.crop) and spec.resize == spec.crop:
        return images
    if min(height, width) != spec.resize:
        scale = spec.resize / min(height, width)
        size = (max(spec.resize, round(height * scale)), max(spec.resize, round(width * scale)))
        dtype = images.dtype
        batched = images if images.ndim == 4 else images.unsqueeze(0)
        resized = F.interpolate(batched.float(), size=size, mode=spec.interpolation, align_corners=False, antialias=True)
        if dtype == torch.uint8:
            resized = resized.round().clamp_(0, 255).to(torch.uint8)
        images = resized if images.ndim == 4 else resized[0]
    height, width = images.shape[-2:]
    top, left = (height - spec.crop) // 2, (width - spec.crop) // 2
    return images[..., top : top + spec.crop, left : left + spec.crop]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then the CPU."""
    if str(device) != "auto":
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise PathbenchError(f"unknown device {device!r}: expected auto, cpu, cuda, cuda:N or mps.") from exc
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise PathbenchError("device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto.")
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Extractor:
    """A frozen network with its preprocessing, token layout and pooling.

    Args:
        spec: the model's :class:`ModelSpec`.
        model: a network whose ``forward(images)`` returns tokens ``(B, T, D)``.
        weights_fingerprint: content identity of the loaded weights (keys the cache).
        device: where the forward pass runs (``"auto"``: cuda, then mps, then cpu).
        precision: ``"auto"`` (the spec's recommended precision on a CUDA GPU, fp32
            elsewhere), ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast). ``self.precision``
            is the resolved one, which keys the cache; outputs are always float32.
        pooling: default pooling for :meth:`embed`; ``None`` takes the spec's default.
    """

    def __init__(
        self,
        spec: ModelSpec,
        model: torch.nn.Module,
        weights_fingerprint: str,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        pooling: str | None = None,
    ) -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, spec, self.device.type)
        self.pooling = check_pooling(pooling or spec.default_pooling)
        self.weights_fingerprint = weights_fingerprint
        self.model = model.eval().to(self.device)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as x * scale + shift, folded in float64 once.
        self._scale = (1.0 / (255.0 * std)).float().to(self.device)
        self._shift = (-mean / std).float().to(self.device)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_prefix_tokens(self) -> int:
        return self.spec.num_prefix_tokens

    def output_dim(self, pooling: str | None = None) -> int:
        """Width of one stored embedding (a grid is stored flattened: ``dim * h * w``)."""
        pooling = pooling or self.pooling
        if pooling == GRID:
            height, width = self.grid_size()
            return self.spec.embed_dim * height * width
        return self.spec.output_dim(pooling)

    def identity(self, pooling: str | None = None) -> dict[str, Any]:
        """What determines this extractor's embeddings (keys the feature cache)."""
        pooling = pooling or self.pooling
        return {
            "model": self.spec.name,
            "architecture": self.spec.architecture_digest(),
            "weights": self.weights_fingerprint,
            "preprocessing": self.spec.preprocessing(),
            "pooling": pooling if pooling == GRID else check_pooling(pooling),
            "precision": self.precision,
        }

    @property
    def patch_size(self) -> int:
        """Side of one patch token in pixels (from the built network)."""
        backbone = self.model.backbone
        if self.spec.family == "timm":
            size = backbone.patch_embed.patch_size
        else:
            size = backbone.config.patch_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def grid_size(self) -> tuple[int, int]:
        """``(h, w)`` of the patch-token grid of one input (``crop x crop`` pixels)."""
        return self.spec.crop // self.patch_size, self.spec.crop // self.patch_size

    @torch.inference_mode()
    def forward_grid(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, H, W)`` -> the last layer's patch tokens as ``(B, dim, h, w)`` float32.

        As eva's segmentation encoders: a timm model gives the last block's output before
        its final norm (timm's ``forward_intermediates(norm=False)``, which eva's
        ``features_only`` backbones call); a transformers model its ``last_hidden_state``
        (after the norm). Class token and registers are dropped.
        """
        with self.autocast():
            if self.spec.family == "timm":
                grid = self.model.backbone.forward_intermediates(
                    pixels.to(self.device), indices=1, norm=False, output_fmt="NCHW", intermediates_only=True)[-1]
            else:
                tokens = self.model(pixels.to(self.device))
                patches = tokens[:, self.num_prefix_tokens:]
                height, width = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
                if patches.shape[1] != height * width:
                    raise PathbenchError(f"{self.name}: {patches.shape[1]} patch tokens for a {height} x {width} grid.")
                grid = patches.transpose(1, 2).reshape(len(patches), -1, height, width)
        return grid.float()

    def embed_pixels(self, pixels: torch.Tensor, pooling: str | None = None) -> torch.Tensor:
        """Normalised images -> stored embeddings ``(B, output_dim(pooling))`` float32 on the
        device: pooled tokens, or the flattened token grid for ``pooling="grid"``."""
        pooling = pooling or self.pooling
        if pooling == GRID:
            return self.forward_grid(pixels).flatten(1)
        return pool_tokens(self.forward_tokens(pixels), self.num_prefix_tokens, pooling).float()

    def with_input_size(self, resize: int, crop: int) -> Extractor:
        """The same network with another resize/crop before normalisation (shares the weights).

        Benchmarks whose protocol fixes the input transform (eva resizes and crops every
        image to 224 whatever the model) use this; the change is part of the cache key.
        """
        if (resize, crop) == (self.spec.resize, self.spec.crop):
            return self
        other = copy.copy(self)
        other.spec = self.spec.replace(resize=resize, crop=crop)
        return other

    def resize_crop(self, images: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to ``spec.resize`` and centre-crop ``spec.crop`` (see :func:`resize_crop`)."""
        return resize_crop(images, self.spec)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB tiles ``(B, H, W, 3)`` or ``(B, 3, H, W)`` -> normalised ``(B, 3, crop, crop)`` float32 on the device."""
        if images.dtype != torch.uint8:
            raise PathbenchError(f"expected uint8 RGB tiles, got dtype {images.dtype}.")
        if images.ndim != 4:
            raise PathbenchError(f"expected a batch of tiles (B, H, W, 3), got shape {tuple(images.shape)}.")
        if images.shape[-1] == 3 and images.shape[1] != 3:
            images = images.permute(0, 3, 1, 2)
        if images.shape[1] != 3:
            raise PathbenchError(f"expected RGB tiles with 3 channels, got shape {tuple(images.shape)}.")
        images = self.resize_crop(images.to(self.device, non_blocking=True))
        # One pass converts to float and to a contiguous (B, 3, H, W) layout, two in-place
        # passes normalise: about 6x less time than chained out-of-place ops on a
        # permuted tensor, which cost the CPU pipeline a sixth of the model's time.
        pixels = torch.empty(images.shape, dtype=torch.float32, device=self.device)
        pixels.copy_(images)
        return pixels.mul_(self._scale).add_(self._shift)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.precision])

    @torch.inference_mode()
    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, H, W)`` -> all output tokens ``(B, T, D)`` float32."""
        with self.autocast():
            tokens = self.model(pixels.to(self.device))
        return tokens.float()

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, pooling: str | None = None) -> torch.Tensor:
        """uint8 RGB tiles ``(B, H, W, 3)`` -> embeddings ``(B, output_dim)`` float32 on the CPU."""
        tokens = self.forward_tokens(self.preprocess(images))
        return pool_tokens(tokens, self.num_prefix_tokens, pooling or self.pooling).float().cpu()

    def __repr__(self) -> str:
        return (
            f"Extractor({self.spec.name!r}, device={self.device}, precision={self.precision!r}, "
            f"pooling={self.pooling!r})"
        )
