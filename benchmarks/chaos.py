"""Kill campaign: the main job killed with SIGKILL at N random moments, resumed each time, must
end with the same results as a run never interrupted.

  python benchmarks/chaos.py [--kills 20] [--seed 0] [--dir DIR]
                             [--config configs/sparse.py:runlocal] [--no-compile-cache] [--keep]

Two workdirs, each with its own data root, both run as
``python -m posewarper_jax.main --config CONFIG --workdir run`` from their own folder under
``DIR`` (so the configs, relative paths included, are the same):

  reference/  one uninterrupted run;
  chaos/      the same command, killed N times and started again after each kill, then run to
              the end.

Kill targets, drawn at random (``--seed``) and taken in the job's order; for N >= 4 the first
four are one of each of data, checkpoint, evaluation and report:

  data        during the generation of the synthetic data sets (0-3 s after a data set's
              temporary folder appears);
  checkpoint  while an Orbax checkpoint is being written (a temporary checkpoint folder is
              there; killed 0-50 ms after it appears): pretrain, stage checkpoints and the
              exported backbone;
  training    0-1 s after the first, second or third training step line of the attempt;
  evaluation  0-2 s after the ``propagation:`` line or after the k-th score file written by
              the attempt (k at random among the methods left to score; the pseudo labels
              and HRNet's retraining come before the last one);
  report      0-0.3 s after the k-th report picture written by the attempt.

Each kill is classified by what was on disk at that moment (a temporary checkpoint folder, the
data sets, the evaluation files). A target whose phase is already over when it comes up moves
on to the next phase.

Then the two workdirs are compared, bit for bit:

  checkpoints  every step of every stage (pretrain, stage1, stage2, stage1_augmented): the
               same steps, the same train-state arrays (restored with Orbax), the same Grain
               iterator state; ``pretrain/backbone``'s arrays and metadata;
  results      every file under ``predictions/``, ``eval/``, ``sparse_labels/``,
               ``pseudo_labels/`` and ``report/`` (the pictures), ``config.json``,
               ``report.json``, ``summary.json``, ``report.md`` and ``done.json`` files
               (JSON files with absolute paths, such as ``subset.json``'s data root, with the
               campaign's two folders made the same);
  left over    no ``job.lock``, no ``*.tmp`` file, no temporary checkpoint folder, nothing set
               aside as a corrupt checkpoint.

Legitimately wall-clock, so excluded: ``timing_s`` in report.json and summary.json, the
``## Timing`` section of report.md, ``seconds`` in done.json, the values of timing.json (its
keys are compared: every phase keeps its time across the resumes), and ``metrics.jsonl`` /
``tensorboard/`` (append-only logs with times; steps between the last checkpoint and a kill
are logged again after the resume).

With the JAX persistent compilation cache (default; ``--no-compile-cache`` turns it off),
shared by both workdirs (in ``DIR/jax_cache``, or ``JAX_COMPILATION_CACHE_DIR`` when set), a
restart does not compile again what the reference compiled.

Prints one line per kill and one JSON line with the outcome (``ok``: no difference); writes
the same to ``DIR/chaos.json``. Exit status 0 when the results are equal, 1 otherwise. A
campaign in a ``--dir`` whose reference finished before (``DIR/reference.json``) reuses it
(same config and code assumed) and starts the killed runs over.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("data", "checkpoint", "training", "evaluation", "report")
# Kill targets after the first four (one of each named phase), drawn with these weights.
WEIGHTS = {"data": 1, "checkpoint": 3, "training": 2, "evaluation": 3, "report": 2}
ORDER = {"data": 0, "checkpoint": 1, "training": 1, "evaluation": 2, "report": 3}
STAGES = ("pretrain", "stage1", "stage2", "stage1_augmented")
LAST_SCORE = os.path.join("eval", "detection_hrnet_pseudo_augmented.json")
COMPARED_TREES = ("predictions", "eval", "sparse_labels", "pseudo_labels", "report")
STEP_LINE = re.compile(r"^\[(pretrain|stage1|stage2|stage1_augmented)\] step ")


# ----------------------------------------------------------------------------- running


class Attempt:
    """One start of the job in ``folder``, its console lines timed from the start."""

    def __init__(self, folder: str, config: str, env: dict, log: str):
        self.folder = folder
        self.lines: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self.err = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "posewarper_jax.main", "--config", config]
            + ["--workdir", "run"],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            start_new_session=True,  # its own process group: the kill takes any child too
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def seen(self, pattern) -> float | None:
        """The time of the first console line matching ``pattern`` (a regex), or None."""
        rx = re.compile(pattern)
        return next((t for t, line in list(self.lines) if rx.search(line)), None)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait()

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join(timeout=10)
        self.err.close()
        return code


def _run_dir(folder: str) -> str:
    return os.path.join(folder, "run")


def _tmp_checkpoints(folder: str) -> list[str]:
    run = _run_dir(folder)
    parents = [os.path.join(run, s, "checkpoints") for s in STAGES]
    parents.append(os.path.join(run, "pretrain"))
    found = []
    for parent in parents:
        try:
            found += [e.path for e in os.scandir(parent) if "orbax-checkpoint-tmp" in e.name]
        except OSError:
            continue
    return found


def _generating(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, "data", ".*.partial-*")))


def _data_done(folder: str) -> bool:
    roots = glob.glob(os.path.join(folder, "data", "*"))
    return len(roots) >= 2 and all(os.path.exists(os.path.join(r, "info.json")) for r in roots)


def _phase_now(folder: str, attempt: Attempt, stale: set[str]) -> str:
    """What the job was doing, read off the disk and the console (``stale``: temporary
    checkpoint folders left by an earlier kill, which the job removes when it gets there)."""
    if set(_tmp_checkpoints(folder)) - stale:
        return "checkpoint"
    if _generating(folder) or (not _data_done(folder) and attempt.seen(r"^data: ") is None):
        return "data"
    if os.path.exists(os.path.join(_run_dir(folder), LAST_SCORE)):
        return "report"
    if attempt.seen(r"^propagation: ") is not None or os.path.exists(
        os.path.join(_run_dir(folder), "eval")
    ):
        return "evaluation"
    return "training"


def _phase_over(phase: str, folder: str) -> bool:
    run = _run_dir(folder)
    if phase == "data":
        return _data_done(folder)
    if phase in ("checkpoint", "training"):
        return all(os.path.exists(os.path.join(run, s, "done.json")) for s in STAGES)
    if phase == "evaluation":
        return os.path.exists(os.path.join(run, LAST_SCORE))
    return os.path.exists(os.path.join(run, "report.json")) and os.path.exists(
        os.path.join(run, "summary.json")
    )


def plan_kills(n: int, rng: random.Random) -> list[str]:
    first = ["data", "checkpoint", "evaluation", "report"][:n]
    names, weights = zip(*WEIGHTS.items())
    rest = rng.choices(names, weights=weights, k=n - len(first))
    # In the job's order; checkpoint and training kills mixed at random among themselves.
    return sorted(first + rest, key=lambda p: (ORDER[p], rng.random()))


# The score files (eval/*.json) the job writes, and the last of them: read off the reference.
SCORE_FILES = 8
FIGURES = ("map_bars.png", "samples_propagation.png", "samples_detection.png", "motion_fields.png")


def _fresh(paths: list[str], since: float) -> int:
    """How many of ``paths`` were written at or after ``since`` (wall clock)."""
    count = 0
    for path in paths:
        try:
            count += os.path.getmtime(path) >= since
        except OSError:
            continue
    return count


def _events(target: str, folder: str, attempt: Attempt, since: float, stale: set[str]) -> int:
    """How many events of ``target``'s kind this attempt has reached (see ``one_kill``)."""
    run = _run_dir(folder)
    if target == "data":
        return int(_generating(folder))
    if target == "checkpoint":
        return int(bool(set(_tmp_checkpoints(folder)) - stale))
    if target == "training":
        return sum(1 for _, line in list(attempt.lines) if STEP_LINE.match(line))
    if target == "evaluation":
        if attempt.seen(r"^propagation: ") is None:
            return 0
        return 1 + _fresh(glob.glob(os.path.join(run, "eval", "*.json")), since)
    return _fresh([os.path.join(run, "report", f) for f in FIGURES], since)


