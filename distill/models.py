"""Student network, DINO/iBOT heads, feature projectors and the frozen teacher.

Token layout everywhere: ``(B, T, D)`` with the class token first, then the register tokens,
then the patch tokens in row-major order (``num_prefix_tokens`` = 1 + registers).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from distill.config import DistillConfig
from pathbench.errors import PathbenchError, WeightsAccessError
from pathbench.extractors import ModelSpec, build_network, get_spec, load_extractor

logger = logging.getLogger("distill")


# ---- heads ---------------------------------------------------------------------------------


class DINOHead(nn.Module):
    """DINO/iBOT projection head: ``n_layers``-layer MLP (GELU) -> bottleneck -> L2 normalise ->
    weight-normalised linear layer without bias to ``out_dim`` prototypes.

    ``(..., in_dim)`` -> ``(..., out_dim)`` logits. ``last_layer`` is the prototype layer (the
    one frozen during the first epoch).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, n_layers: int = 3):
        super().__init__()
        n_layers = max(1, n_layers)
        if n_layers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(n_layers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            # Unit-norm prototypes: the logits are cosine similarities at initialisation.
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The L2 normalisation runs in float32: its backward divides by the bottleneck norm,
        # which overflows float16 when the norm is small.
        x = F.normalize(self.mlp(x).float(), dim=-1, p=2, eps=1e-12)
        return self.last_layer(x)


def build_heads(cfg: DistillConfig, in_dim: int) -> nn.ModuleDict:
    """Separate DINO (class token) and iBOT (patch tokens) heads for tokens of width ``in_dim``."""
    h = cfg.heads
    return nn.ModuleDict(
        {
            "dino": DINOHead(in_dim, h.prototypes, h.hidden_dim, h.dino_bottleneck, h.n_layers),
            "ibot": DINOHead(in_dim, h.prototypes, h.hidden_dim, h.ibot_bottleneck, h.n_layers),
        }
    )


def last_layer_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The prototype-layer parameters of every head inside ``module``."""
    return [p for name, p in module.named_parameters() if ".last_layer." in f".{name}"]


def convert_head_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map head checkpoints in the old ``weight_norm`` layout (``weight_g``/``weight_v``, as in
    DINOv2 checkpoints) to the parametrisation layout used here."""
    out = {}
    for key, value in state.items():
        key = key.replace("last_layer.weight_g", "last_layer.parametrizations.weight.original0")
        key = key.replace("last_layer.weight_v", "last_layer.parametrizations.weight.original1")
        out[key] = value
    return out


def load_teacher_heads(path: str | Path, heads: nn.ModuleDict) -> None:
    """Load DINO and iBOT heads from ``path`` (safetensors or a torch state dict).

    Accepted key layouts: ``dino_head.*`` / ``ibot_head.*`` (DINOv2's), ``dino.*`` / ``ibot.*``,
    each optionally under ``teacher.`` (a DINOv2 training checkpoint's ``model`` entry).
    """
    path = Path(path)
    if not path.is_file():
        raise PathbenchError(
            f"teacher heads file {path} not found; pass --teacher-heads PATH to a file with the teacher's "
            "DINO and iBOT heads, or use the 'fit-heads' or 'features' objective."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
    state = convert_head_state(state)
    for name in ("dino", "ibot"):
        found = {}
        for prefix in (f"teacher.{name}_head.", f"{name}_head.", f"teacher.{name}.", f"{name}."):
            found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if found:
                break
        if not found:
            raise PathbenchError(
                f"{path} holds no {name.upper()} head (looked for keys starting with '{name}_head.' or "
                f"'teacher.{name}_head.'); found keys like {sorted(state)[:4]}."
            )
        try:
            heads[name].load_state_dict(found, strict=True)
        except RuntimeError as exc:
            raise PathbenchError(
                f"the {name.upper()} head in {path} does not match the configured head (heads.prototypes, "
                f"heads.hidden_dim, heads.{name}_bottleneck, heads.n_layers must match the teacher's): {exc}"
            ) from exc


class FeatureProjectors(nn.Module):
    """Two small MLPs mapping student class / patch tokens ``(..., D_s)`` to the teacher's width ``D_t``."""

    def __init__(self, student_dim: int, teacher_dim: int, hidden_dim: int = 2048):
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(student_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, teacher_dim))

        self.cls = mlp()
        self.patch = mlp()


# ---- student -------------------------------------------------------------------------------


def swiglu_timm_mlp_ratio(embed_dim: int, mlp_ratio: float) -> float:
    """The timm ``mlp_ratio`` of a SwiGLUPacked MLP equivalent to DINOv2's SwiGLU at ``mlp_ratio``.

    DINOv2 sizes each SwiGLU branch as ``2/3 * mlp_ratio * dim`` rounded up to a multiple of 8
    (2048 for ViT-B at ratio 4); timm's packed layer holds both branches in one ``fc1`` of
    ``int(dim * ratio)`` outputs. The half-unit margin survives timm's ``int()`` truncation.
    """
    branch = (int(embed_dim * mlp_ratio * 2 / 3) + 7) // 8 * 8
    return (2 * branch + 0.5) / embed_dim


def student_spec(cfg: DistillConfig, mean: tuple[float, ...], std: tuple[float, ...], name: str | None = None) -> ModelSpec:
    """The student's :class:`ModelSpec` (family timm): the build used in training and at export."""
    s = cfg.student
    kwargs: dict[str, Any] = {
        "img_size": s.img_size,
        "patch_size": s.patch_size,
        "embed_dim": s.embed_dim,
        "depth": s.depth,
        "num_heads": s.num_heads,
        "reg_tokens": s.reg_tokens,
        "no_embed_class": True,
        "init_values": s.init_values,
        "drop_path_rate": s.drop_path_rate,
        "dynamic_img_size": True,  # local crops have a smaller grid than global ones
        "num_classes": 0,
    }
    if s.mlp == "swiglu":
        kwargs.update(mlp_ratio=swiglu_timm_mlp_ratio(s.embed_dim, s.mlp_ratio), mlp_layer="SwiGLUPacked", act_layer="silu")
    else:
        kwargs["mlp_ratio"] = s.mlp_ratio
    return ModelSpec(
        name=name or f"distilled:{cfg.name}",
        family="timm",
        arch=s.arch,
        embed_dim=s.embed_dim,
        build_kwargs=kwargs,
        mean=tuple(s.mean or mean),
        std=tuple(s.std or std),
        resize=s.img_size,
        crop=s.img_size,
        interpolation="bicubic",
        num_prefix_tokens=1 + s.reg_tokens,
        default_pooling="cls",
        bench_pooling={"hest": "cls+mean"},
        origin="distill",
    )


class Student(nn.Module):
    """The trained side: a token network plus the parts the objective needs.

    ``backbone(images (B, 3, H, W)) -> tokens (B, T, D)``; ``heads`` (``dino``, ``ibot``) for the
    DINO/iBOT objectives, ``projectors`` for ``features``. For the head-fitting stage the
    backbone is absent and the inputs are teacher tokens.
    """

    def __init__(self, backbone: nn.Module | None, heads: nn.ModuleDict | None, projectors: FeatureProjectors | None):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.projectors = projectors

    def forward(self, global_x: torch.Tensor, local_x: torch.Tensor | None, num_prefix: int) -> dict[str, torch.Tensor]:
        """``global_x``: ``(2B, 3, H, W)`` images (or ``(2B, T, D)`` tokens without a backbone);
        ``local_x``: ``(LB, 3, h, w)`` or ``None``. Returns head outputs or projections."""
        g_tokens = self.backbone(global_x) if self.backbone is not None else global_x
        out: dict[str, torch.Tensor] = {"global_tokens": g_tokens}
        if self.heads is not None:
            out["global_cls"] = self.heads["dino"](g_tokens[:, 0])
            out["global_patch"] = self.heads["ibot"](g_tokens[:, num_prefix:])
            if local_x is not None and local_x.shape[0] > 0:
                l_tokens = self.backbone(local_x) if self.backbone is not None else local_x
                out["local_cls"] = self.heads["dino"](l_tokens[:, 0])
        if self.projectors is not None:
            out["proj_cls"] = self.projectors.cls(g_tokens[:, 0])
            out["proj_patch"] = self.projectors.patch(g_tokens[:, num_prefix:])
        return out


def build_student_backbone(spec: ModelSpec, seed: int) -> nn.Module:
    """The student token network (random init, seeded so every process starts identical)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(spec)


# ---- teacher -------------------------------------------------------------------------------


class Teacher:
    """A frozen pathbench extractor seen as a token network for distillation.

    Images arrive as ``(B, 3, H, W)`` float in ``[0, 1]``; the teacher normalises them with its
    own mean/std, resizes them to its input size when it cannot take them as they are, and
    returns class tokens ``(B, D_t)`` and patch tokens ``(B, P, D_t)`` interpolated onto the
    student's patch grid when the grids differ. ``spec`` replaces ``cfg.teacher.model`` (a model
    that is not in the registry).
    """

    def __init__(self, cfg: DistillConfig, device: torch.device, spec: ModelSpec | None = None):
        import torch.distributed as dist

        # A teacher that will be sharded is loaded into host memory first, so that no single
        # device ever holds all of it; shard() moves one block at a time onto the device.
        sharded = cfg.teacher.fsdp and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        spec = spec if spec is not None else get_spec(cfg.teacher.model)
        if spec.family == "timm" and not spec.build_kwargs.get("dynamic_img_size"):
            # Same weights and, at the native size, the same outputs; other crop sizes (local
            # crops in head fitting) then run at their own resolution instead of being upscaled.
            spec = spec.replace(build_kwargs={**spec.build_kwargs, "dynamic_img_size": True})
        try:
            self.extractor = load_extractor(
                spec,
                weights=cfg.teacher.weights,
                device="cpu" if sharded else device,
                precision="fp32",
                trust_remote_code=cfg.teacher.trust_remote_code,
            )
        except WeightsAccessError as exc:
            raise WeightsAccessError(
                f"{exc} (For distillation, a local copy of the teacher's weights is passed with "
                "--teacher-weights PATH, i.e. teacher.weights.)"
            ) from exc
        self.spec = self.extractor.spec
        self.device = device
        self.network = self.extractor.model
        self.num_prefix_tokens = self.extractor.num_prefix_tokens
        self.input_size = int(self.spec.crop)
        self.dynamic = bool(self.spec.build_kwargs.get("dynamic_img_size", False)) and self.spec.family == "timm"
        patch = getattr(getattr(getattr(self.network, "backbone", None), "patch_embed", None), "patch_size", None)
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None
        self.mean = torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)
        self._logged: set[str] = set()
        self.embed_dim = int(self.spec.embed_dim)

    def shard(self) -> None:
        """Shard the frozen teacher over the process group (FSDP2 ``fully_shard``): each process
        keeps ``1/world`` of the weights and gathers one transformer block at a time during the
        forward pass, so a teacher larger than one device's memory fits."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (dist.get_world_size(),))
        backbone = getattr(self.network, "backbone", self.network)
        blocks = getattr(backbone, "blocks", None)
        if blocks is None:  # transformers models keep their layers under encoder.layer
            blocks = getattr(getattr(backbone, "encoder", None), "layer", [])
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.network, mesh=mesh)
        logger.info("teacher %s sharded over %d processes (FSDP)", self.spec.name, dist.get_world_size())

    def log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.info(message)

    @torch.no_grad()
    def tokens(self, images: torch.Tensor, grid: tuple[int, int] | None, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> class ``(B, D_t)`` and patch ``(B, P, D_t)`` float32 tokens.

        ``grid``: the student's patch grid ``(gh, gw)``; the teacher's grid is bilinearly
        interpolated onto it when it differs (logged once).
        """
        size = images.shape[-1]
        native = self.dynamic and self.patch_size and size % self.patch_size == 0
        if size != self.input_size and not native:
            self.log_once(
                f"resize{size}",
                f"teacher {self.spec.name} takes {self.input_size} px inputs: crops of {size} px are resized for it",
            )
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        x = (images - self.mean) / self.std
        with autocast():
            tokens = self.network(x)
        tokens = tokens.float()
        cls = tokens[:, 0]
        patches = tokens[:, self.num_prefix_tokens :]
        if grid is not None:
            patches = self.match_grid(patches, grid)
        return cls, patches

    def match_grid(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, P_t, D)`` on a square teacher grid -> ``(B, gh * gw, D)`` on the student's grid."""
        n = patches.shape[1]
        side = math.isqrt(n)
        if side * side != n:
            raise PathbenchError(f"teacher {self.spec.name} returned {n} patch tokens, not a square grid.")
        if (side, side) == tuple(grid):
            return patches
        self.log_once(
            f"grid{side}->{grid}",
            f"teacher patch grid {side}x{side} differs from the student's {grid[0]}x{grid[1]}: "
            "teacher patch tokens are bilinearly interpolated onto the student grid",
        )
        b, _, d = patches.shape
        fmap = patches.transpose(1, 2).reshape(b, d, side, side)
        fmap = F.interpolate(fmap, size=tuple(grid), mode="bilinear", align_corners=False)
        return fmap.flatten(2).transpose(1, 2)
