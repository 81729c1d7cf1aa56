"""Unit tests of distill/: losses against hand computations, centring, schedules, EMA, heads,
student build, augmentations, data sources, config, export and registry."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from distill import losses
from distill.augment import MultiCrop, sample_rng
from distill.config import CONFIG_DIR, load_config
from distill.data import (
    HubSource,
    HubStreamSamples,
    MultiCropSamples,
    ParquetImageDataset,
    StepBatches,
    collate,
    open_source,
    stream_index,
    synthetic_tiles,
)
from distill.models import (
    DINOHead,
    build_heads,
    last_layer_parameters,
    load_teacher_heads,
    student_spec,
    swiglu_timm_mlp_ratio,
)
from distill.optim import ema_update, param_groups
from distill.schedules import CosineSchedule, LinearWarmup
from pathbench.errors import PathbenchError

# Tiny networks run fastest on one thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- numpy references ------------------------------------------------------------------------


def np_softmax(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def np_H(t, s_logits, temp):
    """Cross-entropy of one row, written out term by term."""
    logp = s_logits / temp - np.log(np.sum(np.exp(s_logits / temp)))
    return -sum(t[k] * logp[k] for k in range(len(t)))


# ---- losses ----------------------------------------------------------------------------------


def test_dino_loss_matches_hand_computation_with_and_without_local_crops():
    rng = np.random.default_rng(0)
    b, k, n_local, ts = 3, 7, 2, 0.1
    s_g = rng.normal(size=(2, b, k))
    s_l = rng.normal(size=(n_local, b, k))
    t_g = np_softmax(rng.normal(size=(2, b, k)) / 0.05)
    # Paper form without local crops: (H(h1_t, h2_s) + H(h2_t, h1_s)) / 2, averaged over images.
    expected = np.mean([(np_H(t_g[0, i], s_g[1, i], ts) + np_H(t_g[1, i], s_g[0, i], ts)) / 2 for i in range(b)])
    out = losses.dino_loss(torch.tensor(s_g), torch.tensor(t_g), None, ts)
    assert out["dino"].item() == pytest.approx(expected, rel=1e-6)
    assert out["dino_local"].item() == 0.0
    # With local crops: the mean over 2 + 2L (student crop, teacher crop) pairs.
    terms = [np_H(t_g[1, i], s_g[0, i], ts) + np_H(t_g[0, i], s_g[1, i], ts) for i in range(b)]
    local_terms = [np_H(t_g[j, i], s_l[m, i], ts) for m in range(n_local) for j in range(2) for i in range(b)]
    n_terms = 2 + 2 * n_local
    out = losses.dino_loss(torch.tensor(s_g), torch.tensor(t_g), torch.tensor(s_l), ts)
    assert out["dino_global"].item() == pytest.approx(sum(terms) / b / n_terms, rel=1e-6)
    assert out["dino_local"].item() == pytest.approx(sum(local_terms) / b / n_terms, rel=1e-6)
    assert out["dino"].item() == pytest.approx((sum(terms) + sum(local_terms)) / b / n_terms, rel=1e-6)


def test_ibot_loss_is_mean_cross_entropy_over_all_patches_of_both_global_crops():
    rng = np.random.default_rng(1)
    g, b, p, k, ts = 2, 2, 5, 6, 0.1
    s = rng.normal(size=(g, b, p, k))
    t = np_softmax(rng.normal(size=(g, b, p, k)))
    expected = np.mean([[[np_H(t[j, i, q], s[j, i, q], ts) for q in range(p)] for i in range(b)] for j in range(g)])
    got = losses.ibot_loss(torch.tensor(s), torch.tensor(t), ts).item()
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        losses.ibot_loss(torch.tensor(s), torch.tensor(t[:, :, :4]), ts)


def test_feature_loss_is_cosine_distance_plus_smooth_l1():
    rng = np.random.default_rng(2)
    s = rng.normal(size=(4, 3)) * 2
    t = rng.normal(size=(4, 3))
    cos = np.mean([1 - s[i] @ t[i] / np.linalg.norm(s[i]) / np.linalg.norm(t[i]) for i in range(4)])
    d = np.abs(s - t)
    l1 = np.mean(np.where(d < 1.0, 0.5 * d**2, d - 0.5))
    out = losses.feature_loss(torch.tensor(s), torch.tensor(t), cos_weight=2.0, l1_weight=0.5)
    assert out["cos"].item() == pytest.approx(cos, rel=1e-6)
    assert out["l1"].item() == pytest.approx(l1, rel=1e-6)
    assert out["total"].item() == pytest.approx(2 * cos + 0.5 * l1, rel=1e-6)
    same = losses.feature_loss(torch.tensor(t), torch.tensor(t))
    assert same["total"].item() == pytest.approx(0.0, abs=1e-7)


def test_running_mean_centring_uses_the_old_centre_then_updates_with_momentum():
    rng = np.random.default_rng(3)
    k, temp, m = 5, 0.04, 0.9
    centering = losses.TeacherCentering(k, "centering", momentum=m)
    x1 = rng.normal(size=(2, 4, k)).astype(np.float32)
    x2 = rng.normal(size=(6, k)).astype(np.float32)
    p1 = centering(torch.tensor(x1), temp).numpy()
    np.testing.assert_allclose(p1, np_softmax(x1 / temp), rtol=1e-5)  # centre starts at zero
    c1 = (1 - m) * x1.reshape(-1, k).mean(0)
    np.testing.assert_allclose(centering.center.numpy()[0], c1, rtol=1e-5)
    p2 = centering(torch.tensor(x2), temp).numpy()
    np.testing.assert_allclose(p2, np_softmax((x2 - c1) / temp), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(centering.center.numpy()[0], m * c1 + (1 - m) * x2.mean(0), rtol=1e-5)
    # update=False leaves the centre alone.
    before = centering.center.clone()
    centering(torch.tensor(x2), temp, update=False)
    assert torch.equal(before, centering.center)


def np_sinkhorn(logits, temp, iterations):
    q = np.exp(logits / temp).T  # (K, N)
    k, n = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / n
    return (q * n).T


def test_sinkhorn_knopp_matches_reference_and_balances_prototypes():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(64, 8)) * 0.1
    logits[:, 0] += 0.3  # one prototype favoured by every sample
    got = losses.sinkhorn_knopp(torch.tensor(logits), 0.07, n_iterations=3).numpy()
    np.testing.assert_allclose(got, np_sinkhorn(logits, 0.07, 3), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    # Much flatter prototype usage than the plain softmax.
    plain = np_softmax(logits / 0.07).sum(axis=0)
    assert got.sum(axis=0).std() < 0.2 * plain.std()
    # Huge logits stay finite (the shift inside keeps exp() in range).
    big = losses.sinkhorn_knopp(torch.tensor(logits * 1000), 0.04)
    assert torch.isfinite(big).all()
    centering = losses.TeacherCentering(8, "sinkhorn_knopp")
    np.testing.assert_allclose(centering(torch.tensor(logits), 0.07).numpy(), got, rtol=1e-5)


# ---- schedules and EMA -----------------------------------------------------------------------


def test_cosine_schedule_warms_up_linearly_then_follows_a_half_cosine():
    sch = CosineSchedule(base=1.0, final=0.1, total_iters=110, warmup_iters=10)
    assert sch(0) == 0.0
    assert sch(5) == pytest.approx(0.5)
    assert sch(10) == pytest.approx(1.0)
    assert sch(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 50 / 100)))
    assert sch(109) == pytest.approx(0.1, abs=1e-3)
    assert sch(500) == 0.1
    wd = CosineSchedule(0.04, 0.4, 100)
    assert wd(0) == pytest.approx(0.04) and wd(50) == pytest.approx(0.22) and wd(100) == 0.4
    momentum = CosineSchedule(0.994, 1.0, 100)
    assert momentum(0) == pytest.approx(0.994) and momentum(100) == 1.0
    assert all(momentum(i) <= momentum(i + 1) for i in range(100))


def test_teacher_temperature_warms_up_from_004_to_007():
    temp = LinearWarmup(0.04, 0.07, 30)
    assert temp(0) == pytest.approx(0.04)
    assert temp(15) == pytest.approx(0.055)
    assert temp(30) == pytest.approx(0.07)
    assert temp(10_000) == pytest.approx(0.07)


def test_ema_update_matches_hand_computation():
    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    ema = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, online, 0.9)
    for b, p, e in zip(before, online.parameters(), ema.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p.detach())
    ema_update(ema, online, 1.0)
    for b, p, e in zip(before, online.parameters(), ema.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p.detach())


# ---- heads and student -----------------------------------------------------------------------


def test_dino_head_is_mlp_then_unit_bottleneck_then_weight_normalised_prototypes():
    torch.manual_seed(0)
    head = DINOHead(16, 40, hidden_dim=32, bottleneck_dim=8, n_layers=3)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 32), (32, 8)]
    weight = head.last_layer.weight
    assert weight.shape == (40, 8)
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(40))  # unit prototypes
    x = torch.randn(5, 16)
    z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(head(x), z @ weight.T)
    assert head(torch.randn(2, 3, 16)).shape == (2, 3, 40)
    assert len(last_layer_parameters(head)) == 2


def test_teacher_heads_load_from_dinov2_layout(tmp_path):
    cfg = load_config("smoke")
    heads = build_heads(cfg, 24)
    state = {}
    for name in ("dino", "ibot"):
        for key, value in heads[name].state_dict().items():
            key = key.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v"
            )
            state[f"teacher.{name}_head.{key}"] = value + 1.0
    path = tmp_path / "heads.pt"
    torch.save({"model": state}, path)
    loaded = build_heads(cfg, 24)
    load_teacher_heads(path, loaded)
    for name in ("dino", "ibot"):
        for key, value in heads[name].state_dict().items():
            torch.testing.assert_close(loaded[name].state_dict()[key], value + 1.0)
    with pytest.raises(PathbenchError, match="does not match"):
        load_teacher_heads(path, build_heads(load_config("smoke", {"heads.prototypes": 7}), 24))
    with pytest.raises(PathbenchError, match="not found"):
        load_teacher_heads(tmp_path / "missing.pt", loaded)


def test_default_student_is_h0_mini_sized_vit_b14_with_four_registers_and_swiglu():
    from pathbench.extractors import count_parameters

    cfg = load_config("default")
    spec = student_spec(cfg, (0.5,) * 3, (0.25,) * 3)
    assert swiglu_timm_mlp_ratio(768, 4.0) * 768 // 1 == 4096  # two SwiGLU branches of 2048
    assert spec.num_prefix_tokens == 5 and spec.embed_dim == 768
    assert spec.build_kwargs["mlp_layer"] == "SwiGLUPacked" and spec.build_kwargs["drop_path_rate"] == 0.0
    assert count_parameters(spec) == 85_739_520  # H0-mini's parameter count
    assert spec.mean == (0.5, 0.5, 0.5)


def test_param_groups_exempt_norms_biases_and_tokens_from_weight_decay():
    from distill.models import Student, build_student_backbone

    cfg = load_config("smoke")
    spec = student_spec(cfg, (0.5,) * 3, (0.25,) * 3)
    student = Student(build_student_backbone(spec, 0), build_heads(cfg, 64), None)
    groups = param_groups(student)
    names = {id(p): n for n, p in student.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["apply_wd"] for p in g["params"]}
    assert "backbone.backbone.cls_token" not in decayed and "backbone.backbone.reg_token" not in decayed
    assert not any(n.endswith(".bias") or "norm" in n for n in decayed)
    assert "heads.dino.last_layer.parametrizations.weight.original1" in decayed
    last = {names[id(p)] for g in groups if g["last_layer"] for p in g["params"]}
    assert last == {f"heads.{h}.last_layer.parametrizations.weight.original{i}" for h in ("dino", "ibot") for i in (0, 1)}
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(student.parameters()))
    # DINOv2's layer-wise learning-rate decay: the smoke student has 2 blocks.
    mult = {names[id(p)]: g["lr_mult"] for g in param_groups(student, 0.5, 0.2) for p in g["params"]}
    prefix = "backbone.backbone."
    assert mult[prefix + "blocks.1.attn.qkv.weight"] == pytest.approx(0.5)
    assert mult[prefix + "blocks.0.mlp.fc1.weight"] == pytest.approx(0.25)
    assert mult[prefix + "cls_token"] == pytest.approx(0.125)
    assert mult[prefix + "patch_embed.proj.weight"] == pytest.approx(0.125 * 0.2)
    assert mult[prefix + "norm.weight"] == 1.0 and mult["heads.ibot.mlp.0.weight"] == 1.0


# ---- augmentations and data ------------------------------------------------------------------


def test_multicrop_shapes_ranges_and_per_sample_determinism():
    image = synthetic_tiles(1)[0]
    crops = MultiCrop(global_size=56, local_number=3, local_size=28)
    g, loc = crops(image, sample_rng(7, 11))
    assert g.shape == (2, 3, 56, 56) and loc.shape == (3, 3, 28, 28)
    assert g.dtype == torch.float32 and 0.0 <= g.min() and g.max() <= 1.0
    g2, l2 = crops(image, sample_rng(7, 11))
    assert torch.equal(g, g2) and torch.equal(loc, l2)
    g3, _ = crops(image, sample_rng(7, 12))
    assert not torch.equal(g, g3)
    assert not torch.equal(g[0], g[1])
    g0, l0 = MultiCrop(global_size=56, local_number=0)(image, sample_rng(0, 0))
    assert l0.shape[0] == 0


def test_step_batches_slice_the_global_batch_by_rank_and_are_pure_functions_of_the_step():
    whole = list(StepBatches(3, 5, 8, rank=0, world=1))
    halves = [list(StepBatches(3, 5, 8, rank=r, world=2)) for r in range(2)]
    assert whole == [list(range(24, 32)), list(range(32, 40))]
    assert [halves[0][i] + halves[1][i] for i in range(2)] == whole
    with pytest.raises(PathbenchError, match="divisible"):
        StepBatches(0, 1, 6, rank=0, world=4)
    # Each pass over the data is a permutation.
    assert sorted(stream_index(p, 10, 0) for p in range(10, 20)) == list(range(10))
    samples = MultiCropSamples(synthetic_tiles(10), MultiCrop(56, local_number=1, local_size=28), seed=0)
    assert [samples.index(p) for p in range(25)] == [stream_index(p, 10, 0) for p in range(25)]


def _write_parquet(path, images, struct: bool):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    cells = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": f"{i}.png"} if struct else buffer.getvalue())
    pq.write_table(pa.table({"image": cells, "label": list(range(len(images)))}), path, row_group_size=3)


def test_parquet_shards_and_image_folders_read_back_the_pixels(tmp_path):
    from PIL import Image

    tiles = synthetic_tiles(7, size=32).images
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_parquet(shards / "a.parquet", tiles[:4], struct=True)  # datasets' Image feature layout
    _write_parquet(shards / "b.parquet", tiles[4:], struct=False)  # plain binary column
    ds = ParquetImageDataset(shards)
    assert len(ds) == 7
    for i in (0, 3, 4, 6, 2):
        np.testing.assert_array_equal(ds[i], tiles[i])
    cfg = load_config("smoke", {"data.source": str(shards)})
    assert isinstance(open_source(cfg.data), ParquetImageDataset)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, tile in enumerate(tiles):
        Image.fromarray(tile).save(folder / f"t{i}.png")
    source = open_source(load_config("smoke", {"data.source": str(folder)}).data)
    assert len(source) == 7
    with pytest.raises(PathbenchError, match="no column"):
        ParquetImageDataset(shards, column="pixels")
    with pytest.raises(PathbenchError, match="synthetic"):
        open_source(load_config("smoke", {"data.source": "synthetic:x"}).data)


def test_hub_streaming_source_yields_full_deterministic_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    # datasets waits 5 s after each pass over parquet files (an arrow shutdown workaround);
    # harmless over a real data set, it would dominate this test's handful of 6-row passes.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    tiles = synthetic_tiles(6, size=32).images
    _write_parquet(tmp_path / "train.parquet", tiles, struct=True)
    source = HubSource("parquet", data_files={"train": str(tmp_path / "train.parquet")}, buffer_size=4)
    crops = MultiCrop(28, local_number=1, local_size=14)
    batches = list(HubStreamSamples(source, crops, 0, StepBatches(1, 4, 4, rank=0, world=1)))
    assert len(batches) == 3  # steps 1, 2, 3: 12 positions over two passes of 6 images
    g, loc = batches[0]
    assert g.shape == (2, 4, 3, 28, 28) and loc.shape == (1, 4, 3, 14, 14)
    again = list(HubStreamSamples(source, crops, 0, StepBatches(2, 4, 4, rank=0, world=1)))
    assert torch.equal(again[0][0], batches[1][0])  # resuming at step 2 gives step 2's batch
    rank1 = list(HubStreamSamples(source, crops, 0, StepBatches(1, 2, 4, rank=1, world=2)))
    assert torch.equal(rank1[0][0], batches[0][0][:, 2:])
    # With the pass length known (hub metadata), a resumed stream skips ahead to the same rows.
    monkeypatch.setattr(source, "num_rows", lambda: 6)
    skipped = list(HubStreamSamples(source, crops, 0, StepBatches(2, 4, 4, rank=0, world=1)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(skipped, batches[1:], strict=True))


def test_collate_is_crop_major():
    samples = [(torch.full((2, 3, 4, 4), float(i)), torch.full((1, 3, 2, 2), float(i))) for i in range(3)]
    g, loc = collate(samples)
    assert g.shape == (2, 3, 3, 4, 4) and loc.shape == (1, 3, 3, 2, 2)
    assert g[1, 2].unique().item() == 2.0


# ---- config --------------------------------------------------------------------------------


def test_default_config_holds_table_4():
    cfg = load_config("default")
    assert cfg.optim.batch_size == 2048 and cfg.optim.iterations == 105_000 and cfg.optim.epoch_length == 1250
    assert cfg.optim.warmup_epochs == 16 and cfg.loss.warmup_teacher_temp_epochs == 30
    assert cfg.optim.weight_decay_end == 0.4 and cfg.optim.clip_grad == 3.0
    assert (cfg.student.patch_size, cfg.student.reg_tokens, cfg.student.embed_dim) == (14, 4, 768)
    assert (cfg.student.depth, cfg.student.num_heads, cfg.student.mlp) == (12, 12, "swiglu")
    assert (cfg.heads.prototypes, cfg.heads.dino_bottleneck, cfg.heads.ibot_bottleneck) == (131072, 384, 256)
    assert (cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp, cfg.loss.student_temp) == (0.04, 0.07, 0.1)
    assert (cfg.optim.ema_momentum, cfg.optim.ema_momentum_end) == (0.994, 1.0)
    assert cfg.student.drop_path_rate == 0.0 and cfg.teacher.model == "h-optimus-0"
    assert cfg.scaled_lr() == pytest.approx(0.004 * math.sqrt(2))
    assert {p.stem for p in CONFIG_DIR.glob("*.yaml")} >= {"default", "smoke"}


def test_config_errors_name_the_bad_key_and_overrides_apply():
    with pytest.raises(PathbenchError, match="optim.lrr"):
        load_config("smoke", {"optim.lrr": 1})
    with pytest.raises(PathbenchError, match="objective must be one of"):
        load_config("smoke", {"objective": "mse"})
    with pytest.raises(PathbenchError, match="multiple of student.patch_size"):
        load_config("smoke", {"crops.local_size": 50})
    with pytest.raises(PathbenchError, match="not found"):
        load_config("no-such-config")
    assert load_config("smoke", {"optim.lr": 0.5}).optim.lr == 0.5


def test_cli_flags_become_config_overrides():
    import argparse

    from distill.cli import add_arguments, overrides_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--teacher", "uni", "--data", "tiles/", "--set", "optim.lr=0.01", "--no-export"])
    overrides = overrides_from_args(args)
    assert overrides == {"teacher.model": "uni", "data.source": "tiles/", "optim.lr": 0.01, "output.export": False}


def test_register_command_adds_distill_subcommand():
    import argparse

    from distill.cli import register_command, run

    parser = argparse.ArgumentParser(prog="pathbench")
    register_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["distill", "--config", "smoke", "--resume"])
    assert args.func is run and args.resume and args.config == "smoke"


def test_registry_skips_a_broken_student_with_a_warning(tmp_path, monkeypatch):
    from distill.registry import discover_students

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "spec.json").write_text("{}")
    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert discover_students() == []
    assert any("unusable" in str(w.message) for w in caught)


def test_batches_do_not_depend_on_the_number_of_loader_workers():
    from distill.data import make_loader

    tiles = synthetic_tiles(10, size=32)
    crops = MultiCrop(28, local_number=1, local_size=14)
    alone = [g for g, _ in make_loader(tiles, crops, 0, StepBatches(0, 4, 4, 0, 1), num_workers=0)]
    workers = [g for g, _ in make_loader(tiles, crops, 0, StepBatches(0, 4, 4, 0, 1), num_workers=2)]
    assert len(alone) == len(workers) == 4
    assert all(torch.equal(a, b) for a, b in zip(alone, workers, strict=True))
