"""One error style for every command line: an expected failure is one line ``error: ...``
naming the file, field or value, exit status 2; ``--debug`` shows the traceback; a bug keeps
its traceback. And the checks made before any work starts."""

from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from posewarper_jax import cli, config_args, convert, evaluate, experiment, job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "sparse.py")
PT18_VAL = os.path.join(ROOT, "tests", "fixtures", "posetrack18", "annotations", "val")


def _env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, *args], env=env or _env(), capture_output=True, text=True, timeout=timeout
    )


def _one_line(out, *needles):
    """The process failed with exit status 2 and exactly one stderr line holding needles."""
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _config_module():
    spec = importlib.util.spec_from_file_location("sparse_config_cli", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the wrapper


def test_guarded_one_line_for_expected_traceback_for_bugs(capsys):
    def bad_value():
        raise experiment.ConfigError("config.stage2.lr=-1.0: must be > 0")

    assert cli.guarded(bad_value) == 2
    assert capsys.readouterr().err == "error: config.stage2.lr=-1.0: must be > 0\n"
    with pytest.raises(experiment.ConfigError):
        cli.guarded(bad_value, debug=True)

    def full_disk():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/report.json")

    assert cli.guarded(full_disk) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /runs/x/report.json: No space left on device; free some")

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.guarded(bug)
    assert cli.guarded(lambda: 3) == 3 and cli.guarded(lambda: {"a": 1}) == 0


# ----------------------------------------------------------------------------- main


def test_main_bad_config_value_is_one_line_and_debug_shows_the_traceback(tmp_path):
    args = ["-m", "posewarper_jax.main", f"--config={CONFIG}:runlocal"]
    args += [f"--workdir={tmp_path / 'run'}", "--config.stage2.lr=-1.0"]
    out = _run(*args)
    assert _one_line(out) == "error: config.stage2.lr=-1.0: must be > 0"
    debug = _run(*args, "--debug")
    assert debug.returncode not in (0, 2) and "Traceback" in debug.stderr
    assert "ConfigError: config.stage2.lr=-1.0" in debug.stderr
    assert not os.path.exists(tmp_path / "run")


def test_main_workdir_that_is_a_file_misspelt_field_and_bad_variant(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    base = ["-m", "posewarper_jax.main", f"--config={CONFIG}:runlocal", f"--workdir={afile}"]
    _one_line(_run(*base), str(afile), "exists and is not a directory")
    _one_line(
        _run(*base, "--config.stage1.lrr=1"),
        "--config.stage1.lrr: the config has no field 'stage1.lrr'",
        "did you mean 'lr'",
    )
    variant = ["-m", "posewarper_jax.main", f"--config={CONFIG}:V=abc", f"--workdir={afile}"]
    assert _one_line(_run(*variant)) == "error: configs/sparse.py: V=abc: must be an integer"


def test_batch_size_is_checked_against_the_device_count_before_any_work(tmp_path):
    """Before: an IndivisibleError from JAX at the first step of the stage."""
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=3")
    out = _run(
        "-m",
        "posewarper_jax.main",
        f"--config={CONFIG}:runlocal",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.root={tmp_path / 'data'}",
        env=env,
    )
    _one_line(out, "config.stage1.batch_size=8: must be a multiple of the 3 devices", "use 6")
    assert not os.path.exists(tmp_path / "data") and not os.path.exists(tmp_path / "run")
    # In this process (8 devices): each stage's and the evaluation's batch.
    c = _config_module().get_config("runlocal")
    experiment.check_batch_sizes(c)
    for field in ("stage2.batch_size", "eval.batch_size"):
        section, name = field.split(".")
        c[section][name] = 12
        with pytest.raises(experiment.ConfigError, match=rf"{field}=12: .* 8 devices"):
            job.train_and_evaluate(c, str(tmp_path / "run"))
        c[section][name] = 8
    experiment.check_batch_sizes(c, num_devices=2)


def test_variant_arguments_are_typed():
    module = _config_module()
    tiny = module.get_config("runlocal")
    for arg in ("runlocal=False", "runlocal=0", "runlocal=no"):
        assert module.get_config(arg).model.backbone == "small", arg  # the default, not runlocal
    assert module.get_config("runlocal=true").model.backbone == tiny.model.backbone
    assert module.get_config("paper=0").model.head_blocks == module.get_config().model.head_blocks
    assert module.get_config("V=3,N=2").sparse.num_videos == 3
    for arg, message in [
        ("V=abc", "configs/sparse.py: V=abc: must be an integer"),
        ("N=1.5", "configs/sparse.py: N=1.5: must be an integer"),
        ("runlocal=maybe", "configs/sparse.py: runlocal=maybe: must be a boolean"),
        ("root", "configs/sparse.py: root: needs a value"),
        ("V2=3", "configs/sparse.py: unknown argument 'V2'"),
    ]:
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            module.get_config(arg)


def test_parse_arg_types_values_by_their_defaults():
    args = config_args.parse_arg(
        " on , n=3,x=0.5,name=a b,pair=1:2", on=False, off=True, n=0, x=1.0, name="", pair=(0, 0),
        k=int,
    )  # fmt: skip
    assert args.to_dict() == {
        "on": True, "off": True, "n": 3, "x": 0.5, "name": "a b", "pair": (1, 2), "k": None,
    }  # fmt: skip
    for word, value in [("yes", True), ("ON", True), ("1", True), ("off", False), ("No", False)]:
        assert config_args.parse_arg(f"on={word}", on=False).on is value, word
    for arg, message in [
        ("on=2", "where: on=2: must be a boolean (true or false)"),
        ("x=fast", "where: x=fast: must be a number"),
        ("pair=1:b", "where: pair=1:b: must be values separated by ':'"),
        ("name=", "where: name=: needs a value (name=...)"),
        ("other=1", "where: unknown argument 'other'; known: on, x, pair, name"),
    ]:
        with pytest.raises(ValueError) as err:
            config_args.parse_arg(arg, where="where", on=False, x=1.0, pair=(0, 0), name="")
        assert str(err.value) == message
    items = config_args.split_items(" fps=6 ,, seed")
    assert [(i.text, i.key, i.eq, i.value) for i in items] == [
        (" fps=6 ", "fps", True, "6"), (" seed", "seed", False, ""),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- other CLIs


def test_sweep_checks_overrides_before_printing_commands(tmp_path):
    sweep = os.path.join(ROOT, "launch", "sweep.py")
    base = [sweep, "--config", CONFIG, "--sweep", "dilations", "--root", str(tmp_path)]
    out = _run(*base, "--set", "model.dilatons=3")
    _one_line(out, "--set model.dilatons=3", "no field 'model.dilatons'", "model.dilations?")
    assert out.stdout == ""
    _one_line(_run(*base, "--set", "stage2.lr=abc"), "'abc' is not a float")
    _one_line(_run(sweep, "--config", f"{CONFIG}:V=abc", "--sweep", "vn"), "V=abc: must be an")
    ok = _run(*base, "--set", "stage2.lr=3e-4", "--set", "model.pretrained=runs/x/backbone")
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 5


def test_synthetic_and_evaluate_check_their_outputs_first(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    out = _run(
        "-m", "posewarper_jax.data.synthetic", "--root", str(afile / "x"), "--preset", "tiny"
    )
    _one_line(out, str(afile), "not a directory")
    # evaluate --out DIR: refused before scoring (before: an IsADirectoryError after it).
    args = ["--gt", PT18_VAL, "--pred", PT18_VAL, "--missing-scores", "min_score"]
    assert evaluate.main([*args, "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "Total" not in captured.out and f"--out {tmp_path}: is a directory" in captured.err
    assert evaluate.main([*args, "--out", str(tmp_path / "r.json")]) == 0
    assert os.path.isfile(tmp_path / "r.json")


def test_diagnostics_on_an_unfinished_workdir_is_one_line(tmp_path):
    out = _run(
        "-m",
        "posewarper_jax.apps.diagnostics",
        f"--config={CONFIG}:runlocal",
        f"--workdir={tmp_path}",
    )
    _one_line(out, "stage1 is not finished (no done.json)")


# ----------------------------------------------------------------------------- convert


@pytest.fixture
def weight_files(tmp_path):
    rng = np.random.default_rng(0)
    files = {}
    files["random.pth"] = rng.bytes(4000)
    files["empty.pth"] = b""
    files["random.npz"] = rng.bytes(4000)
    np.savez(tmp_path / "good.npz", a=np.zeros(3, np.float32))
    good = (tmp_path / "good.npz").read_bytes()
    files["cut.npz"] = good[: len(good) // 2]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("random.pth", "is not a PyTorch checkpoint (neither torch's zip format nor a pickle"),
        ("empty.pth", "is empty (0 bytes)"),
        ("random.npz", "is not an .npz archive (no zip header"),
        ("cut.npz", "is truncated or damaged"),
    ],
)
def test_convert_names_the_real_reason_of_a_broken_file(weight_files, capsys, name, reason):
    src = weight_files / name
    assert convert.main(["--src", str(src), "--out", str(weight_files / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {src}: {reason}"), err
    assert "unsafe" not in err and "allow_pickle" not in err  # no advice for a broken file
    assert not os.path.exists(weight_files / "out")


def test_convert_torch_files_truncated_or_not_a_checkpoint(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert convert.main(["--src", str(tmp_path / "cut.pth"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cut.pth: is truncated" in err and "unsafe" not in err
    # A dict of 1000 tensors of another model: a few lines, not one per key (before: 1,466).
    other = {f"encoder.layer{i}.weight": torch.zeros(2) for i in range(1000)}
    torch.save(other, tmp_path / "other.pth")
    assert convert.main(["--src", str(tmp_path / "other.pth"), "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert 2 <= len(lines) <= 8, lines
    assert "problem(s)" in lines[0] and any("none of its keys belongs" in x for x in lines)
    assert any(x.strip().startswith("1000 x unknown key") for x in lines)


_FAILING_SAVE = """
import sys
import numpy as np
from posewarper_jax import cli, convert
cli.check_writable_dir = lambda path, what: path  # let the write itself fail
try:
    convert.save_converted(sys.argv[1], {"params": {"a": np.zeros(3, np.float32)}}, {})
except convert.WeightFileError as e:
    print("error:", e)
"""


def test_a_failing_orbax_save_is_an_error_not_a_hang(tmp_path):
    """Before: Orbax's asynchronous checkpointer logged the error three times and its threads
    kept the process alive (for the coordination timeout)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    out = _run("-c", _FAILING_SAVE, str(afile / "out"), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"error: {afile / 'out'}: writing the converted checkpoint")
    assert "Traceback" not in out.stderr
