"""Articulated 3D people: body proportions and looks, motion programs, forward kinematics.

World frame: metres, right-handed, Y up, the ground is the plane Y = 0. A person's own frame
has X to the person's left, Y up and Z forward; ``yaw`` turns it about the world Y axis
(yaw = 0 faces world +Z). A body is drawn as ``NUM_PARTS`` capsules (segments with a radius
at each end); the 17 joints follow the PoseTrack18 layout of ``types.JOINT_NAMES``.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from posewarper_jax.data.types import NUM_JOINTS

PART_NAMES: tuple[str, ...] = (
    "spine",
    "shoulder_left",  # neck base to left shoulder (the trapezius slope)
    "shoulder_right",
    "hip_bar",
    "side_left",
    "side_right",
    "neck",
    "head",
    "upper_arm_left",
    "upper_arm_right",
    "forearm_left",
    "forearm_right",
    "hand_left",
    "hand_right",
    "thigh_left",
    "thigh_right",
    "shin_left",
    "shin_right",
    "foot_left",
    "foot_right",
)
NUM_PARTS = len(PART_NAMES)
_P = {name: i for i, name in enumerate(PART_NAMES)}
HEAD_PART = _P["head"]
TORSO_PARTS = (
    _P["spine"], _P["shoulder_left"], _P["shoulder_right"], _P["hip_bar"], _P["side_left"],
    _P["side_right"],
)  # fmt: skip

# Parts that touch each joint: a joint is seen when the front-most surface at its pixel is one
# of these parts of the same person (and the joint is not far behind that surface).
JOINT_PARTS: tuple[tuple[int, ...], ...] = (
    (_P["head"],),  # nose
    (_P["neck"], _P["head"]),  # head_bottom
    (_P["head"],),  # head_top
    (_P["head"],),  # left_ear
    (_P["head"],),  # right_ear
    (_P["spine"], _P["shoulder_left"], _P["side_left"], _P["upper_arm_left"], _P["neck"]),
    (_P["spine"], _P["shoulder_right"], _P["side_right"], _P["upper_arm_right"], _P["neck"]),
    (_P["upper_arm_left"], _P["forearm_left"]),
    (_P["upper_arm_right"], _P["forearm_right"]),
    (_P["forearm_left"], _P["hand_left"]),
    (_P["forearm_right"], _P["hand_right"]),
    (_P["spine"], _P["hip_bar"], _P["side_left"], _P["thigh_left"]),
    (_P["spine"], _P["hip_bar"], _P["side_right"], _P["thigh_right"]),
    (_P["thigh_left"], _P["shin_left"]),
    (_P["thigh_right"], _P["shin_right"]),
    (_P["shin_left"], _P["foot_left"]),
    (_P["shin_right"], _P["foot_right"]),
)
assert len(JOINT_PARTS) == NUM_JOINTS

# Surface patterns of a part (see ``render``).
PATTERN_PLAIN, PATTERN_HSTRIPES, PATTERN_VSTRIPES, PATTERN_CHECKS, PATTERN_HEAD = range(5)

# Angles driven by a motion program, in radians; all are [T] arrays in ``Motion.angles``.
ANGLE_NAMES: tuple[str, ...] = (
    "twist",  # torso rotation about its vertical axis
    "bend",  # torso forward flexion at the pelvis
    "lean",  # torso sideways tilt
    "head_yaw",
    "head_pitch",
    "shoulder_flex_l",  # arm raised forward
    "shoulder_flex_r",
    "shoulder_abd_l",  # arm raised sideways
    "shoulder_abd_r",
    "elbow_l",  # 0 = straight
    "elbow_r",
    "elbow_up_l",  # where a bent forearm points: 0 forward, larger = more upward
    "elbow_up_r",
    "hip_flex_l",  # thigh raised forward
    "hip_flex_r",
    "hip_abd_l",  # leg spread sideways
    "hip_abd_r",
    "knee_l",  # 0 = straight
    "knee_r",
)


@dataclasses.dataclass(frozen=True)
class BodyShape:
    """Proportions (metres) and looks of one person.

    radii: float64 [NUM_PARTS, 2] capsule radius at the part's first and second end.
    colors: float32 [NUM_PARTS, 3] base colour (BGR, 0..255) per part.
    color2: float32 [NUM_PARTS, 3] second colour (stripes, checks; hair for the head).
    patterns: int [NUM_PARTS] one of the PATTERN_* codes.
    """

    height: float
    hip_half: float
    shoulder_half: float
    torso: float
    neck: float
    head: float
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float
    radii: np.ndarray
    colors: np.ndarray
    color2: np.ndarray
    patterns: np.ndarray
    stripe_period: float = 0.08
    hair_line: float = 0.0  # head surface with normal . forward below this is hair


@dataclasses.dataclass(frozen=True)
class Motion:
    """A person's trajectory over T frames.

    root: float64 [T, 2] pelvis position on the ground plane (world X, Z).
    yaw: float64 [T] heading (radians, 0 faces world +Z).
    angles: name -> float64 [T] joint angles (``ANGLE_NAMES``).
    lift: float64 [T] height of the feet above the ground (a jump's flight), or None (0).
    """

    root: np.ndarray
    yaw: np.ndarray
    angles: dict[str, np.ndarray]
    lift: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.yaw.shape[0])


@dataclasses.dataclass(frozen=True)
class BodyPose:
    """World-space geometry of one person over T frames.

    joints: float64 [T, 17, 3] PoseTrack18 joints.
    part_a, part_b: float64 [T, NUM_PARTS, 3] capsule end points.
    torso_frame, head_frame: float64 [T, 3, 3] rotations whose columns are the person's
      (left, up, forward) axes of the torso and of the head, in world coordinates.
    """

    joints: np.ndarray
    part_a: np.ndarray
    part_b: np.ndarray
    torso_frame: np.ndarray
    head_frame: np.ndarray


# ----------------------------------------------------------------------------- looks

_SKIN_TONES = np.array(
    [[189, 224, 255], [160, 200, 240], [130, 170, 220], [95, 135, 190], [70, 100, 150],
     [50, 70, 110], [120, 160, 205]],
    dtype=np.float32,
)  # fmt: skip
_HAIR_COLORS = np.array(
    [[20, 20, 25], [30, 40, 60], [40, 70, 110], [90, 150, 200], [150, 150, 155], [30, 60, 150]],
    dtype=np.float32,
)  # fmt: skip
_PANTS_COLORS = np.array(
    [[120, 70, 40], [90, 50, 30], [40, 40, 40], [110, 150, 170], [90, 90, 90], [60, 80, 40],
     [150, 110, 70]],
    dtype=np.float32,
)  # fmt: skip


def _random_color(rng: np.random.Generator) -> np.ndarray:
    """A random BGR colour with varied hue, saturation and brightness."""
    hsv = np.array(
        [[[rng.integers(0, 180), rng.integers(40, 256), rng.integers(50, 256)]]], dtype=np.uint8
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def sample_body(rng: np.random.Generator, height: float | None = None) -> BodyShape:
    """Draws one person's proportions (adult anthropometric ratios with jitter) and looks."""
    h = float(rng.uniform(1.5, 1.95)) if height is None else float(height)

    def seg(frac: float) -> float:  # a length as a fraction of height, jittered per person
        return h * frac * float(rng.normal(1.0, 0.04))

    girth = float(rng.uniform(0.85, 1.25))
    r = h * girth
    hand_r = 0.022 * h
    radii = np.zeros((NUM_PARTS, 2))
    radii[_P["spine"]] = (0.068 * r, 0.074 * r)  # pelvis end, chest end
    radii[_P["shoulder_left"]] = radii[_P["shoulder_right"]] = (0.036 * r, 0.036 * r)
    radii[_P["hip_bar"]] = (0.05 * r,) * 2
    radii[_P["side_left"]] = radii[_P["side_right"]] = (0.04 * r, 0.04 * r)
    radii[_P["neck"]] = (0.028 * r,) * 2
    radii[_P["head"]] = (0.054 * h,) * 2
    for side in ("left", "right"):
        radii[_P[f"upper_arm_{side}"]] = (0.027 * r, 0.022 * r)
        radii[_P[f"forearm_{side}"]] = (0.021 * r, 0.017 * r)
        radii[_P[f"hand_{side}"]] = (hand_r, 0.8 * hand_r)
        radii[_P[f"thigh_{side}"]] = (0.045 * r, 0.032 * r)
        radii[_P[f"shin_{side}"]] = (0.03 * r, 0.022 * r)
        radii[_P[f"foot_{side}"]] = (0.022 * h, 0.02 * h)

    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * float(rng.uniform(0.9, 1.05))
    hair = _HAIR_COLORS[rng.integers(len(_HAIR_COLORS))]
    shirt = _random_color(rng)
    shirt2 = _random_color(rng)
    pants = _PANTS_COLORS[rng.integers(len(_PANTS_COLORS))] * float(rng.uniform(0.8, 1.2))
    if rng.random() < 0.3:
        pants = _random_color(rng)
    shoes = np.full(3, rng.uniform(20, 200), np.float32) * rng.uniform(0.8, 1.0, 3).astype(
        np.float32
    )
    long_sleeves = bool(rng.random() < 0.5)
    pattern = int(rng.choice([PATTERN_PLAIN, PATTERN_HSTRIPES, PATTERN_VSTRIPES, PATTERN_CHECKS],
                             p=[0.45, 0.25, 0.15, 0.15]))  # fmt: skip

    colors = np.zeros((NUM_PARTS, 3), np.float32)
    color2 = np.zeros((NUM_PARTS, 3), np.float32)
    patterns = np.full(NUM_PARTS, PATTERN_PLAIN, np.int32)
    for p in TORSO_PARTS:
        colors[p], color2[p], patterns[p] = shirt, shirt2, pattern
    colors[_P["neck"]] = skin
    colors[HEAD_PART], color2[HEAD_PART], patterns[HEAD_PART] = skin, hair, PATTERN_HEAD
    for side in ("left", "right"):
        colors[_P[f"upper_arm_{side}"]] = shirt
        color2[_P[f"upper_arm_{side}"]] = shirt2
        patterns[_P[f"upper_arm_{side}"]] = pattern
        colors[_P[f"forearm_{side}"]] = shirt if long_sleeves else skin
        color2[_P[f"forearm_{side}"]] = shirt2
        patterns[_P[f"forearm_{side}"]] = pattern if long_sleeves else PATTERN_PLAIN
        colors[_P[f"hand_{side}"]] = skin
        colors[_P[f"thigh_{side}"]] = pants
        colors[_P[f"shin_{side}"]] = pants
        colors[_P[f"foot_{side}"]] = shoes
    return BodyShape(
        height=h,
        hip_half=seg(0.05),
        shoulder_half=seg(0.118),
        torso=seg(0.29),
        neck=seg(0.055),
        head=seg(0.13),
        upper_arm=seg(0.175),
        forearm=seg(0.148),
        hand=seg(0.07),
        thigh=seg(0.245),
        shin=seg(0.245),
        foot=seg(0.12),
        radii=radii,
        colors=np.clip(colors, 0, 255),
        color2=np.clip(color2, 0, 255),
        patterns=patterns,
        stripe_period=float(rng.uniform(0.05, 0.12)),
        hair_line=float(rng.uniform(-0.35, 0.25)),
    )


# ----------------------------------------------------------------------------- motion


def smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian noise of length ``n`` low-passed by a Gaussian of ``sigma`` frames."""
    sigma = max(float(sigma), 0.5)
    half = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= np.sqrt(np.sum(kernel**2))  # keeps unit variance after filtering
    white = rng.standard_normal(n + 2 * half)
    return np.convolve(white, kernel, mode="valid")[:n]


ACTIVITIES: tuple[str, ...] = ("walk", "wave", "bend", "turn", "jack", "squat", "reach")
_ACTIVITY_PROB = {
    "walk": 0.5,
    "wave": 0.3,
    "bend": 0.2,
    "turn": 0.3,
    "jack": 0.15,
    "squat": 0.15,
    "reach": 0.2,
}


# Sports-like fast motions (``sample_fast_activity``): each alone, the person's whole program.
#   run:   2.5-4.5 m/s (jogging to sprinting), 1.3-1.6 strides/s, arms bent and swinging.
#   jump:  repeated vertical jumps 0.15-0.5 m high (flight 0.35-0.64 s), a crouch before
#          take-off and after landing, arms swung from behind to overhead.
#   swing: a bat/racket/golf-like swing every 1.2-2.5 s: both arms sweep across the body with a
#          torso twist of 1.6-2.4 rad in 0.25-0.45 s (hands at 5-9 m/s).
#   spin:  bursts of fast turning (dance, throwing), 5-10 rad/s for 0.4-1.0 s, arms out.
FAST_ACTIVITIES: tuple[str, ...] = ("run", "jump", "swing", "spin")
_GRAVITY = 9.81


def sample_fast_activity(rng: np.random.Generator) -> tuple[str, ...]:
    """One sports-like fast motion (``FAST_ACTIVITIES``), uniformly."""
    return (str(rng.choice(FAST_ACTIVITIES)),)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _fast_motion(
    rng: np.random.Generator, kind: str, t: np.ndarray, a: dict[str, np.ndarray]
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Adds a fast motion program to the angles ``a`` (in place); returns (walking speed m/s,
    extra yaw rate rad/s [T], lift [T] or None)."""
    T = len(t)
    yaw_rate = np.zeros(T)
    if kind == "run":
        speed = rng.uniform(2.5, 4.5)
        phase = 2 * np.pi * rng.uniform(1.3, 1.6) * t + rng.uniform(0, 2 * np.pi)
        for s, ph in (("l", phase), ("r", phase + np.pi)):
            a[f"hip_flex_{s}"] += 0.25 + rng.uniform(0.55, 0.75) * np.sin(ph)
            a[f"knee_{s}"] += 0.3 + 1.5 * np.maximum(np.cos(ph), 0) ** 1.2
            a[f"shoulder_flex_{s}"] -= rng.uniform(0.6, 0.9) * np.sin(ph)
            a[f"elbow_{s}"] += 1.3 + 0.2 * np.sin(ph)
        a["bend"] += rng.uniform(0.12, 0.25)
        a["twist"] += 0.15 * np.sin(phase)
        return speed, yaw_rate, None
    if kind == "jump":
        h = rng.uniform(0.15, 0.5)
        flight = 2 * np.sqrt(2 * h / _GRAVITY)
        period = flight + rng.uniform(0.5, 1.2)
        tau = (t + rng.uniform(0, period)) % period
        t0 = 0.4  # take-off, seconds into each cycle
        u = tau - t0
        v0 = 0.5 * _GRAVITY * flight
        lift = np.where((u > 0) & (u < flight), v0 * u - 0.5 * _GRAVITY * u * u, 0.0)
        crouch = np.exp(-(((tau - (t0 - 0.15)) / 0.1) ** 2))
        crouch += 0.7 * np.exp(-(((tau - (t0 + flight + 0.08)) / 0.08) ** 2))
        reach = np.exp(-(((tau - (t0 + 0.15)) / 0.15) ** 2))
        for s in ("l", "r"):
            a[f"hip_flex_{s}"] += 1.1 * crouch
            a[f"knee_{s}"] += 1.5 * crouch
            a[f"shoulder_flex_{s}"] += -0.6 * crouch + 2.6 * reach
            a[f"elbow_{s}"] += 0.3 * crouch
        a["bend"] += 0.5 * crouch
        return 0.0, yaw_rate, lift
    if kind == "swing":
        period = rng.uniform(1.2, 2.5)
        dur = rng.uniform(0.25, 0.45)
        tau = (t + rng.uniform(0, period)) % period
        # back-swing slowly over the rest of the cycle, forward swing fast in ``dur``
        fwd = _smoothstep(tau / dur)
        back = _smoothstep((tau - dur) / (period - dur))
        sweep = np.where(tau < dur, -1.0 + 2.0 * fwd, 1.0 - 2.0 * back)  # -1 .. +1
        amp = rng.uniform(0.8, 1.2)
        side = rng.choice([-1.0, 1.0])
        a["twist"] += side * amp * sweep
        for s, sign in (("l", 1.0), ("r", -1.0)):
            a[f"shoulder_flex_{s}"] = 1.0 + 0.5 * (1.0 - sweep**2) + 0.05 * rng.standard_normal()
            a[f"shoulder_abd_{s}"] = 0.2 + 1.2 * np.maximum(side * sign * sweep, 0.0)
            a[f"elbow_{s}"] = np.full(T, rng.uniform(0.1, 0.4))
        a["bend"] += rng.uniform(0.1, 0.4)
        return 0.0, yaw_rate, None
    if kind == "spin":
        period = rng.uniform(1.2, 2.5)
        dur = rng.uniform(0.4, 1.0)
        tau = (t + rng.uniform(0, period)) % period
        on = np.sin(np.pi * np.clip(tau / dur, 0.0, 1.0)) ** 2
        yaw_rate += rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 10.0) * on
        for s in ("l", "r"):
            a[f"shoulder_abd_{s}"] = rng.uniform(1.0, 1.6) + 0.3 * on
            a[f"elbow_{s}"] = np.full(T, rng.uniform(0.1, 0.5))
        return 0.0, yaw_rate, None
    raise ValueError(f"unknown fast activity {kind!r}; known: {FAST_ACTIVITIES}")