def one_kill(target: str, folder: str, config: str, env: dict, rng, log: str) -> dict:
    """Starts the job and kills it during ``target``; returns a record of what happened.

    The kill comes a random moment after a random event of the phase in this attempt: a data
    set's temporary folder appearing (0-3 s after), a temporary checkpoint folder appearing
    (0-50 ms), the first to third training step line (0-1 s), the ``propagation:`` line or
    the k-th score file written in this attempt (0-2 s; k among the methods left to score),
    the k-th report picture written in this attempt (0-0.3 s).
    """
    after = {"data": "checkpoint", "checkpoint": "evaluation", "training": "evaluation"}
    while target in after and _phase_over(target, folder):
        target = after[target]
    if target == "evaluation" and _phase_over(target, folder):
        target = "report"
    scored = len(glob.glob(os.path.join(_run_dir(folder), "eval", "*.json")))
    need, delay = {
        "data": (1, rng.uniform(0.0, 3.0)),
        "checkpoint": (1, rng.uniform(0.0, 0.05)),
        "training": (rng.randint(1, 3), rng.uniform(0.0, 1.0)),
        "evaluation": (rng.randint(1, max(1, SCORE_FILES - scored)), rng.uniform(0.0, 2.0)),
        "report": (rng.randint(1, len(FIGURES)), rng.uniform(0.0, 0.3)),
    }[target]
    since = time.time()
    stale = set(_tmp_checkpoints(folder))  # left by the previous kill
    attempt = Attempt(folder, config, env, log)
    triggered = None
    while attempt.proc.poll() is None:
        now = attempt.elapsed()
        if triggered is None and _events(target, folder, attempt, since, stale) >= need:
            triggered = now
        if triggered is not None and now >= triggered + delay:
            phase = _phase_now(folder, attempt, stale)
            last = attempt.lines[-1][1] if attempt.lines else ""
            attempt.kill()
            return {
                "target": target,
                "killed_in": phase,
                "after_s": round(now, 2),
                "last_line": last[:120],
            }
        time.sleep(0.002)
    code = attempt.wait()
    return {"target": target, "killed_in": None, "exit_code": code, "after_s": attempt.elapsed()}


