"""Model facts: the cited table in docs/models.md, precision, resolution, hub configs, remote code."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import warnings
from pathlib import Path

import pytest

from pathbench.errors import PathbenchError
from pathbench.extractors import (
    MPP_TOLERANCE,
    count_parameters,
    get_spec,
    load_extractor,
    parameter_count,
    resolution_warning,
    resolve_precision,
)
from pathbench.extractors.checks import check_preprocessing, timm_transform
from pathbench.extractors.zoo import BUILTIN_SPECS

DOCS = Path(__file__).parents[1] / "docs" / "models.md"
FACTS_HEADER = "| name | licence | gated | inference precision | training resolution (µm/px) |"


def _cited_facts() -> dict[str, dict[str, str]]:
    """Rows of the model-facts table in docs/models.md: the backticked value of each cell."""
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    start = lines.index(FACTS_HEADER)
    columns = [c.strip() for c in FACTS_HEADER.strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        random_weights = "random weights" in line  # nothing to cite for a model without weights
        values = {}
        values["name"] = cells[0].strip("`")
        for column, cell in zip(columns[1:], cells[1:], strict=True):
            match = re.search(r"`([^`]+)`", cell)
            assert match, f"docs/models.md: cell {cell!r} ({column}) has no `value`"
            values[column] = match.group(1)
            if not random_weights:
                assert "](http" in cell or "not stated" in cell, f"docs/models.md: {cell!r} cites no source"
        rows[values["name"]] = values
    return rows


def test_every_zoo_spec_has_the_licence_gating_precision_and_resolution_its_cited_row_gives():
    facts = _cited_facts()
    assert set(facts) == {spec.name for spec in BUILTIN_SPECS}
    for spec in BUILTIN_SPECS:
        row = facts[spec.name]
        assert spec.licence == row["licence"], spec.name
        assert ("yes" if spec.gated else "no") == row["gated"], spec.name
        assert spec.recommended_precision == row["inference precision"], spec.name
        expected_mpp = None if row["training resolution (µm/px)"] == "not stated" else float(
            row["training resolution (µm/px)"])
        assert spec.mpp == expected_mpp, spec.name


def test_kaiko_is_under_kaikos_non_commercial_licence():
    assert get_spec("kaiko-vitb8").licence == "Kaiko Non-Commercial Public License"


# --- precision -------------------------------------------------------------------------------

def test_auto_precision_is_the_cards_precision_on_a_gpu_and_fp32_on_a_cpu():
    for name in ("h-optimus-0", "h0-mini", "virchow2"):
        spec = get_spec(name)
        assert spec.recommended_precision == "fp16"
        assert resolve_precision("auto", spec, "cuda") == "fp16"
        assert resolve_precision("auto", spec, "cpu") == "fp32"
        assert resolve_precision("auto", spec, "mps") == "fp32"
    assert resolve_precision("auto", get_spec("uni"), "cuda") == "fp32"
    for explicit in ("fp32", "fp16", "bf16"):
        assert resolve_precision(explicit, get_spec("h0-mini"), "cpu") == explicit
    with pytest.raises(PathbenchError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", get_spec("h0-mini"), "cuda")


def test_auto_is_the_default_and_the_resolved_precision_keys_the_cache():
    spec = get_spec("vit-tiny-random").replace(recommended_precision="bf16")
    auto = load_extractor(spec, device="cpu")
    assert auto.precision == "fp32"  # on a CPU, whatever the card recommends
    fp32 = load_extractor(spec, device="cpu", precision="fp32")
    assert auto.identity() == fp32.identity()
    bf16 = load_extractor(spec, device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and bf16.identity() != auto.identity()


def test_a_spec_cannot_recommend_an_unknown_precision():
    with pytest.raises(PathbenchError, match="recommended_precision must be one of"):
        get_spec("vit-tiny-random").replace(recommended_precision="int8")


# --- resolution ------------------------------------------------------------------------------

def test_resolution_warning_names_both_resolutions_when_the_magnification_differs():
    spec = get_spec("h0-mini")
    assert spec.mpp == 0.5
    message = resolution_warning(spec, 0.25)
    assert message is not None and "0.5 um/px" in message and "0.25 um/px" in message and "2x finer" in message
    assert "2x coarser" in resolution_warning(spec, 1.0)


def test_resolution_warning_is_silent_within_tolerance_or_when_a_resolution_is_unknown():
    spec = get_spec("h0-mini")
    for data_mpp in (0.5, 0.4416, 0.55, 0.5 * MPP_TOLERANCE, 0.5 / MPP_TOLERANCE, None):
        assert resolution_warning(spec, data_mpp) is None, data_mpp
    assert resolution_warning(spec, 0.5 * MPP_TOLERANCE * 1.01) is not None
    assert resolution_warning(spec, 0.5 / MPP_TOLERANCE / 1.01) is not None
    assert resolution_warning(get_spec("virchow2"), 0.25) is None  # mixed magnifications: no single mpp
    assert resolution_warning(spec, 0.3, tolerance=2.0) is None
    with pytest.raises(ValueError):
        resolution_warning(spec, 0.0)
    with pytest.raises(ValueError):
        resolution_warning(spec, 0.5, tolerance=0.5)


# --- parameter counts and builds with the installed libraries --------------------------------

@pytest.mark.parametrize("spec", BUILTIN_SPECS, ids=lambda s: s.name)
def test_every_zoo_spec_builds_on_the_meta_device_with_its_recorded_parameter_count(spec):
    assert spec.params is not None
    assert count_parameters(spec) == spec.params  # builds the architecture (meta device, no weights)


def test_specs_without_a_recorded_count_are_counted_only_when_asked():
    spec = get_spec("vit-tiny-random").replace(name="acme-vit", params=None)
    assert parameter_count(spec) is None
    assert parameter_count(spec, compute=True) == count_parameters(spec) == 1_076_544
    assert parameter_count(get_spec("h0-mini")) == 85_739_520
    assert parameter_count(get_spec("hf:acme/unknown"), compute=True) is None  # known only once loaded


def test_a_recorded_count_does_not_survive_a_change_of_architecture():
    spec = get_spec("h0-mini")
    assert spec.replace(build_kwargs={**spec.build_kwargs, "depth": 2}).params is None
    assert spec.replace(arch="vit_small_patch14_reg4_dinov2").params is None
    assert spec.replace(build_kwargs={**spec.build_kwargs, "dynamic_img_size": True}, params=1).params == 1
    assert spec.replace(name="h0-mini-copy", resize=256).params == spec.params


def test_timm_generic_specs_resize_exactly_as_timms_own_transform():
    from timm.data import create_transform, resolve_data_config

    arch = "vit_small_patch16_224.dino"  # crop_pct 0.9: 224 / 0.9 = 248.9, timm floors it to 248
    spec = get_spec(f"timm:{arch}")
    import timm

    transform = create_transform(**resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(arch).to_dict()))
    resize = next(t for t in transform.transforms if type(t).__name__ == "Resize")
    assert (spec.resize, spec.crop) == (resize.size, 224) == (248, 224)
    assert spec.params == count_parameters(spec)


# --- hub configs in the local cache ----------------------------------------------------------

H0_MINI_CFG = {
    "input_size": [3, 224, 224],
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": [0.707223, 0.578729, 0.703617],
    "std": [0.211883, 0.230117, 0.177517],
}


def _cache_config(cache: Path, repo_id: str, pretrained_cfg: dict | None) -> None:
    """Write ``config.json`` into a Hugging Face cache folder, laid out as huggingface_hub does."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    config = {"architecture": "vit_base_patch14_reg4_dinov2", "num_features": 768}
    if pretrained_cfg is not None:
        config["pretrained_cfg"] = pretrained_cfg
    (snapshot / "config.json").write_text(json.dumps(config))


