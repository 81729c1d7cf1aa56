"""Training tests of distill/ on tiny models (CPU): learning, resume, DDP, export, registry, CLI."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distill.config import load_config
from distill.data import synthetic_tiles
from distill.models import Teacher, build_heads
from distill.train import DistEnv, Distiller, train
from pathbench.errors import PathbenchError
from pathbench.extractors import ModelSpec

# Tiny networks run fastest on one thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A 2-block ViT with 8-pixel patches on 64-pixel inputs (8x8 grid, 1 register): its grid
# differs from the student's 4x4, so the teacher-grid interpolation is exercised too.
TINY_TEACHER = ModelSpec(
    name="tiny-teacher",
    family="timm",
    arch="vit_tiny_patch16_224",
    build_kwargs={"img_size": 64, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2, "reg_tokens": 1,
                  "num_classes": 0},
    num_prefix_tokens=2,
    embed_dim=48,
    random_init=True,
    resize=64,
    crop=64,
)


def tiny_config(tmp_path, **overrides):
    values = {
        "cpu_threads": 1,
        "student.img_size": 56,
        "student.embed_dim": 32,
        "student.depth": 2,
        "student.num_heads": 2,
        "crops.global_size": 56,
        "crops.local_size": 28,
        "crops.local_number": 2,
        "heads.prototypes": 64,
        "heads.hidden_dim": 64,
        "heads.dino_bottleneck": 16,
        "heads.ibot_bottleneck": 16,
        "heads.projector_hidden": 64,
        "optim.batch_size": 8,
        "optim.iterations": 6,
        "optim.epoch_length": 2,
        "optim.fit_heads_iterations": 2,
        "data.num_workers": 0,
        "output.dir": str(tmp_path / "run"),
        "output.checkpoint_every": 0,
        "output.log_every": 1,
        "output.students_dir": str(tmp_path / "students"),
    }
    values.update(overrides)
    return load_config("smoke", values)


def make_teacher(cfg):
    return Teacher(cfg, torch.device("cpu"), spec=TINY_TEACHER)


def write_teacher_heads(cfg, path, seed=3):
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    heads = build_heads(cfg, TINY_TEACHER.embed_dim)
    save_file({f"{n}_head.{k}": v.contiguous() for n in ("dino", "ibot") for k, v in heads[n].state_dict().items()},
              str(path))
    return str(path)


def cpu_env():
    return DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


TILES = synthetic_tiles(32, size=64, seed=1)


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_dino_ibot_without_teacher_heads_explains_the_alternatives(tmp_path):
    cfg = tiny_config(tmp_path, objective="dino-ibot")
    with pytest.raises(PathbenchError, match="fit-heads"):
        Distiller(cfg, env=cpu_env(), teacher=make_teacher(cfg), data=TILES)


def _held_out_views(distiller: Distiller, images: np.ndarray):
    """Whole held-out tiles at the student's input size: ``(B, 3, 56, 56)`` in [0, 1] and normalised."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    x = torch.nn.functional.interpolate(x, size=(56, 56), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(distiller.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(distiller.spec.std).view(1, 3, 1, 1)
    return x, (x - mean) / std


def _prototype_agreement(distiller: Distiller, images: np.ndarray) -> tuple[float, float]:
    """On held-out tiles: share of patches whose student iBOT prototype (argmax) is the
    teacher's, and the cross-entropy of the student's DINO output to the teacher's."""
    x, normalised = _held_out_views(distiller, images)
    with torch.no_grad():
        cls_t, patch_t = distiller.teacher.tokens(x, (4, 4), contextlib.nullcontext)
        t_cls = distiller.teacher_heads["dino"](cls_t)
        t_patch = distiller.teacher_heads["ibot"](patch_t)
        out = distiller.student(normalised, None, distiller.num_prefix)
    agreement = (out["global_patch"].argmax(-1) == t_patch.argmax(-1)).float().mean()
    ce = -(torch.softmax(t_cls / 0.07, -1) * torch.log_softmax(out["global_cls"] / 0.1, -1)).sum(-1).mean()
    return float(agreement), float(ce)


