"""The Benchmark interface: what a benchmark is, what it needs embedded, and how it scores.

A benchmark never sees a model. The runner (:mod:`pathbench.runner`) asks it what to
embed (:meth:`Benchmark.prepare`), or where precomputed embeddings are
(:meth:`Benchmark.load_precomputed`), fills in the embeddings, and hands them to
:meth:`Benchmark.evaluate`, which returns a :class:`BenchResult`: long-form rows (one per
task x unit x metric), the benchmark's own human tables, and what ``run.json`` should say.

Everything a leaderboard needs to know about a benchmark is declared here too
(:class:`LeaderboardSpec`): its columns, how they summarise the units, how the headline
averages them, its plots. The leaderboard reads these declarations, never a benchmark name.

Options are a dataclass (:class:`Benchmark.Options`); fields made with :func:`option`
carry their help text, so the command line derives flags and ``--help`` from them while
this module knows no command line.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pathbench.errors import PathbenchError

if TYPE_CHECKING:  # importing them costs a third of a second that `pathbench --help` need not pay
    import numpy as np
    import pandas as pd

RESULT_COLUMNS = ("task", "unit", "metric", "value")


class Granularity(str, enum.Enum):
    """What one embedded item is.

    - ``TILE``: one pooled embedding per tile, ``(n_items, dim)``;
    - ``BAG``: a bag of tile embeddings per slide, one entry per slide ``(n_patches, dim)``
      with the patch coordinates;
    - ``GRID``: the last layer's patch tokens per image as a grid, ``(n_items, dim, h, w)``.
    """

    TILE = "tile"
    BAG = "bag"
    GRID = "grid"


# ------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------
def option(default: Any = None, *, help: str, choices: Sequence[str] | None = None, flag: str | None = None,
           metavar: str | None = None) -> Any:
    """A dataclass field of a benchmark's options, with what its command-line flag needs.

    Args:
        default: the default value (lists are copied per instance).
        help: one line for ``--help``.
        choices: allowed string values.
        flag: the flag's name when it is not ``--<field-name>``; a boolean that defaults to
            True gets ``--no-<field-name>``.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag, "metavar": metavar}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class NoOptions:
    """A benchmark without options of its own."""


# ------------------------------------------------------------------------------------
# Identity: tasks and metrics
# ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric a benchmark reports per unit.

    Attributes:
        name: column value in the long-form results (``cosine_similarity``, ``pearson``).
        label: short human name.
        higher_is_better: direction of ranking.
        unit: what one value scores, the unit of pairing for statistics (``pair``, ``fold``,
            ``gene``, ``run``, ``slide``).
    """

    name: str
    label: str = ""
    higher_is_better: bool = True
    unit: str = "run"
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a benchmark.

    Attributes:
        name: value of the ``task`` column in the long-form results.
        label: column title in tables (also the column name in published reference tables).
        metric: the task's headline metric (a :class:`Metric` name).
        granularity: what the task embeds (:class:`Granularity`).
    """

    name: str
    label: str = ""
    metric: str = ""
    granularity: Granularity = Granularity.TILE
    description: str = ""

    @property
    def title(self) -> str:
        return self.label or self.name


# ------------------------------------------------------------------------------------
# Leaderboard declarations
# ------------------------------------------------------------------------------------
STATISTICS = ("mean", "median", "nested-mean")
SPREADS = ("iqr", "outer-std", "std")


