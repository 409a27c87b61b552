"""The trainer end to end on the tiny synthetic data set: both stages on 8 fake devices,
resume after SIGKILL, two processes against one, bad configs, non-finite loss."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from report_golden import check_report

from posewarper_jax import experiment, job, training, weights
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(ROOT, "configs", "sparse.py")


def _config_module():
    spec = importlib.util.spec_from_file_location("sparse_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(data_root: str, **stage_overrides):
    """runlocal on the tiny synthetic preset, every frame labeled, no augmentation."""
    c = _config_module().get_config("runlocal")
    c.data.root = data_root
    c.sparse.every_k = 1
    for k in ("flip_prob", "rotation_prob", "scale_factor", "half_body_prob"):
        c.input[k] = 0.0
    for s in (c.stage1, c.stage2):
        s.max_steps = 6
        s.lr_steps = ()
        for k, v in stage_overrides.items():
            s[k] = v
    c.pretrain.data = "none"
    c.checkpoint_every = 2
    c.log_every = 1
    c.evaluate = False
    return c


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "data")
    c = tiny_config(root)
    experiment.ensure_data(c, progress=False)
    return root


def _restore_final(workdir, config):
    settings = experiment.settings(config, check=False)
    model = experiment.make_model(settings)
    like = training.init_variables(model, settings.input.image_size, settings.seed)
    tx = training.make_optimizer(settings.stage2, "head", optax.constant_schedule(1e-3))
    state = training.train_state(like, tx)
    return training.restore_state(os.path.join(workdir, "stage2", "checkpoints"), state)


def _first_pair_batch(c):
    """The first batch of the stage-2 stream (unshuffled) on the sparse training labels."""
    train, _ = experiment.sparse_subset(c, experiment.load_split(c, "train"))
    cfg = experiment.pipeline_config(c, "stage2", shuffle=False)
    batch = next(iter(pipeline_lib.train_dataset(train, cfg, paired=True)))
    return {k: jnp.asarray(batch[k]) for k in training.BATCH_KEYS}


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow  # runs the runlocal job
def test_both_stages_on_eight_devices_loss_finite_and_falling(data_root, tmp_path):
    assert jax.device_count() == 8
    c = tiny_config(data_root, lr=3e-3, max_steps=15)
    c.stage1.batch_size = c.stage2.batch_size = 8
    workdir = str(tmp_path / "run")

    model = experiment.make_model(c)
    init = training.init_variables(model, c.input.image_size, c.seed)
    # A fixed batch (the first of the stage-2 stream) measures both stages before and after.
    probe = _first_pair_batch(c)

    summary = job.train_and_evaluate(c, workdir)

    records = [json.loads(line) for line in open(summary["metrics"])]
    for stage in ("stage1", "stage2"):
        losses = [r["loss"] for r in records if r["stage"] == stage]
        assert len(losses) == 15 and np.all(np.isfinite(losses))
        assert os.path.exists(os.path.join(workdir, stage, "done.json"))
    final = _restore_final(workdir, c)
    final_vars = {"params": final["params"], "batch_stats": final["batch_stats"]}
    # Stage 1 falls on the fixed batch: the HRNet learned; stage 2 falls from the
    # identity warp of the stage-1 backbone's heatmaps.
    before1 = float(training.batch_loss(model, init, probe, "hrnet"))
    after1 = float(training.batch_loss(model, final_vars, probe, "hrnet"))
    assert after1 < before1, (before1, after1)
    stage1_vars = {
        "params": {**final["params"], "head": init["params"]["head"]},
        "batch_stats": {**final["batch_stats"], "head": init["batch_stats"]["head"]},
    }
    before2 = float(training.batch_loss(model, stage1_vars, probe, "head"))
    after2 = float(training.batch_loss(model, final_vars, probe, "head"))
    assert after2 < before2, (before2, after2)
    # The frozen backbone did not move in stage 2 (params and BN statistics).
    stage1_tx = training.make_optimizer(
        experiment.stage_settings(c.stage1), "hrnet", optax.constant_schedule(1e-3)
    )
    s1 = training.restore_state(
        os.path.join(workdir, "stage1", "checkpoints"), training.train_state(final, stage1_tx)
    )
    assert _leaves_equal(s1["params"]["backbone"], final["params"]["backbone"])
    assert _leaves_equal(s1["batch_stats"]["backbone"], final["batch_stats"]["backbone"])

    # A second call finds both stages done and returns at once with the same result.
    t = time.perf_counter()
    job.train_and_evaluate(c, workdir)
    assert time.perf_counter() - t < 60
    assert len([json.loads(x) for x in open(summary["metrics"])]) == len(records)


@pytest.mark.slow  # runs the runlocal job
def test_main_job_evaluates_and_writes_every_row_of_the_report(data_root, tmp_path):
    c = tiny_config(data_root, max_steps=2)
    c.sparse.every_k = 3  # unlabeled training frames for the pseudo labels
    c.evaluate = True
    c.eval.batch_size = 8
    c.eval.flip_test = True
    workdir = str(tmp_path / "run")
    summary = job.train_and_evaluate(c, workdir)

    report = json.load(open(summary["report"]["json"]))
    # The same report as the code recorded in tests/fixtures/report_runlocal.json wrote.
    check_report(report, workdir)
    columns = ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total"]
    assert set(report) >= {"propagation", "detection", "config", "timing_s"}
    assert sorted(report["propagation"]) == sorted(job.PROPAGATION)
    assert sorted(report["detection"]) == sorted(job.DETECTION)
    for section in ("propagation", "detection"):
        for table in report[section].values():
            assert sorted(table) == sorted(columns)
            # null: a joint group without ground truth on the tiny data (AP undefined).
            assert all(v is None or 0.0 <= v <= 100.0 for v in table.values()), table
            assert table["Total"] is not None
    # Copying the nearest label carries ground truth: it finds some joints on tiny data too.
    assert report["propagation"]["copy_nearest"]["Total"] > 0
    assert report["config"]["eval"]["flip_test"] is True
    # data.skip_bad_images is off: none skipped, and the count is in both report files.
    assert report["extra"]["counts"]["bad_images_skipped"] == 0
    counts_table = open(summary["report"]["markdown"]).read().split("### counts", 1)[1]
    assert "| bad_images_skipped | 0 |" in counts_table.split("###", 1)[0]
    for name in ("stage1", "stage2", "stage1_augmented", "propagation.posewarper"):
        assert report["timing_s"][name] > 0
    val = experiment.load_split(c, "val")
    for section, methods in (("propagation", job.PROPAGATION), ("detection", job.DETECTION)):
        for method in methods:
            files = os.listdir(os.path.join(workdir, "predictions", section, method))
            assert len([f for f in files if f.endswith(".json")]) == len(val.videos)
    for path in summary["report"]["figures"].values():
        assert os.path.getsize(path) > 0
    assert "| Method | Head |" in open(summary["report"]["markdown"]).read()
    # Detect and track: both trackers' rows, and their table in report.md.
    assert set(report["extra"]["tracking"]) == {"posewarper", "iou"}
    assert "## Detect and track" in open(summary["report"]["markdown"]).read()

    # The diagnostics command reads the finished workdir; its flip-test row is the report's
    # PoseWarper row (same split, plan and model, flip test on in both). The tiny set's one
    # validation video is in the test half, so the diagnostics' own default split (dev) is empty.
    cmd = [
        sys.executable,
        "-m",
        "posewarper_jax.apps.diagnostics",
        f"--config={CONFIG_FILE}:runlocal",
        f"--workdir={workdir}",
        f"--config.data.root={data_root}",
        "--config.sparse.every_k=3",
        "--config.pretrain.data=none",
        "--config.eval.batch_size=8",
        "--split=test",
    ]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True)
    diag = json.load(open(os.path.join(workdir, "diagnostics.json")))
    assert diag["posewarper_flip"]["Total"] == pytest.approx(
        report["propagation"]["posewarper"]["Total"], abs=1e-9
    )
    assert diag["heatmap_ceiling"]["Total"] >= diag["identity_warp"]["Total"]
    recovered = diag["by_delta"]["1"]["motion_recovered"]
    assert set(recovered) == {"posewarper", "farneback"}
    assert all(r["joints"] > 0 for r in recovered.values())
    missing = subprocess.run(
        cmd[:4] + [f"--workdir={tmp_path / 'empty'}"], env=_env(), capture_output=True, text=True
    )
    assert missing.returncode != 0 and "not finished" in missing.stderr


# ----------------------------------------------------------------------------- resume


def _main_cmd(workdir, data_root, extra=()):
    return [
        sys.executable,
        "-m",
        "posewarper_jax.main",
        f"--config={CONFIG_FILE}:runlocal",
        f"--workdir={workdir}",
        f"--config.data.root={data_root}",
        "--config.sparse.every_k=1",
        "--config.stage1.max_steps=8",
        "--config.stage2.max_steps=8",
        "--config.checkpoint_every=2",
        "--config.evaluate=False",
        "--config.pretrain.data=none",
        *extra,
    ]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow  # runs the runlocal job
def test_resume_after_sigkill_matches_uninterrupted_run(data_root, tmp_path):
    clean = str(tmp_path / "clean")
    killed = str(tmp_path / "killed")
    env = _env()
    subprocess.run(_main_cmd(clean, data_root), env=env, check=True, capture_output=True)

    proc = subprocess.Popen(
        _main_cmd(killed, data_root), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt = os.path.join(killed, "stage1", "checkpoints", "4")
    deadline = time.time() + 300
    while not os.path.isdir(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert os.path.isdir(ckpt)
    assert not os.path.exists(os.path.join(killed, "stage2", "done.json"))

    out = subprocess.run(
        _main_cmd(killed, data_root), env=env, check=True, capture_output=True, text=True
    )
    assert "resumed from step" in out.stdout or "already finished" in out.stdout

    c = tiny_config(data_root)
    a, b = _restore_final(clean, c), _restore_final(killed, c)
    # CPU XLA is deterministic and the data stream resumes exactly: bitwise equal.
    assert int(a["step"]) == int(b["step"]) == 8
    assert _leaves_equal(a["params"], b["params"])
    assert _leaves_equal(a["batch_stats"], b["batch_stats"])
    assert _leaves_equal(a["opt_state"], b["opt_state"])


# ----------------------------------------------------------------------------- two processes


@pytest.mark.slow  # runs the runlocal job
def test_two_processes_match_one_process(data_root, tmp_path):
    env = _env()
    # Two devices either way (one per process, or two in one process) and the same global
    # batches of 8, split 4 + 4: the partitioned program is the same, only the collectives
    # go through gloo between processes instead of in-process.
    single_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    extra = ["--config.stage1.max_steps=3", "--config.stage2.max_steps=3"]
    single = str(tmp_path / "single")
    multi = str(tmp_path / "multi")
    port = 20000 + os.getpid() % 20000
    procs = [
        subprocess.Popen(
            _main_cmd(single, data_root, extra),
            env=single_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    ]
    for pid in range(2):
        penv = dict(env)
        penv.update(
            POSEWARPER_COORDINATOR=f"localhost:{port}",
            POSEWARPER_NUM_PROCESSES="2",
            POSEWARPER_PROCESS_ID=str(pid),
        )
        procs.append(
            subprocess.Popen(
                _main_cmd(multi, data_root, extra),
                env=penv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]

    c = tiny_config(data_root)
    a, b = _restore_final(single, c), _restore_final(multi, c)
    assert int(a["step"]) == int(b["step"]) == 3
    print("max |single - multi|:", _max_diff(a["params"], b["params"]))
    assert _max_diff(a["params"], b["params"]) == 0.0
    assert _max_diff(a["batch_stats"], b["batch_stats"]) == 0.0


def test_stage2_backbone_target_is_the_frozen_backbones_heatmaps_of_a(data_root):
    """``stage2.target = backbone``: the loss is 0.5 * mean((warped - f_A)^2) over every joint
    (NumPy on the model's own outputs), exactly 0 for the untrained (identity) head on pairs
    of one frame twice, and training moves only the head."""
    c = tiny_config(data_root)
    c.stage2.target = "backbone"
    # An untrained HRNet (std-0.001 convs) through BN with its initial running statistics
    # gives ~1e-12 heatmaps; with batch statistics they are O(0.01) and f_A, f_B differ.
    c.model.backbone_bn = "batch"
    model = experiment.make_model(c)
    variables = training.init_variables(model, c.input.image_size, c.seed)
    batch = _first_pair_batch(c)
    assert not np.array_equal(batch["image"][:, 0], batch["image"][:, 1])

    warped, f_a, _ = model.apply(variables, batch["image"], False, True, method="pair")
    expected = 0.5 * np.mean((np.asarray(warped) - np.asarray(f_a)) ** 2)
    got = float(training.batch_loss(model, variables, batch, "head", "backbone"))
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    same = {**batch, "image": jnp.repeat(batch["image"][:, :1], 2, axis=1)}
    assert float(training.batch_loss(model, variables, same, "head", "backbone")) == 0.0
    assert float(training.batch_loss(model, variables, same, "head", "ground_truth")) > 0.0
    with pytest.raises(ValueError, match="stage-2 target"):
        training.batch_loss(model, variables, batch, "head", "labels")

    stage2 = experiment.stage_settings(c.stage2)
    tx = training.make_optimizer(stage2, "head", optax.constant_schedule(1e-3))
    step = jax.jit(training.make_train_step(model, tx, "head", stage2.target))
    state = training.train_state(variables, tx)
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[0] > 1e-8 and losses[-1] < losses[0], losses
    assert _leaves_equal(state["params"]["backbone"], variables["params"]["backbone"])
    assert not _leaves_equal(state["params"]["head"], variables["params"]["head"])


def test_stage2_pairs_with_unlabeled_a_take_the_backbones_maps(data_root):
    """``stage2.unlabeled_reach``: rows whose A is labeled keep A's labels, the others take the
    frozen backbone's maps of A for every joint (NumPy on the model's own outputs, rtol 1e-5);
    all rows labeled is the paper's loss, none the ``backbone`` target's."""
    c = tiny_config(data_root)
    c.model.backbone_bn = "batch"  # non-trivial f_A (see the test above)
    c.stage2.unlabeled_reach = 3
    model = experiment.make_model(c)
    variables = training.init_variables(model, c.input.image_size, c.seed)
    train, _ = experiment.sparse_subset(c, experiment.load_split(c, "train"))
    cfg = experiment.pipeline_config(c, "stage2", shuffle=False)
    assert cfg.unlabeled_reach == 3
    local = next(iter(pipeline_lib.train_dataset(train, cfg, paired=True)))
    keys = training.BATCH_KEYS + training.OPTIONAL_BATCH_KEYS
    batch = {k: jnp.asarray(local[k]) for k in keys}
    b = batch["a_labeled"].shape[0]
    mixed = {**batch, "a_labeled": jnp.arange(b) % 2 == 0}
    mixed["target_weight"] = jnp.where(
        mixed["a_labeled"][:, None], jnp.maximum(batch["target_weight"], 0.5), 0.0
    )  # the pipeline gives an unlabeled A no target weight: labeled rows get some here
    plain = {k: mixed[k] for k in training.BATCH_KEYS}

    warped, f_a, _ = model.apply(variables, batch["image"], False, True, method="pair")
    warped, f_a = np.asarray(warped), np.asarray(f_a)
    lab = np.asarray(mixed["a_labeled"])
    goal = np.where(lab[:, None, None, None], np.asarray(mixed["target"]), f_a)
    weight = np.where(lab[:, None], np.asarray(mixed["target_weight"]), 1.0)
    expected = 0.5 * np.mean((weight[:, None, None, :] * (warped - goal)) ** 2)
    got = float(training.batch_loss(model, variables, mixed, "head", "ground_truth"))
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    every = {**mixed, "a_labeled": jnp.ones((b,), bool)}
    none = {**mixed, "a_labeled": jnp.zeros((b,), bool)}
    np.testing.assert_allclose(
        float(training.batch_loss(model, variables, every, "head", "ground_truth")),
        float(training.batch_loss(model, variables, plain, "head", "ground_truth")),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        float(training.batch_loss(model, variables, none, "head", "ground_truth")),
        float(training.batch_loss(model, variables, plain, "head", "backbone")),
        rtol=1e-6,
    )
    assert experiment.stage_settings(c.stage2).unlabeled_reach == 3
    assert experiment.pipeline_config(c, "stage1").unlabeled_reach == 0


def test_run_stage_sends_a_labeled_to_the_train_step(data_root, tmp_path, monkeypatch):
    """With ``stage2.unlabeled_reach`` the train step ``run_stage`` compiles receives each
    batch's ``a_labeled`` (with it, unlabeled-A rows take the backbone's maps of A; without
    it, every row would be scored against A's empty labels)."""
    from posewarper_jax.training_log import MetricWriter

    c = tiny_config(data_root, max_steps=1)
    c.stage2.unlabeled_reach = 3
    model = experiment.make_model(c)
    train, _ = experiment.sparse_subset(c, experiment.load_split(c, "train"))
    seen = []
    real = training.make_train_step

    def recording(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(state, batch):
            seen.append(sorted(batch))
            return step(state, batch)

        return wrapped

    monkeypatch.setattr(training, "make_train_step", recording)
    training.run_stage(
        name="stage2",
        kind="head",
        workdir=str(tmp_path),
        model=model,
        variables=training.init_variables(model, c.input.image_size, c.seed),
        dataset=train,
        pipe_cfg=experiment.pipeline_config(c, "stage2"),
        settings=experiment.stage_settings(c.stage2),
        checkpoint_every=100,
        keep_checkpoints=1,
        log_every=1,
        writer=MetricWriter(str(tmp_path), enabled=False),
    )
    assert seen and all("a_labeled" in keys for keys in seen), seen


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.dilations", (), "model.dilations"),
        ("input.sigma", -1.0, "input.sigma"),
        ("input.frame_cache_mb", -1, "input.frame_cache_mb"),
        ("model.backbone", "w99", "model.backbone"),
        ("stage1.batch_size", 0, "stage1.batch_size"),
        ("data.synthetic_overrides", "fps=0", "data.synthetic_overrides"),
        ("data.synthetic_overrides", "fsp=6", "data.synthetic_overrides"),
        ("data.synthetic_overrides", "fps", "data.synthetic_overrides"),
        ("data.synthetic_overrides", "num_train_videos=two", "data.synthetic_overrides"),
        ("data.synthetic_overrides", "seed=3", "data.synthetic_seed"),
        ("data.synthetic_preset", "huge", "data.synthetic_preset"),
        ("stage2.target", "labels", "stage2.target"),
        ("stage2.unlabeled_reach", -1, "stage2.unlabeled_reach"),
        ("eval.propagation_path", "hops", "eval.propagation_path"),
        ("pretrain.data", "imagenet", "pretrain.data"),
        ("input.target_encoding", "rounded", "input.target_encoding"),
        ("eval.decoding", "softargmax", "eval.decoding"),
    ],
)
def test_bad_config_fails_at_start_naming_the_field(tmp_path, field, value, message):
    c = tiny_config(str(tmp_path / "unused"))
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(experiment.ConfigError, match=message.replace(".", r"\.")):
        job.train_and_evaluate(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "unused")