def test_dino_ibot_distillation_lowers_the_loss_and_moves_student_outputs_to_the_teachers(tmp_path):
    cfg = tiny_config(tmp_path, objective="dino-ibot", **{"optim.iterations": 24, "optim.lr": 0.004,
                                                           "output.export": False})
    cfg.teacher.heads = write_teacher_heads(cfg, tmp_path / "heads.safetensors")
    distiller = Distiller(cfg, env=cpu_env(), teacher=make_teacher(cfg), data=TILES)
    held_out = synthetic_tiles(32, size=64, seed=99).images
    agree_before, ce_before = _prototype_agreement(distiller, held_out)
    summary = distiller.fit(progress=False)
    agree_after, ce_after = _prototype_agreement(distiller, held_out)
    assert summary["steps"] == 24 and summary["complete"]
    assert agree_before < 0.1 and agree_after > 0.25, (agree_before, agree_after)
    assert ce_after < ce_before - 1.0, (ce_before, ce_after)
    log = read_log(tmp_path / "run")
    assert {"dino_global", "dino_local", "dino", "ibot", "loss", "lr", "wd", "teacher_temp", "ema_momentum",
            "images_per_s", "teacher_s", "step_s"} <= set(log[0])
    assert log[0]["teacher_temp"] == pytest.approx(0.04) and log[-1]["teacher_temp"] == pytest.approx(0.07)
    # Compare at a fixed teacher temperature (it warms up over the first 2 epochs = 4 steps).
    early = np.mean([r["loss"] for r in log[4:8]])
    late = np.mean([r["loss"] for r in log[-4:]])
    assert late < early - 0.3, (early, late)
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000


def _held_out_alignment(distiller: Distiller, images: np.ndarray) -> dict[str, float]:
    """How well the student's projected tokens predict the teacher's on whole tiles the run never
    saw: R^2 and the cosine after removing the teacher's mean token (so that matching the
    tokens every tile shares earns nothing), for class and patch tokens."""
    x, normalised = _held_out_views(distiller, images)
    with torch.no_grad():
        cls_t, patch_t = distiller.teacher.tokens(x, (4, 4), contextlib.nullcontext)
        out = distiller.student(normalised, None, distiller.num_prefix)
    result = {}
    for name, pred, target in (("cls", out["proj_cls"], cls_t),
                               ("patch", out["proj_patch"].flatten(0, 1), patch_t.flatten(0, 1))):
        centre = target.mean(0)
        result[f"{name}_cos"] = float(torch.nn.functional.cosine_similarity(pred - centre, target - centre).mean())
        result[f"{name}_r2"] = float(1 - ((pred - target) ** 2).sum() / ((target - centre) ** 2).sum())
    return result


def test_feature_distillation_moves_student_tokens_onto_the_teachers(tmp_path):
    cfg = tiny_config(tmp_path, objective="features", **{"optim.iterations": 30, "optim.lr": 0.004,
                                                          "output.export": False})
    distiller = Distiller(cfg, env=cpu_env(), teacher=make_teacher(cfg), data=TILES)
    held_out = synthetic_tiles(16, size=64, seed=99).images
    before = _held_out_alignment(distiller, held_out)
    distiller.fit(progress=False)
    after = _held_out_alignment(distiller, held_out)
    # At initialisation the projections are unrelated to the teacher (cosine ~0, R^2 far below 0).
    assert before["cls_cos"] < 0.1 and before["patch_cos"] < 0.1 and before["patch_r2"] < -1
    assert after["cls_cos"] > 0.25 and after["patch_cos"] > 0.5, after
    assert after["cls_r2"] > 0.0 and after["patch_r2"] > 0.4, after
    log = read_log(tmp_path / "run")
    assert {"cls_cos", "cls_l1", "patch_cos", "patch_l1"} <= set(log[0])
    assert np.mean([r["loss"] for r in log[-5:]]) < 0.5 * np.mean([r["loss"] for r in log[:5]])


