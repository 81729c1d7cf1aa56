"""The loss curve of a run, drawn from its ``log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathbench import _io


def plot_loss_curve(log_path: Path, png_path: Path) -> None:
    """Loss terms and learning rate against the step, from ``log.jsonl`` (last record per step wins)."""
    if not log_path.is_file():
        return
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records: dict[int, dict[str, Any]] = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[int(record["step"])] = record
    if not records:
        return
    steps = sorted(records)
    skip = {"step", "stage", "lr", "wd", "teacher_temp", "ema_momentum", "step_s", "teacher_s", "data_s",
            "images_per_s", "grad_norm"}
    keys = sorted({k for r in records.values() for k, v in r.items() if k not in skip and isinstance(v, float)})
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[3, 1])
    for key in keys:
        xs = [s for s in steps if key in records[s]]
        ax_loss.plot(xs, [records[s][key] for s in xs], label=key, linewidth=2 if key == "loss" else 1)
    switches = [s for prev, s in zip(steps, steps[1:], strict=False)
                if records[s].get("stage") != records[prev].get("stage")]
    for ax in (ax_loss, ax_lr):
        for step in switches:
            ax.axvline(step, color="grey", linestyle="--", linewidth=1)
    if switches:
        ax_loss.text(switches[0], ax_loss.get_ylim()[1], " distillation starts", va="top", fontsize=8, color="grey")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(f"distillation losses ({log_path.parent.name})", fontsize=9)
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, [records[s]["lr"] for s in steps], color="black")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    with _io.atomic_write(png_path, "wb") as handle:
        handle.write(buffer.getvalue())