def test_settings_are_the_config_read_once(tmp_path):
    """``experiment.settings``: typed, frozen records of every section; a config written
    before the newer fields gets their old behaviour; the config itself kept as JSON."""
    c = tiny_config(str(tmp_path / "unused"))
    s = experiment.settings(c, check=False)
    assert s.input.image_size == tuple(c.input.image_size) and s.seed == c.seed
    assert s.stage1.batch_size == c.stage1.batch_size and s.stage1.target == "ground_truth"
    assert s.stage2.lr == c.stage2.lr and s.model.dilations == tuple(c.model.dilations)
    assert s.stage("stage1_augmented") is s.stage1 and s.stage("pretrain") == s.pretrain.stage
    assert s.pretrain.root == experiment.pretrain_root(c) and not s.pretraining
    assert s.data.synthetic == experiment.synthetic_config(c)
    assert json.loads(s.config_json) == json.loads(c.to_json_best_effort())
    with pytest.raises(AttributeError):
        s.stage1.lr = 1.0  # frozen
    for section, field in (("input", "target_encoding"), ("eval", "decoding"), ("eval", "split")):
        del c[section][field]
    old = experiment.settings(c, check=False)
    assert (old.input.target_encoding, old.eval.decoding, old.eval.split) == (
        "integer",
        "quarter",
        "all",
    )
    assert [p.name for p in job.PHASES] == [
        "data", "init", "pretrain", "stage1", "stage2", "validation", "propagation",
        "detection", "tracking", "augment", "report",
    ]  # fmt: skip


