"""The in-memory form of a video pose data set, shared by every reader and the pipeline.

Conventions: pixel coordinates with pixel centres at integers, x to the right, y down.
Keypoints always use the 17-joint PoseTrack18 layout (``JOINT_NAMES``); PoseTrack17's 15
joints are mapped into it on reading and back on writing. Boxes are ``[x, y, w, h]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "nose",
    "head_bottom",
    "head_top",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_JOINTS = len(JOINT_NAMES)

# Left/right pairs, swapped by a horizontal flip.
FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)  # fmt: skip

# Limbs as joint-index pairs (0-based) for drawing; head_bottom (the neck) joins the shoulders.
SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 5), (1, 6), (0, 3), (0, 4),
)  # fmt: skip

UPPER_BODY_JOINTS: tuple[int, ...] = tuple(range(11))
LOWER_BODY_JOINTS: tuple[int, ...] = tuple(range(11, 17))

# PoseTrack17 joint id (0..14) -> index in JOINT_NAMES.
PT17_TO_PT18: tuple[int, ...] = (16, 14, 12, 11, 13, 15, 10, 8, 6, 5, 7, 9, 1, 0, 2)
PT17_JOINT_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
    "left_wrist", "head_bottom", "nose", "head_top",
)  # fmt: skip


@dataclasses.dataclass
class Person:
    """One annotated (or detected) person in one frame.

    keypoints: float32 [17, 3] rows (x, y, v); v > 0 means labeled (v is 0 or 1 after reading).
    bbox: float32 [4] (x, y, w, h).
    head_bbox: float32 [4] (x, y, w, h) or None.
    score: box score (1.0 for ground truth).
    keypoint_scores: float32 [17] per-joint confidences of a prediction; None for ground truth.
    """

    keypoints: np.ndarray
    bbox: np.ndarray
    head_bbox: np.ndarray | None = None
    track_id: int = -1
    score: float = 1.0
    annotation_id: int = -1
    keypoint_scores: np.ndarray | None = None


@dataclasses.dataclass
class Frame:
    """One frame of a video; ``people`` is empty on unlabeled frames."""

    path: str  # absolute image path
    index: int  # 0-based position in the video
    image_id: int
    is_labeled: bool
    people: list[Person] = dataclasses.field(default_factory=list)
    # Each ignore region is a float32 [N, 2] polygon of (x, y) vertices.
    ignore_regions: list[np.ndarray] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Video:
    """A video: every frame in order (``frames[i].index == i``)."""

    name: str
    frames: list[Frame]
    source: str  # the annotation file it was read from
    extra: dict = dataclasses.field(default_factory=dict)  # e.g. vid_id, camera intrinsics

    @property
    def nframes(self) -> int:
        return len(self.frames)


@dataclasses.dataclass
class VideoDataset:
    videos: list[Video]
    fmt: str  # "posetrack18" | "posetrack17" | "coco"
    root: str = ""
    extra: dict = dataclasses.field(default_factory=dict)  # e.g. how a sparse subset was drawn

    def labeled_frames(self):
        """Yields (video index, frame index) of every labeled frame, in order."""
        for vi, video in enumerate(self.videos):
            for frame in video.frames:
                if frame.is_labeled:
                    yield vi, frame.index


def map_people(dataset: VideoDataset, fn) -> VideoDataset:
    """A copy of ``dataset`` whose every person is ``fn(person)`` (videos, frames and the
    people lists are new; ``dataset`` is not modified)."""
    videos = []
    for video in dataset.videos:
        frames = [dataclasses.replace(f, people=[fn(p) for p in f.people]) for f in video.frames]
        videos.append(dataclasses.replace(video, frames=frames))
    return dataclasses.replace(dataset, videos=videos)
