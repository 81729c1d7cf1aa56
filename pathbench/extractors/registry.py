"""The model registry: built-in specs, generic ``timm:``/``hf:`` specs and plugins.

Third-party packages add extractors through the entry-point group
``pathbench.extractors``. Each entry point names a zero-argument callable returning a
:class:`ModelSpec`, a list of specs, or a ready :class:`Extractor`. A plugin that fails
to import or to run is reported as one warning line; everything else keeps working. So
is each unusable model of a plugin (an invalid spec, a name that another model already
has, something that is not a spec): it is skipped and the plugin's other models are kept.
Each problem is reported once per process, however often the plugins are asked.

This module imports neither torch nor timm nor transformers (``pathbench models`` lists
specs without them); ``timm:<arch>`` specs import timm when they are asked for.
"""

from __future__ import annotations

import difflib
import logging
import sys
import warnings
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import TYPE_CHECKING

from pathbench.errors import ModelNotFoundError, PathbenchError
from pathbench.extractors.spec import ModelSpec, deferred_spec_checks
from pathbench.extractors.zoo import BUILTIN_SPECS

if TYPE_CHECKING:
    from pathbench.extractors.base import Extractor

ENTRY_POINT_GROUP = "pathbench.extractors"
logger = logging.getLogger(__name__)

_registered: dict[str, ModelSpec] = {}
_plugin_extractors: dict[str, Extractor] = {}
_plugins_loaded = False
_reported: set[str] = set()