def test_heatmap_coding_reaches_the_pipeline_and_defaults_to_hrnets(tmp_path):
    """The config's coding reaches every stage's pipeline; a config written without the two
    fields gets HRNet's coding (integer targets, quarter-pixel decoding)."""
    c = tiny_config(str(tmp_path / "unused"))
    for stage in ("stage1", "stage2", "eval"):
        cfg = experiment.pipeline_config(c, stage)
        assert (cfg.target_encoding, experiment.heatmap_coding(c)[1]) == ("subpixel", "dark")
    del c.input["target_encoding"]
    del c.eval["decoding"]
    experiment.validate(c)
    cfg = experiment.pipeline_config(c, "eval")
    assert (cfg.target_encoding, experiment.heatmap_coding(c)[1]) == ("integer", "quarter")


@pytest.mark.parametrize(
    "field, value",
    [
        ("pretrain.synthetic_preset", "huge"),
        ("pretrain.batch_size", 0),
        ("pretrain.ann", "missing.json"),
        ("pretrain.root", "/nonexistent/images"),
    ],
)
def test_bad_pretrain_config_names_the_field(tmp_path, field, value):
    c = tiny_config(str(tmp_path / "unused"))
    c.pretrain.data = "coco" if field in ("pretrain.ann", "pretrain.root") else "synthetic"
    c.pretrain.ann = os.path.join(ROOT, "tests", "fixtures", "coco", "annotations",
                                  "person_keypoints_val.json")  # fmt: skip
    c.pretrain.root = os.path.join(ROOT, "tests", "fixtures", "coco", "val")
    experiment.validate(c)
    c.pretrain[field.split(".")[1]] = value
    with pytest.raises(experiment.ConfigError, match=field.replace(".", r"\.")):
        job.train_and_evaluate(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "unused")
    # Weights given as model.pretrained replace the phase, so its settings are not used.
    c.model.pretrained = str(tmp_path)
    assert not experiment.pretraining(c)
    experiment.validate(c)