@dataclasses.dataclass(frozen=True)
class Column:
    """A leaderboard column computed from a run's long-form rows.

    Attributes:
        key: column id (the column name in published reference tables).
        metric: the metric whose unit values the column summarises (None in a per-task
            template: each task's own headline metric).
        tasks: tasks whose units are pooled (None: every task of the run).
        statistic: ``mean``, ``median``, or ``nested-mean`` (units ``outer|inner``: mean
            within each outer group, then over the groups; HEST's genes within folds).
        spread: shown after the value: ``iqr`` (q75 - q25 over units), ``outer-std``
            (population std of the outer-group means), ``std`` (sample std over units).
    """

    key: str
    label: str
    description: str = ""
    metric: str | None = None
    tasks: tuple[str, ...] | None = None
    statistic: str = "mean"
    spread: str | None = None

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise PathbenchError(f"column {self.key!r}: statistic must be one of {', '.join(STATISTICS)}, "
                                 f"got {self.statistic!r}.")
        if self.spread is not None and self.spread not in SPREADS:
            raise PathbenchError(f"column {self.key!r}: spread must be one of {', '.join(SPREADS)} or None, "
                                 f"got {self.spread!r}.")


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """A headline column: the plain mean of other columns.

    Attributes:
        parts: the column keys averaged; None: every per-task column of the row's protocol
            group that the group's runs have (or, without runs, that has values).
        exclude: per-task columns never averaged (eva leaves BACH out).
    """

    key: str
    label: str
    description: str = ""
    parts: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Panel:
    """One scatter panel of a plot: column ``x`` against column ``y``.

    ``reference`` names the published source whose rows are drawn as reference points
    (None: your runs only); ``note`` is printed in the panel's corner.
    """

    x: str
    y: str
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    reference: str | None = None
    reference_label: str = "published"
    note: str = ""
    from_zero: bool = False


@dataclasses.dataclass(frozen=True)
class Plot:
    """A figure of one or more scatter panels, embedded in the HTML report."""

    name: str
    title: str
    caption: str
    panels: tuple[Panel, ...]


@dataclasses.dataclass(frozen=True)
class LeaderboardSpec:
    """How a benchmark's runs become a leaderboard.

    Attributes:
        title: table title.
        columns: fixed columns (computed from the long-form rows).
        default_columns: column keys shown when no reference table is merged (default: all).
        always_columns: column keys shown beside a reference table's columns too (measures
            the benchmark adds to the published ones).
        per_task: a template column repeated for every task (key = the task's label).
        task_order: order of per-task columns, including tasks only references have.
        aggregates: headline columns (means of other columns).
        primary: ranking column: the first of these keys that is shown.
        default_reference: the reference source merged by default (``none`` for none).
        decimals: digits shown.
        plots: scatter figures; ``task_bars`` adds a bar chart of the per-task columns.
        spread_with_reference: a run shows its spread only in columns where the reference
            shows one (False: everywhere).
    """

    title: str
    columns: tuple[Column, ...] = ()
    default_columns: tuple[str, ...] = ()
    always_columns: tuple[str, ...] = ()
    per_task: Column | None = None
    task_order: tuple[str, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    primary: tuple[str, ...] = ()
    default_reference: str = "none"
    decimals: int = 3
    plots: tuple[Plot, ...] = ()
    task_bars: bool = False
    task_bars_caption: str = ""
    spread_with_reference: bool = False
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------
# What flows between the runner and a benchmark
# ------------------------------------------------------------------------------------
@dataclasses.dataclass
class DataRequest:
    """One dataset the runner must embed.

    Attributes:
        dataset: a reader with ``item_ids``, ``fingerprint`` and ``__getitem__ -> (H, W, 3)
            uint8`` (see :mod:`pathbench.data.base`); bag readers also have ``coords``.
        granularity: what to produce per item.
        desc: progress-bar label.
    """

    dataset: Any
    granularity: Granularity = Granularity.TILE
    desc: str = ""


@dataclasses.dataclass
class EmbeddingSet:
    """Embeddings of one dataset.

    Attributes:
        item_ids: one id per row, in order.
        array: ``(n, dim)`` float32 (tiles, or the patches of one bag) or ``(n, dim, h, w)``
            (grids); may be a read-only memory map.
        coords: ``(n, 2)`` patch coordinates of a bag, else None.
        key: the feature-cache key, when the runner computed them.
    """

    item_ids: list[str]
    array: np.ndarray
    coords: np.ndarray | None = None
    key: str | None = None

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclasses.dataclass
class Inputs:
    """A benchmark's data, resolved: what to embed and what it needs besides embeddings.

    Attributes:
        requests: datasets to embed, by key (empty for precomputed embeddings).
        embeddings: embeddings by the same keys, filled by the runner or read from disk.
        context: the benchmark's own data (labels, targets, task structure, slide ids).
        data: provenance of the data for ``run.json``: ``kind`` (hub, local, synthetic,
            embeddings), path, repository; ``synthetic`` is True for demo data.
        input_size: a fixed ``(height, width)`` fed to the network unchanged (eva's 224 x 224
            crops), or None for the model's own resize and crop.
        mpp: microns per pixel of the images, when known.
        wants_encoder: the protocol draws random crops at every training step (eva's MoNuSAC),
            so token grids cannot be cached: the runner then sets ``encoder``, a function
            ``(B, 3, H, W)`` normalised float32 images -> ``(B, dim, h, w)`` token grids (the
            frozen encoder's forward pass, nothing else of the model).
        normalisation: the model's ``(mean, std)``, set by the runner (dense heads see the
            normalised images, as in eva).
    """

    requests: dict[str, DataRequest] = dataclasses.field(default_factory=dict)
    embeddings: dict[str, EmbeddingSet] = dataclasses.field(default_factory=dict)
    context: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    input_size: tuple[int, int] | None = None
    mpp: float | None = None
    wants_encoder: bool = False
    encoder: Any = None
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def synthetic(self) -> bool:
        return bool(self.data.get("synthetic"))


@dataclasses.dataclass
class RunContext:
    """What an evaluation may use besides embeddings and options.

    Attributes:
        out_dir: the run's results folder (a benchmark may keep resumable progress there).
        previous: the ``run.json`` an earlier run left in ``out_dir`` (None if none).
        device: where heads train or metrics run (``cpu``, ``cuda``, ``auto``).
        progress: show progress bars.
        model_name: the name results are filed under.
    """

    out_dir: Path
    previous: dict[str, Any] | None = None
    device: str = "cpu"
    progress: bool = True
    model_name: str = ""


@dataclasses.dataclass
class BenchResult:
    """What one evaluation produced.

    Attributes:
        rows: long-form results, columns :data:`RESULT_COLUMNS` (task, unit, metric, value).
        tables: the benchmark's human files by file name (``pairs.csv``, ``summary.csv``, ...).
        summary: the human summary (also in ``tables``).
        headline: the headline numbers (``{"leaderboard_score": 0.54}``).
        protocol: id of the setting the numbers are comparable under (the leaderboard
            groups by it; published reference rows carry the same ids).
        protocol_detail: one sentence describing that setting.
        record: extra ``run.json`` content (settings, configuration key, notes).
        report: console text.
        notes: things worth a second look, printed after the report.
    """

    rows: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    summary: pd.DataFrame
    headline: dict[str, float | None]
    protocol: str
    protocol_detail: str
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    report: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)


