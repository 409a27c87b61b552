"""Long runs left alone: damaged checkpoints, a full disk, a second job on a busy workdir,
timings kept by a run that does not finish, bad images skipped and counted.

The stages are the tiny model's on the tiny synthetic data set (a few steps each)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import grain
import jax
import numpy as np
import pytest
from test_training import ROOT, _env, tiny_config

from posewarper_jax import cli, experiment, fileio, job, training
from posewarper_jax import workdir as workdir_lib
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.training_log import MetricWriter

STEPS = 6


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "data")
    experiment.ensure_data(tiny_config(root), progress=False)
    return root


@pytest.fixture(scope="module")
def setup(data_root):
    c = tiny_config(data_root, max_steps=STEPS)
    model = experiment.make_model(c)
    train, _ = experiment.sparse_subset(c, experiment.load_split(c, "train"))
    init = training.init_variables(model, c.input.image_size, c.seed)
    return c, model, train, init


def _stage(setup, workdir, stop_after=None):
    """Stage 1 for STEPS steps, a checkpoint every 2 steps (3 kept)."""
    c, model, train, init = setup
    return training.run_stage(
        name="stage1",
        kind="hrnet",
        workdir=str(workdir),
        model=model,
        variables=init,
        dataset=train,
        pipe_cfg=experiment.pipeline_config(c, "stage1"),
        settings=experiment.stage_settings(c.stage1),
        checkpoint_every=2,
        keep_checkpoints=3,
        log_every=1,
        writer=MetricWriter(str(workdir), enabled=False),
        stop_after=stop_after,
    )


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def _steps(workdir):
    ckpts = os.path.join(workdir, "stage1", "checkpoints")
    return sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())


@pytest.fixture(scope="module")
def clean(setup, tmp_path_factory):
    """The uninterrupted stage's final variables."""
    return _stage(setup, tmp_path_factory.mktemp("clean"))


def _largest_file(directory):
    files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
    return max(files, key=os.path.getsize)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.slow  # the stage-1 runs of setup and clean
def test_damaged_newest_checkpoint_falls_back_to_the_previous_step(setup, clean, tmp_path):
    workdir = str(tmp_path)
    _stage(setup, workdir, stop_after=4)
    assert _steps(workdir) == [2, 4]
    ckpt = os.path.join(workdir, "stage1", "checkpoints")

    # A truncated array file in the newest step: the stage resumes from step 2.
    victim = _largest_file(os.path.join(ckpt, "4"))
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    with pytest.warns(training.CorruptCheckpointWarning) as caught:
        out = _stage(setup, workdir)
    message = str(caught[0].message)
    assert "step 4" in message and "resuming from step 2" in message, message
    assert _same(out, clean)  # exactly the uninterrupted result
    aside = os.listdir(os.path.join(workdir, "stage1", "corrupt_checkpoints"))
    assert len(aside) == 1 and aside[0].startswith("4-")
    assert _steps(workdir) == [2, 4, 6]

    # A deleted file in the final step of a finished stage: trained on from step 4.
    os.remove(os.path.join(ckpt, "6", "state", "manifest.ocdbt"))
    with pytest.warns(training.CorruptCheckpointWarning) as caught:
        again = _stage(setup, workdir)
    assert any("resuming from step 4" in str(w.message) for w in caught)
    assert _same(again, clean)
    assert os.path.exists(os.path.join(workdir, "stage1", "done.json"))


@pytest.mark.slow  # the stage-1 runs of setup and clean
def test_no_readable_checkpoint_is_an_error_naming_them(setup, tmp_path):
    workdir = str(tmp_path)
    _stage(setup, workdir, stop_after=2)
    victim = _largest_file(os.path.join(workdir, "stage1", "checkpoints", "2"))
    with open(victim, "r+b") as f:
        f.truncate(10)
    with pytest.raises(
        training.CheckpointError, match=r"no checkpoint in .* can be read \(step 2: "
    ) as err:
        _stage(setup, workdir)
    assert cli.is_expected(err.value)
    assert _steps(workdir) == [2]  # nothing moved: the user decides


# ----------------------------------------------------------------------------- full disk


def _full_disk_on_save(monkeypatch, fail_at: int):
    """Grain's iterator-state writer raises ENOSPC at checkpoint save number ``fail_at``."""
    original = grain.checkpoint.CheckpointHandler.save
    calls = []

    def save(self, directory, *args, **kwargs):
        calls.append(str(directory))
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return original(self, directory, *args, **kwargs)

    monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", save)


@pytest.mark.slow  # the stage-1 runs of setup and clean
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(setup, clean, tmp_path, monkeypatch):
    workdir = str(tmp_path)
    _full_disk_on_save(monkeypatch, fail_at=2)  # the save of step 4
    t = time.perf_counter()
    with pytest.raises(training.CheckpointWriteError) as err:
        _stage(setup, workdir)
    assert time.perf_counter() - t < 300  # an error, not a hang
    text = cli.one_line(err.value)
    assert "No space left on device" in text and "last good checkpoint: step 2" in text
    assert os.path.join("checkpoints", "4") in text and cli.is_expected(err.value)
    assert _steps(workdir) == [2]  # the previous checkpoint, intact...
    monkeypatch.undo()
    out = _stage(setup, workdir)  # ...and the next run resumes from it
    assert _same(out, clean)