def test_variants_choose_where_hrnet_starts(tmp_path):
    module = _config_module()
    default = module.get_config()
    # The default starts from the shipped backbone; packaged=false pre-trains in the job.
    assert default.model.pretrained == weights.path("hrnet_small_stills")
    assert not experiment.pretraining(default)
    assert default.stage1.lr == 1e-4  # stage 1 fine-tunes the pre-trained HRNet
    pretrain = module.get_config("packaged=false")
    assert pretrain.pretrain.data == "synthetic" and experiment.pretraining(pretrain)
    assert not pretrain.model.pretrained
    for arg in ("runlocal", "backbone=w32", "paper", "gpu"):  # it fits HRNet small only
        assert not module.get_config(arg).model.pretrained, arg
    scratch = module.get_config("scratch")
    assert scratch.pretrain.data == "none" and not experiment.pretraining(scratch)
    assert scratch.stage1.epochs == 50 and scratch.stage1.lr == 1e-3
    real = module.get_config(f"data=posetrack18,root={tmp_path}")
    assert real.pretrain.data == "none"  # real data: converted COCO weights or pretrain.data
    assert experiment.pretrain_root(pretrain) == "data/synthetic_stills"
    # The smoke test keeps its tiny data sets apart from the default's.
    smoke = module.get_config("runlocal")
    assert experiment.pretrain_root(smoke) == "data/synthetic_tiny_stills"


