"""Pseudo labels from PoseWarper propagation on a small video written here with cv2.

The warping head at initialisation is the identity, so every propagated joint has confidence
exactly 1; scaling its deformable kernel's output channel j by c_j makes joint j's confidence
exactly c_j, which pins down the confidence threshold.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import cv2
import numpy as np
import pytest

from posewarper_jax import experiment, training
from posewarper_jax.apps import augment, propagation
from posewarper_jax.data import pipeline as pl
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H0, W0 = 96, 192
CROP = (64, 64)
N_FRAMES = 14
LABELED = (0, 4, 9)
MOTION = 4.0  # px per frame, x: sources 4 frames apart are 16 px apart
PIPE = pl.PipelineConfig(image_size=CROP, sigma=1.0, batch_size=8, augment=False)
ALL_TARGETS = [1, 2, 3, 5, 6, 7, 8, 10, 11, 12]


def _person(track: int, t: int) -> Person:
    cx, cy = (30.0 if track == 1 else 100.0) + MOTION * t, 48.0
    lin = np.linspace(0.0, 1.0, NUM_JOINTS)
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    kp[:, 0] = cx - 10 + 20 * lin
    kp[:, 1] = cy - 20 + 40 * lin**2
    kp[:, 2] = 1
    kp[[3, 4]] = 0  # ears unlabeled
    box = np.array([cx - 14, cy - 24, 28, 48], np.float32)
    head = np.array([box[0], box[1], 10, 10], np.float32)
    return Person(keypoints=kp, bbox=box, head_bbox=head, track_id=track)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(full ground truth, sparse training set labeled on frames 0, 4, 9)."""
    root = str(tmp_path_factory.mktemp("frames"))
    rng = np.random.default_rng(0)
    frames = []
    for t in range(N_FRAMES):
        path = os.path.join(root, f"{t:06d}.png")
        cv2.imwrite(path, rng.integers(0, 256, (H0, W0, 3)).astype(np.uint8))
        frames.append(Frame(path, t, 500 + t, True, [_person(1, t), _person(2, t)]))
    full = VideoDataset([Video("aug", frames, "aug.json")], "posetrack18", root)
    sparse = copy.deepcopy(full)
    for frame in sparse.videos[0].frames:
        if frame.index not in LABELED:
            frame.is_labeled, frame.people = False, []
    sparse.extra["sparse_subset"] = {"every_k": 4}
    return full, sparse


