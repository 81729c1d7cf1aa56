"""The distillation loop: one code path for one CPU process and for many GPUs under torchrun.

Stages. ``dino-ibot``: the frozen teacher (backbone + its DINO/iBOT heads) supervises the
student's heads through centred, sharpened softmaxes. ``features``: the student regresses the
teacher's class and patch tokens. ``fit-heads``: first ``optim.fit_heads_iterations`` steps of
DINO/iBOT self-distillation of new heads on the frozen teacher backbone (student heads vs.
their EMA), whose EMA heads then serve as teacher heads for ``dino-ibot``.

Everything a step depends on is a function of the step number (data, augmentations,
schedules) or is saved in the checkpoint (weights, EMA, optimiser, scaler, centres), so a
resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distill.augment import MultiCrop
from distill.checkpoint import check_student_name, export_student, load_checkpoint, save_checkpoint
from distill.config import DistillConfig
from distill.data import HubSource, StepBatches, make_loader, open_source
from distill.distributed import DistEnv, all_ranks_agree, setup_distributed, stop_on_signal
from distill.loss_curve import plot_loss_curve
from distill.losses import TeacherCentering, dino_loss, feature_loss, ibot_loss
from distill.models import (
    FeatureProjectors,
    Student,
    Teacher,
    build_heads,
    build_student_backbone,
    last_layer_parameters,
    load_teacher_heads,
    student_spec,
)
from distill.optim import Schedules, ema_update, param_groups
from distill.registry import check_name_free, register_student
from distill.rundir import LOG_FILE, STUDENT_DIR, RunLock, prepare_run_dir, trim_log
from pathbench import _io
from pathbench.data.base import TileDataset
from pathbench.diagnostics import EmbeddingHealth
from pathbench.errors import PathbenchError

logger = logging.getLogger("distill")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _step_record(record: dict, stage: str, loss: torch.Tensor, terms: dict, teacher_temp: float,
                 ema_momentum: float, start: float, timer: _Timer) -> dict:
    """The log line of one DINO + iBOT step: loss terms, schedules and timings."""
    record.update({k: float(v.detach()) for k, v in terms.items()})
    record.update(stage=stage, loss=float(loss.detach()), teacher_temp=teacher_temp, ema_momentum=ema_momentum,
                  step_s=time.perf_counter() - start, teacher_s=timer.seconds)
    return record


class _Timer:
    """Wall time of a block, synchronising CUDA so asynchronous kernels are counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start


# ---- the trainer ---------------------------------------------------------------------------


