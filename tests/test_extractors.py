"""Extractor behaviour: pooling on real token layouts, preprocessing, precision, specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathbench.errors import PathbenchError
from pathbench.extractors import build_network, get_spec, load_extractor, pool_tokens
from pathbench.extractors.base import resize_crop


@pytest.mark.parametrize("name", ["vit-tiny-random", "vit-small-reg4-random", "phikon-tiny-random"])
def test_built_network_has_the_token_layout_its_spec_declares(name):
    spec = get_spec(name)
    network = build_network(spec)
    tokens = network(torch.zeros(1, 3, spec.crop, spec.crop))
    patches = (spec.crop // network.backbone.patch_embed.patch_size[0]) ** 2 if spec.family == "timm" else (
        (spec.crop // spec.build_kwargs["patch_size"]) ** 2
    )
    assert tokens.shape == (1, spec.num_prefix_tokens + patches, spec.embed_dim)
    if spec.family == "timm":
        assert network.backbone.num_prefix_tokens == spec.num_prefix_tokens


@pytest.mark.parametrize("name", ["h-optimus-0", "h0-mini", "uni", "uni2-h", "virchow", "virchow2", "prov-gigapath"])
def test_zoo_token_layouts_match_the_architectures(name):
    spec = get_spec(name)
    backbone = build_network(spec, device="meta").backbone
    assert backbone.num_prefix_tokens == spec.num_prefix_tokens
    assert backbone.num_features == spec.embed_dim


def test_pooling_matches_a_hand_computation_and_skips_registers():
    # 1 CLS + 4 registers + 4 patch tokens, as in H-Optimus-0 / H0-mini / Virchow2.
    tokens = torch.arange(2 * 9 * 3, dtype=torch.float32).reshape(2, 9, 3)
    tokens[:, 1:5] = 1e6  # registers: must never reach the patch mean
    cls = pool_tokens(tokens, 5, "cls")
    mean = pool_tokens(tokens, 5, "mean")
    both = pool_tokens(tokens, 5, "cls+mean")
    for b in range(2):
        assert cls[b].tolist() == tokens[b, 0].tolist()
        hand = [sum(float(tokens[b, t, d]) for t in range(5, 9)) / 4 for d in range(3)]
        assert mean[b].tolist() == pytest.approx(hand)
        assert both[b].tolist() == pytest.approx(tokens[b, 0].tolist() + hand)


def test_embed_pools_the_real_forward_tokens_of_a_register_model():
    extractor = load_extractor("vit-small-reg4-random", device="cpu")
    tiles = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    tokens = extractor.forward_tokens(extractor.preprocess(tiles))
    assert tokens.shape[1] == 5 + 16 * 16
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1)
    assert torch.allclose(extractor.embed(tiles, pooling="cls+mean"), expected, atol=1e-6)
    assert extractor.output_dim("cls+mean") == 2 * 384


def test_unknown_pooling_is_refused():
    with pytest.raises(PathbenchError, match="unknown pooling 'max'"):
        pool_tokens(torch.zeros(1, 3, 4), 1, "max")


def test_preprocess_normalises_with_the_models_mean_and_std(tiny_extractor):
    tile = np.full((1, 224, 224, 3), (255, 0, 128), dtype=np.uint8)
    pixels = tiny_extractor.preprocess(torch.from_numpy(tile))
    spec = tiny_extractor.spec
    for c, value in enumerate((255, 0, 128)):
        expected = (value / 255 - spec.mean[c]) / spec.std[c]
        assert torch.allclose(pixels[0, c], torch.full((224, 224), expected), atol=1e-6)


def test_resize_crop_resizes_the_shorter_side_then_centre_crops():
    spec = get_spec("prov-gigapath")  # resize 256, crop 224
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    out = resize_crop(image, spec)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    # a 224 tile for a model that resizes to 256 first is still resized, then cropped
    assert resize_crop(torch.zeros(2, 3, 224, 224, dtype=torch.uint8), spec).shape == (2, 3, 224, 224)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_still_returns_float32(tiny_extractor, precision):
    extractor = load_extractor("vit-tiny-random", device="cpu", precision=precision)
    tiles = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    out = extractor.embed(tiles)
    assert out.dtype == torch.float32
    assert torch.allclose(out, tiny_extractor.embed(tiles), atol=0.1, rtol=0.05)


def test_random_models_are_deterministic_and_fingerprinted_by_content():
    a = load_extractor("vit-tiny-random", device="cpu")
    b = load_extractor("vit-tiny-random", device="cpu")
    assert a.weights_fingerprint == b.weights_fingerprint
    assert a.weights_fingerprint.startswith("sha256:")


def test_bad_inputs_give_clear_errors(tiny_extractor):
    with pytest.raises(PathbenchError, match="expected uint8 RGB tiles"):
        tiny_extractor.preprocess(torch.zeros(1, 224, 224, 3))
    with pytest.raises(PathbenchError, match="unknown precision"):
        load_extractor("vit-tiny-random", precision="fp8")
    with pytest.raises(PathbenchError, match="unknown device"):
        load_extractor("vit-tiny-random", device="tpu")


def test_spec_pooling_defaults_per_benchmark():
    assert get_spec("h0-mini").pooling_for("hest") == "cls+mean"
    assert get_spec("h0-mini").pooling_for("plism") == "cls"
    assert get_spec("virchow2").pooling_for("plism") == "cls+mean"


def test_a_fixed_input_size_changes_the_transform_and_the_cache_identity_not_the_weights():
    extractor = load_extractor("vit-tiny-random", device="cpu")
    resized = extractor.with_input_size(256, 224)
    assert resized.model is extractor.model
    assert resized.spec.resize == 256 and extractor.spec.resize == 224
    assert resized.identity() != extractor.identity()
    assert extractor.with_input_size(224, 224) is extractor