def test_a_cached_hub_config_that_agrees_gives_no_mismatch(tmp_path):
    _cache_config(tmp_path, "bioptimus/H0-mini", H0_MINI_CFG)
    assert check_preprocessing(get_spec("h0-mini"), cache_dir=tmp_path) == []


def test_nothing_is_checked_without_a_cached_config(tmp_path):
    assert check_preprocessing(get_spec("h0-mini"), cache_dir=tmp_path) == []
    _cache_config(tmp_path, "bioptimus/H0-mini", None)  # a config without pretrained_cfg
    assert check_preprocessing(get_spec("h0-mini"), cache_dir=tmp_path) == []


def test_a_config_without_crop_pct_resolves_through_timms_default_and_is_reported_as_unstated(tmp_path):
    cfg = {k: v for k, v in H0_MINI_CFG.items() if k not in ("crop_pct", "interpolation")}
    _cache_config(tmp_path, "bioptimus/H0-mini", cfg)
    mismatches = check_preprocessing(get_spec("h0-mini"), cache_dir=tmp_path)
    assert [(m.field, m.spec_value, m.hub_value, m.stated) for m in mismatches] == [("resize", 224, 256, False)]
    assert "timm's default" in str(mismatches[0])


def test_stated_disagreements_on_crop_interpolation_and_normalisation_are_all_reported(tmp_path):
    cfg = {**H0_MINI_CFG, "crop_pct": 0.875, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406]}
    _cache_config(tmp_path, "bioptimus/H0-mini", cfg)
    found = {m.field: m for m in check_preprocessing(get_spec("h0-mini"), cache_dir=tmp_path)}
    assert set(found) == {"resize", "interpolation", "mean"}
    assert all(m.stated for m in found.values())
    assert found["resize"].hub_value == 256 and found["interpolation"].hub_value == "bilinear"


