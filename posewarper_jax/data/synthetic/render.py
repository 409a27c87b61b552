"""A small z-buffer renderer: textured backdrop planes, shaded capsule bodies, box occluders.

Cameras are pinholes: a world point X (metres) maps to camera coordinates x = R X + t (x right,
y down, z forward) and to the pixel (fx x/z + cx, fy y/z + cy), pixel centres at integers. A
frame is drawn into a ``Canvas``: colour (float32 BGR), depth (camera z of the front-most
surface, inf where only the backdrop is) and an int32 id buffer naming what each pixel shows
(0 backdrop, ``person_part_id`` for body parts, ``occluder_id`` for occluders).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from posewarper_jax.data.synthetic import body as body_lib

NEAR = 0.1  # metres; geometry closer to the camera than this is not drawn
OCCLUDER_ID_BASE = 10_000


def person_part_id(person: int, part: int) -> int:
    """Id-buffer value of ``part`` (index into ``body.PART_NAMES``) of person ``person``."""
    return 1 + person * body_lib.NUM_PARTS + part


def occluder_id(index: int) -> int:
    return OCCLUDER_ID_BASE + index


# ----------------------------------------------------------------------------- camera


@dataclasses.dataclass(frozen=True)
class Camera:
    """Pinhole camera. K: [3, 3] intrinsics; R: [3, 3], t: [3] world -> camera."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray

    @property
    def extrinsics(self) -> np.ndarray:
        """[3, 4] matrix [R | t]."""
        return np.concatenate([self.R, self.t[:, None]], axis=1)

    @property
    def center(self) -> np.ndarray:
        """Camera position in the world, [3]."""
        return -self.R.T @ self.t

    def to_camera(self, X: np.ndarray) -> np.ndarray:
        """World points [..., 3] -> camera coordinates [..., 3]."""
        return X @ self.R.T + self.t

    def project(self, X: np.ndarray) -> np.ndarray:
        """World points [..., 3] -> pixels [..., 2] (points must lie in front of the camera)."""
        return project_camera(self.K, self.to_camera(X))