@pytest.mark.slow  # the runlocal job, twice
def test_full_disk_on_a_result_file_keeps_finished_results(data_root, tmp_path, monkeypatch):
    """The job's result files are written whole or not at all: ENOSPC on stage 2's done.json
    leaves stage 1's results and the timings as they were, and the next run finishes."""
    c = tiny_config(data_root, max_steps=2)
    workdir = str(tmp_path / "run")
    original = fileio._write

    def write(f, data):
        if f.name.endswith(os.path.join("stage2", "done.json.tmp")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(f, data)

    monkeypatch.setattr(fileio, "_write", write)
    with pytest.raises(cli.WriteError) as err:
        job.train_and_evaluate(c, workdir)
    line = cli.one_line(err.value)
    assert os.path.join("stage2", "done.json") in line and "No space left on device" in line
    assert "free some space" in line
    done1 = open(os.path.join(workdir, "stage1", "done.json")).read()
    timing = json.load(open(os.path.join(workdir, "timing.json")))
    assert timing["stage1"] > 0 and "stage2" not in timing
    leftovers = [f for _, _, fs in os.walk(workdir) for f in fs if f.endswith(".tmp")]
    assert leftovers == [] and not os.path.exists(os.path.join(workdir, "job.lock"))

    monkeypatch.undo()
    job.train_and_evaluate(c, workdir)
    assert open(os.path.join(workdir, "stage1", "done.json")).read() == done1
    assert os.path.exists(os.path.join(workdir, "stage2", "done.json"))
    final = json.load(open(os.path.join(workdir, "timing.json")))
    assert final["stage1"] == timing["stage1"] and final["stage2"] > 0


def test_atomic_write_leaves_the_old_file_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    fileio.write_json(str(path), {"a": 1})

    def full(f, data):
        f.write(data[:3])  # part of it reached the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio, "_write", full)
    with pytest.raises(cli.WriteError, match=r"result.json: writing .* No space left"):
        fileio.write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["result.json"]


# ----------------------------------------------------------------------------- the lock


_HOLDER = """
import sys, time
from posewarper_jax.workdir import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("holding", flush=True)
time.sleep(600)
"""


def test_second_job_on_a_busy_workdir_stops_naming_the_first(data_root, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(workdir)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        c = tiny_config(data_root)
        with pytest.raises(workdir_lib.WorkdirBusyError) as err:
            job.train_and_evaluate(c, str(workdir))
        text = str(err.value)
        assert f"process {holder.pid} on host " in text and "job.lock" in text
        assert not os.path.exists(workdir / "stage1")  # stopped before any work
        # The command line says the same in one line.
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "posewarper_jax.main",
                f"--config={os.path.join(ROOT, 'configs', 'sparse.py')}:runlocal",
                f"--workdir={workdir}",
                f"--config.data.root={data_root}",
            ],
            env=_env(),
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("error: workdir") and str(holder.pid) in out.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing: its lock is stale and the next job takes it over.
    lock = workdir_lib.WorkdirLock(str(workdir))
    with pytest.warns(workdir_lib.StaleLockWarning, match=f"process {holder.pid} .* no longer"):
        lock.acquire()
    assert json.load(open(lock.path))["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(lock.path)


def test_lock_from_another_host_is_held_and_unreadable_lock_is_stale(tmp_path):
    path = tmp_path / workdir_lib.LOCK_NAME
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(workdir_lib.WorkdirBusyError, match="process 1 on host elsewhere"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    path.write_text('{"pid": 12')  # a holder killed while writing it
    with pytest.warns(workdir_lib.StaleLockWarning, match="unreadable"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire().release()


def test_sweep_gives_every_run_its_own_workdir(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "launch"))
    try:
        import sweep
    finally:
        sys.path.pop(0)
    config = os.path.join(ROOT, "configs", "sparse.py")
    runs = [{"stage1.lr": 1e-3}, {"stage2.lr": 1e-3}]  # the same last field name
    cmds = sweep.commands(config, runs, str(tmp_path))
    workdirs = [c.split("--workdir ")[1].split()[0] for c in cmds]
    assert len(set(workdirs)) == 2 and "stage1.lr=0.001" in workdirs[0]
    with pytest.raises(sweep.SweepError, match="same overrides"):
        sweep.commands(config, [{"stage1.lr": 1e-3}] * 2, str(tmp_path))


# ----------------------------------------------------------------------------- bad images


def test_skip_bad_images_trains_on_and_counts_them(data_root, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(data_root, root)
    c = tiny_config(root, max_steps=2)
    train = experiment.load_split(c, "train")
    broken = sorted(f.path for f in train.videos[0].frames)  # half of the training frames
    for path in broken:
        with open(path, "wb") as f:
            f.write(b"not a jpeg")
    model = experiment.make_model(c)
    init = training.init_variables(model, c.input.image_size, c.seed)

    def stage1(workdir):
        writer = MetricWriter(workdir, enabled=False)
        settings = experiment.settings(c, check=False)
        return job.train_stage(
            settings, workdir, model, "stage1", "hrnet", init, train, writer=writer
        )

    with pytest.raises(pipeline_lib.BadImageError) as err:  # the default: stop, naming it
        stage1(str(tmp_path / "strict"))
    assert cli.is_expected(err.value) and err.value.path in broken
    assert err.value.path in cli.one_line(err.value)

    c.data.skip_bad_images = True
    workdir = str(tmp_path / "skip")
    stage1(workdir)
    skipped = pipeline_lib.bad_images_in_log(job.bad_image_log(c, workdir))
    assert skipped and set(skipped) <= set(broken), skipped


def test_metrics_log_cut_by_a_kill_stays_readable(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "stage1", "step": 1}\n{"stage": "stage1", "st')  # killed here
    writer = MetricWriter(str(tmp_path), enabled=True)
    writer.write("stage1", 2, {"loss": 0.5})
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
