"""`pathbench distill` killed with SIGKILL at several points and resumed ends exactly where an
uninterrupted run ends: same checkpoint bytes, same student bytes, same log (timings aside)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distill.config import load_config
from distill.train import DistEnv, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 12
# Checkpoints at 4 and 8: the kills fall before the first one, between two, and right after one.
KILL_AFTER_STEPS = (2, 6, 9)
OVERRIDES = {"optim.iterations": ITERATIONS, "output.checkpoint_every": 4, "data.source": "synthetic:16",
             "output.register": False}
TIMINGS = {"step_s", "teacher_s", "data_s", "images_per_s"}


def cli_args(out: Path, resume: bool) -> list[str]:
    args = [sys.executable, "-m", "distill", "--config", "smoke", "--out", str(out), "--no-progress"]
    for key, value in OVERRIDES.items():
        args += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args + (["--resume"] if resume else [])


def last_logged_step(log: Path) -> int:
    if not log.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines(keepends=True) if line.endswith("\n")]
    return max(steps, default=0)


def start(out: Path, resume: bool, stderr_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen(cli_args(out, resume), stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=REPO)


def records(log: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in log.read_text().splitlines()]


def test_sigkill_at_several_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    out = tmp_path / "run"
    # The uninterrupted run, in this process, in the same folder (the config, which names the
    # folder, is part of the checkpoint); then moved aside.
    cfg = load_config("smoke", {**OVERRIDES, "output.dir": str(out)})
    summary = train(cfg, env=DistEnv(0, 1, 0, torch.device("cpu")), progress=False)
    assert summary["complete"]
    reference = tmp_path / "reference"
    out.rename(reference)

    stale_notices = 0
    for attempt, target in enumerate(KILL_AFTER_STEPS):
        stderr_path = tmp_path / f"stderr-{attempt}.txt"
        process = start(out, resume=attempt > 0, stderr_path=stderr_path)
        deadline = time.monotonic() + 120
        while last_logged_step(out / "log.jsonl") < target and process.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, stderr_path.read_text()[-2000:]
        assert (out / ".lock").exists()  # a killed run cannot clean up: the next one finds a stale lock
        stale_notices += "taking over the lock of a run that is gone" in stderr_path.read_text()

    final = start(out, resume=True, stderr_path=tmp_path / "stderr-final.txt")
    assert final.wait(timeout=300) == 0, (tmp_path / "stderr-final.txt").read_text()[-2000:]
    stale_notices += "taking over the lock" in (tmp_path / "stderr-final.txt").read_text()
    assert stale_notices == len(KILL_AFTER_STEPS)  # every resume took over its killed predecessor's lock

    assert (out / "checkpoints" / "last.pt").read_bytes() == (reference / "checkpoints" / "last.pt").read_bytes()
    student, expected = out / "student", reference / "student"
    assert (student / "model.safetensors").read_bytes() == (expected / "model.safetensors").read_bytes()
    spec, expected_spec = (json.loads((f / "spec.json").read_text()) for f in (student, expected))
    spec.pop("exported_at"), expected_spec.pop("exported_at")
    assert spec == expected_spec
    log = records(out / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, ITERATIONS + 1))
    assert log == records(reference / "log.jsonl")
    assert not (out / ".lock").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no half-written files left