# ----------------------------------------------------------------------------- comparing


def _files(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            out[os.path.relpath(path, root)] = path
    return out


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def _normalised_json(path: str, base: str, drop: tuple[str, ...]) -> object:
    with open(path) as f:
        text = f.read().replace(os.path.abspath(base), "<campaign>")
    data = json.loads(text)
    if isinstance(data, dict):
        for key in drop:
            data.pop(key, None)
    return data


def _without_timing(markdown: str) -> str:
    return re.sub(r"## Timing\n.*?(?=\n## |\Z)", "## Timing\n", markdown, flags=re.S)


def _arrays(path: str) -> dict[str, object]:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def _compare_arrays(a: str, b: str, what: str, diffs: list[str]) -> None:
    import numpy as np

    xa, xb = _arrays(a), _arrays(b)
    if set(xa) != set(xb):
        diffs.append(f"{what}: different array names ({sorted(set(xa) ^ set(xb))[:5]})")
        return
    for key in sorted(xa):
        if xa[key].dtype != xb[key].dtype or not np.array_equal(xa[key], xb[key]):
            diffs.append(f"{what}: array {key} differs")


def compare(ref_dir: str, chaos_dir: str, ref_base: str, chaos_base: str) -> list[str]:
    """Everything that differs between the two workdirs (see the module docstring)."""
    diffs: list[str] = []
    for stage in STAGES:
        ca, cb = (os.path.join(d, stage, "checkpoints") for d in (ref_dir, chaos_dir))
        steps_a = sorted(s for s in os.listdir(ca) if s.isdigit()) if os.path.isdir(ca) else []
        steps_b = sorted(s for s in os.listdir(cb) if s.isdigit()) if os.path.isdir(cb) else []
        if steps_a != steps_b:
            diffs.append(f"{stage}/checkpoints: steps {steps_a} against {steps_b}")
        for step in sorted(set(steps_a) & set(steps_b), key=int):
            where = f"{stage}/checkpoints/{step}"
            _compare_arrays(
                os.path.join(ca, step, "state"), os.path.join(cb, step, "state"), where, diffs
            )
            for f in glob.glob(os.path.join(ca, step, "data", "*.json")):
                other = os.path.join(cb, step, "data", os.path.basename(f))
                if not os.path.exists(other) or not _same_bytes(f, other):
                    diffs.append(f"{where}/data/{os.path.basename(f)}: the iterator state differs")
        done = [os.path.join(d, stage, "done.json") for d in (ref_dir, chaos_dir)]
        if any(os.path.exists(p) for p in done):
            if not all(os.path.exists(p) for p in done):
                diffs.append(f"{stage}/done.json: present in one workdir only")
            elif _normalised_json(done[0], ref_base, ("seconds",)) != _normalised_json(
                done[1], chaos_base, ("seconds",)
            ):
                diffs.append(f"{stage}/done.json differs")
    backbone = [os.path.join(d, "pretrain", "backbone") for d in (ref_dir, chaos_dir)]
    if os.path.isdir(backbone[0]):
        if not os.path.isdir(backbone[1]):
            diffs.append("pretrain/backbone: missing")
        else:
            from posewarper_jax import convert

            (va, ma), (vb, mb) = (
                convert.load_converted(backbone[0]),
                convert.load_converted(backbone[1]),
            )
            import jax
            import numpy as np

            if ma != mb:
                diffs.append("pretrain/backbone: metadata differs")
            la, lb = jax.tree.leaves(va), jax.tree.leaves(vb)
            if len(la) != len(lb) or not all(np.array_equal(x, y) for x, y in zip(la, lb)):
                diffs.append("pretrain/backbone: arrays differ")
    for tree in COMPARED_TREES:
        fa, fb = _files(os.path.join(ref_dir, tree)), _files(os.path.join(chaos_dir, tree))
        for rel in sorted(set(fa) | set(fb)):
            if rel not in fa or rel not in fb:
                diffs.append(f"{tree}/{rel}: in one workdir only")
            elif not _same_bytes(fa[rel], fb[rel]):
                # JSON files may name their data root (subset.json): compared relative to
                # the campaign's folders.
                if not rel.endswith(".json") or _normalised_json(
                    fa[rel], ref_base, ()
                ) != _normalised_json(fb[rel], chaos_base, ()):
                    diffs.append(f"{tree}/{rel}: differs")
    for name, drop in (("report.json", ("timing_s",)), ("summary.json", ("timing_s",))):
        pa, pb = os.path.join(ref_dir, name), os.path.join(chaos_dir, name)
        if not (os.path.exists(pa) and os.path.exists(pb)):
            diffs.append(f"{name}: missing")
        elif _normalised_json(pa, ref_base, drop) != _normalised_json(pb, chaos_base, drop):
            diffs.append(f"{name} differs (timing_s aside)")
    pa, pb = os.path.join(ref_dir, "report.md"), os.path.join(chaos_dir, "report.md")
    if os.path.exists(pa) and os.path.exists(pb):
        ma, mb = (_without_timing(open(p).read()) for p in (pa, pb))
        if ma != mb:
            lines = difflib.unified_diff(ma.splitlines(), mb.splitlines(), lineterm="", n=0)
            diffs.append("report.md differs (timing aside): " + " | ".join(list(lines)[2:6]))
    else:
        diffs.append("report.md: missing")
    if not _same_bytes(*(os.path.join(d, "config.json") for d in (ref_dir, chaos_dir))):
        diffs.append("config.json differs")
    ta, tb = (os.path.join(d, "timing.json") for d in (ref_dir, chaos_dir))
    keys_a, keys_b = (set(json.load(open(t))) if os.path.exists(t) else set() for t in (ta, tb))
    if keys_a != keys_b:
        diffs.append(f"timing.json: phases {sorted(keys_a ^ keys_b)} in one workdir only")
    # Nothing left over from the kills.
    left = [p for p in _files(chaos_dir) if p.endswith(".tmp") or p.endswith(".lock")]
    left += [p for p in _files(chaos_dir) if "orbax-checkpoint-tmp" in p]
    left += [p for p in _files(chaos_dir) if "corrupt_checkpoints" in p]
    if left:
        diffs.append(f"left over in the killed workdir: {sorted(left)[:5]}")
    return diffs


# ----------------------------------------------------------------------------- campaign


def campaign(kills: int, seed: int, folder: str, config: str, compile_cache: bool) -> dict:
    rng = random.Random(seed)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    if compile_cache:
        # A cache folder already set (e.g. the test run's) is used as it is.
        env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(folder, "jax_cache"))
        env.update(
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    ref_base, chaos_base = os.path.join(folder, "reference"), os.path.join(folder, "chaos")
    shutil.rmtree(chaos_base, ignore_errors=True)  # the killed runs start from nothing
    for d in (ref_base, chaos_base):
        os.makedirs(d, exist_ok=True)
    t_start = time.monotonic()

    ref_record = os.path.join(folder, "reference.json")
    if os.path.exists(ref_record):  # a finished reference of an earlier campaign in DIR
        with open(ref_record) as f:
            t_ref = json.load(f)["seconds"]
        print(f"reference: reused ({t_ref:.0f} s when it ran)", flush=True)
    else:
        shutil.rmtree(ref_base, ignore_errors=True)
        os.makedirs(ref_base)
        ref = Attempt(ref_base, config, env, os.path.join(folder, "reference.err"))
        if ref.wait() != 0:
            raise SystemExit(f"the reference run failed: see {folder}/reference.err")
        t_ref = ref.elapsed()
        with open(ref_record, "w") as f:
            json.dump({"seconds": t_ref, "config": config}, f)
        print(f"reference: {t_ref:.0f} s", flush=True)
    global LAST_SCORE, SCORE_FILES
    scores = sorted(glob.glob(os.path.join(_run_dir(ref_base), "eval", "*.json")))
    scores.sort(key=os.path.getmtime)
    SCORE_FILES = len(scores)
    LAST_SCORE = os.path.relpath(scores[-1], _run_dir(ref_base))

    records = []
    for i, target in enumerate(plan_kills(kills, rng)):
        log = os.path.join(folder, f"chaos_{i:02d}.err")
        rec = one_kill(target, chaos_base, config, env, rng, log)
        records.append(rec)
        if rec["killed_in"] is None:
            print(f"kill {i + 1}: the job ended first (exit {rec['exit_code']})", flush=True)
            break
        print(
            f"kill {i + 1}/{kills}: target {rec['target']}, killed in {rec['killed_in']} "
            f"after {rec['after_s']:.1f} s (last line: {rec['last_line']!r})",
            flush=True,
        )
    final = Attempt(chaos_base, config, env, os.path.join(folder, "chaos_final.err"))
    code = final.wait()
    diffs = compare(_run_dir(ref_base), _run_dir(chaos_base), ref_base, chaos_base)
    if code != 0:
        diffs.insert(0, f"the final resumed run failed (exit {code}): see chaos_final.err")
    landed = [r["killed_in"] for r in records if r["killed_in"]]
    return {
        "ok": not diffs,
        "kills_planned": kills,
        "kills": len(landed),
        "killed_in": {p: landed.count(p) for p in PHASES if p in landed},
        "differences": diffs,
        "reference_s": round(t_ref, 1),
        "campaign_s": round(time.monotonic() - t_start, 1),
        "compile_cache": compile_cache,
        "seed": seed,
        "records": records,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="how many SIGKILLs (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default="", help="campaign folder (default: a temporary one)")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "sparse.py") + ":runlocal")
    p.add_argument("--no-compile-cache", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary campaign folder")
    args = p.parse_args(argv)
    folder = os.path.abspath(args.dir) if args.dir else tempfile.mkdtemp(prefix="chaos-")
    os.makedirs(folder, exist_ok=True)
    path, _, variant = args.config.partition(":")
    config = os.path.abspath(path) + (f":{variant}" if variant else "")
    try:
        out = campaign(args.kills, args.seed, folder, config, not args.no_compile_cache)
        out["dir"] = folder
        with open(os.path.join(folder, "chaos.json"), "w") as f:
            json.dump(out, f, indent=2)
        print(json.dumps({k: v for k, v in out.items() if k != "records"}), flush=True)
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
