"""Run folders of distill/: refusal of silent restarts, --overwrite, the lock, the log after a
resume, where students are exported and how they are named, --set validation, the smoke recipe."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from test_distill_train import TILES, cpu_env, make_teacher, read_log, tiny_config

from distill import rundir
from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.cli import main as distill_main
from distill.config import load_config
from distill.registry import discover_students, known_students, register_student, resolve_student
from distill.rundir import RunLock, trim_log
from distill.train import Distiller, train
from pathbench.errors import ModelNotFoundError, PathbenchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TIMINGS = {"step_s", "teacher_s", "data_s", "images_per_s"}


def run_train(cfg, **kwargs):
    return train(cfg, teacher=make_teacher(cfg), data=TILES, env=cpu_env(), progress=False, **kwargs)


def features_config(tmp_path, **overrides):
    return tiny_config(tmp_path, objective="features", **{"output.export": False, **overrides})


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


# ---- a fresh run never mixes with an earlier one ------------------------------------------------


def test_a_fresh_run_refuses_a_folder_with_a_checkpoint_and_names_resume_and_overwrite(tmp_path):
    cfg = features_config(tmp_path, **{"optim.iterations": 4})
    run_train(cfg, stop_after=2)
    log_before = (tmp_path / "run" / "log.jsonl").read_bytes()
    with pytest.raises(PathbenchError, match=r"--resume.*--overwrite") as caught:
        run_train(features_config(tmp_path, **{"optim.iterations": 4}))
    assert "checkpoints/last.pt" in str(caught.value)
    assert (tmp_path / "run" / "log.jsonl").read_bytes() == log_before  # nothing appended
    assert not (tmp_path / "run" / ".lock").exists()  # the refusal released the lock


def test_a_folder_with_only_a_log_is_refused_too(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(PathbenchError, match=r"outputs \(log.jsonl\)"):
        run_train(features_config(tmp_path))


def test_overwrite_deletes_only_what_a_run_writes_and_starts_a_clean_log(tmp_path):
    cfg = features_config(tmp_path, **{"optim.iterations": 3})
    run_train(cfg)
    notes = tmp_path / "run" / "notes.txt"
    notes.write_text("mine")
    run_train(features_config(tmp_path, **{"optim.iterations": 3}), overwrite=True)
    assert notes.read_text() == "mine"
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(PathbenchError, match="not both"):
        run_train(features_config(tmp_path), resume=True, overwrite=True)


# ---- the lock -------------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from distill.rundir import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


def python_env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def test_a_second_process_cannot_take_a_held_run_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=python_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        record = json.loads((tmp_path / "run" / ".lock").read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        with pytest.raises(PathbenchError, match=rf"in use by another distillation \(pid {holder.pid} on "):
            run_train(features_config(tmp_path))
        assert not (tmp_path / "run" / "log.jsonl").exists()
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0 and not (tmp_path / "run" / ".lock").exists()
    run_train(features_config(tmp_path, **{"optim.iterations": 1}))  # free again


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_notice(tmp_path, caplog):
    (tmp_path / "run").mkdir()
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
    (tmp_path / "run" / ".lock").write_text(json.dumps(stale))
    with caplog.at_level("WARNING", logger="distill"):
        run_train(features_config(tmp_path, **{"optim.iterations": 1}))
    assert f"taking over the lock of a run that is gone (pid {stale['pid']} on" in caplog.text


@pytest.mark.parametrize("who", ["dead here", "alive here", "other host", "unreadable"])
def test_without_flock_the_pid_and_host_decide(tmp_path, monkeypatch, caplog, who):
    monkeypatch.setattr(rundir, "fcntl", None)  # a file system without flock
    run = tmp_path / "run"
    run.mkdir()
    holder = {"dead here": {"pid": dead_pid(), "host": socket.gethostname()},
              "alive here": {"pid": os.getppid(), "host": socket.gethostname()},
              "other host": {"pid": dead_pid(), "host": socket.gethostname() + "-elsewhere"},
              "unreadable": None}[who]
    (run / ".lock").write_text(json.dumps(holder) if holder else "garbage")
    lock = RunLock(run)
    if who == "dead here":
        with caplog.at_level("WARNING", logger="distill"):
            lock.acquire()
        assert "taking over" in caplog.text
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        lock.release()
        assert not (run / ".lock").exists()
    else:
        with pytest.raises(PathbenchError, match=r"in use by another distillation.*delete .*\.lock"):
            lock.acquire()


def _ddp_train(rank, world, init_file, cfg_values, resume, report_dir):
    import torch.distributed as dist

    from distill.train import DistEnv

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = load_config("smoke", cfg_values)
        env = DistEnv(rank=rank, world=world, local_rank=rank, device=torch.device("cpu"))
        try:
            train(cfg, teacher=make_teacher(cfg), data=TILES, env=env, progress=False, resume=resume)
            outcome = "ran"
        except PathbenchError as exc:
            outcome = f"refused: {exc}"
        Path(report_dir, f"rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_under_torchrun_rank_0_decides_for_every_rank(tmp_path):
    import torch.multiprocessing as mp

    cfg_values = {"objective": "features", "cpu_threads": 1, "student.img_size": 56, "student.embed_dim": 32,
                  "student.depth": 1, "student.num_heads": 2, "crops.global_size": 56, "heads.projector_hidden": 32,
                  "optim.batch_size": 4, "optim.iterations": 2, "data.num_workers": 0, "output.export": False,
                  "output.dir": str(tmp_path / "run")}
    outcomes = []
    for attempt, resume in enumerate((False, False, True)):  # a run, a refused restart, a resume
        report = tmp_path / f"report-{attempt}"
        report.mkdir()
        context = mp.start_processes(_ddp_train, args=(2, str(tmp_path / f"init-{attempt}"), cfg_values, resume,
                                                      str(report)), nprocs=2, join=False, start_method="fork")
        deadline = time.monotonic() + 120
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "a rank is stuck"
        outcomes.append([(report / f"rank{r}.txt").read_text() for r in range(2)])
    assert outcomes[0] == ["ran", "ran"] and outcomes[2] == ["ran", "ran"]
    assert outcomes[1][0].startswith("refused: run folder") and "--overwrite" in outcomes[1][0]
    assert outcomes[1][1].startswith("refused: rank 0 refused the run folder")


def test_an_out_that_cannot_be_a_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        code = distill_main(["--config", "smoke", "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "cannot write to the run folder" in err and "--out" in err and "Traceback" not in err


# ---- the log after a resume ---------------------------------------------------------------------


def test_trim_log_keeps_lines_up_to_the_step_byte_for_byte_and_drops_a_cut_line(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = ['{"step": 1, "loss": 0.30000000000000004}\n', '{"step": 2, "loss": 1e-300}\n',
             '{"step": 3, "loss": 2.5}\n', '{"step": 4, "lo']
    log.write_text("".join(lines))
    assert trim_log(log, 2) == 2
    assert log.read_text() == "".join(lines[:2])
    assert trim_log(log, 2) == 0 and trim_log(tmp_path / "missing.jsonl", 5) == 0


def test_a_resume_after_a_kill_past_the_checkpoint_logs_each_step_once(tmp_path):
    """The run got to step 4 but its last checkpoint is from step 2 (it was killed in between)."""
    values = {"optim.iterations": 6, "output.checkpoint_every": 2}
    straight = features_config(tmp_path / "straight", **values)
    run_train(straight)

    cfg = features_config(tmp_path / "killed", **values)
    run_train(cfg, stop_after=2)
    at_step_2 = load_checkpoint(cfg.run_dir() / "checkpoints" / "last.pt")
    run_train(cfg, resume=True, stop_after=4)
    save_checkpoint(cfg.run_dir() / "checkpoints" / "last.pt", at_step_2)  # what a kill at step 4 leaves
    summary = run_train(cfg, resume=True)
    assert summary["complete"]
    log = read_log(cfg.run_dir())
    assert [r["step"] for r in log] == list(range(1, 7))
    assert without_timings(log) == without_timings(read_log(straight.run_dir()))


def test_a_stop_between_log_records_leaves_the_log_of_an_uninterrupted_run(tmp_path):
    values = {"optim.iterations": 6, "output.log_every": 2}
    straight = features_config(tmp_path / "straight", **values)
    run_train(straight)
    cfg = features_config(tmp_path / "stopped", **values)
    run_train(cfg, stop_after=3)
    run_train(cfg, resume=True)
    assert [r["step"] for r in read_log(cfg.run_dir())] == [2, 4, 6]
    assert without_timings(read_log(cfg.run_dir())) == without_timings(read_log(straight.run_dir()))


# ---- where students go and what they are called -------------------------------------------------


def student_config(tmp_path, folder, **overrides):
    return tiny_config(tmp_path, objective="features", **{
        "optim.iterations": 1, "output.dir": str(tmp_path / folder), **overrides})


def test_each_run_exports_into_its_own_folder_under_its_own_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path / "students"))
    first = run_train(student_config(tmp_path, "run-a"))
    first_weights = (tmp_path / "run-a" / "student" / "model.safetensors").read_bytes()
    second = run_train(student_config(tmp_path, "run-b", seed=1))
    assert (first["student_dir"], first["model"]) == (str(tmp_path / "run-a" / "student"), "distilled:run-a")
    assert (second["student_dir"], second["model"]) == (str(tmp_path / "run-b" / "student"), "distilled:run-b")
    assert (tmp_path / "run-a" / "student" / "model.safetensors").read_bytes() == first_weights  # untouched
    specs = {s.name: s for s in discover_students()}
    assert Path(specs["distilled:run-a"].weights_path).parent == tmp_path / "run-a" / "student"
    assert Path(specs["distilled:run-b"].weights_path).parent == tmp_path / "run-b" / "student"
    spec_json = json.loads((tmp_path / "run-b" / "student" / "spec.json").read_text())
    assert spec_json["run_dir"] == str(tmp_path / "run-b") and spec_json["name"] == "run-b"
    assert set(spec_json["reference_health"]) >= {"mean_cosine", "effective_rank", "degenerate", "reasons"}


def test_a_name_taken_by_another_run_is_refused_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path / "students"))
    run_train(student_config(tmp_path, "run-a", **{"output.student_name": "shared"}))
    with pytest.raises(PathbenchError, match=r"distilled:shared is already taken by the student in .*run-a"):
        run_train(student_config(tmp_path, "run-b", **{"output.student_name": "shared"}))
    assert not (tmp_path / "run-b" / "checkpoints").exists()
    # The same run may export again under its own name (here after --overwrite).
    run_train(student_config(tmp_path, "run-a", **{"output.student_name": "shared"}), overwrite=True)
    # A hand-placed (or older) student folder holds its name as well.
    legacy = tmp_path / "students" / "old-student"
    legacy.mkdir()
    (legacy / "spec.json").write_text("{}")
    with pytest.raises(PathbenchError, match="old-student"):
        register_student("old-student", tmp_path / "run-a" / "student")


def test_a_deleted_run_frees_its_name_and_its_link_is_reported(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path / "students"))
    run_train(student_config(tmp_path, "run-a", **{"output.student_name": "reused"}))
    shutil.rmtree(tmp_path / "run-a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert "reused" not in known_students()
    assert any("holds no exported student any more" in str(w.message) for w in caught)
    summary = run_train(student_config(tmp_path, "run-b", **{"output.student_name": "reused"}))
    assert known_students()["reused"] == Path(summary["student_dir"])


def test_a_run_folder_name_that_cannot_be_a_model_name_is_refused_before_training(tmp_path):
    with pytest.raises(PathbenchError, match=r"student name 'my run' must .*pass --name"):
        run_train(student_config(tmp_path, "my run", **{"output.register": False}))
    assert not (tmp_path / "my run" / "checkpoints").exists()
    summary = run_train(student_config(tmp_path, "my run", **{"output.student_name": "my-run",
                                                               "output.register": False}))
    assert json.loads((Path(summary["student_dir"]) / "spec.json").read_text())["name"] == "my-run"


def test_no_register_exports_without_a_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path / "students"))
    summary = run_train(student_config(tmp_path, "run-a", **{"output.register": False}))
    assert summary["model"] == f"distilled:{tmp_path / 'run-a' / 'student'}"
    assert not (tmp_path / "students").exists() and known_students() == {}


def test_distilled_path_resolves_a_student_folder_its_spec_or_its_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path / "students"))
    run_train(student_config(tmp_path, "run-a", **{"output.register": False}))
    folder = tmp_path / "run-a" / "student"
    for given in (folder, folder / "spec.json", tmp_path / "run-a"):
        spec = resolve_student(f"distilled:{given}")
        assert spec.name == f"distilled:{given}" and Path(spec.weights_path) == folder / "model.safetensors"
    monkeypatch.chdir(tmp_path)
    assert resolve_student("distilled:run-a/student").weights_path == str(Path("run-a/student/model.safetensors"))
    assert resolve_student("distilled:run-a") is not None  # an existing folder, even without a slash
    assert resolve_student("distilled:some-name") is None  # names are the listing's business
    assert resolve_student("timm:vit_small_patch16_224") is None
    with pytest.raises(ModelNotFoundError, match="no exported student at .*nowhere.*spec.json"):
        resolve_student(f"distilled:{tmp_path / 'nowhere'}")
    assert discover_students.resolve(f"distilled:{folder}").origin == "distill"  # the entry point's hook


def test_evaluate_accepts_distilled_path_of_an_exported_student(tmp_path, monkeypatch):
    from pathbench.extractors import load_extractor

    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path / "students"))
    run_train(student_config(tmp_path, "run-a", **{"output.register": False}))
    extractor = load_extractor(f"distilled:{tmp_path / 'run-a' / 'student'}", device="cpu")
    emb = extractor.embed(torch.from_numpy(TILES.images[:2]))
    assert emb.shape == (2, 32)


# ---- --set ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "message"), [
    ("optim.lr=abc", "config key 'optim.lr' expects a number, got 'abc' (str)"),
    ("optim.iterations=2.5", "config key 'optim.iterations' expects an integer, got 2.5"),
    ("output.export=3", "config key 'output.export' expects true or false, got 3"),
    ("optim.betas=[0.9, x]", "config key 'optim.betas' expects a number, got 'x'"),
    ("name=123", "expects a string, got 123 (int) (YAML reads it as a number: quote it)"),
    ("optim.lr=[1", "the value is not valid YAML"),
])
def test_set_values_are_checked_against_the_config_types_in_one_line(tmp_path, capsys, setting, message):
    code = distill_main(["--config", "smoke", "--out", str(tmp_path / "run"), "--set", setting, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_set_values_of_the_right_type_are_accepted_and_ints_become_floats():
    cfg = load_config("smoke", {"optim.lr": 1, "student.mean": None, "optim.betas": [0.8, 0.9], "cpu_threads": None})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.student.mean is None and cfg.optim.betas == [0.8, 0.9] and cfg.cpu_threads is None


# ---- the shipped smoke recipe -------------------------------------------------------------------


@pytest.mark.slow
def test_the_smoke_recipe_trains_a_student_that_is_not_degenerate(tmp_path):
    """The full `pathbench distill --config smoke` recipe (about 10 s here): its initial student is a
    near-constant function of real tissue tiles, its exported EMA student is not."""
    from pathbench.data.synthetic_plism import load_demo_tiles
    from pathbench.diagnostics import embedding_health
    from pathbench.extractors import load_extractor

    cfg = load_config("smoke", {"output.dir": str(tmp_path / "smoke"), "output.register": False})
    initial = Distiller(cfg, env=cpu_env()).reference_health()
    assert initial.degenerate  # the layer-scale-1e-5 initialisation barely sees its input
    started = time.perf_counter()
    summary = train(cfg, env=cpu_env(), progress=False)
    seconds = time.perf_counter() - started
    assert summary["complete"] and summary["steps"] == cfg.optim.iterations
    tiles, _ = load_demo_tiles()
    student = load_extractor(resolve_student(summary["model"]), device="cpu")
    health = embedding_health(student.embed(torch.from_numpy(tiles)).numpy())
    assert not health.degenerate, health.summary()
    assert health.mean_cosine < 0.9 and health.effective_rank > 1.3
    recorded = json.loads((Path(summary["student_dir"]) / "spec.json").read_text())["reference_health"]
    assert recorded["mean_cosine"] == pytest.approx(health.mean_cosine, abs=1e-6) and not recorded["degenerate"]
    assert seconds < 120


def test_the_demo_distillation_steps_run_twice_and_the_evaluation_names_the_student_they_made(tmp_path, monkeypatch):
    from pathbench import demo
    from pathbench.cli import main as pathbench_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATHBENCH_STUDENTS", str(tmp_path / "students"))
    distill_step = next(argv for _, argv in demo.STEPS if argv[0] == "distill")
    evaluate_step = next(argv for _, argv in demo.STEPS if argv[0] == "evaluate" and "distilled:" in " ".join(argv))
    for _ in range(2):  # `make demo` twice: the second run replaces the first
        assert pathbench_main([*distill_step, "--iterations", "2"]) == 0
    out = Path(distill_step[distill_step.index("--out") + 1])
    spec = resolve_student(evaluate_step[evaluate_step.index("--model") + 1])
    assert Path(spec.weights_path).resolve() == (tmp_path / out / "student" / "model.safetensors").resolve()
    assert not (tmp_path / "students").exists()  # the demo leaves the user's registry alone