def test_resume_after_a_stop_equals_the_uninterrupted_run(tmp_path):
    # fit-heads covers both stages: steps 0-1 fit heads, 2-5 distil; the stop falls after the switch.
    overrides = {"objective": "fit-heads", "output.export": False}
    straight_cfg = tiny_config(tmp_path / "a", **overrides)
    straight = Distiller(straight_cfg, env=cpu_env(), teacher=make_teacher(straight_cfg), data=TILES)
    straight.fit(progress=False)

    cfg = tiny_config(tmp_path / "b", **overrides)
    first = train(cfg, teacher=make_teacher(cfg), data=TILES, env=cpu_env(), progress=False, stop_after=3)
    assert first["steps"] == 3 and not first["complete"]
    resumed = Distiller(cfg, env=cpu_env(), teacher=make_teacher(cfg), data=TILES)
    from distill.checkpoint import load_checkpoint

    resumed.load_state_dict(load_checkpoint(resumed.checkpoint_path))
    assert resumed.step == 3
    resumed.fit(progress=False)
    a, b = straight.state_dict(), resumed.state_dict()
    for part in ("student", "ema", "teacher_heads", "dino_center", "ibot_center"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    for key, value in a["fit"]["ema"].items():
        assert torch.equal(value, b["fit"]["ema"][key])
    # The checkpointed global random state is the uninterrupted run's (the data loaders draw from their own).
    assert torch.equal(load_checkpoint(straight.checkpoint_path)["torch_rng"],
                       load_checkpoint(resumed.checkpoint_path)["torch_rng"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for idx, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][idx]["exp_avg"])
    log_a = [r["loss"] for r in read_log(tmp_path / "a" / "run")]
    log_b = {r["step"]: r["loss"] for r in read_log(tmp_path / "b" / "run")}
    assert log_a == [log_b[s] for s in range(1, 9)]  # 2 head-fitting + 6 distillation steps


def _ddp_worker(rank, world, init_file, cfg_values, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = load_config("smoke", cfg_values)
        env = DistEnv(rank=rank, world=world, local_rank=rank, device=torch.device("cpu"))
        distiller = Distiller(cfg, env=env, teacher=make_teacher(cfg), data=TILES)
        distiller.fit(progress=False)
        if rank == 0:
            torch.save(distiller.state_dict(), out_path)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_takes_the_same_steps_as_one_process_on_the_whole_batch(tmp_path):
    """Gloo on CPU: DDP student (running-mean centring), then DDP student + FSDP teacher (Sinkhorn-Knopp)."""
    values = {
        "cpu_threads": 1, "objective": "dino-ibot", "student.img_size": 56, "student.embed_dim": 32,
        "student.depth": 1, "student.num_heads": 2, "crops.global_size": 56, "crops.local_size": 28,
        "crops.local_number": 1, "heads.prototypes": 64, "heads.hidden_dim": 64, "heads.dino_bottleneck": 16,
        "heads.ibot_bottleneck": 16, "optim.batch_size": 8, "optim.iterations": 2, "optim.epoch_length": 1,
        "optim.freeze_last_layer_epochs": 0, "optim.lr": 0.01, "data.num_workers": 0,
        "output.checkpoint_every": 0, "output.export": False,
    }
    values["teacher.heads"] = write_teacher_heads(load_config("smoke", values), tmp_path / "heads.safetensors")
    base = load_config("smoke", values)
    initial = Distiller(base, env=cpu_env(), teacher=make_teacher(base), data=TILES).student.state_dict()
    for centering in ("centering", "sinkhorn_knopp"):
        values["loss.centering"] = centering
        single_cfg = load_config("smoke", {**values, "output.dir": str(tmp_path / f"single-{centering}")})
        single = Distiller(single_cfg, env=cpu_env(), teacher=make_teacher(single_cfg), data=TILES)
        single.fit(progress=False)
        out = tmp_path / f"ddp-{centering}.pt"
        # The second run also shards the frozen teacher over the two processes (FSDP).
        ddp_values = {**values, "output.dir": str(tmp_path / f"ddp-{centering}"),
                      "teacher.fsdp": centering == "sinkhorn_knopp"}
        mp.start_processes(_ddp_worker, args=(2, str(tmp_path / f"init-{centering}"), ddp_values, str(out)),
                           nprocs=2, join=True, start_method="fork")
        ddp_state = torch.load(out, weights_only=True)
        single_state = single.state_dict()
        for key, value in single_state["student"].items():
            torch.testing.assert_close(ddp_state["student"][key], value, rtol=1e-4, atol=2e-6, msg=key)
        key = "backbone.backbone.patch_embed.proj.weight"
        assert not torch.equal(single_state["student"][key], initial[key])  # the step did move the weights
        torch.testing.assert_close(ddp_state["dino_center"]["center"], single_state["dino_center"]["center"])


def test_exported_student_loads_through_the_registry_and_embeds(tmp_path, monkeypatch):
    from pathbench.extractors import list_specs, load_extractor, load_plugins

    cfg = tiny_config(tmp_path, objective="features", **{"optim.iterations": 2, "output.student_name": "tiny-student"})
    summary = train(cfg, teacher=make_teacher(cfg), data=TILES, env=cpu_env(), progress=False)
    folder = tmp_path / "run" / "student"  # the run's own folder; the students folder only holds the name
    assert summary["student_dir"] == str(folder) and summary["model"] == "distilled:tiny-student"
    assert json.loads((tmp_path / "students" / "tiny-student.link.json").read_text())["path"] == str(folder)
    spec_json = json.loads((folder / "spec.json").read_text())
    assert spec_json["objective"] == "features" and spec_json["teacher"]["model"] == "tiny-teacher"
    assert spec_json["steps"] == 2 and spec_json["token_layout"]["patch_tokens_start"] == 5
    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path / "students"))
    load_plugins(force=True)
    try:
        assert "distilled:tiny-student" in {s.name for s in list_specs("distilled:*")}
        extractor = load_extractor("distilled:tiny-student", device="cpu")
        assert extractor.spec.origin == "distill" and extractor.num_prefix_tokens == 5
        tiles = torch.from_numpy(TILES.images[:4])
        emb = extractor.embed(tiles, pooling="cls+mean")
        assert emb.shape == (4, 64) and torch.isfinite(emb).all()
        # The registry's model is the exported EMA student, weight for weight.
        from safetensors.torch import load_file

        saved = load_file(str(folder / "model.safetensors"))
        for key, value in extractor.model.backbone.state_dict().items():
            assert torch.equal(value, saved[key])
        # `pathbench evaluate --model distilled:<name>` evaluates it (synthetic PLISM, offline).
        from pathbench.cli import main as pathbench_main

        monkeypatch.setenv("PATHBENCH_CACHE", str(tmp_path / "cache"))
        code = pathbench_main(["evaluate", "--model", "distilled:tiny-student", "--bench", "plism", "--data",
                               "synthetic", "--out", str(tmp_path / "plism"), "--device", "cpu", "--no-progress"])
        assert code == 0
        assert (tmp_path / "plism" / "summary.csv").is_file()
        run_json = json.loads((tmp_path / "plism" / "run.json").read_text())
        assert "distilled:tiny-student" in json.dumps(run_json)
        # A single student's own folder works as PATHBENCH_STUDENTS too.
        monkeypatch.setenv("PATHBENCH_STUDENTS", str(folder))
        load_plugins(force=True)
        assert "distilled:tiny-student" in {s.name for s in list_specs("distilled:*")}
    finally:
        monkeypatch.delenv("PATHBENCH_STUDENTS")
        load_plugins(force=True)


