"""A whole synthetic video: people, camera path, backdrop, occluders and image degradations,
and the per-frame rendering with ground-truth labels (2D joints, visibility, boxes).

Coordinates: world metres (Y up, ground Y = 0); pixels with centres at integers, x right, y
down. Visibility follows what is drawn: a joint is visible when it projects inside the image
and the front-most surface at its pixel is one of that person's parts touching the joint
(``body.JOINT_PARTS``) with the joint no deeper than that part's thickness behind it, so joints
hidden by other people, occluders or the person's own body are marked invisible, and
``FrameResult.occlusion`` says by what (``OCCLUSION_CODES``).

Long-exposure frames are integrated over their exposure: the scene (people, occluders, camera
path, zoom) is interpolated linearly between frames, rendered at 3..``blur_subframes`` times
spread evenly over the exposure centred on the frame's time, and the renders are averaged
(``exposure_scene``); the labels are those of the centre time, the frame's own.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from posewarper_jax.data.synthetic import body as body_lib
from posewarper_jax.data.synthetic import render
from posewarper_jax.data.synthetic.config import SyntheticConfig
from posewarper_jax.data.types import NUM_JOINTS

_MEAN_HEIGHT = 1.75  # metres; used to size the camera's focal length
_SUBFRAME_STEP_PX = 2.0  # largest image motion between two sub-frame renders wanted

# What hides a joint (``FrameResult.occlusion``).
VISIBLE, SELF_OCCLUDED, PERSON_OCCLUDED, OBJECT_OCCLUDED, OUT_OF_VIEW = range(5)
OCCLUSION_CODES: dict[int, str] = {
    VISIBLE: "visible",
    SELF_OCCLUDED: "self",  # the person's own body (or the joint's pixel misses its parts)
    PERSON_OCCLUDED: "person",  # another person in front
    OBJECT_OCCLUDED: "object",  # an occluder in front
    OUT_OF_VIEW: "out_of_view",  # outside the image or behind the camera
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything needed to render T frames.

    K: float64 [3, 3] (before zoom); extrinsics: float64 [T, 3, 4] world -> camera [R | t].
    zoom: float64 [T] focal length factor of each frame (None: 1).
    exposure: float64 [T] exposure time in frame intervals (0: instantaneous, sharp).
    exposure_spin: float64 [T, 3] camera rotation (rotation vector, camera axes) per frame
      interval during the exposure, on top of the interpolated path (hand-held turn).
    max_subframes: the most renders a long exposure is integrated from (odd).
    defocus: float64 [T] disk radius in pixels; 0 = in focus.
    gains: float32 [3] per-channel colour gains; noise_std: sensor noise std (0..255 scale).
    source_quality: JPEG quality of the low-bitrate encode the frames went through (0: none).
    roles: per person "group" or "passerby"; activities: per person the fast activity or "".
    camera_moves: which strong camera moves the video has ("pan", "zoom", "shake").
    """

    width: int
    height: int
    shapes: tuple[body_lib.BodyShape, ...]
    poses: tuple[body_lib.BodyPose, ...]
    K: np.ndarray
    extrinsics: np.ndarray
    backdrop: render.Backdrop | None
    occluders: tuple[render.Occluder, ...] = ()
    light: render.Light = render.DEFAULT_LIGHT
    shadow_strength: float = 0.35
    defocus: np.ndarray | None = None
    gains: np.ndarray | None = None
    noise_std: float = 0.0
    flat_color: tuple[float, float, float] = (128.0, 128.0, 128.0)  # when backdrop is None
    zoom: np.ndarray | None = None
    exposure: np.ndarray | None = None
    exposure_spin: np.ndarray | None = None
    max_subframes: int = 3
    source_quality: int = 0
    roles: tuple[str, ...] = ()
    activities: tuple[str, ...] = ()
    camera_moves: tuple[str, ...] = ()
    face_detail: bool = False

    @property
    def num_frames(self) -> int:
        return int(self.extrinsics.shape[0])

    @property
    def num_people(self) -> int:
        return len(self.poses)

    def intrinsics(self, frame: int) -> np.ndarray:
        """[3, 3] K of ``frame`` (zoom applied)."""
        if self.zoom is None:
            return self.K
        K = self.K.copy()
        K[0, 0] *= self.zoom[frame]
        K[1, 1] *= self.zoom[frame]
        return K

    def camera(self, frame: int) -> render.Camera:
        E = self.extrinsics[frame]
        return render.Camera(self.intrinsics(frame), E[:, :3], E[:, 3])

    def project_joints(self) -> np.ndarray:
        """float64 [T, P, 17, 2] pixel positions of every joint (NaN behind the camera)."""
        cam = self.joints_camera()
        front = cam[..., 2] > render.NEAR
        uv = np.stack(
            [render.project_camera(self.intrinsics(f), np.where(front[f, ..., None], cam[f], 1.0))
             for f in range(self.num_frames)]
        )  # fmt: skip
        return np.where(front[..., None], uv, np.nan)

    def joints_world(self) -> np.ndarray:
        """float64 [T, P, 17, 3]."""
        return np.stack([p.joints for p in self.poses], axis=1)

    def joints_camera(self) -> np.ndarray:
        """float64 [T, P, 17, 3] in each frame's camera coordinates."""
        X = self.joints_world()
        R, t = self.extrinsics[:, :, :3], self.extrinsics[:, :, 3]
        return np.einsum("tij,tpkj->tpki", R, X) + t[:, None, None, :]


