"""eva's segmentation decoders, Dice loss and score, token grids and the training protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pathbench.data.segmentation import resize_and_crop_pair
from pathbench.errors import PathbenchError
from pathbench.heads import ProbeProtocol
from pathbench.heads.decoders import (
    ConvDecoderMS,
    ConvDecoderWithImage,
    grid_from_tokens,
    patch_grid,
    tokens_to_grid,
)
from pathbench.heads.dice import EvaDiceLoss, MonaiDiceScore, monai_dice_score
from pathbench.heads.segmentation import CachedSplit, CropSplit, normalise_images, train_segmentation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --------------------------------------------------------------------------------------
# Token grids


def test_tokens_to_grid_drops_prefix_tokens_and_keeps_row_major_order():
    batch, prefix, (h, w), channels = 2, 5, (3, 4), 6  # class token + 4 registers, a non-square grid
    tokens = torch.arange(batch * (prefix + h * w) * channels, dtype=torch.float32).reshape(batch, -1, channels)
    grid = tokens_to_grid(tokens, prefix, (h, w))
    assert grid.shape == (batch, channels, h, w)
    for r in range(h):
        for c in range(w):
            torch.testing.assert_close(grid[:, :, r, c], tokens[:, prefix + r * w + c, :])
    with pytest.raises(PathbenchError, match="17 tokens minus 5 prefix tokens leave 12.*4 x 4 grid needs 16"):
        tokens_to_grid(tokens, prefix, (4, 4))


def test_patch_grid_handles_patch_sizes_other_than_16():
    assert patch_grid((224, 224), 14) == (16, 16)
    assert patch_grid((224, 224), 8) == (28, 28)
    assert patch_grid((224, 224), (16, 8)) == (14, 28)


def test_the_grid_can_be_read_from_the_token_count():
    assert grid_from_tokens(256, (224, 224)) == (16, 16)  # patch 14
    assert grid_from_tokens(784, (224, 224)) == (28, 28)  # patch 8
    assert grid_from_tokens(24, (64, 96)) == (4, 6)
    with pytest.raises(PathbenchError, match="do not tile"):
        grid_from_tokens(200, (224, 224))


def test_tokens_to_grid_matches_timm_feature_maps_of_a_non_square_vit_with_registers():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(64, 96), depth=1,
                              reg_tokens=2, num_classes=0).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = model.forward_features(images)  # (2, 1 + 2 + 4 * 6, 192), after the final norm
        timm_maps = model.forward_intermediates(images, indices=1, norm=True, output_fmt="NCHW",
                                                intermediates_only=True)[0]
    grid = tokens_to_grid(tokens, model.num_prefix_tokens, patch_grid((64, 96), 16))
    torch.testing.assert_close(grid, timm_maps)


# --------------------------------------------------------------------------------------
# Decoders


def test_decoders_have_eva_parameter_counts_and_names():
    # ConvDecoderWithImage(384, 5): conv 3x3 384->64, BN 64; conv 3x3 (64+3)->32, BN 32; conv 3x3 32->32, BN 32; 1x1 32->5
    with_image = 9 * 384 * 64 + 64 + 2 * 64 + 9 * 67 * 32 + 32 + 2 * 32 + 9 * 32 * 32 + 32 + 2 * 32 + 32 * 5 + 5
    assert with_image == 250_245
    assert sum(p.numel() for p in ConvDecoderWithImage(384, 5).parameters()) == with_image
    # ConvDecoderMS(384, 5): conv 3x3 384->64, conv 3x3 64->5
    assert sum(p.numel() for p in ConvDecoderMS(384, 5).parameters()) == 9 * 384 * 64 + 64 + 9 * 64 * 5 + 5 == 224_133
    # eva's module names, so eva decoder checkpoints load
    assert list(ConvDecoderMS(8, 5).state_dict()) == ["_layers.1.weight", "_layers.1.bias", "_layers.3.weight",
                                                       "_layers.3.bias"]
    keys = list(ConvDecoderWithImage(8, 5).state_dict())
    assert keys[:2] == ["_layers.1.0.weight", "_layers.1.0.bias"]
    assert "image_block.1.1.running_var" in keys and keys[-2:] == ["classifier.weight", "classifier.bias"]


def test_conv_decoder_with_image_computes_eva_forward_pass():
    torch.manual_seed(0)
    decoder = ConvDecoderWithImage(8, 5).eval()
    grids, images = torch.randn(2, 8, 4, 6), torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        out = decoder(grids, (32, 48), images)
        # eva: nearest x2, conv-BN-ReLU 64, bilinear to the image size, concat the image, 2 x conv-BN-ReLU 32, 1x1
        x = decoder._layers[1](F.interpolate(grids, scale_factor=2, mode="nearest"))
        x = F.interpolate(x, (32, 48), mode="bilinear", align_corners=False)
        expected = decoder.classifier(decoder.image_block(torch.cat([x, images], dim=1)))
    assert out.shape == (2, 5, 32, 48)
    torch.testing.assert_close(out, expected)


def test_conv_decoder_ms_computes_eva_forward_pass():
    torch.manual_seed(0)
    decoder = ConvDecoderMS(8, 5)
    grids = torch.randn(2, 8, 4, 6)
    with torch.no_grad():
        out = decoder(grids, (30, 50))
        x = decoder._layers[1](F.interpolate(grids, scale_factor=2, mode="nearest"))
        x = decoder._layers[3](F.interpolate(x, scale_factor=2, mode="nearest"))
        expected = F.interpolate(x, (30, 50), mode="bilinear", align_corners=False)
    assert out.shape == (2, 5, 30, 50)
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------------------
# Dice score: eva's MonaiDiceScore against a plain numpy reading of eva's code


def reference_dice(preds, targets, num_classes, ignore_index=None, include_background=False, per_class=False):
    """eva's MonaiDiceScore written out: one-hot, eva's ignore handling, per-image Dice, MONAI's mean."""
    preds, targets = np.asarray(preds), np.asarray(targets)
    p = np.stack([preds == c for c in range(num_classes)], axis=1)  # (N, C, H, W)
    t = np.stack([targets == c for c in range(num_classes)], axis=1)
    include = include_background
    if ignore_index is not None:
        t = t & ~p[:, ignore_index][:, None]  # eva masks the target where the *prediction* is the ignored class
        p, t = np.delete(p, ignore_index, axis=1), np.delete(t, ignore_index, axis=1)
        include = include_background or ignore_index == 0
    values = np.full((len(preds), p.shape[1]), np.nan)
    for n in range(len(preds)):
        for c in range(0 if include else 1, p.shape[1]):
            if t[n, c].sum() > 0:
                values[n, c] = 2 * (p[n, c] & t[n, c]).sum() / (p[n, c].sum() + t[n, c].sum())
    values = values[:, 0 if include else 1:]
    if per_class:
        with np.errstate(all="ignore"):
            return np.nanmean(values, axis=0)
    image_means = [np.mean(v[~np.isnan(v)]) for v in values if (~np.isnan(v)).any()]
    return float(np.mean(image_means)) if image_means else 0.0


