"""Declarative model specs.

A :class:`ModelSpec` names an architecture (how to build it without weights), a weights
source (a hub repository or a local file) and the preprocessing that is part of the
model's identity, separately, the way timm keeps an architecture apart from its
``pretrained_cfg``. Adding a model to pathbench is adding a spec, not writing a class.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from pathbench.errors import PathbenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

POOLINGS = ("cls", "mean", "cls+mean")
FAMILIES = ("timm", "hf")
# Autocast precisions; "auto" resolves to the spec's recommended one on a CUDA GPU and to fp32
# elsewhere (see resolve_precision).
PRECISIONS = ("fp32", "fp16", "bf16")
PRECISION_CHOICES = ("auto", *PRECISIONS)

_DEFERRED_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar("pathbench_deferred_spec_checks",
                                                                        default=False)


@contextlib.contextmanager
def deferred_spec_checks() -> Iterator[None]:
    """Within this block, an invalid :class:`ModelSpec` is created (with its :meth:`~ModelSpec.problems`)
    instead of raising; the registry loads plugins this way."""
    token = _DEFERRED_CHECKS.set(True)
    try:
        yield
    finally:
        _DEFERRED_CHECKS.reset(token)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a feature extractor and to know what it outputs.

    Attributes:
        name: registry name, e.g. ``"h0-mini"``.
        family: builder family, ``"timm"`` or ``"hf"`` (transformers).
        arch: timm architecture name (``family="timm"``) or a transformers config class
            name such as ``"ViTConfig"`` (``family="hf"``).
        build_kwargs: exact keyword arguments of the architecture (timm ``create_model``
            kwargs, or the transformers config fields).
        hub_id: Hugging Face repository holding the weights, if any.
        weights_path: local weights file (safetensors or a torch state dict); wins over
            ``hub_id``.
        weights_files: candidate file names in ``hub_id``, in order of preference.
        mean, std: per-channel normalisation applied to images scaled to [0, 1].
        resize: the shorter image side is resized to this before the centre crop.
        crop: side of the centre crop fed to the network.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
        num_prefix_tokens: 1 class token + register tokens at the start of the sequence.
        embed_dim: width of each output token.
        default_pooling: pooling used when a benchmark has no default of its own.
        bench_pooling: per-benchmark default pooling, e.g. ``{"hest": "cls+mean"}``.
        licence: weights licence, as the model card states it (``docs/models.md`` cites it).
        gated: whether the hub repository requires accepting terms.
        recommended_precision: autocast precision the model card runs inference with
            (``"fp32"`` when the card names none); ``precision="auto"`` uses it on a GPU.
        mpp: resolution of the training tiles in microns per pixel, ``None`` when the card
            states none or the model was trained on several resolutions.
        params: parameter count of the architecture (built-ins record it so that listing
            models builds nothing; ``None``: counted on demand by :func:`parameter_count`).
        trust_remote_code: the model needs code from its hub repository (only run when
            the user passes ``--trust-remote-code``).
        requirements: pip requirement strings the model's own (remote) code is known to
            run with, named in the error when it cannot run, e.g. ``("transformers<5",)``.
        random_init: build with random weights (seeded); no weights are loaded.
        origin: distribution that provided the spec (``"pathbench"`` for built-ins).
        description: one line for ``pathbench models``.
    """

    name: str
    family: str
    arch: str
    embed_dim: int
    build_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    hub_id: str | None = None
    weights_path: str | None = None
    weights_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: int = 224
    crop: int = 224
    interpolation: str = "bicubic"
    num_prefix_tokens: int = 1
    default_pooling: str = "cls"
    bench_pooling: Mapping[str, str] = dataclasses.field(default_factory=dict)
    licence: str = "unknown"
    gated: bool = False
    recommended_precision: str = "fp32"
    mpp: float | None = None
    params: int | None = None
    trust_remote_code: bool = False
    requirements: tuple[str, ...] = ()
    random_init: bool = False
    origin: str = "pathbench"
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        # Mappings inside a frozen dataclass: store plain dicts so specs compare and serialise.
        conversions = {"build_kwargs": dict, "bench_pooling": dict, "requirements": tuple,
                       "mean": lambda v: tuple(float(x) for x in v), "std": lambda v: tuple(float(x) for x in v)}
        for field, convert in conversions.items():
            try:
                object.__setattr__(self, field, convert(getattr(self, field)))
            except (TypeError, ValueError) as exc:
                problems.append(f"{field} {getattr(self, field)!r} is not usable ({exc})")
        problems += self._field_problems()
        object.__setattr__(self, "_problems", tuple(problems))
        if problems and not _DEFERRED_CHECKS.get():
            raise PathbenchError(f"model spec {self.name!r}: {problems[0]}.")

    def _field_problems(self) -> list[str]:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        bench_poolings = self.bench_pooling.values() if isinstance(self.bench_pooling, dict) else ()
        for pooling in (self.default_pooling, *bench_poolings):
            if pooling not in POOLINGS:
                problems.append(f"unknown pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        if self.recommended_precision not in PRECISIONS:
            problems.append(
                f"recommended_precision must be one of {', '.join(PRECISIONS)}, got {self.recommended_precision!r}"
            )
        if self.mpp is not None and not (isinstance(self.mpp, (int, float)) and self.mpp > 0):
            problems.append(f"mpp is microns per pixel (> 0) or None, got {self.mpp!r}")
        if not isinstance(self.num_prefix_tokens, int) or self.num_prefix_tokens < 1:
            problems.append(
                f"num_prefix_tokens counts the class token, so it is at least 1; got {self.num_prefix_tokens!r}"
            )
        if not isinstance(self.embed_dim, int) or self.embed_dim < 0:
            problems.append(f"embed_dim is the width of the output tokens (an integer; 0 only for specs that learn it "
                            f"when loaded), got {self.embed_dim!r}")
        return problems

    def problems(self) -> list[str]:
        """What is wrong with this spec (empty for a usable one).

        Outside :func:`deferred_spec_checks` a spec with problems cannot be created; inside,
        it is created and carries them, so that one bad spec of a plugin can be reported and
        skipped while the plugin's other specs are kept.
        """
        return list(getattr(self, "_problems", ()))

    @property
    def num_registers(self) -> int:
        """Register tokens (prefix tokens other than the class token)."""
        return self.num_prefix_tokens - 1

    def pooling_for(self, bench: str | None) -> str:
        """Default pooling for ``bench`` (falls back to ``default_pooling``)."""
        return self.bench_pooling.get(bench or "", self.default_pooling)

    def output_dim(self, pooling: str) -> int:
        """Dimension of an embedding pooled with ``pooling``."""
        check_pooling(pooling)
        return 2 * self.embed_dim if pooling == "cls+mean" else self.embed_dim

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing, as part of the model's identity (and the cache key)."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description of the spec (for ``run.json`` and caches)."""
        data = dataclasses.asdict(self)
        data["build_kwargs"] = {k: _jsonable(v) for k, v in self.build_kwargs.items()}
        return data

    def architecture_digest(self) -> str:
        """sha256 of what determines the network and its input: family, arch, kwargs, preprocessing."""
        payload = {
            "family": self.family,
            "arch": self.arch,
            "build_kwargs": {k: _jsonable(v) for k, v in sorted(self.build_kwargs.items())},
            "num_prefix_tokens": self.num_prefix_tokens,
            "preprocessing": self.preprocessing(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` applied.

        A recorded ``params`` describes one architecture: changing ``family``, ``arch`` or
        ``build_kwargs`` without giving ``params`` drops it (counted on demand again).
        """
        if "params" not in changes and any(
            key in changes and changes[key] != getattr(self, key) for key in ("family", "arch", "build_kwargs")
        ):
            changes["params"] = None
        return dataclasses.replace(self, **changes)


def parameter_count(spec: ModelSpec, compute: bool = False) -> int | None:
    """Parameters of ``spec``'s architecture.

    The recorded ``spec.params`` when there is one (no torch import); otherwise ``None``,
    unless ``compute=True``, which builds the architecture on PyTorch's meta device (no
    weights, no memory; imports torch and the model's library). Generic ``hf:<repo>``
    specs learn their architecture only when loaded: ``None`` for them.
    """
    if spec.params is not None or not compute or spec.embed_dim == 0:
        return spec.params
    from pathbench.extractors.builders import count_parameters

    return count_parameters(spec)


def resolve_precision(precision: str, spec: ModelSpec, device_type: str) -> str:
    """The autocast precision to run ``spec`` with on a device of type ``device_type``.

    ``"auto"`` is the spec's ``recommended_precision`` on a CUDA GPU and ``"fp32"`` anywhere
    else (CPU autocast is slow and MPS half-precision support varies); explicit ``"fp32"``,
    ``"fp16"`` and ``"bf16"`` are returned unchanged.
    """
    if precision == "auto":
        return spec.recommended_precision if device_type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise PathbenchError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISION_CHOICES)}.")
    return precision


def check_pooling(pooling: str) -> str:
    """Return ``pooling`` if it is known, else raise a clear error."""
    if pooling not in POOLINGS:
        raise PathbenchError(f"unknown pooling {pooling!r}: expected one of {', '.join(POOLINGS)}.")
    return pooling


def _jsonable(value: Any) -> Any:
    """Layer classes and functions in build kwargs are written by their dotted name."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{getattr(value, '__module__', '')}.{name}"