@dataclasses.dataclass
class FrameResult:
    """One rendered frame and its labels (P people).

    image: uint8 [H, W, 3] BGR, after exposure, defocus, noise, colour gains, compression.
    canvas: the clean render (colour, depth, ids) at the frame's time, before those effects.
    keypoints: float64 [P, 17, 2] projected joints (all joints, visible or not).
    visible: bool [P, 17].
    occlusion: int8 [P, 17] what hides each joint (``OCCLUSION_CODES``; 0 = visible).
    subframes: renders the image was integrated from (1 = instantaneous).
    blur_px: float64 [P, 17] each joint's image path length over the exposure (0 if sharp).
    bbox: float64 [P, 4] (x, y, w, h): the body's projected extent clipped to the image
      (zero size when the person is out of view).
    head_bbox: float64 [P, 4] the head's projected extent (not clipped).
    area: int [P] pixels showing the person.
    """

    image: np.ndarray
    canvas: render.Canvas
    keypoints: np.ndarray
    visible: np.ndarray
    bbox: np.ndarray
    head_bbox: np.ndarray
    area: np.ndarray
    occlusion: np.ndarray | None = None
    subframes: int = 1
    blur_px: np.ndarray | None = None


# ----------------------------------------------------------------------------- sampling


def _episodes(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """bool [n]: bursts of 2..5 consecutive frames covering about ``rate`` of the frames."""
    out = np.zeros(n, bool)
    p_start = rate / 3.5 / max(1e-6, 1.0 - rate)
    i = 0
    while i < n:
        if rng.random() < p_start:
            length = int(rng.integers(2, 6))
            out[i : i + length] = True
            i += length + 1
        else:
            i += 1
    return out


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 with edge padding."""
    if sigma <= 0:
        return x
    half = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.concatenate([np.repeat(x[:1], half, 0), x, np.repeat(x[-1:], half, 0)], 0)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), 0, padded)


def _place_people(rng: np.random.Generator, n: int) -> list[tuple[float, float, float]]:
    """Start (X, Z, yaw) per person; neighbours stand close enough to overlap on screen."""
    out = []
    x, z = rng.uniform(-0.8, 0.8), rng.uniform(-1.0, 1.0)
    for i in range(n):
        if i > 0:
            x = float(np.clip(x + rng.choice([-1, 1]) * rng.uniform(0.3, 1.4), -2.0, 2.0))
            z = float(rng.uniform(-1.5, 1.5))
        out.append((float(x), float(z), float(rng.uniform(-np.pi, np.pi))))
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _once(rng: np.random.Generator, T: int, fps: float, dur: tuple[float, float]) -> np.ndarray:
    """[T] a smooth 0 -> 1 transition of ``dur`` seconds starting at a random time."""
    d = rng.uniform(*dur) * fps
    t0 = rng.uniform(-0.3 * d, max(T - 0.7 * d, 1.0))
    return _smoothstep((np.arange(T) - t0) / d)


def _passerby(
    rng: np.random.Generator, T: int, fps: float, eyes: np.ndarray, centre: np.ndarray,
    front: np.ndarray,
) -> tuple[body_lib.BodyShape, body_lib.BodyPose]:  # fmt: skip
    """Someone walking (or jogging) across between the camera and the group, 0.5..1.2 m in
    front of its front-most member (``front``: [T] largest pelvis Z), crossing the line of
    sight to the group's centre at a random time."""
    shape = body_lib.sample_body(rng)
    direction = rng.choice([-1.0, 1.0])
    i = int(rng.integers(int(0.2 * T), max(int(0.8 * T), int(0.2 * T) + 1)))
    z = float(min(front[i] + rng.uniform(0.5, 1.2), eyes[:, 2].min() - 2.5))
    motion = body_lib.sample_motion(
        rng, T, fps, (0.0, z), direction * np.pi / 2, activities=("walk",), bounds=(1e9, 1e9)
    )
    if rng.random() < 0.3:  # jogging: the same gait, twice as fast over the ground
        root = motion.root.copy()
        root[1:] = root[0] + 2.0 * (root[1:] - root[0])
        motion = dataclasses.replace(motion, root=root)
    e, c = eyes[i], centre[i]
    x_cross = e[0] + (c[0] - e[0]) * (e[2] - z) / (e[2] - c[2]) + rng.uniform(-0.3, 0.3)
    root = motion.root.copy()
    root[:, 0] += x_cross - root[i, 0]
    root[:, 1] += z - root[i, 1]
    motion = dataclasses.replace(motion, root=root)
    return shape, body_lib.pose_body(shape, motion)


def sample_scene(rng: np.random.Generator, cfg: SyntheticConfig, num_frames: int) -> Scene:
    """Draws a random video scene: 1..3 moving people (some in sports-like fast motion), maybe
    a passer-by, a following, panning, dollying, maybe zooming and shaking camera, a textured
    backdrop, maybe occluders, long-exposure and defocus bursts, colour gains, noise and maybe
    a low-bitrate encode (``SyntheticConfig``'s rates)."""
    T = int(num_frames)
    fps = cfg.fps
    W, H = cfg.width, cfg.height
    n_people = int(rng.integers(cfg.min_people, cfg.max_people + 1))
    shapes, poses, roles, activities = [], [], [], []
    for x, z, yaw in _place_people(rng, n_people):
        shape = body_lib.sample_body(rng)
        acts = body_lib.sample_fast_activity(rng) if rng.random() < cfg.fast_motion_rate else None
        motion = body_lib.sample_motion(rng, T, fps, (x, z), yaw, activities=acts)
        shapes.append(shape)
        poses.append(body_lib.pose_body(shape, motion))
        roles.append("group")
        activities.append(acts[0] if acts else "")

    # Camera: stands in front of the group, follows its centre, pans, dollies and sways.
    pelvis = np.stack([p.part_a[:, 0] for p in poses], 1)  # [T, P, 3]
    centre = _smooth(pelvis.mean(1), sigma=1.0 * fps)
    dist = rng.uniform(6.0, 10.0)
    azim = rng.uniform(-0.4, 0.4)
    eye0 = np.array(
        [centre[0, 0] + dist * np.sin(azim), rng.uniform(1.0, 2.2), dist * np.cos(azim)]
    )
    view0 = np.array([-np.sin(azim), 0.0, -np.cos(azim)])
    side0 = np.array([np.cos(azim), 0.0, -np.sin(azim)])
    t = np.arange(T) / fps
    dolly = rng.uniform(0.0, 0.2) * dist * np.sin(2 * np.pi * rng.uniform(0.03, 0.2) * t
                                                  + rng.uniform(0, 2 * np.pi))  # fmt: skip
    pan = rng.uniform(0.0, 0.8) * np.sin(2 * np.pi * rng.uniform(0.05, 0.25) * t
                                         + rng.uniform(0, 2 * np.pi))  # fmt: skip
    shake = 0.01 * dist * np.stack([body_lib.smooth_noise(rng, T, 0.5 * fps) for _ in range(3)], -1)
    eyes = eye0 + dolly[:, None] * view0 + 0.3 * shake
    targets = centre.copy()
    targets[:, 1] = rng.uniform(0.75, 1.1)
    targets += pan[:, None] * side0 + shake
    moves = []
    if rng.random() < cfg.pan_rate:  # a quick pan, half of the time back again
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3) * _once(rng, T, fps, (0.4, 1.2))
        if rng.random() < 0.5:
            turn = turn * (1.0 - _once(rng, T, fps, (0.4, 1.2)))
        targets += dist * np.tan(turn)[:, None] * side0
        moves.append("pan")
    zoom = None
    if rng.random() < cfg.zoom_rate:
        factor = np.exp(rng.uniform(np.log(0.7), np.log(1.6)))
        zoom = 1.0 + (factor - 1.0) * _once(rng, T, fps, (0.5, 2.0))
        moves.append("zoom")
    if rng.random() < cfg.shake_rate:  # hand-held: fast small turns of the camera
        deg = rng.uniform(0.2, 0.6)
        jitter = np.stack([body_lib.smooth_noise(rng, T, 0.1 * fps) for _ in range(2)], -1)
        jitter *= dist * np.tan(np.deg2rad(deg))
        targets += jitter[:, :1] * side0 + jitter[:, 1:] * np.array([0.0, 1.0, 0.0])
        moves.append("shake")
    ext = np.zeros((T, 3, 4))
    for i in range(T):
        R, tt = render.look_at(eyes[i], targets[i])
        ext[i, :, :3], ext[i, :, 3] = R, tt
    focal = rng.uniform(*cfg.person_height_frac) * H * dist / _MEAN_HEIGHT
    K = render.intrinsics(focal, W, H)

    if rng.random() < cfg.passerby_rate:
        shape, pose = _passerby(rng, T, fps, eyes, centre, pelvis[:, :, 2].max(1))
        shapes.append(shape)
        poses.append(pose)
        roles.append("passerby")
        activities.append("")

    backdrop = render.sample_backdrop(rng, wall_z=-float(rng.uniform(4.5, 12.0)))

    occluders = []
    if rng.random() < cfg.occluder_prob:
        for _ in range(int(rng.integers(1, 3))):
            occluders.append(_sample_occluder(rng, T, fps, eyes, centre))

    light_dir = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.9, -0.2), -rng.uniform(0.4, 0.9)])
    light = render.Light(
        direction=light_dir / np.linalg.norm(light_dir),
        ambient=float(rng.uniform(0.35, 0.6)),
        specular=float(rng.uniform(0.0, 0.2)),
    )

    # Long exposures (with a slight hand-held turn) and defocus, in short bursts.
    # 1/50..1/25 s (a 180..360 degree shutter at 25 fps), in frame intervals; the hand-held
    # turn of 1.25..7.5 degrees per second, per frame interval.
    long = _episodes(rng, T, cfg.motion_blur_rate)
    exposure = np.where(long, rng.uniform(0.02, 0.04) * fps, 0.0)
    axis = rng.normal(size=(T, 2))
    axis /= np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-9)
    spin = np.zeros((T, 3))
    spin[:, :2] = axis * np.deg2rad(rng.uniform(1.25, 7.5, (T, 1)) / fps)
    spin[exposure == 0] = 0.0
    defocus = np.where(_episodes(rng, T, cfg.defocus_rate), rng.uniform(1.0, 3.0, T) * H / 240, 0)
    source_quality = 0
    if rng.random() < cfg.compression_rate:
        source_quality = int(rng.integers(cfg.compression_quality[0],
                                          cfg.compression_quality[1] + 1))  # fmt: skip
    return Scene(
        W, H, tuple(shapes), tuple(poses), K, ext, backdrop, tuple(occluders), light,
        shadow_strength=float(rng.uniform(0.2, 0.5)),
        defocus=defocus,
        gains=rng.uniform(0.85, 1.15, 3).astype(np.float32),
        noise_std=float(rng.uniform(*cfg.noise_std)),
        zoom=zoom,
        exposure=exposure,
        exposure_spin=spin,
        max_subframes=int(cfg.blur_subframes),
        source_quality=source_quality,
        roles=tuple(roles),
        activities=tuple(activities),
        camera_moves=tuple(moves),
        face_detail=bool(cfg.face_detail),
    )  # fmt: skip