def test_dice_on_hand_computed_masks_with_an_empty_class_and_an_image_without_foreground():
    targets = np.array([[[0, 1, 1], [2, 2, 0]],
                        [[0, 0, 0], [0, 0, 1]],
                        [[0, 0, 0], [0, 0, 0]]])
    preds = np.array([[[0, 1, 2], [2, 0, 0]],
                      [[2, 0, 0], [0, 1, 1]],
                      [[1, 1, 0], [0, 0, 0]]])
    # image 1: class 1 2*1/(1+2), class 2 2*1/(2+2) -> 7/12; image 2: class 1 2/3, class 2 absent (NaN even
    # though predicted) -> 2/3; image 3 has no foreground target: skipped. Mean (7/12 + 2/3) / 2 = 0.625.
    assert monai_dice_score(preds, targets, num_classes=3) == pytest.approx(0.625)
    assert reference_dice(preds, targets, 3) == pytest.approx(0.625)


def test_dice_counts_foreground_predictions_on_ignored_pixels_as_false_positives():
    targets = np.array([[[1, 3, 2, 0]]])  # label 3 is the ignore index
    preds = np.array([[[1, 1, 2, 2]]])
    # class 1: target {0}, predicted {0, 1} -> 2/3; class 2: target {2}, predicted {2, 3} -> 2/3
    assert monai_dice_score(preds, targets, num_classes=4, ignore_index=3) == pytest.approx(2 / 3)
    # a pixel predicted as the ignored class removes its target (eva's mask follows the prediction)
    assert monai_dice_score(np.array([[[3, 1, 2, 0]]]), np.array([[[1, 1, 2, 0]]]), 4, ignore_index=3) == \
        pytest.approx((2 * 1 / (1 + 1) + 1.0) / 2)