def test_propagation_path_is_chained_by_default_and_direct_for_the_paper():
    module = _config_module()
    for arg, path in (("", "chained"), ("runlocal", "chained"), ("gpu", "chained"),
                      ("paper", "direct")):  # fmt: skip
        c = module.get_config(arg or None)
        assert c.eval.propagation_path == path, arg
        assert experiment.settings(c, check=False).eval.propagation_path == path
    assert module.get_config().stage2.unlabeled_reach == 0  # the paper's pairs


def test_coco_keypoints_file_is_a_pretraining_set(tmp_path):
    c = tiny_config(str(tmp_path / "unused"))
    c.pretrain.data = "coco"
    c.pretrain.ann = os.path.join(ROOT, "tests", "fixtures", "coco", "annotations",
                                  "person_keypoints_val.json")  # fmt: skip
    c.pretrain.root = os.path.join(ROOT, "tests", "fixtures", "coco", "val")
    experiment.validate(c)
    ds = experiment.pretrain_dataset(c)
    frames = [ds.videos[v].frames[f] for v, f in ds.labeled_frames()]
    assert len(frames) == len(ds.videos) > 0
    people = [p for f in frames for p in f.people]
    assert people and all(os.path.isfile(f.path) for f in frames)
    assert sum(int((p.keypoints[:, 2] > 0).sum()) for p in people) > 0
    # Pre-training crops come out of the stage-1 pipeline like any labeled frame.
    pipe = experiment.pipeline_config(c, "stage1", batch_size=2)
    batch = next(iter(pipeline_lib.train_dataset(ds, pipe, paired=False)))
    assert batch["image"].shape[0] == 2 and float(np.max(batch["target_weight"])) == 1.0