def sample_activities(rng: np.random.Generator) -> tuple[str, ...]:
    """Draws a compatible combination of activities (at least one)."""
    chosen = [a for a in ACTIVITIES if rng.random() < _ACTIVITY_PROB[a]]
    if not chosen:
        chosen = [str(rng.choice(["walk", "wave", "turn", "jack", "reach"]))]
    if "walk" in chosen:  # whole-body exercises do not mix with walking
        chosen = [a for a in chosen if a not in ("jack", "squat", "bend")]
    if "jack" in chosen and "squat" in chosen:
        chosen.remove("squat")
    return tuple(chosen)


def _wrap(a: np.ndarray | float) -> np.ndarray | float:
    return (a + np.pi) % (2 * np.pi) - np.pi


def sample_motion(
    rng: np.random.Generator,
    num_frames: int,
    fps: float,
    start: tuple[float, float],
    yaw0: float,
    *,
    activities: tuple[str, ...] | None = None,
    bounds: tuple[float, float] = (2.0, 1.5),
) -> Motion:
    """Draws a smooth motion: sinusoids with per-person phase and speed plus smoothed noise.

    Args:
      num_frames: T.
      fps: frames per second (angles move by their real rates per second).
      start: initial pelvis (X, Z) on the ground.
      yaw0: initial heading.
      activities: subset of ``ACTIVITIES``; drawn by ``sample_activities`` when None.
      bounds: walkers steer back once |X| > bounds[0] or |Z| > bounds[1].
    """
    if activities is None:
        activities = sample_activities(rng)
    unknown = set(activities) - set(ACTIVITIES) - set(FAST_ACTIVITIES)
    if unknown:
        known = ACTIVITIES + FAST_ACTIVITIES
        raise ValueError(f"unknown activities {sorted(unknown)}; known: {known}")
    fast = [x for x in activities if x in FAST_ACTIVITIES]
    if fast and len(activities) > 1:
        raise ValueError(f"a fast activity {fast[0]!r} is a whole program; got {activities}")
    T = int(num_frames)
    t = np.arange(T) / fps
    sig = 0.4 * fps  # noise correlation time 0.4 s

    def noise(amp: float) -> np.ndarray:
        return amp * smooth_noise(rng, T, sig)

    def osc(freq: tuple[float, float]) -> np.ndarray:  # phase angle of a random-rate oscillator
        return 2 * np.pi * rng.uniform(*freq) * t + rng.uniform(0, 2 * np.pi)

    a = {name: np.zeros(T) for name in ANGLE_NAMES}
    # Neutral stance with individual variation.
    for s in ("l", "r"):
        a[f"shoulder_abd_{s}"] += rng.uniform(0.08, 0.3)
        a[f"shoulder_flex_{s}"] += rng.uniform(-0.1, 0.25)
        a[f"elbow_{s}"] += rng.uniform(0.1, 0.5)
        a[f"elbow_up_{s}"] += rng.uniform(0.0, 0.5)
        a[f"hip_abd_{s}"] += rng.uniform(0.0, 0.12)
        a[f"knee_{s}"] += rng.uniform(0.0, 0.15)
    a["head_yaw"] += noise(0.35)
    a["head_pitch"] += noise(0.12) + rng.uniform(-0.1, 0.15)
    a["twist"] += noise(0.12)
    a["bend"] += noise(0.05) + rng.uniform(0.0, 0.1)
    a["lean"] += noise(0.05)
    for name in ANGLE_NAMES[5:]:
        a[name] += noise(0.1)

    yaw_rate = noise(0.4)  # rad/s
    speed = 0.0
    lift = None
    if fast:
        speed, extra_yaw, lift = _fast_motion(rng, fast[0], t, a)
        yaw_rate += extra_yaw
        if fast[0] == "run":
            bounds = (bounds[0] * 1.5, bounds[1] * 1.5)
    if "walk" in activities:
        speed = rng.uniform(0.6, 1.6)
        phase = osc((0.0, 0.0)) + 2 * np.pi * (0.55 + 0.35 * speed) * t
        amp_hip, amp_arm = 0.25 + 0.15 * speed, 0.2 + 0.3 * speed
        for s, ph in (("l", phase), ("r", phase + np.pi)):
            a[f"hip_flex_{s}"] += amp_hip * np.sin(ph)
            a[f"knee_{s}"] += 0.1 + (0.55 + 0.3 * speed) * np.maximum(np.cos(ph), 0) ** 1.5
            a[f"shoulder_flex_{s}"] -= amp_arm * np.sin(ph)
            a[f"elbow_{s}"] += 0.15 + 0.25 * (0.5 - 0.5 * np.sin(ph))
        a["twist"] += 0.12 * np.sin(phase)
        a["bend"] += 0.05 * speed
    if "turn" in activities:
        if rng.random() < 0.5 or "walk" in activities:
            yaw_rate += rng.choice([-1, 1]) * rng.uniform(0.5, 1.6)
        else:
            amp, freq = rng.uniform(0.8, 1.6), rng.uniform(0.15, 0.4)  # yaw += amp sin(2 pi f t)
            yaw_rate += amp * 2 * np.pi * freq * np.cos(2 * np.pi * freq * t + rng.uniform(0, 6.3))
    if "wave" in activities:
        sides = [("l",), ("r",), ("l", "r")][rng.integers(3)]
        ph = osc((0.6, 1.5))
        for s in sides:
            a[f"shoulder_abd_{s}"] = rng.uniform(1.9, 2.7) + 0.2 * np.sin(ph) + noise(0.05)
            a[f"shoulder_flex_{s}"] = rng.uniform(-0.1, 0.6) + noise(0.05)
            a[f"elbow_up_{s}"] = np.full(T, 3.0)
            a[f"elbow_{s}"] = 0.9 + 0.55 * np.sin(ph + (0.0 if s == "l" else 0.6))
    if "reach" in activities:
        s = ("l", "r")[rng.integers(2)]
        ph = osc((0.4, 1.0))
        other = "r" if s == "l" else "l"
        a[f"shoulder_flex_{s}"] = 1.3 + 0.35 * np.sin(ph) + noise(0.1)
        a[f"elbow_{s}"] = 1.1 * (0.5 + 0.5 * np.cos(ph))
        a[f"elbow_up_{s}"] = np.full(T, 1.0)
        if rng.random() < 0.5:
            a[f"shoulder_flex_{other}"] = 1.3 + 0.35 * np.sin(ph + np.pi) + noise(0.1)
            a[f"elbow_{other}"] = 1.1 * (0.5 + 0.5 * np.cos(ph + np.pi))
            a[f"elbow_up_{other}"] = np.full(T, 1.0)
    if "bend" in activities:
        bend = rng.uniform(0.5, 1.3) * (0.5 - 0.5 * np.cos(osc((0.15, 0.45))))
        a["bend"] += bend
        for s in ("l", "r"):
            a[f"shoulder_flex_{s}"] += 0.8 * bend
            a[f"knee_{s}"] += 0.3 * bend
    if "squat" in activities:
        sq = rng.uniform(0.6, 1.0) * (0.5 - 0.5 * np.cos(osc((0.2, 0.5))))
        a["bend"] += 0.45 * sq
        for s in ("l", "r"):
            a[f"hip_flex_{s}"] += 1.4 * sq
            a[f"knee_{s}"] += 2.3 * sq
            a[f"shoulder_flex_{s}"] += 1.2 * sq
    if "jack" in activities:
        j = 0.5 - 0.5 * np.cos(osc((0.4, 0.9)))
        for s in ("l", "r"):
            a[f"shoulder_abd_{s}"] = 0.2 + 2.4 * j + noise(0.05)
            a[f"hip_abd_{s}"] = 0.05 + 0.3 * j
            a[f"elbow_{s}"] = 0.2 + 0.2 * j

    # Integrate the heading and the walk; walkers steer back towards the scene centre.
    root = np.zeros((T, 2))
    yaw = np.zeros(T)
    pos = np.array(start, dtype=np.float64)
    heading = float(yaw0)
    sway = np.stack([noise(0.04), noise(0.04)], axis=1)
    for i in range(T):
        rate = yaw_rate[i]
        if speed > 0 and (abs(pos[0]) > bounds[0] or abs(pos[1]) > bounds[1]):
            to_centre = np.arctan2(-pos[0], -pos[1])
            rate += 4.0 * _wrap(to_centre - heading)
        heading += rate / fps
        pos = pos + speed / fps * np.array([np.sin(heading), np.cos(heading)])
        root[i], yaw[i] = pos, heading
    root += sway

    for s in ("l", "r"):  # keep joints in their human range
        a[f"knee_{s}"] = np.clip(a[f"knee_{s}"], 0.0, 2.5)
        a[f"elbow_{s}"] = np.clip(a[f"elbow_{s}"], 0.0, 2.6)
        a[f"shoulder_abd_{s}"] = np.clip(a[f"shoulder_abd_{s}"], -0.2, 2.9)
        a[f"hip_abd_{s}"] = np.clip(a[f"hip_abd_{s}"], -0.2, 0.8)
        a[f"hip_flex_{s}"] = np.clip(a[f"hip_flex_{s}"], -0.6, 1.9)
    a["bend"] = np.clip(a["bend"], -0.2, 1.5)
    return Motion(root=root, yaw=yaw, angles=a, lift=lift)


