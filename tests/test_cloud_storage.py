"""The job on a bucket: workdir and data root on ``gs://``, run, interrupted and resumed;
a report and ``evaluate`` on bucket paths; one-line errors for a bad bucket. No cloud access.

The fake buckets are fsspec file systems registered for the ``gs``/``gcs`` and ``s3``
protocols (a folder per bucket, objects named ``bucket/key`` as gcsfs names them, no folders
needed to write), so a ``gs://`` path takes the code path it takes on Google Cloud Storage:
``etils.epath`` -> its fsspec backend -> ``fsspec.filesystem("gcs")`` (what gcsfs provides in
production). Orbax reaches GCS by two other routes, which are redirected: TensorStore's own
GCS driver (the checkpoint arrays) writes into the same folder as the fake bucket, and the
hierarchical-namespace check (google-cloud-storage) answers no. Everything else Orbax does on
``gs://`` (commit-file finalisation instead of a rename, step listing, deletion) runs as on
GCS, through the same fake bucket.
"""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from posewarper_jax import cli, fileio, storage, training
from posewarper_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "sparse.py")
BUCKET = "bkt"
NO_CREDENTIALS = "locked-bkt"


class DefaultCredentialsError(Exception):
    """As google.auth raises it on a host without credentials."""


class _FakeBucketFS(DirFileSystem):
    """An object store: ``gs://bucket/key`` is the file ``root/bucket/key``, listed and
    globbed as ``bucket/key`` (as gcsfs names objects); writes need no folders. A bucket
    without its folder under ``root`` does not exist (FileNotFoundError, as gcsfs), and
    ``NO_CREDENTIALS`` raises as a host without credentials does."""

    protocol: tuple[str, ...] = ()
    root = ""

    def __init__(self, *args, **kwargs):
        super().__init__(path=self.root, fs=LocalFileSystem(auto_mkdir=True), **kwargs)

    def _check(self, path, missing_ok=False):
        bucket = self._strip_protocol(path).strip("/").split("/", 1)[0]
        if bucket == NO_CREDENTIALS:
            raise DefaultCredentialsError("Your default credentials were not found.")
        if not os.path.isdir(os.path.join(self.root, bucket)):
            if missing_ok:
                return False
            raise FileNotFoundError(errno.ENOENT, "The specified bucket does not exist", bucket)
        return True

    def open(self, path, *args, **kwargs):
        self._check(path)
        return super().open(path, *args, **kwargs)

    def ls(self, path, *args, **kwargs):
        self._check(path)
        return super().ls(path, *args, **kwargs)

    def info(self, path, **kwargs):
        self._check(path)
        return super().info(path, **kwargs)

    def exists(self, path, **kwargs):
        return self._check(path, missing_ok=True) and super().exists(path, **kwargs)

    def isdir(self, path):
        return self._check(path, missing_ok=True) and super().isdir(path)


class FakeGCS(_FakeBucketFS):
    protocol = ("gs", "gcs")


class FakeS3(_FakeBucketFS):
    protocol = ("s3", "s3a")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """gs:// and s3:// on fake buckets (folders) for this module; returns the folder of gs://
    (TensorStore writes the checkpoint arrays of gs:// paths there too)."""
    from etils.epath import backend
    from fsspec.registry import _registry
    from orbax.checkpoint._src.path import gcs_utils

    root = tmp_path_factory.mktemp("buckets")
    for fake in (FakeGCS, FakeS3):
        fake.root = str(root / fake.protocol[0])
        os.makedirs(os.path.join(fake.root, BUCKET))

    def kvstore(path):  # TensorStore's gcs driver -> the fake bucket's folder
        bucket_name, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": os.path.join(FakeGCS.root, bucket_name, key)}

    with pytest.MonkeyPatch.context() as mp:
        for fake in (FakeGCS, FakeS3):
            for name in fake.protocol:
                mp.setitem(_registry, name, fake)
        backend.fsspec_backend._get_filesystem.cache_clear()
        mp.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
        mp.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
        yield FakeGCS.root
    backend.fsspec_backend._get_filesystem.cache_clear()


def _keys(prefix, fake=FakeGCS):
    """The objects whose names start with ``prefix`` (``bucket/key...``)."""
    out = []
    for top, _, names in os.walk(fake.root):
        for name in names:
            key = os.path.relpath(os.path.join(top, name), fake.root)
            if key.startswith(prefix):
                out.append(key)
    return sorted(out)


class _Interrupted(Exception):
    pass


