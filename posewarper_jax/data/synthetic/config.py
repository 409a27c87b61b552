"""Settings of the synthetic video pose data set and its presets."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# Bumped whenever the same config would produce different files.
GENERATOR_VERSION = 3


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines the generated files (together with ``GENERATOR_VERSION``).

    Attributes:
      seed: master seed; video i of split s is drawn from ``SeedSequence([seed, s, i])``.
      num_train_videos, num_val_videos: videos per split. 12 validation videos by default:
        ``data.splits`` halves them into ``dev`` (choosing settings) and ``test`` (the
        report), 6 each.
      min_frames, max_frames: each video's length is drawn uniformly from this range.
      width, height: frame size in pixels.
      fps: frames per second of the simulated camera; motions move at real speeds, so a lower
        fps means more motion between consecutive frames. 25, as PoseTrack's clips (consumer
        video at 25-30 fps, labeled at the native rate): at 6 fps a joint moves a median 1.4
        head sizes in 3 frames, at 25 fps 0.3.
      min_people, max_people: people per video (1..3 by default).
      person_height_frac: range of a standing person's height over the image height, at the
        camera's distance to the group when the video starts (people nearer or farther, and
        the camera's dolly, change it).
      label_stride: frames with ``index % label_stride == 0`` are ``is_labeled`` (1 = every
        frame; the project makes its sparse subsets from dense labels itself).
      occluder_prob: probability that a video has occluding objects (1 or 2).
      motion_blur_rate, defocus_rate: expected fraction of frames with motion blur / defocus
        (in short bursts of consecutive frames).
      noise_std: range of the per-video sensor noise (std, in 0..255 grey levels).
      jpeg_quality: quality of the written JPEG frames.
    """

    seed: int = 0
    num_train_videos: int = 16
    num_val_videos: int = 12
    min_frames: int = 40
    max_frames: int = 60
    width: int = 320
    height: int = 240
    fps: float = 25.0
    min_people: int = 1
    max_people: int = 3
    person_height_frac: tuple[float, float] = (0.5, 0.75)
    label_stride: int = 1
    occluder_prob: float = 0.5
    motion_blur_rate: float = 0.12
    defocus_rate: float = 0.08
    noise_std: tuple[float, float] = (1.0, 4.0)
    jpeg_quality: int = 90

    def __post_init__(self):
        def bad(field: str, why: str):
            raise ValueError(f"SyntheticConfig.{field}={getattr(self, field)!r}: {why}")

        if self.num_train_videos < 0 or self.num_val_videos < 0:
            bad("num_train_videos", "video counts must be >= 0")
        if self.num_train_videos > 9999 or self.num_val_videos > 9999:
            bad("num_train_videos", "at most 9999 videos per split")
        if not 2 <= self.min_frames <= self.max_frames <= 9999:
            bad("min_frames", "need 2 <= min_frames <= max_frames <= 9999")
        if self.width < 32 or self.height < 32:
            bad("width", "frames must be at least 32x32")
        if self.fps <= 0:
            bad("fps", "must be > 0")
        if not 1 <= self.min_people <= self.max_people <= 8:
            bad("min_people", "need 1 <= min_people <= max_people <= 8")
        lo, hi = self.person_height_frac
        if not 0.05 <= lo <= hi <= 2.0:
            bad("person_height_frac", "need 0.05 <= low <= high <= 2")
        if self.label_stride < 1:
            bad("label_stride", "must be >= 1")
        for name in ("occluder_prob", "motion_blur_rate", "defocus_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "must lie in [0, 1]")
        if not 0 <= self.noise_std[0] <= self.noise_std[1]:
            bad("noise_std", "need 0 <= low <= high")
        if not 1 <= self.jpeg_quality <= 100:
            bad("jpeg_quality", "must lie in [1, 100]")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SyntheticConfig fields {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


PRESETS: dict[str, SyntheticConfig] = {
    # Unit tests: a handful of small frames.
    "tiny": SyntheticConfig(
        num_train_videos=2, num_val_videos=1, min_frames=6, max_frames=8, width=192, height=144
    ),
    # Every run, test and demo by default: about a minute on two cores.
    "default": SyntheticConfig(),
    # Pose pre-training, the stand-in for COCO: many short clips at 4 fps (every frame a new
    # pose), every frame labeled, another seed than the video presets, no validation split.
    "stills": SyntheticConfig(
        seed=1, num_train_videos=128, num_val_videos=0, min_frames=16, max_frames=16, fps=4.0
    ),
    # Real experiments: as many videos as the paper's largest labeled subset uses (250).
    "large": SyntheticConfig(
        num_train_videos=250,
        num_val_videos=50,
        min_frames=60,
        max_frames=120,
        width=640,
        height=480,
    ),
}


def get_config(preset: str = "default", **overrides: Any) -> SyntheticConfig:
    """A preset (``tiny``, ``default``, ``stills``, ``large``) with fields replaced by
    ``overrides``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)