@pytest.mark.parametrize("ignore_index", [None, 5, 0, 2])
def test_dice_matches_the_numpy_reference_on_random_batches(ignore_index):
    rng = np.random.default_rng(0 if ignore_index is None else ignore_index + 1)
    classes = 6
    targets = rng.integers(0, classes, (7, 9, 11))
    targets[2] = 0  # no foreground at all
    targets[3][targets[3] == 4] = 1  # a class absent from one image
    preds = np.where(rng.random(targets.shape) < 0.6, targets, rng.integers(0, classes, targets.shape))
    metric = MonaiDiceScore(classes, ignore_index=ignore_index)
    metric.update(torch.as_tensor(preds[:4]), torch.as_tensor(targets[:4]))  # accumulates over batches
    metric.update(torch.as_tensor(preds[4:]), torch.as_tensor(targets[4:]))
    assert float(metric.compute()) == pytest.approx(reference_dice(preds, targets, classes, ignore_index), abs=1e-6)
    per_class = MonaiDiceScore(classes, include_background=True, ignore_index=ignore_index, reduction="none")
    per_class.update(torch.as_tensor(preds), torch.as_tensor(targets))
    np.testing.assert_allclose(per_class.compute().numpy(),
                               reference_dice(preds, targets, classes, ignore_index, True, per_class=True), atol=1e-6)


def test_label_maps_give_the_same_values_as_eva_one_hot_path_through_monai():
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(3)
    classes, ignore = 6, 5
    targets = torch.as_tensor(rng.integers(0, classes, (5, 8, 8)))
    preds = torch.as_tensor(rng.integers(0, classes, (5, 8, 8)))
    # eva: index_to_one_hot, apply_ignore_index (mask from the prediction, drop the channel), DiceMetric
    p = F.one_hot(preds, classes).movedim(-1, 1)
    t = F.one_hot(targets, classes).movedim(-1, 1)
    t = t * (~(p[:, ignore] == 1)).unsqueeze(1)
    p = torch.cat([p[:, :ignore], p[:, ignore + 1:]], dim=1)
    t = torch.cat([t[:, :ignore], t[:, ignore + 1:]], dim=1)
    eva = DiceMetric(include_background=False, reduction="mean", num_classes=classes - 1, ignore_empty=True)
    eva(p, t)
    ours = MonaiDiceScore(classes, ignore_index=ignore)
    ours.update(preds, targets)
    torch.testing.assert_close(ours.per_image(), eva.get_buffer(), equal_nan=True)
    assert float(ours.compute()) == pytest.approx(float(eva.aggregate()))


# --------------------------------------------------------------------------------------
# Dice loss


def reference_dice_loss(logits, targets, ignore_index=None):
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
    if ignore_index is not None:
        keep = targets != ignore_index
        targets = targets * keep
        logits = logits * keep[:, None]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    losses = []
    for c in range(logits.shape[1]):
        t = (targets == c).astype(np.float64)
        inter = (probs[:, c] * t).sum()  # batch=True: one Dice over the whole batch
        losses.append(1 - (2 * inter + 1e-5) / (probs[:, c].sum() + t.sum() + 1e-5))
    return float(np.mean(losses))


@pytest.mark.parametrize("ignore_index", [None, 5])
def test_dice_loss_is_monai_softmax_batch_dice_with_eva_ignore_index(ignore_index):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 6, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 6 if ignore_index else 5, (3, 6, 7))
    targets[0, 0, :] = 2  # ties in the targets do not matter; an absent class gets the smoothed Dice
    loss = EvaDiceLoss(ignore_index)(torch.as_tensor(logits), torch.as_tensor(targets))
    assert float(loss) == pytest.approx(reference_dice_loss(logits, targets, ignore_index), abs=1e-5)


# --------------------------------------------------------------------------------------
# Training


def _pool_encoder(images: torch.Tensor) -> torch.Tensor:
    """A frozen 'encoder' whose output per image does not depend on the batch it is in."""
    return torch.cat([F.avg_pool2d(images, 8), F.avg_pool2d(images * images, 8)], dim=1)  # (B, 6, S/8, S/8)


def _toy_split(n, seed, height=40, width=52):
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        image = rng.integers(100, 256, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), np.int64)
        for label in (1, 2, 3):
            y, x = rng.integers(0, height - 10), rng.integers(0, width - 10)
            mask[y : y + 10, x : x + 10] = label
            image[y : y + 10, x : x + 10] = (40 * label, 30, 160 - 30 * label)  # learnable from the pixels
        masks.append(mask)
        images.append(image)
    return images, masks


