"""Offline demo data for every benchmark, written in each benchmark's real on-disk format.

- ``plism``: a simulation of PLISM built from real CC0 H&E tiles (stainings in HED colour
  space, scanners as blur, gamma, colour cast and JPEG), in the parquet schema of
  ``owkin/plism-dataset-tiles``. It is a simulation, not PLISM.
- ``hest``: hest-bench task folders (splits, h5 patches, h5ad counts whose expression
  depends on the tile content).
- ``eva``: BACH, CRC, MHIST and PatchCamelyon in the folder layouts eva expects.

Each generator is deterministic from its seed. ``--data synthetic`` uses them through the
cache; :func:`write_synthetic` writes one to a folder of your choice, e.g. to inspect the
formats or to test a reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathbench.errors import PathbenchError


def _plism(root: Path, seed: int) -> Path:
    from pathbench.data.synthetic_plism import write_synthetic_plism

    return write_synthetic_plism(root, seed=seed)


def _hest(root: Path, seed: int) -> Path:
    from pathbench.data.synthetic_hest import make_synthetic_hest

    return make_synthetic_hest(root, seed=seed)


def _eva(root: Path, seed: int) -> Path:
    from pathbench.data.synthetic_eva import make_synthetic_eva

    return make_synthetic_eva(root, seed=seed)


GENERATORS: dict[str, Callable[[Path, int], Path]] = {"plism": _plism, "hest": _hest, "eva": _eva}


def write_task_folder(folder: Path, params: dict[str, Any], write: Callable[[Path], None]) -> bool:
    """Generate one task folder: ``write(staging)`` fills a staging folder beside ``folder``,
    which is renamed into place once complete with its parameters in ``synthetic.json``.

    A folder that already records the same ``params`` is kept (a second call costs nothing).
    Returns whether the folder was written.
    """
    from pathbench._io import atomic_directory, read_json, write_json

    marker = folder / "synthetic.json"
    if marker.is_file() and read_json(marker) == params:
        return False
    with atomic_directory(folder) as staging:
        write(staging)
        write_json(staging / "synthetic.json", params)
    return True


def write_synthetic(bench: str, root: str | os.PathLike, seed: int = 0) -> Path:
    """Write ``bench``'s synthetic dataset under ``root`` and return the folder to pass as ``--data``."""
    if bench not in GENERATORS:
        raise PathbenchError(f"no synthetic data for {bench!r}: expected one of {', '.join(GENERATORS)}.")
    return GENERATORS[bench](Path(root), seed)