def register(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry (usable as a decorator target or a plain call)."""
    if spec.name in _all_specs() and not overwrite:
        raise PathbenchError(
            f"a model named {spec.name!r} is already registered (origin {_all_specs()[spec.name].origin}); "
            "choose another name or pass overwrite=True."
        )
    _registered[spec.name] = spec
    return spec


def _all_specs() -> dict[str, ModelSpec]:
    specs = {spec.name: spec for spec in BUILTIN_SPECS}
    specs.update(_registered)
    return specs


def load_plugins(force: bool = False) -> None:
    """Import every ``pathbench.extractors`` entry point once; report failures as warnings."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return
    _plugins_loaded = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        plugin = f"pathbench plugin {entry_point.name!r} from {origin}"
        try:
            factory: Callable[[], object] = entry_point.load()
            with deferred_spec_checks():  # one invalid spec must not take the others down
                provided = factory()
        except Exception as exc:  # a broken plugin must never break pathbench
            _warn_once(f"{plugin} failed to load ({type(exc).__name__}: {exc}); its models are unavailable.")
            continue
        if isinstance(provided, ModelSpec) or _is_extractor(provided):
            items: Iterable[object] = [provided]
        elif isinstance(provided, (list, tuple)):
            items = provided
        else:
            _warn_once(f"{plugin} returned a {type(provided).__name__}; expected a ModelSpec, a list of ModelSpec, "
                       "or an Extractor. Its models are unavailable.")
            continue
        for item in items:
            problem = _register_item(item, origin)
            if problem:
                _warn_once(f"{plugin}: {problem}")


def _warn_once(message: str) -> None:
    message = " ".join(message.split())  # one line, whatever the exception said
    if message not in _reported:
        _reported.add(message)
        warnings.warn(message, stacklevel=3)


def _is_extractor(item: object) -> bool:
    # A plugin that returns an Extractor has imported pathbench.extractors.base (and torch)
    # itself; when that module is not loaded, nothing can be an Extractor, and listing
    # specs stays free of torch.
    base = sys.modules.get("pathbench.extractors.base")
    return base is not None and isinstance(item, base.Extractor)


def _register_item(item: object, origin: str) -> str | None:
    """Register one model a plugin provided; what is wrong with it (it is then skipped), or None."""
    if _is_extractor(item):
        spec: ModelSpec = item.spec
    elif isinstance(item, ModelSpec):
        spec = item
    else:
        return (f"returned a {type(item).__name__} among its models, expected a ModelSpec or an Extractor; "
                "it is skipped.")
    problems = spec.problems()
    if problems:
        return f"model spec {spec.name!r} is invalid ({'; '.join(problems)}); it is skipped."
    if spec.origin == "pathbench":
        spec = spec.replace(origin=origin)
    if spec.name in {s.name for s in BUILTIN_SPECS}:
        return (f"model {spec.name!r} has the name of a pathbench built-in model (a name clash); it is skipped. "
                "Rename it in the plugin.")
    other = _registered.get(spec.name)
    if other is not None and other.origin != spec.origin:
        return (f"model {spec.name!r} has the name of a model from {other.origin} (a name clash); the first "
                "one registered is kept and this one is skipped. Rename one of them.")
    if _is_extractor(item):
        _plugin_extractors[spec.name] = item
    _registered[spec.name] = spec
    return None


def list_specs(pattern: str | None = None) -> list[ModelSpec]:
    """All known specs (built-in and plugins), sorted by name; ``pattern`` filters with wildcards."""
    import fnmatch

    load_plugins()
    specs = sorted(_all_specs().values(), key=lambda s: s.name)
    if pattern:
        specs = [s for s in specs if fnmatch.fnmatch(s.name, pattern)]
    return specs


def get_spec(name: str) -> ModelSpec:
    """The spec called ``name``; ``timm:<arch>`` and ``hf:<repo>`` build generic specs.

    An unknown name raises :class:`ModelNotFoundError` that suggests close matches.
    """
    if name.startswith("timm:"):
        return timm_spec(name.removeprefix("timm:"))
    if name.startswith("hf:"):
        return hf_spec(name.removeprefix("hf:"))
    load_plugins()
    specs = _all_specs()
    if name not in specs:
        # Plugins may offer models that appeared since they were first asked (a student
        # exported by `pathbench distill` in this same process): ask them once more.
        load_plugins(force=True)
        specs = _all_specs()
    if name in specs:
        return specs[name]
    resolved = _resolve_with_plugins(name)
    if resolved is not None:
        return resolved
    close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelNotFoundError(
        f"unknown model {name!r}.{hint} `pathbench models` lists every model; any timm architecture works "
        "as timm:<arch> and any Hugging Face vision model as hf:<repo>."
    )


def plugin_extractor(name: str) -> Extractor | None:
    """The ready Extractor a plugin supplied for ``name``, if any."""
    load_plugins()
    return _plugin_extractors.get(name)


def _resolve_with_plugins(name: str) -> ModelSpec | None:
    """Offer a name no plugin listed to plugins whose entry point has a ``resolve(name)``
    function (``distilled:<path of an exported student>`` is resolved this way)."""
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            resolve = getattr(entry_point.load(), "resolve", None)
        except Exception:  # reported once by load_plugins
            continue
        spec = resolve(name) if callable(resolve) else None
        if spec is not None:
            return spec
    return None


def timm_spec(arch: str) -> ModelSpec:
    """A spec for any timm architecture, weights from timm's own hub repository."""
    import timm

    if not timm.is_model(arch.split(".")[0]):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(f"timm has no architecture {arch!r}.{hint}")
    from pathbench.extractors.builders import build_network
    from pathbench.extractors.checks import timm_transform

    probe = ModelSpec(name=f"timm:{arch}", family="timm", arch=arch, embed_dim=0, build_kwargs={"num_classes": 0})
    network = build_network(probe, device="meta")
    backbone = network.backbone
    cfg = timm.get_pretrained_cfg(arch) if hasattr(timm, "get_pretrained_cfg") else None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    # timm's own data config, so the transform is the one timm's create_transform builds.
    transform = timm_transform(cfg.to_dict() if cfg is not None else dict(backbone.pretrained_cfg or {}))
    return probe.replace(
        embed_dim=int(backbone.num_features),
        num_prefix_tokens=max(1, int(getattr(backbone, "num_prefix_tokens", 1))),
        hub_id=hub_id,
        mean=transform["mean"],
        std=transform["std"],
        crop=transform["crop"],
        resize=transform["resize"],
        interpolation=transform["interpolation"],
        params=sum(p.numel() for p in network.parameters()),
        licence=getattr(cfg, "license", None) or "see the timm model card",
        origin="timm",
        description=f"timm architecture {arch}",
    )


def hf_spec(repo: str) -> ModelSpec:
    """A spec for any transformers vision model on the hub (architecture read at load time)."""
    return ModelSpec(
        name=f"hf:{repo}",
        family="hf",
        arch="AutoConfig",
        embed_dim=0,
        hub_id=repo,
        origin="transformers",
        description=f"transformers model {repo} (mean/std: ImageNet; pass a plugin spec to change)",
    )