# ----------------------------------------------------------------------------- exposure


def _rotvec(v: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] of a rotation vector [3] (Rodrigues)."""
    theta = float(np.linalg.norm(v))
    if theta < 1e-12:
        return np.eye(3)
    k = v / theta
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * Kx + (1 - np.cos(theta)) * Kx @ Kx


def _orthonormal(R: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(R)
    return u @ vt


def _lerp(x: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``x`` [T, ...] at fractional frame ``times`` [n]: linear between frames, extended
    linearly past the ends."""
    T = x.shape[0]
    if T == 1:
        return np.repeat(x, len(times), 0)
    i = np.clip(np.floor(times).astype(int), 0, T - 2)
    w = (times - i).reshape((-1,) + (1,) * (x.ndim - 1))
    return (1 - w) * x[i] + w * x[i + 1]


def exposure_scene(scene: Scene, frame: int, times: np.ndarray) -> Scene:
    """``scene`` at the fractional frame ``times`` [n] (e.g. sub-frames of ``frame``'s
    exposure): a Scene of n frames with people, occluders, camera and zoom interpolated, and
    the camera turned by ``exposure_spin[frame]`` times the offset from ``frame``."""
    times = np.asarray(times, np.float64)
    poses = tuple(
        body_lib.BodyPose(
            joints=_lerp(p.joints, times),
            part_a=_lerp(p.part_a, times),
            part_b=_lerp(p.part_b, times),
            torso_frame=np.stack([_orthonormal(R) for R in _lerp(p.torso_frame, times)]),
            head_frame=np.stack([_orthonormal(R) for R in _lerp(p.head_frame, times)]),
        )  # fmt: skip
        for p in scene.poses
    )
    R_all, t_all = scene.extrinsics[:, :, :3], scene.extrinsics[:, :, 3]
    centres = -np.einsum("tji,tj->ti", R_all, t_all)  # camera positions
    ext = np.zeros((len(times), 3, 4))
    spin = np.zeros(3) if scene.exposure_spin is None else scene.exposure_spin[frame]
    for k, (R, c) in enumerate(zip(_lerp(R_all, times), _lerp(centres, times))):
        R = _rotvec(spin * (times[k] - frame)) @ _orthonormal(R)
        ext[k, :, :3], ext[k, :, 3] = R, -R @ c
    occluders = tuple(dataclasses.replace(o, x=_lerp(o.x, times)) for o in scene.occluders)
    zoom = None if scene.zoom is None else _lerp(scene.zoom, times)
    return dataclasses.replace(
        scene, poses=poses, extrinsics=ext, occluders=occluders, zoom=zoom, exposure=None,
        exposure_spin=None, defocus=None,
    )  # fmt: skip