@pytest.fixture(scope="module")
def model_and_variables():
    spec = importlib.util.spec_from_file_location("sparse_config", f"{ROOT}/configs/sparse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("runlocal")
    c.model.dilations = (3,)
    c.model.head_blocks = 1
    model = experiment.make_model(c)
    return model, training.init_variables(model, CROP, 0)


def _pseudo_frames(ds: VideoDataset) -> list[int]:
    return ds.extra["pseudo_frames"].get("aug", [])


def _same_person(a: Person, b: Person) -> bool:
    return (
        np.array_equal(a.keypoints, b.keypoints)
        and np.array_equal(a.bbox, b.bbox)
        and a.track_id == b.track_id
        and a.keypoint_scores is None
        and b.keypoint_scores is None
    )


def test_pseudo_frame_counts_for_deltas(model_and_variables, data):
    model, variables = model_and_variables
    full, sparse = data
    for deltas, want in (
        (augment.DEFAULT_DELTAS, ALL_TARGETS),
        ((1, 2), [1, 2, 5, 6, 10, 11]),
        ((-1,), [3, 8]),
    ):
        aug = augment.pseudo_labels(model, variables, sparse, deltas=deltas, pipe_cfg=PIPE)
        assert _pseudo_frames(aug) == want
        info = aug.extra["pseudo_labels"]
        assert info["num_frames"] == len(want) and info["num_people"] == 2 * len(want)
        assert info["num_joints"] == 2 * len(want) * 15  # every labeled joint has confidence 1
        assert info["deltas"] == list(deltas) and info["num_real_frames"] == 3
        assert aug.extra["sparse_subset"] == {"every_k": 4}
        labeled = [f.index for f in aug.videos[0].frames if f.is_labeled]
        assert labeled == sorted([*LABELED, *want])
    with pytest.raises(ValueError, match="non-zero"):
        augment.pseudo_labels(model, variables, sparse, deltas=(0, 1), pipe_cfg=PIPE)


def test_nearer_source_wins_and_real_labels_stay(model_and_variables, data):
    model, variables = model_and_variables
    full, sparse = data
    before = copy.deepcopy(sparse)
    aug = augment.pseudo_labels(model, variables, sparse, pipe_cfg=PIPE)
    half_px = 0.5 * 1.25 * 48 / 16  # half a heatmap pixel in image px (crop of a 28x48 box)
    sources = {1: 0, 2: 0, 3: 4, 5: 4, 6: 4, 7: 9, 8: 9, 10: 9, 11: 9, 12: 9}  # tie 2: earlier
    for f, a in sources.items():
        frame = aug.videos[0].frames[f]
        assert [p.track_id for p in frame.people] == [1, 2]
        for person in frame.people:
            src = _person(person.track_id, a)
            has = src.keypoints[:, 2] > 0
            np.testing.assert_array_equal(person.keypoints[:, 2] > 0, has)
            diff = np.abs(person.keypoints[has, :2] - src.keypoints[has, :2])
            assert diff.max() <= half_px + 1e-4  # 16 px from any other source
            np.testing.assert_array_equal(person.bbox, src.bbox)  # A's box: no boxes given
            assert person.annotation_id == -1
            np.testing.assert_allclose(person.keypoint_scores[has], 1.0, atol=1e-6)
    # Real labels unchanged, in the output and in the input.
    for f in LABELED:
        got, want = aug.videos[0].frames[f].people, before.videos[0].frames[f].people
        assert len(got) == len(want) and all(map(_same_person, got, want))
    for fa, fb in zip(sparse.videos[0].frames, before.videos[0].frames):
        assert fa.is_labeled == fb.is_labeled and len(fa.people) == len(fb.people)
    # Frame 13 is 4 frames from frame 9: unlabeled.
    assert not aug.videos[0].frames[13].is_labeled and not aug.videos[0].frames[13].people

    # With boxes, B's own box of the same track is the crop and the pseudo person's box.
    with_boxes = augment.pseudo_labels(model, variables, sparse, pipe_cfg=PIPE, boxes=full)
    assert _pseudo_frames(with_boxes) == ALL_TARGETS
    for f in ALL_TARGETS:
        for person in with_boxes.videos[0].frames[f].people:
            np.testing.assert_array_equal(person.bbox, _person(person.track_id, f).bbox)


def _scaled_head(variables, c: np.ndarray):
    """Variables whose deformable kernel's output channel j is multiplied by c[j]."""
    head = dict(variables["params"]["head"])
    kernel = head["deform_conv1"]["kernel"]  # [3, 3, J, J] HWIO
    head["deform_conv1"] = {"kernel": kernel * np.asarray(c, np.float32)}
    return {
        "params": {**variables["params"], "head": head},
        "batch_stats": variables["batch_stats"],
    }


def test_confidence_threshold(model_and_variables, data):
    model, variables = model_and_variables
    _, sparse = data
    c = 0.025 + 0.05 * np.arange(NUM_JOINTS)  # 0.025 .. 0.825, none equal to a threshold
    scaled = _scaled_head(variables, c)
    labeled = _person(1, 0).keypoints[:, 2] > 0
    for threshold in (augment.MIN_CONFIDENCE, 0.5):
        aug = augment.pseudo_labels(model, scaled, sparse, pipe_cfg=PIPE, min_confidence=threshold)
        keep = labeled & (c > threshold)
        assert _pseudo_frames(aug) == ALL_TARGETS
        for f in ALL_TARGETS:
            for person in aug.videos[0].frames[f].people:
                np.testing.assert_array_equal(person.keypoints[:, 2] > 0, keep)
                np.testing.assert_array_equal(person.keypoints[~keep], 0.0)
                np.testing.assert_allclose(person.keypoint_scores[keep], c[keep], atol=1e-6)
                np.testing.assert_array_equal(person.keypoint_scores[~keep], 0.0)
        assert aug.extra["pseudo_labels"]["num_joints"] == 2 * len(ALL_TARGETS) * keep.sum()
    # Nothing above the threshold: no pseudo person, no pseudo frame.
    aug = augment.pseudo_labels(model, variables, sparse, pipe_cfg=PIPE, min_confidence=1.0)
    assert _pseudo_frames(aug) == [] and aug.extra["pseudo_labels"]["num_people"] == 0
    assert [f.index for f in aug.videos[0].frames if f.is_labeled] == list(LABELED)


def test_augmented_set_feeds_the_training_pipeline(model_and_variables, data):
    model, variables = model_and_variables
    _, sparse = data
    aug = augment.pseudo_labels(model, variables, sparse, deltas=(1, -1), pipe_cfg=PIPE)
    records = pl.train_records(aug)
    assert len(records) == 2 * len(LABELED) + 2 * len(_pseudo_frames(aug))
    assert sorted(set(records.frame.tolist())) == sorted([*LABELED, *_pseudo_frames(aug)])
    batch = pl.train_map_dataset(aug, PIPE, paired=False, process_index=0, process_count=1)[0]
    assert batch["image"].shape == (8, 1, *CROP, 3)


def test_add_pseudo_labels_never_replaces_a_labeled_frame(data):
    full, sparse = data
    plan = propagation.plan_propagation(sparse, deltas=(1,))
    relabeled = copy.deepcopy(sparse)
    relabeled.videos[0].frames[int(plan.frame[0])].is_labeled = True
    xy = np.zeros((len(plan), NUM_JOINTS, 2))
    scores = np.ones((len(plan), NUM_JOINTS))
    with pytest.raises(ValueError, match="real labels are never replaced"):
        augment.add_pseudo_labels(relabeled, plan, xy, scores)
    with pytest.raises(ValueError, match="other videos"):
        empty = propagation.plan_propagation(VideoDataset([], "posetrack18"))
        augment.add_pseudo_labels(full, empty, xy[:0], scores[:0])