def result_rows(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Long-form rows from dicts with ``task, unit, metric, value`` (units become strings)."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame.from_records(list(records), columns=list(RESULT_COLUMNS))
    frame["task"] = frame["task"].astype(str)
    frame["unit"] = frame["unit"].astype(str)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(np.float64)
    return frame


# ------------------------------------------------------------------------------------
# The interface
# ------------------------------------------------------------------------------------
class Benchmark:
    """Base class of every benchmark. Subclasses set the class attributes and implement
    :meth:`prepare` (and :meth:`load_precomputed` when they read precomputed embeddings)
    and :meth:`evaluate`.

    Class attributes:
        name: registry name (``--bench NAME``).
        protocol: versioned id of the implementation (``plism-v1``).
        title, description: for ``pathbench benchmarks`` and ``--help``.
        Options: dataclass of the benchmark's options (fields made with :func:`option`).
        tasks, metrics: what the benchmark scores.
        data_sources: what ``--data`` accepts (``hf``, ``synthetic``, ``PATH``...).
        precomputed: option names that point at precomputed embeddings; when one is set
            the runner calls :meth:`load_precomputed` and needs no model.
        pooling: the benchmark's fixed default pooling, or None for the model's default
            for this benchmark (``ModelSpec.pooling_for(name)``).
        inline_option: the option set by ``--bench NAME:VALUE`` (e.g. the task list).
        leaderboard: the :class:`LeaderboardSpec`.
        export_formats: formats :meth:`export` writes (``pathbench extract --format``).
    """

    name: ClassVar[str] = ""
    protocol: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    epilog: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    tasks: ClassVar[tuple[Task, ...]] = ()
    metrics: ClassVar[tuple[Metric, ...]] = ()
    data_sources: ClassVar[tuple[str, ...]] = ()
    precomputed: ClassVar[tuple[str, ...]] = ()
    pooling: ClassVar[str | None] = None
    inline_option: ClassVar[str | None] = None
    leaderboard: ClassVar[LeaderboardSpec] = LeaderboardSpec(title="")
    export_formats: ClassVar[tuple[str, ...]] = ()

    # -- options -------------------------------------------------------------------
    def make_options(self, **values: Any) -> Any:
        """The options object from keyword values; unknown names are a clear error."""
        known = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PathbenchError(f"--bench {self.name} has no option {', '.join(unknown)}; its options are "
                                 f"{', '.join(sorted(known)) or 'none'}.")
        return self.Options(**values)

    def uses_precomputed(self, options: Any) -> bool:
        """Whether ``options`` point at precomputed embeddings (no model is needed)."""
        return any(getattr(options, name, None) for name in self.precomputed)

    def check(self, options: Any, *, data: str | None, has_model: bool) -> None:
        """Validate the options against each other before any data or model is touched."""

    # -- data and evaluation -------------------------------------------------------
    def prepare(self, options: Any, data: str | None, *, cache_dir: str | None = None,
                progress: bool = True) -> Inputs:
        """Resolve ``data`` (``hf``, ``synthetic`` or a path) into the datasets to embed."""
        raise NotImplementedError(f"benchmark {self.name!r} does not embed data with a model")

    def load_precomputed(self, options: Any, data: str | None, *, cache_dir: str | None = None,
                         progress: bool = True) -> Inputs:
        """Read the precomputed embeddings named by ``options`` (see :attr:`precomputed`);
        ``data`` is given for benchmarks whose labels or targets live beside the images."""
        raise NotImplementedError(f"benchmark {self.name!r} reads no precomputed embeddings")

    def evaluate(self, inputs: Inputs, options: Any, context: RunContext) -> BenchResult:
        """Score the embeddings in ``inputs``; pure with respect to models and command lines."""
        raise NotImplementedError

    def export(self, inputs: Inputs, out: Path, fmt: str, *, progress: bool = True) -> list[Path]:
        """Write the embeddings in another tool's format (``pathbench extract --format``)."""
        raise NotImplementedError(f"benchmark {self.name!r} exports no format {fmt!r}")

    # -- identity ------------------------------------------------------------------
    def task(self, name: str) -> Task | None:
        """The declared task called ``name`` (or labelled ``name``), if any."""
        lowered = name.lower()
        return next((t for t in self.tasks if lowered in (t.name.lower(), t.title.lower())), None)

    def task_label(self, name: str) -> str:
        """Column title of task ``name`` (its label when declared, else the name)."""
        task = self.task(name)
        return task.title if task else name

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description (``pathbench benchmarks --json``)."""
        options = [{"name": f.name, "default": _jsonable(f.default if f.default is not dataclasses.MISSING
                                                         else f.default_factory()),  # type: ignore[misc]
                    "help": f.metadata.get("help", "")} for f in dataclasses.fields(self.Options)]
        return {
            "name": self.name,
            "protocol": self.protocol,
            "title": self.title,
            "description": self.description,
            "tasks": [{"name": t.name, "label": t.title, "metric": t.metric, "granularity": t.granularity.value}
                      for t in self.tasks],
            "metrics": [{"name": m.name, "label": m.label or m.name, "higher_is_better": m.higher_is_better,
                         "unit": m.unit} for m in self.metrics],
            "headline": [a.key for a in self.leaderboard.aggregates] or list(self.leaderboard.primary),
            "data_sources": list(self.data_sources),
            "needs_model": not self.precomputed,
            "precomputed_inputs": list(self.precomputed),
            "granularities": sorted({t.granularity.value for t in self.tasks}),
            "options": options,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)
