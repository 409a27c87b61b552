"""Settings of the synthetic video pose data set and its presets."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# Bumped whenever the same config would produce different files.
GENERATOR_VERSION = 4


# The rates of the hard conditions (``SyntheticConfig``'s docstring), each in [0, 1].
RATES: tuple[str, ...] = (
    "occluder_prob", "passerby_rate", "fast_motion_rate", "motion_blur_rate", "defocus_rate",
    "pan_rate", "zoom_rate", "shake_rate", "compression_rate",
)  # fmt: skip


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
        head sizes in 3 frames, at 25 fps 0.3 (generator version 2; with version 3's fast
        motions and camera moves a visible joint of the default preset 0.42).
      min_people, max_people: people per video (1..3 by default; a passer-by comes on top).
      person_height_frac: range of a standing person's height over the image height, at the
        camera's distance to the group when the video starts (people nearer or farther, and
        the camera's dolly, change it).
      label_stride: frames with ``index % label_stride == 0`` are ``is_labeled`` (1 = every
        frame; the project makes its sparse subsets from dense labels itself).
      label_occluded: also label the joints that the person's own body, another person or an
        object hides, where they lie in the image (COCO's ``v = 1``, "labeled, not visible":
        annotators place a hidden joint whose position they can infer). False (generator
        versions up to 4): only visible joints are labeled, so a side view's far shoulder,
        hip, knee... carries no label. Ears stay unlabeled either way (PoseTrack18 never
        labels them), and so do joints outside the image.
      face_detail: draw what tells a person's front from their back besides the eyes: a
        nose that juts out of the face (seen in profile), a mouth and the shirt's V-neckline
        on the chest. False (generator versions up to 4): the eyes and where the hair is are
        the only cues. With these cues too, a small HRNet still does not tell left from
        right within 1000 pre-training steps (README, "Results"). Colours change, and the
        nose's pixels (a joint it hides turns unseen).
      noise_std: range of the per-video sensor noise (std, in 0..255 grey levels).
      jpeg_quality: quality of the written JPEG frames.

    The hard conditions of PoseTrack's videos. PoseTrack selects "crowded scenes with multiple
    articulated people engaging in various dynamic activities" from the YouTube videos behind
    MPII Human Pose (Andriluka et al., CVPR 2018); PoseWarper (Bertasius et al., NeurIPS 2019)
    names what makes them hard: motion blur, video defocus and pose occlusions. Neither
    publishes how often each occurs, so each rate below is a stated choice for consumer video
    of that kind, fixed before any method was scored on it (``PRESETS["hard"]`` raises them
    all); ``data.synthetic.scene`` records per frame and joint which condition held
    (``load_sidecar``'s ``cond_*`` arrays).

      occluder_prob: probability that a video has occluding objects (1 or 2 poles, crates or
        panels, most sliding across the line of sight, so occlusion comes and goes). 0.5: street
        and indoor scenes usually have something between camera and people.
      passerby_rate: probability that a video has a passer-by: one more person walking (30%
        jogging) across 0.5..1.2 m in front of the group, who occludes the people behind for
        a second or two and leaves; labeled like everyone else. 0.25:
        PoseTrack's scenes are crowded, people cross in front of one another.
      fast_motion_rate: probability that a person (not the passer-by) does a sports-like fast
        motion (``body.FAST_ACTIVITIES``: running, jumping, swinging, spinning) instead of the
        everyday ones. 0.2: sports and exercise are among MPII's largest activity categories.
      motion_blur_rate: expected fraction of frames exposed long (in bursts of 2..5 frames:
        low light, auto-exposure), drawn as the mean of 3..``blur_subframes`` renders at
        sub-frame times over an exposure of 1/50..1/25 s (a 180..360 degree shutter at 25
        fps; the scene, camera path included, interpolated between frames) with a slight
        hand-held camera turn (1.25..7.5 degrees/s) during the exposure; the other frames are
        instantaneous (sharp). 0.12.
      blur_subframes: the most sub-frame renders per long-exposure frame (odd, >= 3); the
        number used grows with the fastest image motion during the exposure (about 2 px
        apart).
      defocus_rate: expected fraction of frames out of focus (bursts of 2..5 frames:
        autofocus hunting), a disk blur of 1..3 px per 240 rows. 0.08.
      pan_rate: probability that the camera pans quickly once (0.1..0.3 rad in 0.4..1.2 s,
        half of the time back again): following a runner, turning to another player. 0.15.
      zoom_rate: probability that the camera zooms once (focal length x0.7..1.6 within
        0.5..2 s). 0.1: consumer cameras zoom now and then; most clips keep the focal length.
      shake_rate: probability of a hand-held camera with strong shake (turns of 0.2..0.6
        degree std, correlated over 0.1 s, on top of every video's slow sway). 0.2.
      compression_rate: probability that a video went through a low-bitrate encode before
        its frames were extracted (a JPEG round trip at quality ``compression_quality`` per
        frame: blocks and ringing as in a YouTube stream). 0.3.
      compression_quality: range of that encode's quality.
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
    label_occluded: bool = False
    face_detail: bool = False
    noise_std: tuple[float, float] = (1.0, 4.0)
    jpeg_quality: int = 90
    occluder_prob: float = 0.5
    passerby_rate: float = 0.25
    fast_motion_rate: float = 0.2
    motion_blur_rate: float = 0.12
    blur_subframes: int = 3
    defocus_rate: float = 0.08
    pan_rate: float = 0.15
    zoom_rate: float = 0.1
    shake_rate: float = 0.2
    compression_rate: float = 0.3
    compression_quality: tuple[int, int] = (20, 45)

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
        for name in RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "must lie in [0, 1]")
        if not 3 <= self.blur_subframes <= 63 or self.blur_subframes % 2 == 0:
            bad("blur_subframes", "must be odd, 3..63")
        if not 1 <= self.compression_quality[0] <= self.compression_quality[1] <= 100:
            bad("compression_quality", "need 1 <= low <= high <= 100")
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
    # The default's videos with every hard condition frequent: most people crossed by someone
    # or something, a third of the frames long-exposed, a quarter defocused, most people in
    # sports-like motion, most cameras shaking, panning or zooming, most videos compressed.
    "hard": SyntheticConfig(
        occluder_prob=0.9,
        passerby_rate=0.7,
        fast_motion_rate=0.6,
        motion_blur_rate=0.35,
        blur_subframes=9,
        defocus_rate=0.25,
        pan_rate=0.5,
        zoom_rate=0.4,
        shake_rate=0.6,
        compression_rate=0.8,
    ),
}


def get_config(preset: str = "default", **overrides: Any) -> SyntheticConfig:
    """A preset (``tiny``, ``default``, ``stills``, ``large``, ``hard``) with fields replaced by
    ``overrides``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset], **overrides)