def test_python_m_distill_runs_the_smoke_pipeline(tmp_path, monkeypatch):
    from distill.cli import main

    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path / "students"))
    code = main([
        "--config", "smoke", "--out", str(tmp_path / "run"), "--iterations", "2", "--name", "cli-student",
        "--set", "optim.fit_heads_iterations=1", "--set", "data.source=synthetic:8", "--no-progress",
    ])
    assert code == 0
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()
    assert (tmp_path / "students" / "cli-student.link.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert main(["--config", "smoke", "--set", "optim.nope=1"]) == 2


def test_teacher_grid_is_interpolated_onto_the_student_grid(tmp_path):
    cfg = tiny_config(tmp_path)
    teacher = make_teacher(cfg)
    images = torch.rand(3, 3, 64, 64)  # the teacher's native 8x8 grid
    cls, patches = teacher.tokens(images, (4, 4), contextlib.nullcontext)
    assert cls.shape == (3, 48) and patches.shape == (3, 16, 48)
    _, native = teacher.tokens(images, (8, 8), contextlib.nullcontext)
    pooled = torch.nn.functional.avg_pool2d(native.transpose(1, 2).reshape(3, 48, 8, 8), 2)
    torch.testing.assert_close(patches, pooled.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)
    # A timm teacher runs crops whose side is a multiple of its patch at their own size ...
    _, small = teacher.tokens(torch.rand(2, 3, 56, 56), None, contextlib.nullcontext)
    assert small.shape == (2, 49, 48)
    # ... and resizes the others to its input size.
    _, odd = teacher.tokens(torch.rand(2, 3, 28, 28), None, contextlib.nullcontext)
    assert odd.shape == (2, 64, 48)


def test_prototype_layers_stay_frozen_for_the_first_epoch_only(tmp_path):
    from distill.models import last_layer_parameters

    cfg = tiny_config(tmp_path, objective="dino-ibot", **{"optim.iterations": 3, "optim.lr": 0.01,
                                                           "output.export": False})
    cfg.teacher.heads = write_teacher_heads(cfg, tmp_path / "heads.safetensors")
    distiller = Distiller(cfg, env=cpu_env(), teacher=make_teacher(cfg), data=TILES)
    assert distiller.schedules.freeze_last_iters == 2  # one epoch of 2 iterations
    last = last_layer_parameters(distiller.student)
    start = [p.detach().clone() for p in last]
    mlp = distiller.student.heads["dino"].mlp[0].weight
    mlp_start = mlp.detach().clone()
    distiller.fit(stop_after=2, progress=False)
    assert all(torch.equal(p, s) for p, s in zip(last, start, strict=True))
    assert not torch.equal(mlp, mlp_start)
    distiller.fit(progress=False)
    assert not torch.equal(last[1], start[1])


@pytest.mark.parametrize(("precision", "objective"), [("bf16", "dino-ibot"), ("fp16", "features")])
def test_mixed_precision_step_runs_and_keeps_losses_finite(tmp_path, precision, objective):
    # Mixed precision is for GPUs; here the same code path runs under CPU autocast (fp16 with
    # an enabled gradient scaler) to check the plumbing: autocast, scaler, unscale, clipping.
    # (fp16 uses the features objective: the tiny test heads, 64 wide with std-0.02 weights,
    # give bottleneck vectors of norm ~1e-3 whose normalisation gradients overflow float16;
    # 2048-wide heads do not.)
    cfg = tiny_config(tmp_path, objective=objective, **{"optim.iterations": 3, "output.export": False})
    cfg.teacher.heads = write_teacher_heads(cfg, tmp_path / "heads.safetensors")
    distiller = Distiller(cfg, env=cpu_env(), teacher=make_teacher(cfg), data=TILES)
    distiller.precision = distiller.teacher_precision = precision
    distiller.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=precision == "fp16")
    before = distiller.student.backbone.backbone.patch_embed.proj.weight.detach().clone()
    distiller.fit(progress=False)  # (the first step has a learning rate of 0: the warm-up starts there)
    log = read_log(tmp_path / "run")
    assert all(np.isfinite(r["loss"]) for r in log)
    assert np.isfinite(log[-1]["grad_norm"])
    after = distiller.student.backbone.backbone.patch_embed.proj.weight
    assert after.dtype == torch.float32 and not torch.equal(before, after)


