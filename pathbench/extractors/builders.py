"""Builders: turn a spec into a network that returns the full token sequence.

One builder per family. Every built network is wrapped in a :class:`TokenModel` whose
``forward(images) -> (B, T, D)`` returns all output tokens after the final norm
(class token, registers, then patch tokens), so pooling is the same for every family.

A spec is checked against what it builds, before any weights are fetched: an unknown
build keyword, or a declared ``embed_dim`` or ``num_prefix_tokens`` that the network does
not have, is a :class:`PathbenchError` naming the spec (a wrong width would otherwise only
surface after a whole extraction, a wrong prefix count never).
"""

from __future__ import annotations

import inspect
import re
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
    network = TokenModel(backbone, spec.family)
    check_network(spec, network)
    return network


def network_width(network: TokenModel) -> int | None:
    """Width of the network's output tokens: timm's ``num_features`` (``embed_dim``), the
    transformers config's ``hidden_size``; None when the network does not say."""
    backbone = network.backbone
    if network.family == "timm":
        width = getattr(backbone, "num_features", None) or getattr(backbone, "embed_dim", None)
    else:
        width = getattr(getattr(backbone, "config", None), "hidden_size", None)
    return int(width) if isinstance(width, int) and width > 0 else None


def check_network(spec: ModelSpec, network: TokenModel) -> None:
    """Raise a :class:`PathbenchError` when ``spec`` misdescribes ``network``'s tokens.

    Specs that learn their width when loaded (``embed_dim=0``: generic ``hf:`` specs and
    probes) are not checked.
    """
    if spec.embed_dim == 0:
        return
    width = network_width(network)
    if width is not None and width != spec.embed_dim:
        raise PathbenchError(
            f"model spec {spec.name!r} (from {spec.origin}) declares embed_dim={spec.embed_dim}, but its "
            f"architecture {spec.arch} with build_kwargs {spec.build_kwargs} has tokens of width {width}; "
            f"set embed_dim={width} in the spec, or fix its build_kwargs."
        )
    prefix = getattr(network.backbone, "num_prefix_tokens", None) if network.family == "timm" else None
    if isinstance(prefix, int) and prefix != spec.num_prefix_tokens:
        raise PathbenchError(
            f"model spec {spec.name!r} (from {spec.origin}) declares num_prefix_tokens={spec.num_prefix_tokens}, "
            f"but its architecture {spec.arch} puts {prefix} class and register tokens before the patches; "
            f"set num_prefix_tokens={prefix} in the spec."
        )


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
    except TypeError as exc:  # the model class refused a keyword, or a value of the wrong type
        keyword = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        if keyword:
            raise PathbenchError(
                f"model spec {spec.name!r} (from {spec.origin}): the timm architecture {spec.arch} takes no build "
                f"keyword {keyword[1]!r}; remove it from build_kwargs or rename it."
            ) from exc
        raise PathbenchError(
            f"model spec {spec.name!r} (from {spec.origin}): timm cannot build {spec.arch} with build_kwargs "
            f"{spec.build_kwargs}: {exc}."
        ) from exc


def _build_hf(spec: ModelSpec) -> nn.Module:
    import transformers

    config_cls = getattr(transformers, spec.arch, None)
    if config_cls is None:
        raise PathbenchError(
            f"transformers has no config class {spec.arch!r} (model {spec.name!r}); "
            f"installed transformers is {transformers.__version__}. Upgrade transformers or fix the spec."
        )
    default = config_cls()
    # Configs accept any keyword and keep it as an attribute that nothing reads: a typo would
    # silently build the default architecture.
    known = set(default.to_dict()) | set(inspect.signature(config_cls.__init__).parameters)
    unknown = [k for k in spec.build_kwargs if k not in known and not hasattr(default, k)]
    if unknown:
        raise PathbenchError(
            f"model spec {spec.name!r} (from {spec.origin}): the transformers architecture {spec.arch} takes no "
            f"build keyword {unknown[0]!r}; remove it from build_kwargs or rename it."
        )
    config = config_cls(**spec.build_kwargs)
    return transformers.AutoModel.from_config(config, add_pooling_layer=False) if _takes_pooling(config) else (
        transformers.AutoModel.from_config(config)
    )


def _takes_pooling(config: Any) -> bool:
    # ViTModel adds a pooler head by default; pathbench reads tokens, never the pooler.
    return type(config).__name__ == "ViTConfig"