def _cached(images, masks, size):
    pairs = [resize_and_crop_pair(i, m, size) for i, m in zip(images, masks, strict=True)]
    pixels = torch.from_numpy(np.stack([p[0].transpose(2, 0, 1) for p in pairs]))
    grids = _pool_encoder(normalise_images(pixels, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    return CachedSplit(grids.numpy(), np.stack([p[1] for p in pairs]), pixels.numpy())


PROTOCOL = ProbeProtocol(lr=2e-3, batch_size=4, max_steps=14, patience=2, runs=2, seed=3)


def test_cached_grids_give_the_same_numbers_as_online_encoding_on_deterministic_crops():
    images, masks = _toy_split(10, 0)
    val_images, val_masks = _toy_split(4, 1)
    online = train_segmentation(CropSplit(images, masks, "resize_and_crop", 32),
                                CropSplit(val_images, val_masks, "resize_and_crop", 32),
                                num_classes=4, protocol=PROTOCOL, encoder=_pool_encoder, device="cpu")
    cached = train_segmentation(_cached(images, masks, 32), _cached(val_images, val_masks, 32),
                                num_classes=4, protocol=PROTOCOL, device="cpu")
    assert [r["inputs"] for r in online] == ["online", "online"] and cached[0]["inputs"] == "cached"
    for a, b in zip(online, cached, strict=True):
        a, b = dict(a), dict(b)
        a.pop("inputs"), b.pop("inputs")
        assert a == b
    assert online[0]["steps_per_epoch"] == 3 and online[0]["stop_step"] == 14


def test_each_run_is_reproducible_on_its_own_and_keeps_its_best_checkpoint():
    images, masks = _toy_split(10, 0)
    val = _cached(*_toy_split(4, 1), 32)
    rows = train_segmentation(_cached(images, masks, 32), val, num_classes=4, protocol=PROTOCOL, device="cpu",
                              class_names=["background", "a", "b", "c"])
    again = train_segmentation(_cached(images, masks, 32), val, num_classes=4, protocol=PROTOCOL, device="cpu",
                               runs=[1], class_names=["background", "a", "b", "c"])
    assert again == rows[1:]
    for row in rows:
        assert row["val_dice"] == pytest.approx(row["best_val_score"])  # the restored best decoder, rescored
        assert row["best_step"] % row["steps_per_epoch"] == 0 and 0 <= row["best_epoch"] <= 3
        assert {"dice_background", "dice_a", "dice_b", "dice_c"} <= set(row)
        assert np.mean([row["dice_a"], row["dice_b"], row["dice_c"]]) == pytest.approx(row["val_dice"], abs=0.3)
    assert rows[0]["seed"] == 3 and rows[1]["seed"] == 4


def test_random_resized_crops_train_online_with_an_ignore_index():
    images, masks = _toy_split(6, 0, height=48, width=70)
    for mask in masks:
        mask[:4, :4] = 5  # "ambiguous" corner
    val = CropSplit(*_toy_split(3, 1), "resize_and_crop", 32)
    kwargs = dict(num_classes=4, ignore_index=5, protocol=ProbeProtocol(batch_size=4, max_steps=4, patience=5,
                                                                          runs=1), encoder=_pool_encoder, device="cpu")
    rows = train_segmentation(CropSplit(images, masks, "random_resized_crop", 32), val, **kwargs)
    again = train_segmentation(CropSplit(images, masks, "random_resized_crop", 32), val, **kwargs)
    assert list(rows[0]) == list(again[0])
    np.testing.assert_equal(list(rows[0].values()), list(again[0].values()))  # NaN equals NaN here
    assert rows[0]["inputs"] == "online" and math.isfinite(rows[0]["val_dice"])
    assert "dice_class_4" in rows[0] and "dice_class_5" not in rows[0]  # the ignored class has no score
    assert math.isnan(rows[0]["dice_class_4"])  # class 4 never occurs in the validation masks


def test_training_inputs_are_checked():
    images, masks = _toy_split(4, 0)
    cached = _cached(images, masks, 32)
    with pytest.raises(PathbenchError, match="needs an encoder"):
        train_segmentation(CropSplit(images, masks), cached, num_classes=4, protocol=PROTOCOL, device="cpu")
    with pytest.raises(PathbenchError, match=r"labels \[3\] are outside 0..2"):
        train_segmentation(cached, cached, num_classes=3, protocol=PROTOCOL, device="cpu")
    with pytest.raises(PathbenchError, match="needs the images"):
        train_segmentation(CachedSplit(cached.grids, cached.masks), cached, num_classes=4, protocol=PROTOCOL,
                           device="cpu")
    with pytest.raises(PathbenchError, match="must be uint8 pixels.*got float32"):
        train_segmentation(CachedSplit(cached.grids, cached.masks, cached.images.astype(np.float32)), cached,
                           num_classes=4, protocol=PROTOCOL, device="cpu")
    with pytest.raises(PathbenchError, match="deterministic 'resize_and_crop'"):
        train_segmentation(cached, CropSplit(images, masks, "random_resized_crop", 32), num_classes=4,
                           protocol=PROTOCOL, encoder=_pool_encoder, device="cpu")
    # conv_ms does not see the images, so a CachedSplit without them is enough
    rows = train_segmentation(CachedSplit(cached.grids, cached.masks), CachedSplit(cached.grids, cached.masks),
                              num_classes=4, decoder="conv_ms", device="cpu",
                              protocol=ProbeProtocol(batch_size=4, max_steps=1, runs=1))
    assert rows[0]["decoder"] == "conv_ms" and rows[0]["best_epoch"] == 0
