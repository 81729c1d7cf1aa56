"""Weights: from the Hugging Face hub or a local file, and their content fingerprint.

Hub downloads go through ``huggingface_hub`` as designed: the user's cache and login,
``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are honoured. Before the first download of a process
the hub is probed once (:func:`hub_unreachable`, one request of a few seconds at most):
without network, ``huggingface_hub`` would retry each request with back-off for about
25 s and log every attempt; pathbench then reads the local cache only and, when the
weights are not there, fails in one line that says what to do. Pickled checkpoints are only read with
``torch.load(weights_only=True)``. The fingerprint of the weights keys the feature cache:
it is the sha256 of the weights file (the hub's LFS blob name is that sha256 already, so
hub files are never re-hashed), or of the tensors themselves for random weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

import torch

from pathbench import _io
from pathbench.errors import WeightsAccessError
from pathbench.extractors.spec import ModelSpec

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Seconds the hub has to answer the probe; a reachable hub answers in well under one.
HUB_PROBE_TIMEOUT_S = 5.0


def hub_page(hub_id: str) -> str:
    return f"https://huggingface.co/{hub_id}"


def access_help(spec: ModelSpec) -> str:
    """What to do to get access to ``spec``'s weights, for error messages."""
    page = hub_page(spec.hub_id or "")
    steps = []
    if spec.gated:
        steps.append(f"accept the model's terms on {page}")
    steps.append("log in with `huggingface-cli login` (or set HF_TOKEN)")
    steps.append(f"or pass --weights PATH to a local copy of the weights ({' or '.join(spec.weights_files)})")
    return "; ".join(steps) + "."


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached, or None when it answers (probed once per process).

    One HEAD request to the hub's endpoint (``HF_ENDPOINT``) through ``huggingface_hub``'s
    own session (so its proxies and certificates apply), without retries; any HTTP answer,
    even an error status, means the hub is reachable.
    """
    from huggingface_hub import constants

    return _probe(constants.ENDPOINT)


@functools.lru_cache(maxsize=4)
def _probe(endpoint: str) -> str | None:
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as exc:  # whatever the transport raises (DNS, refused, timeout, TLS), the hub is out of reach
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return reason if len(reason) <= 120 else reason[:117] + "..."
    return None


def cache_only_reason() -> str | None:
    """Why hub files must come from the local cache only (``HF_HUB_OFFLINE``, or no hub), else None."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    reason = hub_unreachable()
    return None if reason is None else f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached ({reason})"


def not_cached_error(spec: ModelSpec, why: str, what: str) -> WeightsAccessError:
    """The one-line error for weights that are neither reachable nor in the local cache."""
    network = ("unset it where the hub is reachable to download them" if hub_offline() else
               "set HF_HUB_OFFLINE=1 to use the cache without trying the network")
    download = f"download it once with network access (`hf download {spec.hub_id}`)"
    if spec.embed_dim == 0:  # a generic hf:<repo> model is read from the repository folder itself
        todo = f"{download[0].upper()}{download[1:]}, which fills the Hugging Face cache"
    else:
        todo = f"Pass --weights PATH to a local copy ({' or '.join(spec.weights_files)}), or {download}"
    return WeightsAccessError(f"{spec.name}: {why}, and no cached copy of {what} exists. {todo}; {network}.")


def download_weights(spec: ModelSpec) -> Path:
    """Download (or find in the hub cache) the first available weights file of ``spec``.

    Returns the local path. Raises :class:`WeightsAccessError` with a short message naming
    the model page and what to do when the repository is gated, the token is missing,
    or the hub is offline or unreachable without a cached copy.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if not spec.hub_id:
        raise WeightsAccessError(f"model {spec.name!r} names no hub repository; pass --weights PATH.")
    page = hub_page(spec.hub_id)
    cache_only = cache_only_reason()  # then any cached candidate will do, and the network is not asked
    last_missing: Exception | None = None
    for filename in spec.weights_files:
        try:
            return Path(hf_hub_download(spec.hub_id, filename, local_files_only=cache_only is not None))
        except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: test it first
            if cache_only is None:  # the hub went away after the probe
                raise not_cached_error(spec, "the Hugging Face hub could not be reached", spec.hub_id) from exc
            last_missing = exc
        except EntryNotFoundError as exc:  # try the next candidate file name
            last_missing = exc
        except GatedRepoError as exc:
            raise WeightsAccessError(
                f"{spec.name}: {page} is gated and this account has no access yet. {access_help(spec)}"
            ) from exc
        except RepositoryNotFoundError as exc:
            raise WeightsAccessError(
                f"{spec.name}: {page} was not found, or it is gated and no token was sent. {access_help(spec)}"
            ) from exc
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (401, 403):
                raise WeightsAccessError(
                    f"{spec.name}: the hub refused access to {page} (HTTP {status}). {access_help(spec)}"
                ) from exc
            raise WeightsAccessError(f"{spec.name}: downloading from {page} failed: {exc}") from exc
    if cache_only is not None:
        raise not_cached_error(spec, cache_only, spec.hub_id) from last_missing
    raise WeightsAccessError(
        f"{spec.name}: {page} has none of the expected weights files ({', '.join(spec.weights_files)})."
    ) from last_missing


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file or a torch checkpoint (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsAccessError(
            f"weights file {path} does not exist; expected a .safetensors file or a torch state dict."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several error types for bad files
            raise WeightsAccessError(f"cannot read safetensors file {path}: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsAccessError(
            f"cannot read {path} as a torch state dict with weights_only=True ({type(exc).__name__}: {exc}). "
            "Convert it to safetensors, or save only the state dict (no pickled objects)."
        ) from exc
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsAccessError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return state


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a weights file.

    Hub files resolve to blobs named by their sha256, which is used as is. Other files
    are hashed once; the digest is memoised next to the pathbench cache keyed by
    (path, size, mtime), so a 4 GB checkpoint is not re-read on every run.
    """
    real = Path(path).resolve()
    if _SHA256.match(real.name):
        return "sha256:" + real.name
    stat = real.stat()
    from pathbench.settings import cache_root

    memo_path = cache_root() / "fingerprints.json"
    memo_key = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = _io.read_json(memo_path)
    except (FileNotFoundError, json.JSONDecodeError):
        memo = {}
    if memo_key in memo:
        return memo[memo_key]
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    fingerprint = "sha256:" + digest.hexdigest()
    memo[memo_key] = fingerprint
    try:
        _io.write_json(memo_path, memo)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return fingerprint


def tensors_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()