def test_timm_transform_matches_timms_create_transform_for_crop_pct():
    from timm.data import create_transform, resolve_data_config

    cfg = {**H0_MINI_CFG, "crop_pct": 0.95}
    ours = timm_transform(cfg)
    timm_ops = create_transform(**resolve_data_config(pretrained_cfg=cfg)).transforms
    resize = next(t for t in timm_ops if type(t).__name__ == "Resize")
    assert ours["resize"] == resize.size == 235 and ours["crop"] == 224


def test_loading_warns_when_the_cached_hub_config_disagrees(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = load_extractor("vit-tiny-random", device="cpu")
    save_file(source.model.backbone.state_dict(), str(tmp_path / "model.safetensors"))
    spec = source.spec.replace(name="acme-tiny", hub_id="acme/tiny", random_init=False)
    _cache_config(tmp_path / "hub", "acme/tiny", {**H0_MINI_CFG, "mean": list(spec.mean), "std": list(spec.std),
                                                   "crop_pct": 0.875})
    expected = r"acme-tiny: the preprocessing differs .*\(resize: pathbench uses 224, the hub config gives 256\)"
    with pytest.warns(UserWarning, match=expected):
        load_extractor(spec, weights=tmp_path / "model.safetensors", device="cpu")
    _cache_config(tmp_path / "hub", "acme/tiny", {**H0_MINI_CFG, "mean": list(spec.mean), "std": list(spec.std)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_extractor(spec, weights=tmp_path / "model.safetensors", device="cpu")


# --- a model's own hub code that cannot run --------------------------------------------------

FAKE_CONFIG = """
from transformers import PretrainedConfig
from transformers.onnx import OnnxConfig  # as hibou-L's configuration_dinov2.py does


class AcmeConfig(PretrainedConfig):
    model_type = "acme-dinov2"
"""

FAKE_MODEL = """
from transformers import PreTrainedModel

from .configuration_acme import AcmeConfig


class AcmeModel(PreTrainedModel):
    config_class = AcmeConfig
"""


@pytest.fixture
def isolated_remote_code(tmp_path, monkeypatch):
    """transformers copies remote code into HF_MODULES_CACHE and imports it: keep that in tmp_path."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [n for n in sys.modules if n.startswith("transformers_modules")]:
        del sys.modules[name]


def test_remote_code_that_imports_a_removed_module_names_the_transformers_that_runs_it(
        tmp_path, monkeypatch, isolated_remote_code):
    import huggingface_hub
    import transformers

    if importlib.util.find_spec("transformers.onnx") is not None:
        pytest.skip(f"transformers {transformers.__version__} still has transformers.onnx")
    snapshot = tmp_path / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({
        "model_type": "acme-dinov2",
        "auto_map": {"AutoConfig": "configuration_acme.AcmeConfig", "AutoModel": "modeling_acme.AcmeModel"},
    }))
    (snapshot / "configuration_acme.py").write_text(FAKE_CONFIG)
    (snapshot / "modeling_acme.py").write_text(FAKE_MODEL)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(snapshot))

    with pytest.raises(PathbenchError) as info:
        load_extractor("hibou-l", trust_remote_code=True, device="cpu")
    message = str(info.value)
    assert message.startswith("hibou-l: the code in its hub repository https://huggingface.co/histai/hibou-L")
    assert f"installed transformers {transformers.__version__}" in message
    assert "'transformers.onnx'" in message and "transformers>=4.48,<5" in message


def test_hibou_l_declares_the_transformers_its_hub_code_runs_with():
    assert get_spec("hibou-l").requirements == ("transformers>=4.48,<5",)