def exposure_times(scene: Scene, frame: int) -> np.ndarray:
    """The sub-frame times ``frame``'s image integrates: [frame] when sharp, else an odd
    number (3..``max_subframes``) of times evenly over the exposure, centred on ``frame``,
    about ``_SUBFRAME_STEP_PX`` of image motion apart."""
    e = 0.0 if scene.exposure is None else float(scene.exposure[frame])
    if e <= 0:
        return np.array([float(frame)])
    ends = exposure_scene(scene, frame, np.array([frame - e / 2, frame + e / 2]))
    path = _exposure_paths(ends)
    longest = float(np.nanmax(path, initial=0.0))
    n = 2 * int(np.ceil(longest / (2 * _SUBFRAME_STEP_PX))) + 1
    n = int(np.clip(n, 3, scene.max_subframes))
    return frame + e * (np.arange(n) / (n - 1) - 0.5)


def _exposure_paths(ends: Scene) -> np.ndarray:
    """[P, 17] image distance between each joint at the two frames of ``ends`` (the
    exposure's start and end; camera motion included)."""
    uv = ends.project_joints()  # [2, P, 17, 2]
    return np.linalg.norm(uv[1] - uv[0], axis=-1)


def _sample_occluder(
    rng: np.random.Generator, T: int, fps: float, eyes: np.ndarray, centre: np.ndarray
) -> render.Occluder:
    """A pole, crate or panel between the camera and the group that crosses their line of
    sight at a random time (or stands still on it)."""
    kind = rng.choice(["pole", "crate", "panel"])
    if kind == "pole":
        w = d = rng.uniform(0.08, 0.25)
        h, bottom = rng.uniform(3.0, 5.0), 0.0
    elif kind == "crate":
        w, h, d, bottom = rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.8), 0.0
    else:
        w, h, d, bottom = rng.uniform(0.5, 1.2), rng.uniform(0.6, 1.4), 0.04, rng.uniform(0.4, 1.0)
    z = rng.uniform(2.2, min(3.5, eyes[:, 2].min() - 1.0))
    i = int(rng.integers(int(0.2 * T), max(int(0.8 * T), int(0.2 * T) + 1)))
    e, c = eyes[i], centre[i]
    x_cross = e[0] + (c[0] - e[0]) * (e[2] - z) / (e[2] - c[2]) + rng.uniform(-0.4, 0.4)
    v = 0.0 if rng.random() < 0.3 else rng.choice([-1, 1]) * rng.uniform(0.3, 1.2)
    x = x_cross + v * (np.arange(T) - i) / fps
    stripe = rng.uniform(0.1, 0.4) if rng.random() < (0.5 if kind == "pole" else 0.3) else 0.0
    return render.Occluder(
        x=x, z=float(z), width=float(w), height=float(h), depth=float(d), bottom=float(bottom),
        color=render.random_bgr(rng), color2=render.random_bgr(rng), stripe=float(stripe),
    )  # fmt: skip


