"""DINOv2 multi-crop augmentations with an explicit random generator per sample.

Each sample is augmented with its own ``numpy.random.Generator`` seeded by ``(seed, position)``
where ``position`` is the sample's position in the global stream of training samples. The
crops of a sample are therefore the same whatever the number of processes, data-loader
workers, or where a run was resumed.

Recipe (DINOv2): two global crops (random resized crop, scale 0.32-1 here), horizontal flip,
colour jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2, then Gaussian blur p=1.0 on
the first global crop, blur p=0.1 and solarisation p=0.2 on the second; ``L`` local crops
(scale 0.05-0.32) with the same flip and colour, blur p=0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from distill.config import CropsConfig


@dataclass(frozen=True)
class MultiCrop:
    """Callable: ``(H, W, 3)`` uint8 RGB image + generator -> ``(globals (2, 3, G, G), locals (L, 3, l, l))``,
    float32 in ``[0, 1]`` (normalisation is each network's own business)."""

    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_number: int = 8
    local_size: int = 98
    local_scale: tuple[float, float] = (0.05, 0.32)

    @classmethod
    def from_config(cls, crops: CropsConfig, local_number: int | None = None) -> MultiCrop:
        return cls(
            global_size=crops.global_size,
            global_scale=tuple(crops.global_scale),
            local_number=crops.local_number if local_number is None else local_number,
            local_size=crops.local_size,
            local_scale=tuple(crops.local_scale),
        )

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
        g1 = self._view(img, rng, self.global_size, self.global_scale, blur_p=1.0, solarize_p=0.0)
        g2 = self._view(img, rng, self.global_size, self.global_scale, blur_p=0.1, solarize_p=0.2)
        locals_ = [
            self._view(img, rng, self.local_size, self.local_scale, blur_p=0.5, solarize_p=0.0)
            for _ in range(self.local_number)
        ]
        local_t = torch.stack(locals_) if locals_ else torch.zeros(0, 3, self.local_size, self.local_size)
        return torch.stack([g1, g2]), local_t

    def _view(self, img, rng, size, scale, blur_p, solarize_p) -> torch.Tensor:
        top, left, h, w = random_resized_crop_params(img.shape[1], img.shape[2], scale, rng)
        x = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        x = x.clamp_(0.0, 1.0)
        if rng.random() < 0.5:
            x = TF.horizontal_flip(x)
        x = color_jitter(x, rng, p=0.8)
        if rng.random() < 0.2:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if rng.random() < blur_p:
            sigma = float(rng.uniform(0.1, 2.0))
            x = TF.gaussian_blur(x, kernel_size=[9, 9], sigma=[sigma, sigma])
        if rng.random() < solarize_p:
            x = TF.solarize(x, threshold=0.5)
        return x.clamp(0.0, 1.0).contiguous()


def random_resized_crop_params(
    height: int, width: int, scale: tuple[float, float], rng: np.random.Generator, ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampling, driven by ``rng``: ``(top, left, h, w)``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback: the largest centred crop within the ratio bounds.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(
    x: torch.Tensor, rng: np.random.Generator, p: float = 0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1
) -> torch.Tensor:
    """With probability ``p``: brightness, contrast, saturation and hue jitter in a random order."""
    if rng.random() >= p:
        return x
    factors = (
        rng.uniform(1 - brightness, 1 + brightness),
        rng.uniform(1 - contrast, 1 + contrast),
        rng.uniform(1 - saturation, 1 + saturation),
        rng.uniform(-hue, hue),
    )
    for op in rng.permutation(4):
        if op == 0:
            x = TF.adjust_brightness(x, float(factors[0]))
        elif op == 1:
            x = TF.adjust_contrast(x, float(factors[1]))
        elif op == 2:
            x = TF.adjust_saturation(x, float(factors[2]))
        else:
            x = TF.adjust_hue(x, float(factors[3]))
    return x


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of the sample at ``position`` of the training stream."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(position)]))