def static_motion(
    num_frames: int, root: tuple[float, float] = (0.0, 0.0), yaw: float = 0.0, **angles: float
) -> Motion:
    """A motionless pose: every angle 0 (arms hang, legs straight) unless given."""
    unknown = set(angles) - set(ANGLE_NAMES)
    if unknown:
        raise ValueError(f"unknown angles {sorted(unknown)}; known: {ANGLE_NAMES}")
    T = int(num_frames)
    a = {name: np.full(T, float(angles.get(name, 0.0))) for name in ANGLE_NAMES}
    return Motion(root=np.tile(np.asarray(root, np.float64), (T, 1)), yaw=np.full(T, yaw), angles=a)


# ----------------------------------------------------------------------------- kinematics


def _rot(axis: int, angle: np.ndarray) -> np.ndarray:
    """[T] angles -> [T, 3, 3] right-handed rotations about the X (0), Y (1) or Z (2) axis."""
    c, s = np.cos(angle), np.sin(angle)
    R = np.zeros(angle.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R[..., axis, axis] = 1.0
    R[..., i, i], R[..., i, j], R[..., j, i], R[..., j, j] = c, -s, s, c
    return R


def _apply(R: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[T, 3, 3] x [T, 3] (or [3]) -> [T, 3]."""
    return np.einsum("tij,tj->ti", R, np.broadcast_to(v, R.shape[:-1]))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _limb_dir(flex: np.ndarray, abd: np.ndarray, side: float) -> np.ndarray:
    """Direction [T, 3] of an upper limb in its parent frame: hanging down at (0, 0), raised
    forward by ``flex`` and sideways (outwards, towards ``side`` * X) by ``abd``."""
    return np.stack(
        [side * np.sin(abd), -np.cos(abd) * np.cos(flex), np.cos(abd) * np.sin(flex)], axis=-1
    )


def _bend_dir(u: np.ndarray, prefer: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Unit vector [T, 3] perpendicular to ``u`` closest to ``prefer`` (``fallback`` when
    ``prefer`` is parallel to ``u``)."""
    w = prefer - np.sum(prefer * u, -1, keepdims=True) * u
    n = np.linalg.norm(w, axis=-1, keepdims=True)
    alt = fallback - np.sum(fallback * u, -1, keepdims=True) * u
    return _unit(np.where(n > 1e-3, w, alt))


def pose_body(shape: BodyShape, motion: Motion) -> BodyPose:
    """Forward kinematics: a motion applied to a body, standing on the ground plane.

    The pelvis height is set per frame so that the lowest point of the feet touches Y = 0
    (plus ``motion.lift`` in a jump's flight).
    """
    a = motion.angles
    T = motion.num_frames
    R_root = _rot(1, motion.yaw)
    R_torso = R_root @ _rot(1, a["twist"]) @ _rot(0, a["bend"]) @ _rot(2, a["lean"])
    R_head = R_torso @ _rot(1, a["head_yaw"]) @ _rot(0, a["head_pitch"])
    up, fwd, left = np.array([0.0, 1, 0]), np.array([0.0, 0, 1]), np.array([1.0, 0, 0])

    pelvis = np.zeros((T, 3))  # lifted onto the ground at the end
    spine_top = pelvis + _apply(R_torso, shape.torso * up)
    joints = np.zeros((T, NUM_JOINTS, 3))
    A = np.zeros((T, NUM_PARTS, 3))
    B = np.zeros((T, NUM_PARTS, 3))
    h = shape.height

    neck_top = spine_top + _apply(R_torso, np.array([0.0, shape.neck, 0.012 * h]))
    r_head = shape.radii[HEAD_PART, 0]
    head_a = neck_top + _apply(R_head, np.array([0.0, 0.85 * r_head, 0.012 * h]))
    head_b = neck_top + _apply(R_head, np.array([0.0, shape.head - r_head, 0.0]))
    head_c = 0.5 * (head_a + head_b)
    # Head joints sit just inside the head's surface, so that they land on its pixels.
    joints[:, 0] = head_c + _apply(R_head, np.array([0.0, -0.25 * r_head, 0.85 * r_head]))
    joints[:, 1] = neck_top
    joints[:, 2] = neck_top + _apply(R_head, np.array([0.0, shape.head - 0.2 * r_head, 0.0]))
    joints[:, 3] = head_c + _apply(R_head, np.array([0.75 * r_head, -0.1 * r_head, -0.1 * r_head]))
    joints[:, 4] = head_c + _apply(R_head, np.array([-0.75 * r_head, -0.1 * r_head, -0.1 * r_head]))
    A[:, _P["neck"]], B[:, _P["neck"]] = spine_top, neck_top
    A[:, HEAD_PART], B[:, HEAD_PART] = head_a, head_b

    chest = spine_top - _apply(R_torso, 0.03 * h * up)
    shoulder_drop = np.array([0.0, -0.012 * h, -0.01 * h])
    hips = {}
    for s, side, ji in (("l", 1.0, 0), ("r", -1.0, 1)):
        name = "left" if side > 0 else "right"
        shoulder = spine_top + _apply(R_torso, side * shape.shoulder_half * left + shoulder_drop)
        u = _limb_dir(a[f"shoulder_flex_{s}"], a[f"shoulder_abd_{s}"], side)
        elbow = shoulder + _apply(R_torso, shape.upper_arm * u)
        k = a[f"elbow_up_{s}"][:, None]
        prefer = fwd[None] + k * up[None] - 0.3 * side * left[None]
        w = _bend_dir(u, prefer, np.broadcast_to(fwd, u.shape))
        e = a[f"elbow_{s}"][:, None]
        v = np.cos(e) * u + np.sin(e) * w
        wrist = elbow + _apply(R_torso, shape.forearm * v)
        hand = wrist + _apply(R_torso, shape.hand * _unit(v + 0.15 * w))
        joints[:, 5 + ji], joints[:, 7 + ji], joints[:, 9 + ji] = shoulder, elbow, wrist
        A[:, _P[f"upper_arm_{name}"]], B[:, _P[f"upper_arm_{name}"]] = shoulder, elbow
        A[:, _P[f"forearm_{name}"]], B[:, _P[f"forearm_{name}"]] = elbow, wrist
        A[:, _P[f"hand_{name}"]], B[:, _P[f"hand_{name}"]] = wrist, hand

        hip = pelvis + _apply(R_root, side * shape.hip_half * left)
        hips[s] = hip
        u = _limb_dir(a[f"hip_flex_{s}"], a[f"hip_abd_{s}"], side)
        knee = hip + _apply(R_root, shape.thigh * u)
        w = _bend_dir(u, np.broadcast_to(-fwd, u.shape), np.broadcast_to(up, u.shape))
        kn = a[f"knee_{s}"][:, None]
        v = np.cos(kn) * u + np.sin(kn) * w
        ankle = knee + _apply(R_root, shape.shin * v)
        foot_dir = _bend_dir(v, np.broadcast_to(fwd, v.shape), np.broadcast_to(-up, v.shape))
        heel = ankle + _apply(R_root, 0.02 * h * v - 0.15 * shape.foot * foot_dir)
        toe = heel + _apply(R_root, shape.foot * foot_dir)
        joints[:, 11 + ji], joints[:, 13 + ji], joints[:, 15 + ji] = hip, knee, ankle
        A[:, _P[f"thigh_{name}"]], B[:, _P[f"thigh_{name}"]] = hip, knee
        A[:, _P[f"shin_{name}"]], B[:, _P[f"shin_{name}"]] = knee, ankle
        A[:, _P[f"foot_{name}"]], B[:, _P[f"foot_{name}"]] = heel, toe
        # The flank runs from the hip to the armpit, inside the hanging arm.
        armpit = spine_top + _apply(
            R_torso, side * 0.7 * shape.shoulder_half * left - 0.07 * h * up
        )
        A[:, _P[f"side_{name}"]], B[:, _P[f"side_{name}"]] = hip, armpit

    A[:, _P["spine"]], B[:, _P["spine"]] = pelvis, chest
    neck_base = spine_top + _apply(R_torso, 0.02 * h * up)
    A[:, _P["shoulder_left"]], B[:, _P["shoulder_left"]] = neck_base, joints[:, 5]
    A[:, _P["shoulder_right"]], B[:, _P["shoulder_right"]] = neck_base, joints[:, 6]
    A[:, _P["hip_bar"]], B[:, _P["hip_bar"]] = hips["l"], hips["r"]

    # Stand on the ground: the lowest foot surface point goes to Y = 0; place at the root.
    foot_parts = [_P["foot_left"], _P["foot_right"]]
    r_foot = shape.radii[foot_parts].min()
    lowest = np.minimum(A[:, foot_parts, 1].min(1), B[:, foot_parts, 1].min(1)) - r_foot
    height = -lowest if motion.lift is None else motion.lift - lowest
    offset = np.stack([motion.root[:, 0], height, motion.root[:, 1]], axis=-1)[:, None]
    return BodyPose(
        joints=joints + offset,
        part_a=A + offset,
        part_b=B + offset,
        torso_frame=R_torso,
        head_frame=R_head,
    )