# ----------------------------------------------------------------------------- rendering


def joint_visibility(
    canvas: render.Canvas,
    camera: render.Camera,
    joints: np.ndarray,
    shapes: tuple[body_lib.BodyShape, ...] | list[body_lib.BodyShape],
) -> tuple[np.ndarray, np.ndarray]:
    """Projects joints and decides which are visible in a rendered frame.

    Args:
      canvas: the frame's render (its id and depth buffers are read).
      camera: the frame's camera.
      joints: float64 [P, 17, 3] world joints of the people drawn as persons 0..P-1.
      shapes: their body shapes (part radii set the depth tolerance).

    Returns:
      uv: float64 [P, 17, 2] pixel positions (NaN for joints behind the camera).
      visible: bool [P, 17].
    """
    uv, visible, _ = joint_occlusion(canvas, camera, joints, shapes)
    return uv, visible


def joint_occlusion(
    canvas: render.Canvas,
    camera: render.Camera,
    joints: np.ndarray,
    shapes: tuple[body_lib.BodyShape, ...] | list[body_lib.BodyShape],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``joint_visibility``'s (uv, visible) and what hides each joint: int8 [P, 17]
    ``OCCLUSION_CODES`` (read from the id buffer at the joint's pixel)."""
    H, W = canvas.shape
    P = joints.shape[0]
    cam = camera.to_camera(joints)
    front = cam[..., 2] > render.NEAR
    uv = np.where(front[..., None], render.project_camera(camera.K, np.where(
        front[..., None], cam, 1.0)), np.nan)  # fmt: skip
    visible = np.zeros((P, NUM_JOINTS), bool)
    code = np.full((P, NUM_JOINTS), OUT_OF_VIEW, np.int8)
    first = render.person_part_id(0, 0)
    for p in range(P):
        for j in range(NUM_JOINTS):
            if not front[p, j]:
                continue
            iu, iv = int(np.floor(uv[p, j, 0] + 0.5)), int(np.floor(uv[p, j, 1] + 0.5))
            if not (0 <= iu < W and 0 <= iv < H):
                continue
            pid = int(canvas.ids[iv, iu])
            parts = body_lib.JOINT_PARTS[j]
            if pid >= render.OCCLUDER_ID_BASE:
                code[p, j] = OBJECT_OCCLUDED
            elif pid >= first and (pid - first) // body_lib.NUM_PARTS != p:
                code[p, j] = PERSON_OCCLUDED
            else:
                code[p, j] = SELF_OCCLUDED
            if pid not in {render.person_part_id(p, k) for k in parts}:
                continue
            tol = float(shapes[p].radii[list(parts)].max()) + 0.02
            visible[p, j] = cam[p, j, 2] - canvas.depth[iv, iu] <= tol
            if visible[p, j]:
                code[p, j] = VISIBLE
    return uv, visible, code


def _extent(K: np.ndarray, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray):
    """Projected extent (x0, y0, x1, y1) of capsules [N] in front of the camera, or None."""
    ok = (a[:, 2] > render.NEAR) & (b[:, 2] > render.NEAR)
    if not ok.any():
        return None
    pts, rad = [], []
    for e, r in ((a[ok], ra[ok]), (b[ok], rb[ok])):
        pts.append(render.project_camera(K, e))
        rad.append(K[0, 0] * r / e[:, 2])
    pts, rad = np.concatenate(pts), np.concatenate(rad)[:, None]
    lo, hi = (pts - rad).min(0), (pts + rad).max(0)
    return lo[0], lo[1], hi[0], hi[1]


def render_frame(
    scene: Scene, frame: int, noise_rng: np.random.Generator | None = None, effects: bool = True
) -> FrameResult:
    """Renders frame ``frame`` of ``scene`` with its labels.

    With ``effects`` a long-exposure frame is the mean of its sub-frame renders
    (``exposure_times``; labels from the frame's own time), then colour gains, defocus, noise
    and the low-bitrate encode follow. ``effects=False`` gives the instantaneous clean render.
    """
    result = _render_instant(scene, frame)
    times = exposure_times(scene, frame) if effects else np.array([float(frame)])
    image = result.canvas.color
    if len(times) > 1:
        sub = exposure_scene(scene, frame, times)
        centre = len(times) // 2  # the frame's own time: its render is ``result``
        acc = np.zeros_like(image, np.float64)
        for k in range(len(times)):
            acc += image if k == centre else _render_instant(sub, k, labels=False).canvas.color
        image = (acc / len(times)).astype(np.float32)
        ends = exposure_scene(scene, frame, times[[0, -1]])
        result.blur_px = _exposure_paths(ends)
    result.subframes = len(times)
    if effects:
        image = image * (scene.gains if scene.gains is not None else 1.0)
        if scene.defocus is not None and scene.defocus[frame] > 0:
            image = render.defocus_blur(image, float(scene.defocus[frame]))
        if scene.noise_std > 0 and noise_rng is not None:
            noise = noise_rng.standard_normal(image.shape, dtype=np.float32)
            image = image + np.float32(scene.noise_std) * noise
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if effects and scene.source_quality > 0:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, scene.source_quality])
        if not ok:
            raise OSError("JPEG encoding failed")
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    result.image = image
    return result