def test_pretraining_initialises_stage1_and_exports_the_backbone(data_root, tmp_path):
    c = tiny_config(data_root, max_steps=2, lr=1e-12)  # stage 1 barely moves its start
    c.pretrain.data = "synthetic"
    c.pretrain.synthetic_preset = "tiny"
    c.pretrain.root = str(tmp_path / "stills")
    c.pretrain.max_steps = 3
    c.pretrain.lr = 3e-3
    c.stop_after = "stage1"  # what is checked ends there
    workdir = str(tmp_path / "run")
    job.train_and_evaluate(c, workdir)

    records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if r["stage"] == "pretrain"] == [1, 2, 3]
    model = experiment.make_model(c)
    init = training.init_variables(model, c.input.image_size, c.seed)
    exported = job.load_pretrained(init, os.path.join(workdir, job.PRETRAINED_BACKBONE))
    tx = training.make_optimizer(
        experiment.stage_settings(c.stage1), "hrnet", optax.constant_schedule(1.0)
    )
    restore = lambda stage: training.restore_state(  # noqa: E731
        os.path.join(workdir, stage, "checkpoints"), training.train_state(init, tx)
    )
    pre, s1 = restore("pretrain"), restore("stage1")
    # The export is the pre-trained backbone, which moved away from the random start...
    assert _leaves_equal(exported["params"]["backbone"], pre["params"]["backbone"])
    assert _leaves_equal(exported["batch_stats"]["backbone"], pre["batch_stats"]["backbone"])
    assert _max_diff(pre["params"]["backbone"], init["params"]["backbone"]) > 1e-3
    # ...and stage 1 started from it (at LR 1e-12 it ends where it started).
    assert _max_diff(s1["params"]["backbone"], pre["params"]["backbone"]) < 1e-8

    # Given as model.pretrained, the export replaces pre-training in another run.
    c2 = tiny_config(data_root, max_steps=2, lr=1e-12)
    c2.pretrain.data = "synthetic"
    c2.pretrain.root = str(tmp_path / "never_made")
    c2.model.pretrained = os.path.join(workdir, job.PRETRAINED_BACKBONE)
    c2.stop_after = "stage1"
    workdir2 = str(tmp_path / "run2")
    job.train_and_evaluate(c2, workdir2)
    assert not os.path.exists(os.path.join(workdir2, "pretrain"))
    assert not os.path.exists(tmp_path / "never_made")
    s1b = training.restore_state(os.path.join(workdir2, "stage1", "checkpoints"), s1)
    assert _max_diff(s1b["params"]["backbone"], pre["params"]["backbone"]) < 1e-8


