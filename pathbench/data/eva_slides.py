"""kaiko eva's slide-level offline embedding format, both ways.

What ``eva predict`` writes for Camelyon16 and PANDA (``ClassificationEmbeddingsWriter``
with ``metadata_keys: [wsi_id]``, and ``MultiWsiDataset(coords_path=...)``):

- one ``<wsi_id>.pt`` per slide holding a Python list of ``(D,)`` float32 tensors, one per
  sampled patch (``torch.save``);
- ``manifest.csv`` with columns ``origin,embeddings,target,split,wsi_id``: ``origin`` is
  the slide's file name (``normal_001.tif``), ``embeddings`` the ``.pt`` path relative to
  the folder, ``target`` the class index;
- ``coords_<split>.csv`` with columns ``file,x_y,width,height,level_idx``: ``file`` is the
  slide path relative to the dataset root, ``x_y`` the Python list of level-0 top-left
  corners (``[(0, 0), (230, 460)]``), ``width``/``height`` the region read at ``level_idx``.
  eva lists every slide there, also one whose list is empty (no foreground); such a slide
  has no ``.pt`` and no manifest row.

eva reads it back (``MultiEmbeddingsClassificationDataset``) by grouping manifest rows by
``wsi_id`` (first appearance order), loading each ``.pt`` (a list is stacked, a 1-D tensor
becomes one row) and concatenating the rows of a slide into ``(n_patches, D)``.

Patch order inside a ``.pt``: pathbench writes the sampling order. eva appends the patches
of a slide batch by batch and, when one slide spans several flushes of its writer, puts
the newer batches first; ABMIL does not depend on the order.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pathbench._io import atomic_write, write_csv
from pathbench.data.patching import PatchCoordinates
from pathbench.data.slides import Slide
from pathbench.errors import DataError

SLIDE_MANIFEST_COLUMNS = ["origin", "embeddings", "target", "split", "wsi_id"]
COORDS_COLUMNS = ["file", "x_y", "width", "height", "level_idx"]


def write_eva_slide_embeddings(
    out_dir: str | os.PathLike,
    slides: Sequence[Slide],
    embeddings: Sequence[np.ndarray | torch.Tensor],
    coords: Sequence[PatchCoordinates] | None = None,
) -> Path:
    """Write slide bags in eva's format under ``out_dir``.

    Args:
        slides: the slides, in the order eva would write them (train, val, test).
        embeddings: one ``(n_patches, D)`` array per slide, rows in ``coords`` order; a
            slide with 0 patches gets a ``coords`` row but no ``.pt`` and no manifest row.
        coords: the sampled patches of each slide, for ``coords_<split>.csv``.

    Every file is written atomically and ``manifest.csv`` last, so a folder with a manifest
    is complete. Returns the path of ``manifest.csv``.
    """
    if len(embeddings) != len(slides) or (coords is not None and len(coords) != len(slides)):
        raise DataError(f"eva slide export: {len(slides)} slides but {len(embeddings)} bags"
                        + (f" and {len(coords)} coordinate lists." if coords is not None else "."))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    if manifest.exists():
        manifest.unlink()  # the folder is incomplete until the new manifest lands
    rows, dims = [], set()
    for i, (slide, bag) in enumerate(zip(slides, embeddings, strict=True)):
        tensor = torch.as_tensor(np.asarray(bag, dtype=np.float32) if not isinstance(bag, torch.Tensor) else bag)
        tensor = tensor.detach().to(torch.float32).cpu()
        if tensor.ndim != 2:
            raise DataError(f"eva slide export: the bag of {slide.slide_id} has shape {tuple(tensor.shape)}, "
                            "expected (n_patches, D).")
        if coords is not None and len(coords[i].x_y) != tensor.shape[0]:
            raise DataError(f"eva slide export: {slide.slide_id} has {tensor.shape[0]} embeddings but "
                            f"{len(coords[i].x_y)} coordinates.")
        if tensor.shape[0] == 0:
            continue
        dims.add(int(tensor.shape[1]))
        origin = os.path.basename(slide.origin)
        save_name = os.path.splitext(origin)[0] + ".pt"
        with atomic_write(out_dir / save_name, "wb") as handle:
            torch.save([row.clone() for row in tensor], handle)
        rows.append({"origin": origin, "embeddings": save_name, "target": int(slide.label), "split": slide.split,
                     "wsi_id": slide.slide_id})
    if len(dims) > 1:
        raise DataError(f"eva slide export: bags of different embedding sizes {sorted(dims)}.")
    if len({r["embeddings"] for r in rows}) != len(rows):
        raise DataError("eva slide export: two slides map to the same .pt file name; file names must be unique.")
    if coords is not None:
        for split in dict.fromkeys(s.split for s in slides):
            frame = pd.DataFrame([c.to_eva_row(s.origin) for s, c in zip(slides, coords, strict=True)
                                  if s.split == split], columns=COORDS_COLUMNS)
            write_csv(out_dir / f"coords_{split}.csv", frame)
    write_csv(manifest, pd.DataFrame(rows, columns=SLIDE_MANIFEST_COLUMNS))
    return manifest


@dataclasses.dataclass
class EvaSlideSplit:
    """The bags of one split of an eva slide manifest.

    Attributes:
        bags: one ``(n_patches, D)`` float32 array per slide.
        targets: ``(n_slides,)`` int64.
        slide_ids: the ``wsi_id`` of each slide.
    """

    bags: list[np.ndarray]
    targets: np.ndarray
    slide_ids: list[str]


def _load_bag_file(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read eva embedding file {path}: {exc}") from exc
    if isinstance(obj, (list, tuple)):
        if not obj or not all(isinstance(t, torch.Tensor) for t in obj):
            raise DataError(f"{path}: expected a list of patch embedding tensors, found {len(obj)} items "
                            f"of types {sorted({type(t).__name__ for t in obj})}.")
        obj = torch.stack([t.reshape(-1) if t.ndim == 2 and t.shape[0] == 1 else t for t in obj], dim=0)
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{path}: expected a tensor or a list of tensors, found {type(obj).__name__}.")
    if obj.ndim == 1:
        obj = obj.unsqueeze(0)
    if obj.ndim != 2:
        raise DataError(f"{path}: expected patch embeddings of shape (n, D), found {tuple(obj.shape)}.")
    return obj.to(torch.float32)


def read_eva_slide_embeddings(folder: str | os.PathLike) -> dict[str, EvaSlideSplit]:
    """Read an eva slide-level embeddings folder into ``{split: EvaSlideSplit}``.

    Raises:
        DataError: no manifest, a missing column (``wsi_id`` included), an unreadable ``.pt``,
            embeddings of different sizes, or one slide with two different targets.
    """
    folder = Path(folder)
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest} does not exist; expected an eva slide embeddings folder "
                        f"(manifest.csv with columns {','.join(SLIDE_MANIFEST_COLUMNS)} and one .pt per slide).")
    frame = pd.read_csv(manifest)
    missing = [c for c in ("embeddings", "target", "split", "wsi_id") if c not in frame.columns]
    if missing:
        raise DataError(f"{manifest}: missing columns {missing} (found {list(frame.columns)}); slide-level "
                        "embeddings need a wsi_id column (eva writes it with metadata_keys: [wsi_id]).")
    if frame.empty:
        raise DataError(f"{manifest} lists no embeddings.")
    out: dict[str, EvaSlideSplit] = {}
    dims: set[int] = set()
    for split in dict.fromkeys(frame["split"].astype(str)):
        part = frame[frame["split"].astype(str) == split]
        bags, targets, ids = [], [], []
        for slide_id in part["wsi_id"].unique():
            rows = part[part["wsi_id"] == slide_id]
            if rows["target"].nunique() != 1:
                raise DataError(f"{manifest}: slide {slide_id} has several targets {sorted(rows['target'].unique())}.")
            target = float(rows["target"].iloc[0])
            if not target.is_integer():
                raise DataError(f"{manifest}: targets must be class indices, slide {slide_id} has {target}.")
            bag = torch.cat([_load_bag_file(folder / str(p)) for p in rows["embeddings"]], dim=0)
            dims.add(int(bag.shape[1]))
            bags.append(bag.numpy())
            targets.append(int(target))
            ids.append(str(slide_id))
        out[split] = EvaSlideSplit(bags, np.asarray(targets, dtype=np.int64), ids)
    if len(dims) != 1:
        raise DataError(f"{folder}: patch embeddings of different sizes {sorted(dims)}.")
    return out


def read_eva_coords(path: str | os.PathLike) -> dict[str, PatchCoordinates]:
    """Read eva's ``coords_<split>.csv``: ``{file: PatchCoordinates}`` (``mask_level`` is -1: eva does not store it)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in COORDS_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected {','.join(COORDS_COLUMNS)}.")
    out = {}
    for row in frame.itertuples(index=False):
        try:
            corners = [(int(x), int(y)) for x, y in ast.literal_eval(str(row.x_y))]
        except (ValueError, SyntaxError, TypeError) as exc:
            raise DataError(f"{path}: x_y of {row.file} is not a list of (x, y) pairs: {str(row.x_y)[:80]}") from exc
        out[str(row.file)] = PatchCoordinates(x_y=corners, width=int(row.width), height=int(row.height),
                                              level_idx=int(row.level_idx), mask_level=-1)
    return out
