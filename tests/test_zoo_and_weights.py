"""Model zoo facts, weights loading and the error messages users see."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pathbench.cli import main
from pathbench.errors import ModelNotFoundError, WeightsAccessError
from pathbench.extractors import count_parameters, get_spec, load_extractor
from pathbench.extractors import weights as weights_mod

PUBLISHED_PARAMS = {
    "h-optimus-0": 1_134_774_272,
    "h-optimus-1": 1_134_774_272,
    "h0-mini": 85_739_520,
    "uni": 303_350_784,
    "uni2-h": 681_394_176,
    "virchow": 631_229_184,
    "virchow2": 631_239_424,
    "prov-gigapath": 1_134_953_984,
}


@pytest.mark.parametrize("name,params", sorted(PUBLISHED_PARAMS.items()))
def test_parameter_counts_match_the_published_architectures(name, params):
    assert count_parameters(get_spec(name)) == params


def test_models_json_lists_the_zoo_with_dims_and_params(capsys):
    assert main(["models", "h*", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) >= {"h-optimus-0", "h-optimus-1", "h0-mini", "hibou-l"}
    assert rows["h-optimus-0"]["params"] == 1_134_774_272
    assert rows["h-optimus-0"]["dim"] == 1536 and rows["h0-mini"]["dim"] == 768
    assert rows["h0-mini"]["gated"] is True and rows["h0-mini"]["origin"] == "pathbench"


def test_every_zoo_model_named_by_the_protocols_is_registered():
    for name in ("h-optimus-0", "h-optimus-1", "h0-mini", "uni", "uni2-h", "virchow", "virchow2",
                 "prov-gigapath", "phikon", "phikon-v2", "hibou-l", "kaiko-vitb8", "vit-tiny-random"):
        assert get_spec(name).name == name


def test_unknown_model_suggests_close_matches():
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'h0mini'\. Did you mean h0-mini"):
        get_spec("h0mini")


def test_unknown_model_on_the_command_line_is_one_line_and_exit_2(capsys):
    assert main(["extract", "--model", "virchow3", "--data", "."]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'virchow3'") and "virchow2" in err


def test_timm_generic_spec_reads_the_architecture():
    spec = get_spec("timm:vit_small_patch16_224")
    assert spec.embed_dim == 384 and spec.num_prefix_tokens == 1
    assert spec.hub_id and spec.hub_id.startswith("timm/")
    with pytest.raises(ModelNotFoundError, match="timm has no architecture"):
        get_spec("timm:vit_smal_patch16_224")


def test_local_safetensors_and_state_dict_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    source = load_extractor("vit-tiny-random", device="cpu")
    state = {k: v.clone() + 0.01 for k, v in source.model.backbone.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    a = load_extractor("vit-tiny-random", weights=tmp_path / "model.safetensors", device="cpu")
    b = load_extractor("vit-tiny-random", weights=tmp_path / "pytorch_model.bin", device="cpu")
    assert torch.equal(a.embed(tiles), b.embed(tiles))
    assert not torch.equal(a.embed(tiles), source.embed(tiles))
    assert a.weights_fingerprint != source.weights_fingerprint


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"not.a.vit": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsAccessError, match="do not match the architecture"):
        load_extractor("vit-tiny-random", weights=tmp_path / "bad.safetensors")
    with pytest.raises(WeightsAccessError, match="does not exist"):
        load_extractor("vit-tiny-random", weights=tmp_path / "missing.safetensors")


def test_pickled_objects_are_not_loaded(tmp_path):
    torch.save({"weights": object()}, tmp_path / "pickled.bin")
    with pytest.raises(WeightsAccessError, match="weights_only=True"):
        load_extractor("vit-tiny-random", weights=tmp_path / "pickled.bin")


def test_offline_without_a_cached_copy_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsAccessError) as info:
        weights_mod.download_weights(get_spec("h0-mini"))
    message = str(info.value)
    assert "no cached copy of bioptimus/H0-mini" in message and "--weights PATH" in message


def _raise(exc):
    def fake(*args, **kwargs):
        raise exc

    return fake


def _http_error(cls, status):
    """A hub error as huggingface_hub raises it, with a made-up response (no network)."""
    import inspect

    http = inspect.signature(cls.__init__).parameters["response"].annotation
    module = __import__(str(http).split(".")[0]) if isinstance(http, str) else __import__(http.__module__.split(".")[0])
    request = module.Request("GET", "https://huggingface.co/x")
    return cls(f"{status} Client Error: refused", response=module.Response(status, request=request))


def test_gated_model_without_access_names_the_page_and_the_login(monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import GatedRepoError

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raise(_http_error(GatedRepoError, 403)))
    with pytest.raises(WeightsAccessError) as info:
        weights_mod.download_weights(get_spec("uni"))
    message = str(info.value)
    assert "https://huggingface.co/MahmoodLab/uni is gated" in message
    assert "huggingface-cli login" in message and "accept the model's terms" in message


def test_missing_token_names_the_page_and_the_login(monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import RepositoryNotFoundError

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raise(_http_error(RepositoryNotFoundError, 401)))
    with pytest.raises(WeightsAccessError, match=r"virchow2: https://huggingface.co/paige-ai/Virchow2 was not found"):
        weights_mod.download_weights(get_spec("virchow2"))


def test_remote_code_models_need_an_explicit_flag():
    with pytest.raises(Exception, match="--trust-remote-code"):
        load_extractor("hibou-l")


def test_hf_models_load_from_a_hub_snapshot_and_read_their_layout(tmp_path, monkeypatch):
    import huggingface_hub

    source = load_extractor("phikon-tiny-random", device="cpu")
    snapshot = tmp_path / "snapshots" / "0123abcd"
    source.model.backbone.save_pretrained(snapshot)
    asked = {}

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    extractor = load_extractor("hf:acme/tiny-vit", device="cpu")
    assert asked["repo_id"] == "acme/tiny-vit" and "*.safetensors" in asked["allow_patterns"]
    assert extractor.spec.embed_dim == 64 and extractor.num_prefix_tokens == 1
    assert extractor.weights_fingerprint == "hf-commit:0123abcd"
    tiles = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    assert torch.allclose(extractor.embed(tiles, pooling="cls+mean"), source.embed(tiles, pooling="cls+mean"),
                          atol=1e-5)