def test_sigterm_checkpoints_and_stops_so_the_run_can_resume(tmp_path):
    import signal

    cfg = tiny_config(tmp_path, objective="features", **{"optim.iterations": 6, "output.export": False})
    distiller = Distiller(cfg, env=cpu_env(), teacher=make_teacher(cfg), data=TILES)
    original = distiller.train_step

    def step_then_preempt(global_crops, local_crops):
        record = original(global_crops, local_crops)
        if distiller.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends before pre-emption
        return record

    distiller.train_step = step_then_preempt
    summary = distiller.fit(progress=False)
    assert summary["steps"] == 2 and not summary["complete"]
    from distill.checkpoint import load_checkpoint

    assert load_checkpoint(distiller.checkpoint_path)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again


def test_student_trains_on_inputs_normalised_like_its_exported_spec(tmp_path):
    cfg = tiny_config(tmp_path, objective="dino-ibot", **{"student.mean": [0.1, 0.2, 0.3],
                                                           "student.std": [0.5, 0.6, 0.7]})
    cfg.teacher.heads = write_teacher_heads(cfg, tmp_path / "heads.safetensors")
    distiller = Distiller(cfg, env=cpu_env(), teacher=make_teacher(cfg), data=TILES)
    assert distiller.spec.mean == (0.1, 0.2, 0.3) and distiller.spec.std == (0.5, 0.6, 0.7)
    seen = []
    backbone = distiller.student.backbone
    original = backbone.forward
    backbone.forward = lambda x: seen.append(x.detach().clone()) or original(x)
    global_crops, local_crops = next(iter(distiller.batches(1)))
    distiller.train_step(global_crops, local_crops)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (global_crops.flatten(0, 1) - mean) / std)
    torch.testing.assert_close(seen[1], (local_crops.flatten(0, 1) - mean) / std)
