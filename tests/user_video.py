"""Helpers for the tests of the video commands (``label``, ``propagate``, ``track``):
a main-job workdir holding the tiny model at initialisation, and a test video written by
OpenCV with known people.

Tests import it as ``from user_video import ...`` (pytest puts ``tests/`` on ``sys.path``).
At initialisation the warping head is the identity, so propagating a labeled pose returns
that pose (up to the heatmap grid): the known answer several tests use.
"""

from __future__ import annotations

import importlib.util
import json
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from conftest import curve_person, texture

from posewarper_jax import experiment, training
from posewarper_jax.data.types import Frame, Person, Video, VideoDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(ROOT, "configs", "sparse.py")


def tiny_config(**fields):
    """The runlocal config with the smallest head (1 block, dilation 3), 64 x 64 crops,
    evaluation batches of 8, no flip test; ``fields``: dotted names -> values."""
    spec = importlib.util.spec_from_file_location("sparse_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("runlocal")
    c.model.dilations = (3,)
    c.model.head_blocks = 1
    c.input.image_size = (64, 64)
    c.eval.batch_size = 8
    c.eval.flip_test = False
    for name, value in fields.items():
        node = c
        *path, last = name.split(".")
        for key in path:
            node = node[key]
        node[last] = value
    return c


def make_workdir(workdir: str, config=None, variables=None) -> tuple:
    """A workdir as the main job leaves it after stage 2 (``config.json``, finished stage-1
    and stage-2 checkpoints), holding ``variables`` (default: the model at initialisation).
    Returns ``(config, model, variables)``."""
    config = tiny_config() if config is None else config
    model = experiment.make_model(config)
    if variables is None:
        variables = training.init_variables(model, config.input.image_size, config.seed)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    for stage, index in (("stage1", 1), ("stage2", 2)):
        tx = training.make_optimizer(config[stage], index, optax.constant_schedule(1e-3))
        state = {
            "step": jnp.asarray(1, jnp.int32),
            "params": variables["params"],
            "batch_stats": variables["batch_stats"],
            "opt_state": tx.init(variables["params"]),
        }
        # The layout of training.checkpoint_manager, saved synchronously.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=False
        )
        directory = os.path.abspath(os.path.join(workdir, stage, "checkpoints"))
        with ocp.CheckpointManager(directory, options=options, item_names=("state", "data")) as m:
            m.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
        with open(os.path.join(workdir, stage, "done.json"), "w") as f:
            json.dump({"stage": stage, "steps": 1}, f)
    return config, model, jax.device_get(variables)


# ----------------------------------------------------------------------------- test video

H0, W0 = 96, 128  # frame size
N_FRAMES = 14
MOTION = 2.0  # px per frame, x
BASE = {1: (32.0, 48.0), 2: (84.0, 45.0)}  # track -> (cx, cy) at t = 0


def person(track: int, t: int, motion: float = MOTION) -> Person:
    """Track ``track`` on frame ``t``: 15 labeled joints on a curve, moving right."""
    cx, cy = BASE[track]
    return curve_person(track, cx + motion * t, cy)


def write_test_video(folder: str, name: str = "clip", n: int = N_FRAMES) -> tuple[str, str]:
    """The frames (PNG, ``folder/<name>/%06d.png``) and the same frames as an mp4v video
    (``folder/<name>.mp4``). Returns ``(frame directory, video path)``."""
    frames_dir = os.path.join(folder, name)
    os.makedirs(frames_dir, exist_ok=True)
    path = os.path.join(folder, f"{name}.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25, (W0, H0))
    for t in range(n):
        image = texture(t, H0, W0)
        cv2.imwrite(os.path.join(frames_dir, f"{t:06d}.png"), image)
        writer.write(image)
    writer.release()
    return frames_dir, path


def ground_truth(frames_dir: str, name: str = "clip", n: int = N_FRAMES) -> VideoDataset:
    """Tracks 1 and 2 on every frame of the test video, every frame labeled."""
    frames = []
    for t in range(n):
        path = os.path.join(frames_dir, f"{t:06d}.png")
        frames.append(Frame(path, t, t + 1, True, [person(1, t), person(2, t)]))
    root = os.path.dirname(frames_dir)
    return VideoDataset([Video(name, frames, f"{name}.json")], "posetrack18", root)


def coco_labels(gt: VideoDataset, frames, path: str, *, names: bool = True) -> str:
    """The people of ``frames`` as a filled COCO keypoints file (as ``label`` would have
    them: ``file_name`` ``%06d.jpg``, ``id`` = frame + 1), written to ``path``."""
    from posewarper_jax.data.types import JOINT_NAMES

    video = gt.videos[0]
    images, annotations = [], []
    for t in frames:
        images.append({"id": t + 1, "file_name": f"{t:06d}.jpg"})
        for p in video.frames[t].people:
            kp = np.asarray(p.keypoints, np.float64).copy()
            kp[:, 2] = np.where(kp[:, 2] > 0, 2, 0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": t + 1,
                    "category_id": 1,
                    "keypoints": kp.reshape(-1).tolist(),
                    "bbox": [float(v) for v in p.bbox],
                    "bbox_head": [float(v) for v in p.head_bbox],
                    "track_id": int(p.track_id),
                }
            )
    category = {"id": 1, "name": "person"}
    if names:
        category["keypoints"] = list(JOINT_NAMES)
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": [category]}, f)
    return path


_SHARED: dict[str, tuple] = {}


def shared_workdir() -> tuple[str, object, object, dict]:
    """One workdir of the tiny model at initialisation per test process (made once):
    ``(workdir, config, model, variables)``."""
    if "init" not in _SHARED:
        import tempfile

        workdir = os.path.join(tempfile.mkdtemp(prefix="posewarper_workdir_"), "run")
        _SHARED["init"] = (workdir, *make_workdir(workdir))
    return _SHARED["init"]