def test_stop_after_ends_the_job_after_that_phase(data_root, tmp_path):
    """``stop_after=pretrain``: the backbone is pre-trained and exported, nothing after it
    runs; the same workdir run on without it resumes at stage 1. A phase name the job
    does not have, or ``pretrain`` for a job that does not pre-train, fails at the start."""
    c = tiny_config(data_root, max_steps=2)
    c.pretrain.data = "synthetic"
    c.pretrain.synthetic_preset = "tiny"
    c.pretrain.root = str(tmp_path / "stills")
    c.pretrain.max_steps = 2
    c.stop_after = "pretrain"
    workdir = str(tmp_path / "run")
    summary = job.train_and_evaluate(c, workdir)
    assert os.path.exists(os.path.join(workdir, "pretrain", "done.json"))
    assert os.path.isdir(os.path.join(workdir, job.PRETRAINED_BACKBONE))
    assert not os.path.exists(os.path.join(workdir, "stage1"))
    assert set(summary["timing_s"]) >= {"data", "pretrain"} and "stage1" not in summary["timing_s"]

    c.stop_after = "stage1"
    job.train_and_evaluate(c, workdir)
    records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if r["stage"] == "pretrain"] == [1, 2]  # not redone
    assert os.path.exists(os.path.join(workdir, "stage1", "done.json"))
    assert not os.path.exists(os.path.join(workdir, "stage2"))

    for value, why in (("stage3", "must be one of"), ("pretrain", "does not pre-train")):
        bad = tiny_config(data_root)
        bad.stop_after = value
        with pytest.raises(experiment.ConfigError, match=why):
            experiment.settings(bad)


