"""Weights: from the Hugging Face hub or a local file, and their content fingerprint.

Hub downloads go through ``huggingface_hub`` as designed: the user's cache and login,
``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are honoured. Pickled checkpoints are only read with
``torch.load(weights_only=True)``. The fingerprint of the weights keys the feature cache:
it is the sha256 of the weights file (the hub's LFS blob name is that sha256 already, so
hub files are never re-hashed), or of the tensors themselves for random weights.
"""

from __future__ import annotations

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


def download_weights(spec: ModelSpec) -> Path:
    """Download (or find in the hub cache) the first available weights file of ``spec``.

    Returns the local path. Raises :class:`WeightsAccessError` with a short message naming
    the model page and what to do when the repository is gated, the token is missing,
    or the hub is offline without a cached copy.
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
    last_missing = None
    for filename in spec.weights_files:
        try:
            return Path(hf_hub_download(spec.hub_id, filename))
        except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: test it first
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
            why = "HF_HUB_OFFLINE is set and" if offline else "the hub could not be reached and"
            raise WeightsAccessError(
                f"{spec.name}: {why} no cached copy of {spec.hub_id}/{filename} exists. "
                f"Download it once with network access (`huggingface-cli download {spec.hub_id} {filename}`), "
                "or pass --weights PATH."
            ) from exc
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
