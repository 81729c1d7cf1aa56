"""Builders: turn a spec into a network that returns the full token sequence.

One builder per family. Every built network is wrapped in a :class:`TokenModel` whose
``forward(images) -> (B, T, D)`` returns all output tokens after the final norm
(class token, registers, then patch tokens), so pooling is the same for every family.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pathbench.errors import PathbenchError
from pathbench.extractors.spec import ModelSpec


class TokenModel(nn.Module):
    """A backbone and the call that yields its output tokens ``(B, T, D)``."""

    def __init__(self, backbone: nn.Module, family: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.family = family

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.family == "timm":
            return self.backbone.forward_features(images)
        return self.backbone(pixel_values=images).last_hidden_state


def build_network(spec: ModelSpec, device: str | torch.device = "cpu") -> TokenModel:
    """Build ``spec``'s architecture with freshly initialised weights on ``device``.

    ``device="meta"`` builds without allocating memory (for parameter counts).
    """
    builder = {"timm": _build_timm, "hf": _build_hf}[spec.family]
    with torch.device(device):
        backbone = builder(spec)
    return TokenModel(backbone, spec.family)


def count_parameters(spec: ModelSpec) -> int:
    """Number of parameters of ``spec``'s architecture, measured on the meta device (instant)."""
    network = build_network(spec, device="meta")
    return sum(p.numel() for p in network.parameters())


def timm_kwargs(build_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Resolve layer names in build kwargs (``"SwiGLUPacked"``) to timm classes."""
    import timm.layers

    kwargs = dict(build_kwargs)
    layer = kwargs.get("mlp_layer")
    if isinstance(layer, str):
        if not hasattr(timm.layers, layer):
            raise PathbenchError(f"unknown timm MLP layer {layer!r} in build kwargs; expected a name in timm.layers.")
        kwargs["mlp_layer"] = getattr(timm.layers, layer)
    return kwargs


def _build_timm(spec: ModelSpec) -> nn.Module:
    import timm

    try:
        return timm.create_model(spec.arch, pretrained=False, **timm_kwargs(spec.build_kwargs))
    except RuntimeError as exc:  # timm raises RuntimeError for unknown architectures
        raise PathbenchError(
            f"timm cannot build architecture {spec.arch!r} for model {spec.name!r}: {exc}. "
            "List timm's architectures with `python -c \"import timm; print(timm.list_models())\"`."
        ) from exc


def _build_hf(spec: ModelSpec) -> nn.Module:
    import transformers

    config_cls = getattr(transformers, spec.arch, None)
    if config_cls is None:
        raise PathbenchError(
            f"transformers has no config class {spec.arch!r} (model {spec.name!r}); "
            f"installed transformers is {transformers.__version__}. Upgrade transformers or fix the spec."
        )
    config = config_cls(**spec.build_kwargs)
    return transformers.AutoModel.from_config(config, add_pooling_layer=False) if _takes_pooling(config) else (
        transformers.AutoModel.from_config(config)
    )


def _takes_pooling(config: Any) -> bool:
    # ViTModel adds a pooler head by default; pathbench reads tokens, never the pooler.
    return type(config).__name__ == "ViTConfig"
