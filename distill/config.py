"""Distillation configuration: nested dataclasses loaded from YAML.

The defaults of every field are the seed paper's Table 4 (ViT-B/14 student with 4 registers
distilled from H-Optimus-0) completed with DINOv2's defaults where the paper is silent;
``distill/configs/default.yaml`` spells them out; ``smoke.yaml`` is a plumbing check that
runs in about 15 s on a CPU (random-weight teacher, tiny student). Every value, from a YAML
file or ``--set``, is checked against its field's type.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pathbench.errors import PathbenchError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OBJECTIVES = ("dino-ibot", "fit-heads", "features")


@dataclass
class TeacherConfig:
    model: str = "h-optimus-0"  # any pathbench registry name whose network returns class + patch tokens
    weights: str | None = None  # local weights file instead of the hub
    heads: str | None = None  # file with the teacher's DINO and iBOT heads (dino-ibot objective)
    precision: str = "bf16"  # forward precision on a GPU (fp32 on a CPU)
    fsdp: bool = False  # shard the frozen teacher across processes (FSDP) when it does not fit one device
    trust_remote_code: bool = False


@dataclass
class StudentConfig:
    arch: str = "vit_base_patch14_reg4_dinov2"  # timm architecture name
    img_size: int = 224
    patch_size: int = 14
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0  # Table 4; with SwiGLU the packed hidden layer is 2 * 2/3 * 4 * dim (as H0-mini)
    mlp: str = "swiglu"  # "swiglu" (SwiGLUPacked + SiLU, H0-mini's build) or "gelu"
    reg_tokens: int = 4
    init_values: float | None = 1.0e-5
    drop_path_rate: float = 0.0  # no stochastic depth (paper)
    mean: list[float] | None = None  # normalisation; None = the teacher's
    std: list[float] | None = None


@dataclass
class HeadsConfig:
    prototypes: int = 131072
    hidden_dim: int = 2048
    dino_bottleneck: int = 384
    ibot_bottleneck: int = 256
    n_layers: int = 3
    projector_hidden: int = 2048  # "features" objective: hidden width of the token projectors


@dataclass
class LossConfig:
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30
    centering: str = "centering"  # "centering" (running mean) or "sinkhorn_knopp"
    center_momentum: float = 0.9
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    cos_weight: float = 1.0  # "features" objective
    l1_weight: float = 1.0


@dataclass
class CropsConfig:
    global_size: int = 224
    global_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    local_number: int = 8
    local_size: int = 98
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])


@dataclass
class OptimConfig:
    batch_size: int = 2048  # total over all processes
    iterations: int = 105000
    epoch_length: int = 1250  # iterations per "epoch" (DINOv2's convention)
    lr: float = 0.004  # base learning rate for a batch of 1024, scaled by sqrt(batch / 1024)
    lr_scaling: str = "sqrt_wrt_1024"  # or "none"
    min_lr: float = 1.0e-6
    warmup_epochs: float = 16
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    layerwise_decay: float = 0.9  # DINOv2's learning-rate decay per block from the top (1.0: off)
    patch_embed_lr_mult: float = 0.2  # DINOv2's extra factor on the patch projection's learning rate
    clip_grad: float = 3.0
    freeze_last_layer_epochs: float = 1
    ema_momentum: float = 0.994
    ema_momentum_end: float = 1.0
    precision: str = "bf16"  # bf16 | fp16 (with a gradient scaler) | fp32; fp32 on a CPU
    fit_heads_iterations: int = 12500  # "fit-heads" objective: length of the head-fitting stage
    fit_heads_lr: float = 0.001


@dataclass
class DataConfig:
    source: str | None = None  # folder of images, parquet file / folder of shards, or "hf:<dataset id>"
    kind: str = "auto"  # auto | folder | parquet | hub
    split: str = "train"
    image_column: str = "image"
    shuffle_buffer: int = 10000  # hub streaming only
    num_workers: int = 8


@dataclass
class OutputConfig:
    dir: str | None = None  # run folder; default ./distill-runs/<name>
    checkpoint_every: int = 1000
    log_every: int = 10
    students_dir: str | None = None  # default $PATHBENCH_STUDENTS or <pathbench cache>/students
    export: bool = True  # write the EMA student to <run folder>/student at the end
    student_name: str | None = None  # registered as distilled:<student_name>; None: the run folder's name
    register: bool = True  # register the exported student's name in the students folder


@dataclass
class DistillConfig:
    name: str = "h0-mini-distilled"
    objective: str = "dino-ibot"
    seed: int = 0
    device: str = "auto"
    cpu_threads: int | None = None  # torch intra-op threads on a CPU (None: torch's default)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    # ---- derived quantities -------------------------------------------------------------
    def scaled_lr(self, base: float | None = None) -> float:
        """The peak learning rate after batch-size scaling."""
        base = self.optim.lr if base is None else base
        if self.optim.lr_scaling == "sqrt_wrt_1024":
            return base * math.sqrt(self.optim.batch_size / 1024.0)
        return base

    def iters(self, epochs: float) -> int:
        """Epochs (possibly fractional) -> iterations."""
        return int(round(epochs * self.optim.epoch_length))

    def run_dir(self) -> Path:
        return Path(self.output.dir) if self.output.dir else Path("distill-runs") / self.name

    def student_name(self) -> str:
        """The exported student's registry name: ``output.student_name``, else the run folder's name."""
        return self.output.student_name or self.run_dir().resolve().name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise PathbenchError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}.")
        if self.loss.centering not in ("centering", "sinkhorn_knopp"):
            raise PathbenchError(
                f"loss.centering must be 'centering' or 'sinkhorn_knopp'; got {self.loss.centering!r}."
            )
        if self.optim.precision not in ("bf16", "fp16", "fp32"):
            raise PathbenchError(f"optim.precision must be bf16, fp16 or fp32; got {self.optim.precision!r}.")
        if self.student.mlp not in ("swiglu", "gelu"):
            raise PathbenchError(f"student.mlp must be 'swiglu' or 'gelu'; got {self.student.mlp!r}.")
        if self.optim.batch_size < 1 or self.optim.iterations < 1:
            raise PathbenchError("optim.batch_size and optim.iterations must be positive.")
        if self.output.log_every < 1 or self.output.checkpoint_every < 0:
            raise PathbenchError(
                "output.log_every must be at least 1 and output.checkpoint_every at least 0 (0: only at the end)."
            )
        for size, name in ((self.crops.global_size, "global"), (self.crops.local_size, "local")):
            if size % self.student.patch_size:
                raise PathbenchError(
                    f"crops.{name}_size ({size}) must be a multiple of student.patch_size ({self.student.patch_size})."
                )


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the field's type ``hint``; ints become floats where a float is expected.

    YAML turns ``--set optim.lr=abc`` into a string and ``--set optim.iterations=1.5`` into a
    float: without this check they would fail deep inside training with a TypeError.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except PathbenchError:
                continue
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(item, args[0], key) for item in value]
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    quote = " (YAML reads it as a number: quote it)" if hint is str and isinstance(value, (int, float)) else ""
    raise PathbenchError(
        f"config key {key!r} expects {_describe(hint)}, got {value!r} ({type(value).__name__}){quote}; "
        f"fix it in the YAML file or with --set {key}=VALUE."
    )


def _from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise PathbenchError(f"config section {where or 'root'!r} must be a mapping, got {type(values).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise PathbenchError(
                f"unknown config key {where + key!r}; known keys here: {', '.join(sorted(fields))}."
            )
        sub = _SECTIONS.get(key) if cls is DistillConfig else None
        kwargs[key] = _from_dict(sub, value or {}, f"{key}.") if sub else _coerce(value, hints[key], where + key)
    return cls(**kwargs)


_SECTIONS = {
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "heads": HeadsConfig,
    "loss": LossConfig,
    "crops": CropsConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "output": OutputConfig,
}


def config_from_dict(values: dict[str, Any]) -> DistillConfig:
    """Build and validate a config from a nested mapping (missing keys take their defaults)."""
    cfg = _from_dict(DistillConfig, values or {}, "")
    cfg.validate()
    return cfg


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A YAML path, or the name of a shipped config (``default``, ``smoke``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path_or_name}.yaml"
    if shipped.is_file():
        return shipped
    raise PathbenchError(
        f"config {str(path_or_name)!r} not found: pass a YAML file or one of the shipped configs "
        f"({', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.yaml')))})."
    )


def load_config(path_or_name: str | Path, overrides: dict[str, Any] | None = None) -> DistillConfig:
    """Load a YAML config and apply ``overrides`` given as dotted keys (``{"optim.lr": 1e-3}``)."""
    path = resolve_config_path(path_or_name)
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    for dotted, value in (overrides or {}).items():
        node = values
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[leaf] = value
    return config_from_dict(values)