def _main(argv):
    """``python -m posewarper_jax.main ARGV`` in this process; its exit status."""
    from absl import flags

    from posewarper_jax import main as main_mod

    def reset():
        flags.FLAGS.unparse_flags()
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)  # the config's overrides, defined again by parsing

    full = ["posewarper_jax.main", *argv]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", full)  # config_flags reads its overrides from sys.argv
        reset()
        flags.FLAGS(full)
        try:
            return cli.guarded(lambda: main_mod.main(full[:1]))
        finally:
            reset()


@pytest.fixture
def compile_cache(tmp_path_factory):
    """JAX's persistent compilation cache: the resumed run compiles nothing again."""
    import jax
    from jax._src import compilation_cache

    names = {
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    if not jax.config.jax_compilation_cache_dir:  # else the test run's (conftest.py)
        names["jax_compilation_cache_dir"] = str(tmp_path_factory.mktemp("jax_cache"))
    before = {name: getattr(jax.config, name) for name in names}
    for name, value in names.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


# The command of launch/tpu_pod.sh and launch/slurm.sbatch (a bucket workdir), on the
# runlocal variant with its data root on the bucket too. The pre-training and the evaluation
# are left out to keep it short: they write through the same calls as the stages (Orbax,
# fileio), and test_report_and_scoring_on_a_bucket writes and scores a report's files there.
JOB = [
    f"--config={CONFIG}:runlocal",
    f"--workdir=gs://{BUCKET}/pw",
    f"--config.data.root=gs://{BUCKET}/data",
    "--config.evaluate=False",
    "--config.pretrain.data=none",
]


@pytest.mark.slow  # a runlocal job and its resumption: mostly XLA compiling the stages
def test_job_runs_and_resumes_on_a_bucket(bucket, compile_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # anything written to local disk by mistake lands here
    original = training.run_stage

    def interrupted(**kwargs):
        if kwargs["name"] == "stage2":
            original(**kwargs, stop_after=2)  # its checkpoint of step 2 is on the bucket
            raise _Interrupted
        return original(**kwargs)

    monkeypatch.setattr(training, "run_stage", interrupted)
    with pytest.raises(_Interrupted):
        _main(JOB)
    monkeypatch.setattr(training, "run_stage", original)
    assert _keys(f"{BUCKET}/data/info.json") and _keys(f"{BUCKET}/data/images/val/")
    assert _keys(f"{BUCKET}/pw/stage1/done.json")
    assert _keys(f"{BUCKET}/pw/stage2/checkpoints/2/")
    assert not _keys(f"{BUCKET}/pw/stage2/done.json")
    capsys.readouterr()

    assert _main(JOB) == 0
    out = capsys.readouterr().out
    assert "[stage1] already finished" in out and "[stage2] resumed from step 2" in out
    assert f"done: results in gs://{BUCKET}/pw" in out

    pw = f"{BUCKET}/pw"
    written = ["summary.json", "timing.json", "config.json", "stage2/done.json"]
    written += ["sparse_labels/subset.json", "stage2/checkpoints/4/commit_success.txt"]
    for name in written:
        assert _keys(f"{pw}/{name}"), name
    summary = json.loads(storage.read_text(f"gs://{pw}/summary.json"))
    assert summary["workdir"] == f"gs://{pw}"
    assert summary["checkpoints"]["stage2"] == f"gs://{pw}/stage2/checkpoints"
    assert set(summary["timing_s"]) >= {"data", "stage1", "stage2"}
    # Metrics of both runs, and TensorBoard event files, on the bucket.
    lines = storage.read_text(f"gs://{pw}/metrics.jsonl").splitlines()
    assert [r["step"] for r in map(json.loads, lines) if r["stage"] == "stage2"] == [1, 2, 3, 4]
    assert len(_keys(f"{pw}/tensorboard/events.out.tfevents")) == 2
    # No temporary objects left, no lock after the job, nothing on local disk.
    assert not [k for k in _keys(pw) if k.endswith(".tmp")]
    assert not _keys(f"{pw}/job.lock")
    assert os.listdir(tmp_path) == []
    assert _keys(f"{pw}/stage2/checkpoints/4/state/manifest.ocdbt")  # TensorStore's arrays


def test_report_and_scoring_on_a_bucket(bucket, tmp_path):
    from test_report import CONFIG as REPORT_CONFIG
    from test_report import TIMING, make_datasets, make_results

    from posewarper_jax import evaluate
    from posewarper_jax.apps import report
    from posewarper_jax.data import posetrack18

    gt, preds = make_datasets(tmp_path)
    results = make_results()
    run = f"gs://{BUCKET}/reported"
    figures = report.write_figures(run, results, gt=gt, predictions={"propagation": preds})
    assert figures["mAP per joint group"] == f"{run}/report/map_bars.png"
    report.write_report(run, results, REPORT_CONFIG, TIMING, figures=figures, device="cpu")
    assert "](report/map_bars.png)" in storage.read_text(f"{run}/report.md")
    assert report.load_report(f"{run}/report.json")["propagation"]

    # evaluate: ground truth and predictions on the bucket, the result written there.
    folder = f"gs://{BUCKET}/scored"
    posetrack18.write_posetrack18(gt, f"{folder}/gt")
    method = next(iter(preds))
    posetrack18.write_posetrack18(preds[method], f"{folder}/pred")
    local = tmp_path / "local"
    posetrack18.write_posetrack18(gt, str(local / "gt"))
    posetrack18.write_posetrack18(preds[method], str(local / "pred"))
    for where in (folder, str(local)):
        argv = [f"--gt={where}/gt", f"--pred={where}/pred", f"--out={where}/scores.json"]
        assert evaluate.main(argv) == 0
    on_bucket = json.loads(storage.read_text(f"{folder}/scores.json"))
    on_disk = json.loads((local / "scores.json").read_text())
    assert on_bucket["posetrack_map"] == on_disk["posetrack_map"]


@pytest.mark.parametrize(
    "workdir, needle",
    [
        ("gs://no-such-bucket/pw", "The specified bucket does not exist"),
        (f"gs://{NO_CREDENTIALS}/pw", "credentials"),
        (f"s3://{BUCKET}/pw", "Orbax writes checkpoint arrays"),
    ],
)
def test_bad_bucket_is_one_line_naming_it(bucket, workdir, needle, capsys):
    argv = [f"--config={CONFIG}:runlocal", f"--workdir={workdir}"]
    assert _main(argv) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: workdir {workdir}: "), err
    assert needle in err[0]
    if workdir.startswith("s3://"):
        return
    # A data root on such a bucket names the config field.
    argv = [f"--config={CONFIG}:runlocal,data=posetrack18,root={workdir}", "--workdir=unused"]
    assert _main(argv) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: config.data.root={workdir!r}: "), err


def test_missing_fsspec_package_names_the_extra(bucket):
    from etils.epath import backend
    from fsspec.registry import _registry

    del _registry["s3"]  # as without s3fs: fsspec's own entry names the package
    backend.fsspec_backend._get_filesystem.cache_clear()
    try:
        with pytest.raises(storage.StorageError, match=r"posewarper_jax\[s3\]") as err:
            storage.exists("s3://somewhere/x")
        assert str(err.value).startswith("s3://somewhere/x: ")
    finally:
        _registry["s3"] = FakeS3
        backend.fsspec_backend._get_filesystem.cache_clear()


def test_atomic_write_lock_and_reads_on_s3(bucket):
    # s3:// takes the same route as gs:// (the data readers, evaluate, result files).
    path = f"s3://{BUCKET}/run/eval/x.json"
    fileio.write_json(path, {"a": 1})
    assert json.loads(storage.read_text(path)) == {"a": 1}
    assert _keys(f"{BUCKET}/run", FakeS3) == [f"{BUCKET}/run/eval/x.json"]
    with workdir_lib.lock(f"s3://{BUCKET}/run"):
        info = json.loads(storage.read_text(f"s3://{BUCKET}/run/job.lock"))
        assert info["pid"] == os.getpid()
        other = workdir_lib.WorkdirLock(f"s3://{BUCKET}/run")
        fileio.write_json(other.path, dict(info, host="another-host"))
        with pytest.raises(workdir_lib.WorkdirBusyError, match="another-host"):
            other.acquire()
    assert storage.exists(f"s3://{BUCKET}/run/job.lock")  # not ours any more: left alone


def test_converted_weights_on_a_bucket(bucket):
    import numpy as np

    from posewarper_jax import convert, job

    variables = {
        "params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "batch_stats": {"mean": np.ones(3, np.float32)},
    }
    out = f"gs://{BUCKET}/weights/hrnet"
    convert.save_converted(out, variables, {"format_version": convert.FORMAT_VERSION, "x": 1})
    assert job._exported(out)  # Orbax's commit file: how the job tells a finished export
    loaded, meta = convert.load_converted(out)
    assert meta["x"] == 1
    np.testing.assert_array_equal(loaded["params"]["w"], variables["params"]["w"])
    with pytest.raises(convert.WeightFileError, match="exists"):
        convert.save_converted(out, variables, {"format_version": convert.FORMAT_VERSION})