def project_camera(K: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Camera-frame points [..., 3] -> pixels [..., 2]."""
    z = x[..., 2]
    return np.stack([K[0, 0] * x[..., 0] / z + K[0, 2], K[1, 1] * x[..., 1] / z + K[1, 2]], -1)


def look_at(eye: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R [3, 3] and translation t [3] of a camera at ``eye`` looking at ``target``
    with the world's +Y up on screen (no roll)."""
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ eye


def intrinsics(focal: float, width: int, height: int) -> np.ndarray:
    """[3, 3] K with square pixels and the principal point at the image centre."""
    return np.array(
        [[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]]
    )


# ----------------------------------------------------------------------------- canvas


@dataclasses.dataclass
class Canvas:
    """color: float32 [H, W, 3] BGR 0..255; depth: float32 [H, W]; ids: int32 [H, W]."""

    color: np.ndarray
    depth: np.ndarray
    ids: np.ndarray

    @classmethod
    def from_background(cls, background: np.ndarray) -> Canvas:
        h, w = background.shape[:2]
        return cls(
            color=background.astype(np.float32, copy=True),
            depth=np.full((h, w), np.inf, np.float32),
            ids=np.zeros((h, w), np.int32),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.ids.shape


@dataclasses.dataclass(frozen=True)
class Light:
    """direction: unit [3] towards the light, in camera coordinates; ambient in [0, 1]."""

    direction: np.ndarray
    ambient: float = 0.45
    specular: float = 0.12


DEFAULT_LIGHT = Light(
    direction=np.array([-0.35, -0.6, -0.72]) / np.linalg.norm([-0.35, -0.6, -0.72])
)


def _clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``np.clip`` for the renderer's many small arrays (same values, less overhead)."""
    return np.minimum(np.maximum(x, lo), hi)


def _shade(light: Light, nx: np.ndarray, ny: np.ndarray, nz: np.ndarray) -> np.ndarray:
    """Lambert + Blinn specular factor for unit normals (camera coordinates)."""
    L = light.direction
    lam = _clip(nx * L[0] + ny * L[1] + nz * L[2], 0.0, 1.0)
    half = L + np.array([0.0, 0.0, -1.0])
    half /= np.linalg.norm(half)
    spec = _clip(nx * half[0] + ny * half[1] + nz * half[2], 0.0, 1.0) ** 16
    return light.ambient + (1.0 - light.ambient) * lam + light.specular * spec


def _window(uv: np.ndarray, pad: int, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The pixel window (x0, y0, x1, y1), inclusive, of points ``uv`` [N, 2] grown by ``pad``
    and clipped to an image of ``shape`` (H, W); None when nothing of it is inside."""
    H, W = shape
    x0, y0 = np.maximum(np.floor(uv.min(0)).astype(int) - pad, 0)
    x1 = min(int(np.ceil(uv[:, 0].max())) + pad, W - 1)
    y1 = min(int(np.ceil(uv[:, 1].max())) + pad, H - 1)
    if x0 > x1 or y0 > y1:
        return None
    return int(x0), int(y0), x1, y1


# ----------------------------------------------------------------------------- capsules


@dataclasses.dataclass(frozen=True)
class Surface:
    """How a capsule is coloured. Axes are unit [3] vectors in camera coordinates."""

    color: np.ndarray  # [3] BGR
    color2: np.ndarray  # [3] stripes/checks, or hair for heads
    pattern: int = body_lib.PATTERN_PLAIN
    origin: np.ndarray | None = None  # pattern origin (camera coordinates)
    axis_u: np.ndarray | None = None  # stripes across this axis (person's up / head forward)
    axis_v: np.ndarray | None = None  # second axis (person's left / head up)
    period: float = 0.08
    hair_line: float = 0.0


def draw_capsule(
    canvas: Canvas,
    K: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    ra: float,
    rb: float,
    surface: Surface,
    pid: int,
    light: Light = DEFAULT_LIGHT,
) -> None:
    """Ray-casts a (tapered) capsule into ``canvas`` with depth test, shading and soft edges.

    The capsule joins camera-frame points ``a`` and ``b`` [3] (metres) with radii ``ra``,
    ``rb``: two end spheres and the cylinder between them, whose radius at axis parameter s is
    interpolated linearly. Each pixel's ray (through the pixel centre) is intersected exactly
    with the spheres and the cylinder; the edge coverage is the ray's distance to the axis
    segment against the radius, in pixels. Pixels at least half covered and nearer than the
    depth buffer take the id ``pid``.
    """
    if a[2] < NEAR or b[2] < NEAR:
        return
    H, W = canvas.shape
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x0, x1, y0, y1 = W, -1, H, -1
    for c, r in ((a, ra), (b, rb)):  # bounding box of the two end spheres (with slack)
        u, v, rho = fx * c[0] / c[2] + cx, fy * c[1] / c[2] + cy, 1.3 * fx * r / c[2] + 2
        x0, x1 = min(x0, int(np.floor(u - rho))), max(x1, int(np.ceil(u + rho)))
        y0, y1 = min(y0, int(np.floor(v - rho))), max(y1, int(np.ceil(v + rho)))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
    if x0 > x1 or y0 > y1:
        return
    # Unit ray directions D [h, w] per component (camera at the origin).
    rx = ((np.arange(x0, x1 + 1) - cx) / fx)[None, :]
    ry = ((np.arange(y0, y1 + 1) - cy) / fy)[:, None]
    inv_n = 1.0 / np.sqrt(rx * rx + ry * ry + 1.0)
    Dx, Dy, Dz = rx * inv_n, ry * inv_n, np.broadcast_to(inv_n, (y1 - y0 + 1, x1 - x0 + 1))
    axis = b - a
    L = max(float(np.linalg.norm(axis)), 1e-9)
    U = axis / L

    def dot(v):  # D . v for a fixed vector v
        return Dx * v[0] + Dy * v[1] + Dz * v[2]

    # Closest approach of the ray t D and the axis a + s U (s in metres along the axis).
    bu = dot(U)
    da = dot(a)
    e = -float(U @ a)
    denom = np.maximum(1.0 - bu * bu, 1e-9)
    t_line = (da - bu * float(U @ a)) / denom
    s_line = (e + bu * da) / denom
    # Distance of the ray to the axis *segment* (soft edges, depth of edge pixels).
    s_c = _clip(s_line, 0.0, L)
    qx, qy, qz = a[0] + s_c * U[0], a[1] + s_c * U[1], a[2] + s_c * U[2]
    t_q = np.maximum(Dx * qx + Dy * qy + Dz * qz, NEAR)
    dist = np.sqrt(np.maximum((qx * qx + qy * qy + qz * qz) - t_q * t_q, 0.0))
    r_c = ra + (rb - ra) * s_c / L
    alpha = _clip((r_c - dist) * fx / (t_q * Dz) + 0.5, 0.0, 1.0)
    # The rest only for covered pixels, as flat arrays.
    iy, ix = np.nonzero(alpha > 0)
    if iy.size == 0:
        return
    Dx, Dy, Dz = Dx[iy, ix], Dy[iy, ix], Dz[iy, ix]
    bu, denom, t_line, s_line = bu[iy, ix], denom[iy, ix], t_line[iy, ix], s_line[iy, ix]
    t_q, alpha = t_q[iy, ix], alpha[iy, ix]
    # Exact hits: the cylinder part (radius at the closest approach), then the end spheres.
    gx = t_line * Dx - (a[0] + s_line * U[0])
    gy = t_line * Dy - (a[1] + s_line * U[1])
    gz = t_line * Dz - (a[2] + s_line * U[2])
    d_line2 = gx * gx + gy * gy + gz * gz
    r_line = ra + (rb - ra) * _clip(s_line, 0.0, L) / L
    step = np.sqrt(np.maximum(r_line * r_line - d_line2, 0.0) / denom)
    t_cyl = t_line - step
    s_hit = s_line - bu * step
    t_hit = np.where((d_line2 <= r_line * r_line) & (s_hit >= 0) & (s_hit <= L), t_cyl, np.inf)
    for c, r in ((a, ra), (b, rb)):
        tc = Dx * c[0] + Dy * c[1] + Dz * c[2]
        disc = tc * tc - float(c @ c) + r * r
        t_s = tc - np.sqrt(np.maximum(disc, 0.0))
        t_hit = np.where((disc >= 0) & (t_s < t_hit), t_s, t_hit)
    t = np.where(np.isfinite(t_hit), t_hit, t_q)
    depth = (t * Dz).astype(np.float32)
    zbuf = canvas.depth[y0 : y1 + 1, x0 : x1 + 1]
    nearer = depth < zbuf[iy, ix]
    if not nearer.any():
        return
    iy, ix, t, depth, alpha = iy[nearer], ix[nearer], t[nearer], depth[nearer], alpha[nearer]
    px, py, pz = t * Dx[nearer], t * Dy[nearer], t * Dz[nearer]  # surface points
    # Normal: from the nearest axis point to the surface point.
    s_p = _clip((px - a[0]) * U[0] + (py - a[1]) * U[1] + (pz - a[2]) * U[2], 0.0, L)
    nx, ny, nz = px - (a[0] + s_p * U[0]), py - (a[1] + s_p * U[1]), pz - (a[2] + s_p * U[2])
    norm = np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-9)
    nx, ny, nz = nx / norm, ny / norm, nz / norm
    base = _surface_color(surface, (px, py, pz), (nx, ny, nz))
    col = base * _shade(light, nx, ny, nz)[..., None]
    region = canvas.color[y0 : y1 + 1, x0 : x1 + 1]
    w = alpha[:, None]
    region[iy, ix] = w * col + (1.0 - w) * region[iy, ix]
    solid = alpha >= 0.5
    zbuf[iy[solid], ix[solid]] = depth[solid]
    canvas.ids[y0 : y1 + 1, x0 : x1 + 1][iy[solid], ix[solid]] = pid


def _surface_color(surface: Surface, point, normal) -> np.ndarray:
    """Per-pixel base colour [h, w, 3] of a surface patch (before shading).

    point, normal: (x, y, z) tuples of [h, w] arrays in camera coordinates.
    """
    c1 = np.asarray(surface.color, np.float32)
    c2 = np.asarray(surface.color2, np.float32)
    pat = surface.pattern
    shape = point[0].shape
    if pat == body_lib.PATTERN_PLAIN:
        return np.broadcast_to(c1, shape + (3,))
    if pat == body_lib.PATTERN_HEAD:  # hair where the normal faces back or up
        nx, ny, nz = normal
        fu, fv = surface.axis_u, surface.axis_v
        facing = nx * fu[0] + ny * fu[1] + nz * fu[2]
        upness = nx * fv[0] + ny * fv[1] + nz * fv[2]
        hair = (facing < surface.hair_line) | (upness > 0.6)
        return np.where(hair[..., None], c2, c1)
    px, py, pz = (point[i] - surface.origin[i] for i in range(3))
    u = (px * surface.axis_u[0] + py * surface.axis_u[1] + pz * surface.axis_u[2]) / surface.period
    if pat == body_lib.PATTERN_HSTRIPES:
        sel = np.floor(u) % 2 == 0
    else:
        v = px * surface.axis_v[0] + py * surface.axis_v[1] + pz * surface.axis_v[2]
        v = v / surface.period
        sel = np.floor(v) % 2 == 0
        if pat == body_lib.PATTERN_CHECKS:
            sel = (np.floor(u) + np.floor(v)) % 2 == 0
    return np.where(sel[..., None], c2, c1)


# ----------------------------------------------------------------------------- people


def body_capsules(
    shape: body_lib.BodyShape, pose: body_lib.BodyPose, frame: int, camera: Camera
) -> list[tuple[np.ndarray, np.ndarray, float, float, Surface]]:
    """The ``NUM_PARTS`` capsules of a posed body at ``frame``, in camera coordinates, in
    ``PART_NAMES`` order: (a [3], b [3], ra, rb, surface)."""
    R = camera.R
    a = camera.to_camera(pose.part_a[frame])
    b = camera.to_camera(pose.part_b[frame])
    torso = R @ pose.torso_frame[frame]  # columns: left, up, forward in camera coordinates
    head = R @ pose.head_frame[frame]
    origin = camera.to_camera(pose.part_a[frame, 0])  # pelvis
    out = []
    for k in range(body_lib.NUM_PARTS):
        pat = int(shape.patterns[k])
        if pat == body_lib.PATTERN_HEAD:
            surf = Surface(
                shape.colors[k], shape.color2[k], pat, None, head[:, 2], head[:, 1],
                hair_line=shape.hair_line,
            )  # fmt: skip
        else:
            surf = Surface(
                shape.colors[k], shape.color2[k], pat, origin, torso[:, 1], torso[:, 0],
                period=shape.stripe_period,
            )  # fmt: skip
        out.append((a[k], b[k], float(shape.radii[k, 0]), float(shape.radii[k, 1]), surf))
    return out


def draw_eyes(
    canvas: Canvas, K: np.ndarray, shape: body_lib.BodyShape, pose: body_lib.BodyPose,
    frame: int, camera: Camera,
) -> None:  # fmt: skip
    """Dark eye dots on a head that faces the camera (colour only; ids and depth untouched)."""
    R_head = camera.R @ pose.head_frame[frame]
    a = camera.to_camera(pose.part_a[frame, body_lib.HEAD_PART])
    b = camera.to_camera(pose.part_b[frame, body_lib.HEAD_PART])
    centre = 0.5 * (a + b)
    view = centre / np.linalg.norm(centre)
    if centre[2] < NEAR or -view @ R_head[:, 2] < 0.25:
        return
    r = float(shape.radii[body_lib.HEAD_PART, 0])
    H, W = canvas.shape
    rad = max(K[0, 0] * 0.13 * r / centre[2], 0.6)
    for side in (-1.0, 1.0):
        eye = centre + R_head @ np.array([side * 0.36 * r, 0.05 * r, 0.9 * r])
        u, v = project_camera(K, eye)
        iu, iv = int(round(u)), int(round(v))
        if not (0 <= iu < W and 0 <= iv < H) or eye[2] > canvas.depth[iv, iu] + 0.3 * r:
            continue
        cv2.circle(
            canvas.color, (int(round(u * 4)), int(round(v * 4))), int(round(rad * 4)),
            (30.0, 25.0, 25.0), -1, cv2.LINE_AA, shift=2,
        )  # fmt: skip


def nose_capsule(
    shape: body_lib.BodyShape, pose: body_lib.BodyPose, frame: int, camera: Camera
) -> tuple[np.ndarray, np.ndarray, float, float, Surface]:
    """The nose, a short skin capsule sticking out of the face below the eyes, in camera
    coordinates: (a [3], b [3], ra, rb, surface). It juts out by about a quarter of the head's
    radius (2-3 cm on an adult), so a profile shows which way the head faces."""
    R_head = camera.R @ pose.head_frame[frame]
    a = camera.to_camera(pose.part_a[frame, body_lib.HEAD_PART])
    b = camera.to_camera(pose.part_b[frame, body_lib.HEAD_PART])
    centre = 0.5 * (a + b)
    r = float(shape.radii[body_lib.HEAD_PART, 0])
    root = centre + R_head @ np.array([0.0, -0.1 * r, 0.75 * r])
    tip = centre + R_head @ np.array([0.0, -0.3 * r, 1.1 * r])
    skin = np.asarray(shape.colors[body_lib.HEAD_PART], np.float32) * 0.9
    return root, tip, 0.2 * r, 0.16 * r, Surface(skin, skin)


def draw_front_marks(
    canvas: Canvas, K: np.ndarray, shape: body_lib.BodyShape, pose: body_lib.BodyPose,
    frame: int, camera: Camera, person: int,
) -> None:  # fmt: skip
    """What shows that a person faces the camera, besides the eyes: the mouth (a dark line
    under the nose) and the shirt's neckline (a skin-coloured V on the front of the chest).
    Colour only, painted only over the pixels that show this person's head (mouth) or torso
    (neckline), so whatever stands in front keeps its colour; ids and depth are untouched."""
    R_head = camera.R @ pose.head_frame[frame]
    R_torso = camera.R @ pose.torso_frame[frame]
    hp = body_lib.HEAD_PART
    a = camera.to_camera(pose.part_a[frame])
    b = camera.to_camera(pose.part_b[frame])
    skin = np.asarray(shape.colors[hp], np.float32)

    def paint(points: np.ndarray, parts: tuple[int, ...], color: np.ndarray, closed: bool):
        if np.any(points[:, 2] < NEAR):
            return
        uv = project_camera(K, points)
        window = _window(uv, 2, canvas.shape)
        if window is None:
            return
        x0, y0, x1, y1 = window
        mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.float32)
        pts = np.round((uv - [x0, y0]) * 16).astype(np.int32)
        if closed:
            cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_AA, shift=4)
        else:
            cv2.polylines(mask, [pts], False, 1.0, 1, cv2.LINE_AA, shift=4)
        ids = canvas.ids[y0 : y1 + 1, x0 : x1 + 1]
        own = np.isin(ids, [person_part_id(person, k) for k in parts])
        w = (mask * own)[..., None]
        region = canvas.color[y0 : y1 + 1, x0 : x1 + 1]
        shade = region.mean(-1, keepdims=True) / max(float(np.mean(color)), 1.0)
        tone = color * np.clip(shade, 0.5, 1.2)  # keep the light the surface had
        region[...] = w * tone + (1.0 - w) * region

    # Mouth: seen when the face turns towards the camera (as the eyes).
    centre = 0.5 * (a[hp] + b[hp])
    view = centre / max(float(np.linalg.norm(centre)), 1e-9)
    r = float(shape.radii[hp, 0])
    if -view @ R_head[:, 2] > 0.25:
        mouth = np.stack([centre + R_head @ np.array([s * 0.3 * r, -0.5 * r, 0.86 * r])
                          for s in (-1.0, 0.0, 1.0)])  # fmt: skip
        paint(mouth, (hp,), np.array([60.0, 50.0, 120.0], np.float32), closed=False)
    # Neckline: a V from the base of the neck down the chest's front surface.
    spine = body_lib.PART_NAMES.index("spine")
    chest, rb = b[spine], float(shape.radii[spine, 1])
    fwd, left, up = R_torso[:, 2], R_torso[:, 0], R_torso[:, 1]
    if -(chest / max(float(np.linalg.norm(chest)), 1e-9)) @ fwd > 0.1:
        w, depth = 0.5 * rb, 1.6 * rb
        v = np.stack(
            [
                chest + fwd * rb + left * w,
                chest + fwd * rb * 0.95 - up * depth,
                chest + fwd * rb - left * w,
                chest + fwd * 0.6 * rb + up * 0.3 * rb,
            ]
        )
        torso = tuple(body_lib.PART_NAMES.index(n) for n in (
            "spine", "neck", "shoulder_left", "shoulder_right"))  # fmt: skip
        paint(v, torso, skin, closed=True)


# ----------------------------------------------------------------------------- occluders


@dataclasses.dataclass(frozen=True)
class Occluder:
    """An upright box (pole, crate or panel) that may slide along world X.

    x: float64 [T] centre X per frame; z: centre Z; bottom: height of its lower face.
    """

    x: np.ndarray
    z: float
    width: float
    height: float
    depth: float
    bottom: float
    color: np.ndarray
    color2: np.ndarray
    stripe: float  # stripe period in metres along Y (0 = plain, noisy)

    def corners(self, frame: int) -> np.ndarray:
        """World corners [8, 3]: index bits (x, y, z) = (i & 1, i >> 1 & 1, i >> 2 & 1)."""
        i = np.arange(8)
        cx = self.x[frame] + (np.where(i & 1, 0.5, -0.5)) * self.width
        cy = self.bottom + np.where(i >> 1 & 1, 1.0, 0.0) * self.height
        cz = self.z + np.where(i >> 2 & 1, 0.5, -0.5) * self.depth
        return np.stack([cx, cy, cz], -1)


_BOX_FACES = ((0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5))


def draw_box(
    canvas: Canvas, camera: Camera, occ: Occluder, frame: int, pid: int, light: Light
) -> None:
    """Draws the faces of an occluder box that face the camera, with exact planar depth."""
    corners = camera.to_camera(occ.corners(frame))
    if np.any(corners[:, 2] < NEAR):
        return
    K = camera.K
    uv = project_camera(K, corners)
    box_centre = corners.mean(0)
    for face in _BOX_FACES:
        p = corners[list(face)]
        n = np.cross(p[1] - p[0], p[3] - p[0])
        n /= np.linalg.norm(n)
        if n @ (p.mean(0) - box_centre) < 0:
            n = -n  # outward
        if n @ p[0] >= 0:  # faces away from the camera
            continue
        poly = uv[list(face)]
        window = _window(poly, 1, canvas.shape)
        if window is None:
            continue
        x0, y0, x1, y1 = window
        cover = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
        pts = np.round((poly - [x0, y0]) * 16).astype(np.int32)
        cv2.fillPoly(cover, [pts], 255, cv2.LINE_AA, shift=4)
        alpha = cover.astype(np.float32) / 255.0
        xs = np.arange(x0, x1 + 1, dtype=np.float32)[None, :]
        ys = np.arange(y0, y1 + 1, dtype=np.float32)[:, None]
        rx, ry = (xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1]  # ray (rx, ry, 1)
        denom = n[0] * rx + n[1] * ry + n[2]
        depth = (n @ p[0]) / np.where(np.abs(denom) > 1e-9, denom, 1e-9)
        depth = np.where(depth > NEAR, depth, np.inf).astype(np.float32)
        zbuf = canvas.depth[y0 : y1 + 1, x0 : x1 + 1]
        nearer = (alpha > 0) & (depth < zbuf)
        if not nearer.any():
            continue
        c = np.asarray(occ.color, np.float32)
        if occ.stripe > 0:
            zf = np.where(np.isfinite(depth), depth, 0.0)
            world_y = _camera_to_world_y(camera, rx * zf, ry * zf, zf)
            sel = np.floor((world_y - occ.bottom) / occ.stripe) % 2 == 0
            c = np.where(sel[..., None], c, np.asarray(occ.color2, np.float32))
        shade = _shade(light, *n)
        col = np.broadcast_to(c * shade, depth.shape + (3,))
        region = canvas.color[y0 : y1 + 1, x0 : x1 + 1]
        w = np.where(nearer, alpha, 0.0)[..., None]
        region[...] = w * col + (1.0 - w) * region
        solid = nearer & (alpha >= 0.5)
        zbuf[solid] = depth[solid]
        canvas.ids[y0 : y1 + 1, x0 : x1 + 1][solid] = pid


def _camera_to_world_y(camera: Camera, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """World Y of camera-frame points given as coordinate arrays."""
    R, t = camera.R, camera.t
    return R[0, 1] * (x - t[0]) + R[1, 1] * (y - t[1]) + R[2, 1] * (z - t[2])


# ----------------------------------------------------------------------------- backdrop


@dataclasses.dataclass(frozen=True)
class Backdrop:
    """A textured wall (plane Z = wall_z, facing +Z) standing on a textured ground (Y = 0).

    wall: uint8 [hw, ww, 3] covering world X in [-wall_half_width, +..], Y in [0, wall_height].
    ground: uint8 [hg, wg, 3] covering X in [-ground_half, +..], Z in [wall_z, wall_z + 2 *
      ground_half].
    """

    wall: np.ndarray
    ground: np.ndarray
    wall_z: float
    wall_half_width: float
    wall_height: float
    ground_half: float


def _fractal_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, ...]) -> np.ndarray:
    """Smooth noise [h, w] float32 with about unit std: random grids of ``cells`` rows upsampled."""
    out = np.zeros((h, w), np.float32)
    for i, n in enumerate(cells):
        grid = rng.standard_normal((n, max(2, n * w // h))).astype(np.float32)
        out += 0.6**i * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out / max(float(out.std()), 1e-6)


def random_bgr(rng: np.random.Generator, sat: tuple[int, int] = (0, 200)) -> np.ndarray:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(*sat), rng.integers(40, 240)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def make_texture(rng: np.random.Generator, h: int, w: int, px_per_m: float, ground: bool):
    """A procedural texture [h, w, 3] uint8: gradient, multi-scale noise and one or two of
    stripes, bricks/tiles, blobs and windows (walls) or tiles, lanes and blobs (ground)."""
    c0, c1 = random_bgr(rng), random_bgr(rng)
    ramp = np.linspace(0, 1, h if not ground else w, dtype=np.float32)
    ramp = ramp[:, None, None] if not ground else ramp[None, :, None]
    img = c0 * (1 - ramp) + c1 * ramp
    img = np.broadcast_to(img, (h, w, 3)).copy()
    noise = _fractal_noise(rng, h, w, (3, 12, 48, 160))
    img *= (1.0 + rng.uniform(0.08, 0.25) * noise)[..., None]
    kinds = ["tiles", "blobs", "stripes", "plain"] if ground else [
        "stripes", "bricks", "blobs", "windows", "plain"]  # fmt: skip
    for kind in rng.choice(kinds, size=int(rng.integers(1, 3)), replace=False):
        color = random_bgr(rng)
        if kind == "stripes":
            period = int(max(4, rng.uniform(0.2, 1.5) * px_per_m))
            duty = rng.uniform(0.2, 0.6)
            coord = np.arange(w if rng.random() < 0.7 else h)
            band = ((coord % period) < duty * period).astype(np.float32)
            band = band[None, :, None] if band.shape[0] == w else band[:, None, None]
            img = img * (1 - 0.7 * band) + 0.7 * band * color
        elif kind in ("bricks", "tiles"):
            bh = int(max(4, rng.uniform(0.1, 0.6) * px_per_m))
            bw = int(max(4, bh * rng.uniform(1.0, 3.0)))
            line = max(1, int(0.08 * bh))
            yy, xx = np.mgrid[0:h, 0:w]
            shift = (yy // bh % 2) * (bw // 2) if kind == "bricks" else 0
            mortar = ((yy % bh) < line) | (((xx + shift) % bw) < line)
            img[mortar] = 0.5 * img[mortar] + 0.5 * color
        elif kind == "blobs":
            for _ in range(int(rng.integers(10, 40))):
                centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                axes = (
                    int(rng.uniform(0.1, 1.5) * px_per_m),
                    int(rng.uniform(0.1, 1.5) * px_per_m),
                )
                cv2.ellipse(
                    img, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                    random_bgr(rng).tolist(), -1, cv2.LINE_AA,
                )  # fmt: skip
            img = cv2.GaussianBlur(img, (0, 0), 1.5)
        elif kind == "windows":
            step = int(rng.uniform(1.5, 3.0) * px_per_m)
            size = int(step * rng.uniform(0.4, 0.7))
            for y in range(int(0.3 * h), h - size, step):
                for x in range(int(rng.integers(0, step)), w - size, step):
                    cv2.rectangle(img, (x, y - size), (x + size, y), color.tolist(), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def sample_backdrop(rng: np.random.Generator, wall_z: float) -> Backdrop:
    """A random wall + ground at ~40 texels per metre."""
    wall_half, wall_height, ground_half = 18.0, 12.0, 16.0
    wall = make_texture(rng, 480, 1440, 40.0, ground=False)
    ground = make_texture(rng, 1280, 1280, 40.0, ground=True)
    return Backdrop(wall, ground, wall_z, wall_half, wall_height, ground_half)


def render_backdrop(backdrop: Backdrop, camera: Camera, width: int, height: int) -> np.ndarray:
    """The backdrop as seen by ``camera``: float32 [height, width, 3]."""
    P = camera.K @ camera.extrinsics  # [3, 4] world -> image (homogeneous)
    hw, ww = backdrop.wall.shape[:2]
    sx = 2 * backdrop.wall_half_width / ww
    sy = backdrop.wall_height / hw
    # texel (u, v, 1) -> world (X, Y, Z, 1) on each plane
    M_wall = np.array(
        [[sx, 0, -backdrop.wall_half_width], [0, -sy, backdrop.wall_height],
         [0, 0, backdrop.wall_z], [0, 0, 1]]
    )  # fmt: skip
    hg, wg = backdrop.ground.shape[:2]
    g = 2 * backdrop.ground_half / wg
    M_ground = np.array(
        [[g, 0, -backdrop.ground_half], [0, 0, 0], [0, g * wg / hg, backdrop.wall_z], [0, 0, 1]]
    )
    # A pixel shows the ground when its ray meets Y = 0 in front of the wall. The ray's world
    # direction R^T K^-1 (u, v, 1) is linear in the pixel, so its Y and Z are two planes.
    A = camera.R.T @ np.linalg.inv(camera.K)
    u = np.arange(width, dtype=np.float64)[None, :]
    v = np.arange(height, dtype=np.float64)[:, None]
    ray_y = A[1, 0] * u + A[1, 1] * v + A[1, 2]
    ray_z = A[2, 0] * u + A[2, 1] * v + A[2, 2]
    c = camera.center
    with np.errstate(divide="ignore", invalid="ignore"):
        z_hit = c[2] - c[1] * ray_z / ray_y
    on_ground = (ray_y < 0) & (z_hit > backdrop.wall_z)
    # Each plane is warped only over the rows where it shows.
    flags = dict(flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out = np.empty((height, width, 3), np.uint8)
    for texture, M, shown in (
        (backdrop.wall, M_wall, ~on_ground), (backdrop.ground, M_ground, on_ground)
    ):  # fmt: skip
        rows = np.flatnonzero(shown.any(1))
        if not len(rows):
            continue
        y0, y1 = int(rows[0]), int(rows[-1])
        shift = np.array([[1.0, 0, 0], [0, 1, -y0], [0, 0, 1]])
        part = cv2.warpPerspective(texture, shift @ P @ M, (width, y1 - y0 + 1), **flags)
        out[y0 : y1 + 1] = np.where(shown[y0 : y1 + 1, :, None], part, out[y0 : y1 + 1])
    return out.astype(np.float32)


def draw_shadow(
    canvas: Canvas, camera: Camera, centre: np.ndarray, radius: float, strength: float
) -> None:
    """Darkens a soft ellipse of the ground around world point ``centre`` (X, 0, Z)."""
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    pts = np.stack(
        [
            centre[0] + radius * np.cos(ang),
            np.zeros_like(ang),
            centre[2] + 0.7 * radius * np.sin(ang),
        ],
        -1,
    )
    cam = camera.to_camera(pts)
    if np.any(cam[:, 2] < NEAR):
        return
    uv = project_camera(camera.K, cam)
    blur = max(1.0, 0.25 * float(np.ptp(uv[:, 1])))
    # Only the window the blurred ellipse can reach (the blur's kernel spans 4 sigma): the
    # same values as blurring a mask of the whole frame, at a fraction of the work.
    window = _window(uv, int(np.ceil(4 * blur)) + 3, canvas.shape)
    if window is None:
        return
    x0, y0, x1, y1 = window
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.float32)
    pts = np.round(uv * 16).astype(np.int32) - np.array([x0, y0], np.int32) * 16
    cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_AA, shift=4)
    mask = cv2.GaussianBlur(mask, (0, 0), blur)
    canvas.color[y0 : y1 + 1, x0 : x1 + 1] *= (1.0 - strength * mask)[..., None]


# ----------------------------------------------------------------------------- image effects


def motion_blur(image: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Blurs [H, W, C] along direction ``angle`` (radians, x right, y down) with a centred,
    anti-aliased line kernel of ``length`` pixels (the centre of mass stays in place)."""
    if length < 1.0:
        return image
    size = int(np.ceil(length)) | 1
    size += 2
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    dx, dy = 0.5 * length * np.cos(angle), 0.5 * length * np.sin(angle)
    p0 = (int(round((c - dx) * 16)), int(round((c - dy) * 16)))
    p1 = (int(round((c + dx) * 16)), int(round((c + dy) * 16)))
    cv2.line(k, p0, p1, 1.0, 1, cv2.LINE_AA, shift=4)
    k /= k.sum()
    return cv2.filter2D(image, -1, k, borderType=cv2.BORDER_REFLECT_101)


def defocus_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Disk (out-of-focus) blur of ``radius`` pixels."""
    if radius < 0.5:
        return image
    size = 2 * int(np.ceil(radius)) + 3
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    cv2.circle(k, (int(c * 16), int(c * 16)), int(round(radius * 16)), 1.0, -1, cv2.LINE_AA, 4)
    k /= k.sum()
    return cv2.filter2D(image, -1, k, borderType=cv2.BORDER_REFLECT_101)
