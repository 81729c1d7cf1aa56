"""kaiko eva's semantic-segmentation decoders, and a ViT's tokens as the feature map they take.

The decoders are eva's (``eva.vision.models.networks.decoders.segmentation``), layer for
layer and with the same parameter names, so an eva decoder checkpoint loads into them:

- :class:`ConvDecoderWithImage` (eva's online configs ``consep.yaml`` and ``monusac.yaml``,
  the ones its leaderboard reports): nearest 2x upsampling of the token grid, conv 3x3 to 64
  + BatchNorm + ReLU, bilinear interpolation to the image size, concatenation with the
  (normalised) input image, twice conv 3x3 + BatchNorm + ReLU to 32, a 1x1 classifier;
- :class:`ConvDecoderMS` (eva's offline configs, trained on stored embeddings): nearest 2x
  upsampling, conv 3x3 to 64, nearest 2x upsampling, conv 3x3 to the classes, bilinear
  interpolation to the image size. No image input, no normalisation, no activation.

The encoder side is a ViT's last-layer patch tokens as a ``(C, h, w)`` grid
(:func:`tokens_to_grid`): class token and registers dropped, tokens in row-major order.
(eva builds timm models with ``features_only=True, out_indices=1``, whose grid is the last
block's output *before* the final norm; its Hugging Face models use ``last_hidden_state``,
after it.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pathbench.errors import PathbenchError

# --------------------------------------------------------------------------------------
# Encoder tokens -> grid


def patch_grid(image_hw: tuple[int, int], patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of the token grid of an ``image_hw`` input: ``(H // patch_h, W // patch_w)``."""
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    return image_hw[0] // patch_h, image_hw[1] // patch_w


def grid_from_tokens(num_patch_tokens: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` grid of ``num_patch_tokens`` square patches tiling an ``image_hw`` input.

    For when the patch size is not at hand: the patch side is ``sqrt(H * W / n)``; a count
    that no square patch size explains is an error.
    """
    height, width = image_hw
    if num_patch_tokens > 0:
        side = math.sqrt(height * width / num_patch_tokens)
        grid = (round(height / side), round(width / side))
        if grid[0] * grid[1] == num_patch_tokens:
            return grid
    raise PathbenchError(f"{num_patch_tokens} patch tokens do not tile a {height} x {width} input with square "
                         "patches; pass the grid size explicitly.")


def tokens_to_grid(tokens: torch.Tensor, num_prefix_tokens: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """A ViT's output tokens as a feature map.

    Args:
        tokens: ``(B, T, C)``: ``num_prefix_tokens`` leading tokens (class token, registers),
            then ``h * w`` patch tokens in row-major order.
        num_prefix_tokens: leading tokens to drop.
        grid_hw: ``(h, w)`` patch grid (see :func:`patch_grid`); need not be square.

    Returns:
        ``(B, C, h, w)``, same dtype and device.
    """
    if tokens.ndim != 3:
        raise PathbenchError(f"expected tokens of shape (B, T, C), got {tuple(tokens.shape)}.")
    height, width = grid_hw
    patches = tokens.shape[1] - num_prefix_tokens
    if patches != height * width:
        raise PathbenchError(
            f"{tokens.shape[1]} tokens minus {num_prefix_tokens} prefix tokens leave {patches} patch tokens, "
            f"but a {height} x {width} grid needs {height * width}; check the model's patch size and input size."
        )
    patch_tokens = tokens[:, num_prefix_tokens:]
    return patch_tokens.reshape(tokens.shape[0], height, width, tokens.shape[2]).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------
# Decoders (eva's, with eva's module names)


class Conv2dBnReLU(nn.Sequential):
    """Conv 3x3 (padding 1) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=padding),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Decoder2D(nn.Module):
    """eva's ``Decoder2D``: combine feature maps, apply ``_layers``, interpolate to the image size.

    ``needs_images`` says whether ``forward`` needs the input images.
    """

    needs_images = False

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self._layers = layers

    @staticmethod
    def _combine(features: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        maps = [features] if isinstance(features, torch.Tensor) else list(features)
        if not maps or any(m.ndim != 4 for m in maps):
            raise PathbenchError("decoder features must be (B, C, h, w) tensors (or a list of them).")
        size = maps[0].shape[2:]
        # eva resizes every map to the first one's size; a map already that size is unchanged
        resized = [m if m.shape[2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                   for m in maps]
        return resized[0] if len(resized) == 1 else torch.cat(resized, dim=1)

    def _logits(self, features, image_size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self._layers(self._combine(features)), tuple(image_size), mode="bilinear")

    def forward(self, features: torch.Tensor | Sequence[torch.Tensor], image_size: tuple[int, int] | None = None,
                images: torch.Tensor | None = None) -> torch.Tensor:
        """``features (B, C, h, w)`` -> logits ``(B, num_classes, H, W)`` at ``image_size``."""
        if image_size is None:
            if images is None:
                raise PathbenchError("the decoder needs image_size or images to know the output size.")
            image_size = tuple(images.shape[-2:])
        return self._logits(features, image_size)


class ConvDecoderMS(Decoder2D):
    """eva's ``ConvDecoderMS`` (after DINOv2's ``+ms`` head), used by eva's offline configs."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(in_features, 64, kernel_size=(3, 3), padding=(1, 1)),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(64, num_classes, kernel_size=(3, 3), padding=(1, 1)),
        ))


class ConvDecoderWithImage(Decoder2D):
    """eva's ``ConvDecoderWithImage`` (hidden dims 64, 32, 32), used by eva's online configs.

    ``forward(features, image_size, images)``: ``images`` are the normalised ``(B, 3, H, W)``
    inputs the encoder saw (``greyscale=True``: their grey level only).
    """

    needs_images = True

    def __init__(self, in_features: int, num_classes: int, greyscale: bool = False,
                 hidden_dims: Sequence[int] = (64, 32, 32)) -> None:
        if len(hidden_dims) != 3:
            raise PathbenchError(f"hidden_dims must have 3 elements, got {list(hidden_dims)}.")
        super().__init__(nn.Sequential(nn.Upsample(scale_factor=2), Conv2dBnReLU(in_features, hidden_dims[0])))
        self.greyscale = greyscale
        self.image_block = nn.Sequential(
            Conv2dBnReLU(hidden_dims[0] + (1 if greyscale else 3), hidden_dims[1]),
            Conv2dBnReLU(hidden_dims[1], hidden_dims[2]),
        )
        self.classifier = nn.Conv2d(hidden_dims[2], num_classes, kernel_size=1)

    def forward(self, features, image_size=None, images=None) -> torch.Tensor:
        if images is None:
            raise PathbenchError("ConvDecoderWithImage needs the input images.")
        from torchvision.transforms.functional import rgb_to_grayscale

        logits = super().forward(features, image_size if image_size is not None else tuple(images.shape[-2:]))
        logits = torch.cat([logits, rgb_to_grayscale(images) if self.greyscale else images], dim=1)
        return self.classifier(self.image_block(logits))


DECODERS: dict[str, type[Decoder2D]] = {"conv_with_image": ConvDecoderWithImage, "conv_ms": ConvDecoderMS}


def build_decoder(name: str, in_features: int, num_classes: int) -> Decoder2D:
    """One of :data:`DECODERS` (``conv_with_image``: eva's online configs; ``conv_ms``: its offline ones)."""
    if name not in DECODERS:
        raise PathbenchError(f"unknown decoder {name!r}; expected one of {', '.join(DECODERS)}.")
    return DECODERS[name](in_features, num_classes)