def test_synthetic_overrides_reach_the_generator(tmp_path):
    c = tiny_config(str(tmp_path / "unused"))
    c.data.synthetic_seed = 5
    c.data.synthetic_overrides = " fps=6 , num_train_videos=3,person_height_frac=0.4:0.6,"
    syn = experiment.synthetic_config(c)
    expected = synthetic.get_config(
        c.data.synthetic_preset,
        seed=5,
        fps=6.0,
        num_train_videos=3,
        person_height_frac=(0.4, 0.6),
    )
    assert syn == expected
    assert isinstance(syn.num_train_videos, int) and isinstance(syn.fps, float)


def test_missing_data_root_names_the_field(tmp_path):
    c = tiny_config(str(tmp_path / "nowhere"))
    c.data.kind = "posetrack18"
    with pytest.raises(experiment.ConfigError, match=r"data\.root"):
        job.train_and_evaluate(c, str(tmp_path / "run"))


def test_more_videos_than_the_data_set_has_names_the_field(data_root, tmp_path):
    c = tiny_config(data_root)
    c.sparse.every_k = 0
    c.sparse.num_videos = 50
    c.sparse.frames_per_video = 1
    with pytest.raises(experiment.ConfigError, match=r"sparse\.num_videos"):
        job.train_and_evaluate(c, str(tmp_path / "run"))


def test_misspelt_field_fails_on_the_command_line(tmp_path):
    out = subprocess.run(
        _main_cmd(str(tmp_path / "run"), str(tmp_path / "data"), ["--config.stage1.lrr=1"]),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "lrr" in out.stderr
    assert not os.path.exists(tmp_path / "data")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
    c = tiny_config(data_root, lr=1e8, max_steps=30)
    c.checkpoint_every = 1
    workdir = str(tmp_path / "run")
    with pytest.raises(training.NonFiniteLossError, match="last good checkpoint is step") as e:
        job.train_and_evaluate(c, workdir)
    ckpts = os.path.join(workdir, "stage1", "checkpoints")
    steps = sorted(int(s) for s in os.listdir(ckpts) if s.isdigit())
    assert steps, "no checkpoint was kept"
    assert f"step {steps[-1]} in" in str(e.value)
    assert not os.path.exists(os.path.join(workdir, "stage1", "done.json"))


# ----------------------------------------------------------------------------- sweeps


def test_sweep_expands_the_dilation_ablation(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "launch"))
    try:
        import sweep
    finally:
        sys.path.pop(0)
    runs = sweep.load_sweeps(CONFIG_FILE)["dilations"]
    cmds = sweep.commands(CONFIG_FILE, runs, str(tmp_path))
    assert len(cmds) == 5
    assert "'--config.model.dilations=(3,)'" in cmds[0]
    assert "'--config.model.dilations=(3, 6, 12, 18, 24)'" in cmds[-1]
    assert len({c.split("--workdir ")[1].split()[0] for c in cmds}) == 5
    script = tmp_path / "array.sbatch"
    assert sweep.main(["--config", CONFIG_FILE, "--sweep", "vn", "--slurm", str(script)]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-5" in text and text.count("posewarper_jax.main") == 6
    # --set adds one override to every run (here: one shared pre-trained backbone).
    shared = "model.pretrained=runs/sparse/pretrain/backbone"
    cmds = sweep.commands(CONFIG_FILE, runs, str(tmp_path), common=(shared,))
    assert all(f"--config.{shared}" in c for c in cmds)
    assert sweep.main(["--config", CONFIG_FILE, "--sweep", "vn", "--set", "model.pretrained"]) == 2
    assert "FIELD=VALUE" in capsys.readouterr().err
