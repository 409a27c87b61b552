"""A whole synthetic video: people, camera path, backdrop, occluders and image degradations,
and the per-frame rendering with ground-truth labels (2D joints, visibility, boxes).

Coordinates: world metres (Y up, ground Y = 0); pixels with centres at integers, x right, y
down. Visibility follows what is drawn: a joint is visible when it projects inside the image
and the front-most surface at its pixel is one of that person's parts touching the joint
(``body.JOINT_PARTS``) with the joint no deeper than that part's thickness behind it, so joints
hidden by other people, occluders or the person's own body are marked invisible.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from posewarper_jax.data.synthetic import body as body_lib
from posewarper_jax.data.synthetic import render
from posewarper_jax.data.synthetic.config import SyntheticConfig
from posewarper_jax.data.types import NUM_JOINTS

_MEAN_HEIGHT = 1.75  # metres; used to size the camera's focal length


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything needed to render T frames.

    K: float64 [3, 3]; extrinsics: float64 [T, 3, 4] world -> camera [R | t].
    motion_blur: float64 [T, 2] (length in pixels, angle in radians); length 0 = sharp.
    defocus: float64 [T] disk radius in pixels; 0 = in focus.
    gains: float32 [3] per-channel colour gains; noise_std: sensor noise std (0..255 scale).
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
    motion_blur: np.ndarray | None = None
    defocus: np.ndarray | None = None
    gains: np.ndarray | None = None
    noise_std: float = 0.0
    flat_color: tuple[float, float, float] = (128.0, 128.0, 128.0)  # when backdrop is None

    @property
    def num_frames(self) -> int:
        return int(self.extrinsics.shape[0])

    @property
    def num_people(self) -> int:
        return len(self.poses)

    def camera(self, frame: int) -> render.Camera:
        E = self.extrinsics[frame]
        return render.Camera(self.K, E[:, :3], E[:, 3])

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

    image: uint8 [H, W, 3] BGR, after blur, noise and colour gains.
    canvas: the clean render (colour, depth, ids) before those effects.
    keypoints: float64 [P, 17, 2] projected joints (all joints, visible or not).
    visible: bool [P, 17].
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


def sample_scene(rng: np.random.Generator, cfg: SyntheticConfig, num_frames: int) -> Scene:
    """Draws a random video scene: 1..3 moving people, a following, panning, dollying camera,
    a textured backdrop, maybe occluders, blur/defocus bursts, colour gains and noise."""
    T = int(num_frames)
    fps = cfg.fps
    W, H = cfg.width, cfg.height
    n_people = int(rng.integers(cfg.min_people, cfg.max_people + 1))
    shapes, poses = [], []
    for x, z, yaw in _place_people(rng, n_people):
        shape = body_lib.sample_body(rng)
        motion = body_lib.sample_motion(rng, T, fps, (x, z), yaw)
        shapes.append(shape)
        poses.append(body_lib.pose_body(shape, motion))

    # Camera: stands in front of the group, follows its centre, pans, dollies and shakes.
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
    ext = np.zeros((T, 3, 4))
    for i in range(T):
        R, tt = render.look_at(eyes[i], targets[i])
        ext[i, :, :3], ext[i, :, 3] = R, tt
    focal = rng.uniform(*cfg.person_height_frac) * H * dist / _MEAN_HEIGHT
    K = render.intrinsics(focal, W, H)

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

    # Degradations: motion blur along the people's image motion, defocus; in short bursts.
    scene = Scene(W, H, tuple(shapes), tuple(poses), K, ext, backdrop, tuple(occluders), light)
    uv = np.stack([render.project_camera(K, c) for c in scene.joints_camera()])  # [T, P, 17, 2]
    vel = np.gradient(uv, axis=0).reshape(T, -1, 2).mean(1) if T > 1 else np.zeros((T, 2))
    speed = np.linalg.norm(vel, axis=-1)
    blur = np.zeros((T, 2))
    mb = _episodes(rng, T, cfg.motion_blur_rate)
    exposure = rng.uniform(0.8, 2.0)
    for i in np.flatnonzero(mb):
        if speed[i] > 1.0:
            length, angle = speed[i] * exposure, np.arctan2(vel[i, 1], vel[i, 0])
        else:  # camera shake
            length, angle = rng.uniform(3.0, 6.0) * H / 240, rng.uniform(0, np.pi)
        blur[i] = (float(np.clip(length, 3.0 * H / 240, 0.08 * H)), angle)
    defocus = np.where(_episodes(rng, T, cfg.defocus_rate), rng.uniform(1.0, 3.0, T) * H / 240, 0)
    return dataclasses.replace(
        scene,
        motion_blur=blur,
        defocus=defocus,
        gains=rng.uniform(0.85, 1.15, 3).astype(np.float32),
        noise_std=float(rng.uniform(*cfg.noise_std)),
        shadow_strength=float(rng.uniform(0.2, 0.5)),
    )


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
    H, W = canvas.shape
    P = joints.shape[0]
    cam = camera.to_camera(joints)
    front = cam[..., 2] > render.NEAR
    uv = np.where(front[..., None], render.project_camera(camera.K, np.where(
        front[..., None], cam, 1.0)), np.nan)  # fmt: skip
    visible = np.zeros((P, NUM_JOINTS), bool)
    for p in range(P):
        for j in range(NUM_JOINTS):
            if not front[p, j]:
                continue
            iu, iv = int(np.floor(uv[p, j, 0] + 0.5)), int(np.floor(uv[p, j, 1] + 0.5))
            if not (0 <= iu < W and 0 <= iv < H):
                continue
            parts = body_lib.JOINT_PARTS[j]
            if canvas.ids[iv, iu] not in {render.person_part_id(p, k) for k in parts}:
                continue
            tol = float(shapes[p].radii[list(parts)].max()) + 0.02
            visible[p, j] = cam[p, j, 2] - canvas.depth[iv, iu] <= tol
    return uv, visible


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

    ``effects=False`` skips colour gains, blur and noise (the image is then the clean render).
    """
    W, H = scene.width, scene.height
    camera = scene.camera(frame)
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
    for j, occ in enumerate(scene.occluders):
        depth = float(camera.to_camera(occ.corners(frame))[:, 2].mean())
        items.append((depth, 1, (occ, render.occluder_id(j))))
    items.sort(key=lambda it: -it[0])
    for _, kind, args in items:
        if kind == 0:
            a, b, ra, rb, surf, pid = args
            render.draw_capsule(canvas, scene.K, a, b, ra, rb, surf, pid, scene.light)
        else:
            occ, pid = args
            render.draw_box(canvas, camera, occ, frame, pid, scene.light)
    for shape, pose in zip(scene.shapes, scene.poses):
        render.draw_eyes(canvas, scene.K, shape, pose, frame, camera)

    joints = np.stack([pose.joints[frame] for pose in scene.poses])
    uv, visible = joint_visibility(canvas, camera, joints, scene.shapes)

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
        ext = _extent(scene.K, a, b, shape.radii[:, 0], shape.radii[:, 1])
        if ext is not None:
            x0, y0 = max(ext[0], -0.5), max(ext[1], -0.5)
            x1, y1 = min(ext[2], W - 0.5), min(ext[3], H - 0.5)
            if x1 > x0 and y1 > y0:
                bbox[p] = (x0, y0, x1 - x0, y1 - y0)
        hp = body_lib.HEAD_PART
        ext = _extent(scene.K, a[hp : hp + 1], b[hp : hp + 1], shape.radii[hp : hp + 1, 0],
                      shape.radii[hp : hp + 1, 1])  # fmt: skip
        if ext is not None:
            head[p] = (ext[0], ext[1], ext[2] - ext[0], ext[3] - ext[1])

    image = canvas.color
    if effects:
        image = image * (scene.gains if scene.gains is not None else 1.0)
        if scene.motion_blur is not None and scene.motion_blur[frame, 0] > 0:
            image = render.motion_blur(image, *scene.motion_blur[frame])
        if scene.defocus is not None and scene.defocus[frame] > 0:
            image = render.defocus_blur(image, float(scene.defocus[frame]))
        if scene.noise_std > 0 and noise_rng is not None:
            image = image + noise_rng.normal(0.0, scene.noise_std, image.shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return FrameResult(image, canvas, uv, visible, bbox, head, area)