def _render_instant(scene: Scene, frame: int, labels: bool = True) -> FrameResult | Any:
    """The instantaneous render of ``frame`` and its labels (``image`` is left None); only
    the canvas (``result.canvas``) without ``labels``."""
    W, H = scene.width, scene.height
    camera = scene.camera(frame)
    K = camera.K
    if scene.backdrop is None:
        background = np.empty((H, W, 3), np.float32)
        background[...] = scene.flat_color
    else:
        background = render.render_backdrop(scene.backdrop, camera, W, H)
    canvas = render.Canvas.from_background(background)
    if scene.backdrop is not None and scene.shadow_strength > 0:
        for shape, pose in zip(scene.shapes, scene.poses):
            pelvis = pose.part_a[frame, 0]
            render.draw_shadow(
                canvas, camera, np.array([pelvis[0], 0.0, pelvis[2]]), 0.2 * shape.height,
                scene.shadow_strength,
            )  # fmt: skip

    # Far to near, so that soft edges blend over what lies behind; the depth test decides.
    items = []
    for p, (shape, pose) in enumerate(zip(scene.shapes, scene.poses)):
        for k, (a, b, ra, rb, surf) in enumerate(render.body_capsules(shape, pose, frame, camera)):
            items.append(
                (0.5 * (a[2] + b[2]), 0, (a, b, ra, rb, surf, render.person_part_id(p, k)))
            )
        if scene.face_detail:
            a, b, ra, rb, surf = render.nose_capsule(shape, pose, frame, camera)
            pid = render.person_part_id(p, body_lib.HEAD_PART)
            items.append((0.5 * (a[2] + b[2]), 0, (a, b, ra, rb, surf, pid)))
    for j, occ in enumerate(scene.occluders):
        depth = float(camera.to_camera(occ.corners(frame))[:, 2].mean())
        items.append((depth, 1, (occ, render.occluder_id(j))))
    items.sort(key=lambda it: -it[0])
    for _, kind, args in items:
        if kind == 0:
            a, b, ra, rb, surf, pid = args
            render.draw_capsule(canvas, K, a, b, ra, rb, surf, pid, scene.light)
        else:
            occ, pid = args
            render.draw_box(canvas, camera, occ, frame, pid, scene.light)
    for p, (shape, pose) in enumerate(zip(scene.shapes, scene.poses)):
        render.draw_eyes(canvas, K, shape, pose, frame, camera)
        if scene.face_detail:
            render.draw_front_marks(canvas, K, shape, pose, frame, camera, p)

    if not labels:
        return SimpleNamespace(canvas=canvas)
    joints = np.stack([pose.joints[frame] for pose in scene.poses])
    uv, visible, occlusion = joint_occlusion(canvas, camera, joints, scene.shapes)

    P = scene.num_people
    bbox = np.zeros((P, 4))
    head = np.zeros((P, 4))
    area = np.zeros(P, np.int64)
    first = render.person_part_id(0, 0)
    person_of_pixel = (canvas.ids - first) // body_lib.NUM_PARTS
    is_person = (canvas.ids >= first) & (canvas.ids < render.OCCLUDER_ID_BASE)
    counts = np.bincount(person_of_pixel[is_person].ravel(), minlength=P)
    for p, (shape, pose) in enumerate(zip(scene.shapes, scene.poses)):
        area[p] = counts[p]
        a = camera.to_camera(pose.part_a[frame])
        b = camera.to_camera(pose.part_b[frame])
        ext = _extent(K, a, b, shape.radii[:, 0], shape.radii[:, 1])
        if ext is not None:
            x0, y0 = max(ext[0], -0.5), max(ext[1], -0.5)
            x1, y1 = min(ext[2], W - 0.5), min(ext[3], H - 0.5)
            if x1 > x0 and y1 > y0:
                bbox[p] = (x0, y0, x1 - x0, y1 - y0)
        hp = body_lib.HEAD_PART
        ext = _extent(K, a[hp : hp + 1], b[hp : hp + 1], shape.radii[hp : hp + 1, 0],
                      shape.radii[hp : hp + 1, 1])  # fmt: skip
        if ext is not None:
            head[p] = (ext[0], ext[1], ext[2] - ext[0], ext[3] - ext[1])

    return FrameResult(
        None, canvas, uv, visible, bbox, head, area, occlusion, 1, np.zeros(visible.shape)
    )
