"""``load_extractor``: a spec plus weights -> a ready :class:`Extractor`."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from pathbench.errors import PathbenchError, WeightsAccessError
from pathbench.extractors import weights as weights_mod
from pathbench.extractors.base import Extractor
from pathbench.extractors.builders import TokenModel, build_network, check_network
from pathbench.extractors.checks import check_preprocessing
from pathbench.extractors.registry import get_spec, plugin_extractor
from pathbench.extractors.spec import ModelSpec

logger = logging.getLogger(__name__)

RANDOM_SEED = 0


def load_extractor(
    model: str | ModelSpec,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    pooling: str | None = None,
    trust_remote_code: bool = False,
) -> Extractor:
    """Build the model, load its weights and wrap it in an :class:`Extractor`.

    Args:
        model: a registry name (``"h0-mini"``, ``"timm:vit_small_patch16_224"``,
            ``"hf:owkin/phikon"``) or a :class:`ModelSpec`.
        weights: a local safetensors file or torch state dict; wins over the hub.
        device: ``"auto"`` (cuda, then mps, then cpu), or a torch device string.
        precision: ``"auto"`` (the spec's ``recommended_precision`` on a CUDA GPU, fp32
            elsewhere), ``"fp32"``, ``"fp16"`` or ``"bf16"``. The extractor reports the
            resolved one as ``extractor.precision``; it keys the feature cache.
        pooling: default pooling of the extractor (``None``: the spec's default).
        trust_remote_code: allow models that need code from their hub repository.
    """
    spec = model if isinstance(model, ModelSpec) else get_spec(model)
    if weights is None and not isinstance(model, ModelSpec):
        ready = plugin_extractor(spec.name)
        if ready is not None:
            return ready
    if weights is not None:
        spec = spec.replace(weights_path=str(weights), random_init=False)
    if spec.family == "hf" and spec.hub_id and not spec.weights_path and not spec.random_init:
        network, fingerprint, spec = _load_hf_pretrained(spec, trust_remote_code)
    else:
        network, fingerprint = _build_and_load(spec)
    if not spec.random_init:
        warn_on_preprocessing_mismatch(spec)
    return Extractor(spec, network, fingerprint, device=device, precision=precision, pooling=pooling)


def warn_on_preprocessing_mismatch(spec: ModelSpec) -> None:
    """Warn when the hub's cached timm config resolves to another transform than ``spec``'s.

    Values the hub config states give a warning; values only timm's defaults decide are
    logged (the owner may not have meant them; ``docs/models.md`` discusses H0-mini's).
    """
    mismatches = check_preprocessing(spec)
    stated = [str(m) for m in mismatches if m.stated]
    if stated:
        warnings.warn(
            f"{spec.name}: the preprocessing differs from the hub's config of {spec.hub_id} "
            f"({'; '.join(stated)}). pathbench follows the model card; check which one you want "
            "(docs/models.md, 'Preprocessing checks').",
            stacklevel=3,
        )
    for mismatch in mismatches:
        if not mismatch.stated:
            logger.info("%s: %s", spec.name, mismatch)


def _build_and_load(spec: ModelSpec) -> tuple[TokenModel, str]:
    if spec.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            network = build_network(spec)
        return network, weights_mod.tensors_fingerprint(network)
    network = build_network(spec)
    path = Path(spec.weights_path) if spec.weights_path else weights_mod.download_weights(spec)
    state = weights_mod.load_state_dict(path)
    _load_into(network, state, spec, path)
    return network, weights_mod.file_fingerprint(path)


def _load_into(network: TokenModel, state: dict[str, torch.Tensor], spec: ModelSpec, path: Path) -> None:
    target = network.backbone
    expected = set(target.state_dict())
    # Checkpoints may carry a classifier head or a wrapper prefix the backbone does not have.
    for prefix in ("module.", "backbone.", "model."):
        if not (set(state) & expected) and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not (k.startswith("head.") and k not in expected)}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise WeightsAccessError(
            f"{spec.name}: the weights in {path} do not match the architecture {spec.arch} "
            f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}). "
            "Check that the file belongs to this model."
        )
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsAccessError(f"{spec.name}: the weights in {path} have the wrong shapes: {exc}") from exc


def _load_hf_pretrained(spec: ModelSpec, trust_remote_code: bool) -> tuple[TokenModel, str, ModelSpec]:
    """transformers models from the hub: snapshot the repository, then ``from_pretrained``."""
    if spec.trust_remote_code and not trust_remote_code:
        raise PathbenchError(
            f"{spec.name} runs code from its hub repository {weights_mod.hub_page(spec.hub_id or '')}; "
            "read it, then pass --trust-remote-code (trust_remote_code=True) to allow it."
        )
    local_dir = _snapshot(spec)
    import transformers

    try:
        backbone = transformers.AutoModel.from_pretrained(local_dir, trust_remote_code=trust_remote_code)
    except ImportError as exc:
        if trust_remote_code:
            raise remote_code_error(spec, exc, transformers.__version__) from exc
        raise PathbenchError(f"{spec.name}: transformers {transformers.__version__} cannot load {local_dir}: "
                             f"{exc}") from exc
    except ValueError as exc:
        raise PathbenchError(f"{spec.name}: transformers cannot load {local_dir}: {exc}") from exc
    config = backbone.config
    hidden = int(getattr(config, "hidden_size", 0) or spec.embed_dim)
    registers = int(getattr(config, "num_register_tokens", 0) or 0)
    if spec.embed_dim == 0:
        spec = spec.replace(embed_dim=hidden, num_prefix_tokens=1 + registers)
    network = TokenModel(backbone, "hf")
    check_network(spec, network)
    # A snapshot folder is named by its commit, which pins the weights' content.
    return network, "hf-commit:" + Path(local_dir).name, spec


def remote_code_error(spec: ModelSpec, exc: ImportError, transformers_version: str) -> PathbenchError:
    """The error for a model whose own hub code imports something the installed libraries lack.

    Such code was written against older libraries (hibou-l's imports ``transformers.onnx``,
    which transformers 5 removed); the message names the missing module, the installed
    transformers and the versions the spec records as working.
    """
    missing = getattr(exc, "name", None) or str(exc)
    if spec.requirements:
        fix = (f"It is known to run with {', '.join(spec.requirements)}: install that in a separate environment "
               f"(`pip install {' '.join(repr(r) for r in spec.requirements)}`).")
    else:
        fix = "Install the library versions its model card names, in a separate environment."
    return PathbenchError(
        f"{spec.name}: the code in its hub repository {weights_mod.hub_page(spec.hub_id or '')} cannot run with "
        f"the installed transformers {transformers_version}: it imports {missing!r}, which is not there "
        f"({type(exc).__name__}: {exc}). {fix}"
    )


def _snapshot(spec: ModelSpec) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    page = weights_mod.hub_page(spec.hub_id or "")
    cache_only = weights_mod.cache_only_reason()
    try:
        return snapshot_download(
            spec.hub_id, allow_patterns=["*.json", "*.safetensors", "*.py", "*.txt"] + (
                [] if _has_safetensors(spec) else ["*.bin"]
            ), local_files_only=cache_only is not None,
        )
    except GatedRepoError as exc:
        raise WeightsAccessError(f"{spec.name}: {page} is gated and this account has no access. "
                                 f"{weights_mod.access_help(spec)}") from exc
    except RepositoryNotFoundError as exc:
        raise WeightsAccessError(f"{spec.name}: {page} was not found, or it is gated and no token was sent. "
                                 f"{weights_mod.access_help(spec)}") from exc
    except LocalEntryNotFoundError as exc:
        why = cache_only or "the Hugging Face hub could not be reached"
        raise weights_mod.not_cached_error(spec, why, spec.hub_id or "") from exc


def _has_safetensors(spec: ModelSpec) -> bool:
    return spec.weights_files[:1] == ("model.safetensors",)