class Distiller:
    """Holds the teacher, the student, their heads, the optimiser state and the schedules.

    Args:
        cfg: the run's configuration.
        env: process placement (from :func:`setup_distributed`).
        teacher: a ready :class:`Teacher` (tests inject tiny ones); built from ``cfg`` otherwise.
        data: a ready :class:`TileDataset` or :class:`HubSource`; opened from ``cfg.data`` otherwise.
    """

    def __init__(
        self,
        cfg: DistillConfig,
        env: DistEnv | None = None,
        teacher: Teacher | None = None,
        data: TileDataset | HubSource | None = None,
    ):
        cfg.validate()
        self.cfg = cfg
        self.env = env or setup_distributed(cfg.device)
        device = self.env.device
        self.device = device
        on_gpu = device.type == "cuda"
        self.precision = cfg.optim.precision if on_gpu else "fp32"
        if cfg.optim.precision != "fp32" and not on_gpu:
            logger.info("mixed precision needs a GPU: training in fp32 on %s", device)
        if cfg.cpu_threads and device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        torch.manual_seed(cfg.seed)

        self.teacher = teacher or Teacher(cfg, device)
        self.teacher_precision = cfg.teacher.precision if on_gpu else "fp32"
        if cfg.teacher.fsdp:
            if self.env.world < 2:
                logger.info("teacher.fsdp needs several processes; the teacher stays whole")
            else:
                self.teacher.shard()
        self.data = data if data is not None else open_source(cfg.data)

        # Student side.
        self.spec = student_spec(cfg, self.teacher.spec.mean, self.teacher.spec.std)
        backbone = build_student_backbone(self.spec, cfg.seed)
        objective = cfg.objective
        heads = build_heads(cfg, cfg.student.embed_dim) if objective in ("dino-ibot", "fit-heads") else None
        projectors = (
            FeatureProjectors(cfg.student.embed_dim, self.teacher.embed_dim, cfg.heads.projector_hidden)
            if objective == "features"
            else None
        )
        self.student = Student(backbone, heads, projectors).to(device)
        self.ema = copy.deepcopy(backbone).to(device).requires_grad_(False)
        self.num_prefix = self.spec.num_prefix_tokens
        self.n_local = cfg.crops.local_number if objective != "features" else 0
        if objective == "features" and cfg.crops.local_number:
            logger.info("the features objective regresses tokens of the global crops only: local crops are not drawn")

        # Teacher heads (dino-ibot; fit-heads fills them in its first stage).
        self.teacher_heads: nn.ModuleDict | None = None
        if objective in ("dino-ibot", "fit-heads"):
            self.teacher_heads = build_heads(cfg, self.teacher.embed_dim).to(device).requires_grad_(False)
            if objective == "dino-ibot":
                if not cfg.teacher.heads:
                    raise PathbenchError(
                        f"the dino-ibot objective needs the teacher's DINO and iBOT heads, and {cfg.teacher.model} "
                        "was given none. Pass --teacher-heads PATH, or use --objective fit-heads (fit heads on the "
                        "frozen teacher first) or --objective features (regress the teacher's tokens)."
                    )
                load_teacher_heads(cfg.teacher.heads, self.teacher_heads)
        n_proto = cfg.heads.prototypes
        self.dino_center = TeacherCentering(n_proto, cfg.loss.centering, cfg.loss.center_momentum).to(device)
        self.ibot_center = TeacherCentering(n_proto, cfg.loss.centering, cfg.loss.center_momentum).to(device)

        # Head-fitting stage (fit-heads): new heads on the frozen teacher backbone and their EMA.
        self.fit_iters = cfg.optim.fit_heads_iterations if objective == "fit-heads" else 0
        if self.fit_iters:
            self.fit_student = Student(None, build_heads(cfg, self.teacher.embed_dim), None).to(device)
            self.fit_ema = copy.deepcopy(self.fit_student.heads).requires_grad_(False)
            self.fit_dino_center = TeacherCentering(n_proto, cfg.loss.centering, cfg.loss.center_momentum).to(device)
            self.fit_ibot_center = TeacherCentering(n_proto, cfg.loss.centering, cfg.loss.center_momentum).to(device)
            self.fit_optimizer = torch.optim.AdamW(param_groups(self.fit_student), betas=tuple(cfg.optim.betas))
            self.fit_model = self._wrap(self.fit_student)
            self.fit_schedules = Schedules.for_stage(cfg, self.fit_iters, cfg.optim.fit_heads_lr)

        self.optimizer = torch.optim.AdamW(
            param_groups(self.student, cfg.optim.layerwise_decay, cfg.optim.patch_embed_lr_mult),
            betas=tuple(cfg.optim.betas),
        )
        self.model = self._wrap(self.student)
        self.schedules = Schedules.for_stage(cfg, cfg.optim.iterations, cfg.scaled_lr())
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.total_iters = self.fit_iters + cfg.optim.iterations
        self.step = 0
        self.crops = MultiCrop.from_config(cfg.crops, local_number=self.n_local)
        self.run_dir = cfg.run_dir()
        # The student learns on inputs normalised exactly as its exported spec will normalise them.
        self.student_mean = torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1)
        self.student_std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.env.world < 2:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def autocast(self, precision: str) -> contextlib.AbstractContextManager:
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[precision])

    # ---- one step ----------------------------------------------------------------------

    def train_step(self, global_crops: torch.Tensor, local_crops: torch.Tensor) -> dict[str, float]:
        """One optimisation step on this process's batch.

        Args:
            global_crops: ``(2, b, 3, G, G)`` float in ``[0, 1]``.
            local_crops: ``(L, b, 3, l, l)`` float in ``[0, 1]`` (``L`` may be 0).

        Returns the step's loss terms, schedule values and timings (floats).
        """
        it = self.step
        if it < self.fit_iters:
            record = self._fit_heads_step(it, global_crops, local_crops)
        else:
            if it == self.fit_iters and self.fit_iters:
                self._finish_fit_heads()
            record = self._distill_step(it - self.fit_iters, global_crops, local_crops)
        self.step += 1
        return record

    def _teacher_tokens(self, images: torch.Tensor, grid, timer: _Timer):
        with timer():
            return self.teacher.tokens(images, grid, lambda: self.autocast(self.teacher_precision))

    def _distill_step(self, it: int, global_crops: torch.Tensor, local_crops: torch.Tensor) -> dict[str, float]:
        cfg, sch = self.cfg, self.schedules
        n_global, b = global_crops.shape[:2]
        g = global_crops.to(self.device, non_blocking=True).flatten(0, 1)
        local = local_crops.to(self.device, non_blocking=True).flatten(0, 1) if self.n_local else None
        side = g.shape[-1] // cfg.student.patch_size
        grid = (side, side)
        timer = _Timer(self.device)
        temp = sch.teacher_temp(it)
        start = time.perf_counter()
        cls_t, patch_t = self._teacher_tokens(g, grid, timer)
        terms: dict[str, torch.Tensor] = {}
        g_student = (g - self.student_mean) / self.student_std
        if cfg.objective == "features":
            with self.autocast(self.precision):
                out = self.model(g_student, None, self.num_prefix)
            cls_terms = feature_loss(out["proj_cls"], cls_t, cfg.loss.cos_weight, cfg.loss.l1_weight)
            patch_terms = feature_loss(
                out["proj_patch"].flatten(0, 1), patch_t.flatten(0, 1), cfg.loss.cos_weight, cfg.loss.l1_weight
            )
            terms = {
                "cls_cos": cls_terms["cos"],
                "cls_l1": cls_terms["l1"],
                "patch_cos": patch_terms["cos"],
                "patch_l1": patch_terms["l1"],
            }
            loss = cls_terms["total"] + patch_terms["total"]
        else:
            with torch.no_grad(), timer(), self.autocast(self.teacher_precision):
                t_cls = self.teacher_heads["dino"](cls_t).float()
                t_patch = self.teacher_heads["ibot"](patch_t).float()
            t_cls = self.dino_center(t_cls, temp).view(n_global, b, -1)
            t_patch = self.ibot_center(t_patch, temp).view(n_global, b, *t_patch.shape[1:])
            local_student = (local - self.student_mean) / self.student_std if local is not None else None
            with self.autocast(self.precision):
                out = self.model(g_student, local_student, self.num_prefix)
            loss, terms = self._dino_ibot_loss(out, t_cls, t_patch, n_global, b)
        record = self._optimise(loss, self.model, self.student, self.optimizer, sch, it)
        ema_update(self.ema, self.student.backbone, sch.momentum(it))
        return _step_record(record, "distill", loss, terms, temp, sch.momentum(it), start, timer)

    def _dino_ibot_loss(self, out, t_cls, t_patch, n_global, b):
        cfg = self.cfg
        s_local = out["local_cls"].view(self.n_local, b, -1) if "local_cls" in out else None
        dino = dino_loss(out["global_cls"].view(n_global, b, -1), t_cls, s_local, cfg.loss.student_temp)
        ibot = ibot_loss(out["global_patch"].view(n_global, b, *out["global_patch"].shape[1:]), t_patch,
                         cfg.loss.student_temp)
        loss = cfg.loss.dino_weight * dino["dino"] + cfg.loss.ibot_weight * ibot
        return loss, {**dino, "ibot": ibot}

    def _fit_heads_step(self, it: int, global_crops: torch.Tensor, local_crops: torch.Tensor) -> dict[str, float]:
        sch = self.fit_schedules
        n_global, b = global_crops.shape[:2]
        timer = _Timer(self.device)
        start = time.perf_counter()
        g = global_crops.to(self.device, non_blocking=True).flatten(0, 1)
        cls_g, patch_g = self._teacher_tokens(g, None, timer)
        tokens_g = torch.cat([cls_g.unsqueeze(1), patch_g], dim=1)
        tokens_l = None
        if self.n_local:
            cls_l, _ = self._teacher_tokens(local_crops.to(self.device, non_blocking=True).flatten(0, 1), None, timer)
            tokens_l = cls_l.unsqueeze(1)
        temp = sch.teacher_temp(it)
        with torch.no_grad(), self.autocast(self.teacher_precision):
            t_cls = self.fit_ema["dino"](cls_g).float()
            t_patch = self.fit_ema["ibot"](patch_g).float()
        t_cls = self.fit_dino_center(t_cls, temp).view(n_global, b, -1)
        t_patch = self.fit_ibot_center(t_patch, temp).view(n_global, b, *t_patch.shape[1:])
        with self.autocast(self.precision):
            # The inputs are token sequences with one prefix token (the class token).
            out = self.fit_model(tokens_g, tokens_l, 1)
        loss, terms = self._dino_ibot_loss(out, t_cls, t_patch, n_global, b)
        record = self._optimise(loss, self.fit_model, self.fit_student, self.fit_optimizer, sch, it)
        ema_update(self.fit_ema, self.fit_student.heads, sch.momentum(it))
        return _step_record(record, "fit-heads", loss, terms, temp, sch.momentum(it), start, timer)

    def _finish_fit_heads(self) -> None:
        """The fitted heads' EMA becomes the teacher's heads for the distillation stage."""
        self.teacher_heads.load_state_dict(self.fit_ema.state_dict())
        logger.info("head fitting done after %d steps: its EMA heads are now the teacher's heads", self.fit_iters)

    def _optimise(self, loss, model, module, optimizer, sch: Schedules, it: int) -> dict[str, float]:
        lr, wd = sch.lr(it), sch.wd(it)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
            group["weight_decay"] = wd if group["apply_wd"] else 0.0
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if it < sch.freeze_last_iters:
            for p in last_layer_parameters(module):
                p.grad = None
        self.scaler.unscale_(optimizer)
        grad_norm = 0.0
        if self.cfg.optim.clip_grad and self.cfg.optim.clip_grad > 0:
            params = [p for p in module.parameters() if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad))
        self.scaler.step(optimizer)
        self.scaler.update()
        return {"lr": lr, "wd": wd, "grad_norm": grad_norm}

    # ---- state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": "pathbench-distill-checkpoint/1",
            "step": self.step,
            "objective": self.cfg.objective,
            "config": self.cfg.to_dict(),
            "student": self.student.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "dino_center": self.dino_center.state_dict(),
            "ibot_center": self.ibot_center.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.teacher_heads is not None:
            state["teacher_heads"] = self.teacher_heads.state_dict()
        if self.fit_iters:
            state["fit"] = {
                "student": self.fit_student.state_dict(),
                "ema": self.fit_ema.state_dict(),
                "optimizer": self.fit_optimizer.state_dict(),
                "dino_center": self.fit_dino_center.state_dict(),
                "ibot_center": self.fit_ibot_center.state_dict(),
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("objective") != self.cfg.objective:
            raise PathbenchError(
                f"the checkpoint was written by a {state.get('objective')!r} run, this run is {self.cfg.objective!r}; "
                "resume with the same config or start a fresh run folder."
            )
        self.step = int(state["step"])
        self.student.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.dino_center.load_state_dict(state["dino_center"])
        self.ibot_center.load_state_dict(state["ibot_center"])
        torch.set_rng_state(state["torch_rng"])
        if self.teacher_heads is not None and "teacher_heads" in state:
            self.teacher_heads.load_state_dict(state["teacher_heads"])
        if self.fit_iters and "fit" in state:
            fit = state["fit"]
            self.fit_student.load_state_dict(fit["student"])
            self.fit_ema.load_state_dict(fit["ema"])
            self.fit_optimizer.load_state_dict(fit["optimizer"])
            self.fit_dino_center.load_state_dict(fit["dino_center"])
            self.fit_ibot_center.load_state_dict(fit["ibot_center"])

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def save(self) -> None:
        if self.env.is_main:
            save_checkpoint(self.checkpoint_path, self.state_dict())
        if dist.is_initialized():
            dist.barrier()

    # ---- the loop ----------------------------------------------------------------------

    def batches(self, stop: int):
        """The data loader for steps ``self.step .. stop - 1`` of this process."""
        plan = StepBatches(self.step, stop, self.cfg.optim.batch_size, self.env.rank, self.env.world)
        return make_loader(
            self.data, self.crops, self.cfg.seed, plan, self.cfg.data.num_workers, pin_memory=self.device.type == "cuda"
        )

    def fit(self, stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Train until ``total_iters`` (or until step ``stop_after``, for tests and time limits).

        Checkpoints every ``output.checkpoint_every`` steps and at the end; exports the EMA
        student when the run is complete. ``log.jsonl`` holds one record per ``output.log_every``
        steps and one for the last step; records past the current step (left by a run killed
        after its last checkpoint) are dropped first, so each step appears once and a resumed
        run's log equals an uninterrupted run's. Returns a summary.
        """
        cfg = self.cfg
        stop = self.total_iters if stop_after is None else min(stop_after, self.total_iters)
        log_path = self.run_dir / LOG_FILE
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _io.write_json(self.run_dir / "config.json", cfg.to_dict())
            # Records past the current step belong to work that is about to be redone.
            dropped = trim_log(log_path, self.step)
            if dropped:
                logger.info("dropped %d log records past step %d (written after the last checkpoint)",
                            dropped, self.step)
        bar = None
        if progress and self.env.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop, initial=self.step, desc=f"distill {cfg.objective}", unit="step")
        start_step, started = self.step, time.perf_counter()
        last = {}
        data_wait = time.perf_counter()
        with stop_on_signal() as stop_requested:
            for global_crops, local_crops in self.batches(stop):
                record = self._one_step(global_crops, local_crops, data_wait, stop, log_path, bar)
                last = record
                if self._agree(stop_requested()):
                    logger.info("stop requested (SIGTERM/SIGUSR1) at step %d: checkpointing", self.step)
                    break
                data_wait = time.perf_counter()
        if bar is not None:
            bar.close()
        self.save()
        summary: dict[str, Any] = {
            "steps": self.step,
            "complete": self.step >= self.total_iters,
            "seconds": time.perf_counter() - started,
            "steps_run": self.step - start_step,
            "last": last,
            "run_dir": str(self.run_dir),
        }
        if self.env.is_main:
            plot_loss_curve(log_path, self.run_dir / "loss_curve.png")
            if summary["complete"] and cfg.output.export:
                folder = self.export()
                summary["student_dir"] = str(folder)
                summary["model"] = f"distilled:{cfg.student_name() if cfg.output.register else folder}"
        return summary

    def _one_step(self, global_crops, local_crops, data_wait: float, stop: int, log_path: Path, bar) -> dict[str, Any]:
        """One step of :meth:`fit` with its logging and periodic checkpoint."""
        cfg = self.cfg
        wait = time.perf_counter() - data_wait
        record = self.train_step(global_crops, local_crops)
        record["data_s"] = wait
        record["images_per_s"] = cfg.optim.batch_size / max(record["step_s"] + wait, 1e-9)
        record["step"] = self.step
        if not math.isfinite(record["loss"]):
            raise PathbenchError(
                f"the loss became {record['loss']} at step {self.step}; lower optim.lr or use fp32/bf16."
            )
        # The steps logged depend only on the run's length, not on where it was stopped.
        if self.env.is_main and (self.step % cfg.output.log_every == 0 or self.step == self.total_iters):
            with open(log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if cfg.output.checkpoint_every and self.step % cfg.output.checkpoint_every == 0 and self.step < stop:
            self.save()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        return record

    def _agree(self, flag: bool) -> bool:
        """True on every process when any process has ``flag`` set (so all stop at the same step)."""
        if not dist.is_initialized():
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def reference_health(self) -> EmbeddingHealth:
        """Embedding health (:mod:`pathbench.diagnostics`) of the EMA student, default pooling, on
        the 44 real tissue tiles shipped with pathbench: a near-constant student is caught here."""
        from pathbench.data.synthetic_plism import load_demo_tiles
        from pathbench.diagnostics import embedding_health
        from pathbench.extractors import Extractor

        tiles, _ = load_demo_tiles()
        probe = Extractor(self.spec, copy.deepcopy(self.ema), "ema", device=self.device)
        embeddings = torch.cat([probe.embed(torch.from_numpy(tiles[i : i + 16])) for i in range(0, len(tiles), 16)])
        return embedding_health(embeddings.numpy())

    def export(self, name: str | None = None) -> Path:
        """Export the EMA student (safetensors + JSON spec) into ``<run folder>/student`` and,
        unless ``output.register`` is off, register it as ``distilled:<name>`` (default: the
        run folder's name). The spec records the student's :meth:`reference_health`."""
        cfg = self.cfg
        name = name or cfg.student_name()
        health = self.reference_health()
        if health.degenerate:
            logger.warning("the exported student is degenerate on the reference tiles: %s", health.summary())
        else:
            logger.info("student on the %d reference tiles: %s", health.n_items, health.summary())
        record = {
            "objective": cfg.objective,
            "teacher": {
                "model": self.teacher.spec.name,
                "weights": self.teacher.extractor.weights_fingerprint,
                "heads": cfg.teacher.heads,
                "embed_dim": self.teacher.embed_dim,
            },
            "data": {"source": cfg.data.source, "fingerprint": getattr(self.data, "fingerprint", None)},
            "steps": self.step,
            "distillation_steps": max(0, self.step - self.fit_iters),
            "images_seen": self.step * cfg.optim.batch_size,
            "run_dir": str(self.run_dir.resolve()),
            "reference_health": {"tiles": "pathbench shipped tissue tiles (cmu_small_region_tiles.npz)",
                                 **health.to_dict()},
            "config": cfg.to_dict(),
        }
        # The timm network itself (not pathbench's token wrapper): its keys are timm's.
        network = getattr(self.ema, "backbone", self.ema)
        folder = export_student(network, self.spec, name, self.run_dir / STUDENT_DIR, record)
        if cfg.output.register:
            link = register_student(name, folder, cfg.output.students_dir)
            logger.info("exported the EMA student to %s: model distilled:%s (registered in %s)", folder, name, link)
        else:
            logger.info("exported the EMA student to %s: model distilled:%s", folder, folder)
        return folder


def train(
    cfg: DistillConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    teacher: Teacher | None = None,
    data: TileDataset | HubSource | None = None,
    env: DistEnv | None = None,
) -> dict[str, Any]:
    """Run (or resume) a distillation described by ``cfg``; returns :meth:`Distiller.fit`'s summary.

    The run folder is locked for the whole run (:class:`distill.rundir.RunLock`). A folder that
    holds an earlier run is refused unless ``resume`` (continue from its checkpoint) or
    ``overwrite`` (delete its outputs first); a student name taken by another run is refused
    before any training. Under torchrun, rank 0 decides and every rank follows.
    """
    env = env or setup_distributed(cfg.device)
    run_dir = cfg.run_dir()
    lock = RunLock(run_dir) if env.is_main else None
    refusal: PathbenchError | None = None
    if lock is not None:
        try:
            lock.acquire()
            prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
            if cfg.output.export:
                check_student_name(cfg.student_name())
            if cfg.output.export and cfg.output.register:
                check_name_free(cfg.student_name(), run_dir / STUDENT_DIR, cfg.output.students_dir)
        except PathbenchError as exc:
            lock.release()
            refusal = exc
    if not all_ranks_agree(refusal is None, env):
        raise refusal or PathbenchError(f"rank 0 refused the run folder {run_dir}: see its message.")
    try:
        distiller = Distiller(cfg, env=env, teacher=teacher, data=data)
        if resume:
            if distiller.checkpoint_path.is_file():
                distiller.load_state_dict(load_checkpoint(distiller.checkpoint_path))
                logger.info("resumed from %s at step %d", distiller.checkpoint_path, distiller.step)
            else:
                logger.info("no checkpoint in %s: starting from step 0", distiller.checkpoint_path.parent)
        return distiller.fit(stop_after=stop_after, progress=progress)
    finally:
        if lock is not None:
            lock.release()
