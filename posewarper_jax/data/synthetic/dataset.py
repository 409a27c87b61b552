"""Writes the synthetic data set to disk in PoseTrack18 layout, reusing a matching one.

Layout under ``root``::

  images/{train,val}/<video>/%06d.jpg       every frame, 0-based
  annotations/{train,val}/<video>.json      PoseTrack18 annotation per video
  annotations/{train,val}/<video>_3d.npz    3D joints and cameras (see ``load_sidecar``)
  info.json                                 generator version, preset, config, counts

``info.json`` is written last and the whole tree is built in a temporary sibling directory that
is renamed into place, so a ``root`` with an ``info.json`` is always complete.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import uuid

import cv2
import numpy as np

from posewarper_jax import fileio, storage
from posewarper_jax.data import posetrack18
from posewarper_jax.data.synthetic.config import (
    GENERATOR_VERSION,
    PRESETS,
    SyntheticConfig,
    get_config,
)
from posewarper_jax.data.synthetic.scene import (
    OBJECT_OCCLUDED,
    PERSON_OCCLUDED,
    SELF_OCCLUDED,
    render_frame,
    sample_scene,
)
from posewarper_jax.data.types import NUM_JOINTS, SKELETON, Frame, Person, Video, VideoDataset

SPLITS: tuple[str, ...] = ("train", "val")
_SPLIT_CODE = {"train": 1, "val": 2}
# PoseTrack18 never labels the ears: they stay (0, 0, 0) in the JSON files (3D kept in sidecar).
EAR_JOINTS: tuple[int, ...] = (3, 4)
_LABELED = np.array([j not in EAR_JOINTS for j in range(NUM_JOINTS)])
_GENERATOR = "posewarper_jax.data.synthetic"


def video_name(split: str, index: int) -> str:
    """Folder/file name of video ``index`` of ``split``, e.g. ``010003_synth_train``."""
    return f"{_vid_number(split, index):06d}_synth_{split}"


def _vid_number(split: str, index: int) -> int:
    return _SPLIT_CODE[split] * 10_000 + index


def image_id(split: str, index: int, frame: int) -> int:
    """PoseTrack-style image id ``9 VVVVVV FFFF`` (V: video number, F: 0-based frame)."""
    return 9 * 10**10 + _vid_number(split, index) * 10**4 + frame


# ----------------------------------------------------------------------------- one video


@dataclasses.dataclass
class VideoRecord:
    """What a worker returns for one video (T frames, P people); images are already on disk.

    keypoints: float64 [T, P, 17, 2]; visible: bool [T, P, 17]; bbox, head_bbox: [T, P, 4];
    area: int [T, P]; joints_world, joints_camera: float64 [T, P, 17, 3]; K: [T, 3, 3];
    extrinsics: [T, 3, 4]; conditions: the ``cond_*`` arrays of ``load_sidecar``.
    """

    split: str
    index: int
    name: str
    image_paths: list[str]
    keypoints: np.ndarray
    visible: np.ndarray
    bbox: np.ndarray
    head_bbox: np.ndarray
    area: np.ndarray
    joints_world: np.ndarray
    joints_camera: np.ndarray
    K: np.ndarray
    extrinsics: np.ndarray
    conditions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def video_rng(cfg: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The generator that draws video ``index`` of ``split`` (independent of worker order)."""
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, _SPLIT_CODE[split], index]))


def render_video(cfg: SyntheticConfig, split: str, index: int, root: str) -> VideoRecord:
    """Draws and renders one video, writing its JPEG frames under ``root/images/<split>/``."""
    rng = video_rng(cfg, split, index)
    T = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
    scene = sample_scene(rng, cfg, T)
    noise_rng = np.random.default_rng(rng.integers(2**63))
    name = video_name(split, index)
    image_dir = os.path.join(root, "images", split, name)
    os.makedirs(image_dir, exist_ok=True)
    P = scene.num_people
    kp = np.zeros((T, P, NUM_JOINTS, 2))
    vis = np.zeros((T, P, NUM_JOINTS), bool)
    bbox = np.zeros((T, P, 4))
    head = np.zeros((T, P, 4))
    area = np.zeros((T, P), np.int64)
    occlusion = np.zeros((T, P, NUM_JOINTS), np.int8)
    blur_px = np.zeros((T, P, NUM_JOINTS), np.float32)
    subframes = np.ones(T, np.int32)
    paths = []
    for f in range(T):
        r = render_frame(scene, f, noise_rng)
        occlusion[f], blur_px[f], subframes[f] = r.occlusion, r.blur_px, r.subframes
        path = os.path.join(image_dir, f"{f:06d}.jpg")
        ok, buf = cv2.imencode(".jpg", r.image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:
            raise OSError(f"JPEG encoding failed for {path}")
        buf.tofile(path)
        paths.append(path)
        kp[f], vis[f], area[f] = r.keypoints, r.visible, r.area
        bbox[f], head[f] = r.bbox, r.head_bbox
    conditions = {
        "cond_speed": joint_speed(kp, head).astype(np.float32),
        "cond_occlusion": occlusion,
        "cond_blurred": scene.exposure > 0,
        "cond_exposure": scene.exposure.astype(np.float32),
        "cond_subframes": subframes,
        "cond_blur_px": blur_px,
        "cond_defocus": scene.defocus.astype(np.float32),
        "cond_zoom": (np.ones(T) if scene.zoom is None else scene.zoom).astype(np.float32),
        "cond_source_quality": np.array(scene.source_quality),
        "cond_roles": np.array(scene.roles),
        "cond_activities": np.array(scene.activities),
        "cond_camera_moves": np.array(scene.camera_moves, dtype=str),
    }
    K = np.stack([scene.intrinsics(f) for f in range(T)])
    return VideoRecord(
        split, index, name, paths, kp, vis, bbox, head, area,
        scene.joints_world(), scene.joints_camera(), K, scene.extrinsics, conditions,
    )  # fmt: skip


def joint_speed(keypoints: np.ndarray, head_bbox: np.ndarray) -> np.ndarray:
    """float64 [T, P, 17]: each joint's image speed in head sizes per frame.

    The speed is the central difference of ``keypoints`` [T, P, 17, 2] (one-sided at the
    first and last frame; 0 for a one-frame video) over poseval's head size of that person in
    that frame, ``0.6 * ||(w, h)||`` of ``head_bbox`` [T, P, 4] (NaN where either is missing).
    """
    T = keypoints.shape[0]
    vel = np.gradient(keypoints, axis=0) if T > 1 else np.zeros_like(keypoints)
    head = 0.6 * np.hypot(head_bbox[..., 2], head_bbox[..., 3])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.linalg.norm(vel, axis=-1) / np.where(head > 0, head, np.nan)[..., None]


def annotated(record: VideoRecord) -> np.ndarray:
    """bool [T, P]: the people written to the JSON in each frame (at least one labeled joint)."""
    return (record.visible & _LABELED).any(-1)


def labeled_joints(record: VideoRecord, cfg: SyntheticConfig) -> np.ndarray:
    """bool [T, P, 17]: the joints the JSON labels: the visible ones, and with
    ``cfg.label_occluded`` the hidden ones inside the image too; never the ears."""
    labeled = record.visible.copy()
    if cfg.label_occluded:
        occlusion = record.conditions["cond_occlusion"]
        labeled |= np.isin(occlusion, (SELF_OCCLUDED, PERSON_OCCLUDED, OBJECT_OCCLUDED))
    return labeled & _LABELED


def to_video(record: VideoRecord, cfg: SyntheticConfig, ann_dir: str) -> Video:
    """The ``types.Video`` of a rendered video: ``labeled_joints`` labeled, on the people with
    a visible joint."""
    T, P = record.visible.shape[:2]
    keep = annotated(record)
    joints = labeled_joints(record, cfg)
    frames = []
    for f in range(T):
        labeled = f % cfg.label_stride == 0
        people = []
        if labeled:
            for p in range(P):
                if not keep[f, p]:
                    continue
                v = joints[f, p]
                kps = np.zeros((NUM_JOINTS, 3), np.float32)
                kps[v, :2] = record.keypoints[f, p, v]
                kps[v, 2] = 1.0
                people.append(
                    Person(
                        keypoints=kps,
                        bbox=record.bbox[f, p].astype(np.float32),
                        head_bbox=record.head_bbox[f, p].astype(np.float32),
                        track_id=p,
                    )
                )
        frames.append(
            Frame(
                path=record.image_paths[f],
                index=f,
                image_id=image_id(record.split, record.index, f),
                is_labeled=labeled,
                people=people,
            )
        )
    source = os.path.join(ann_dir, f"{record.name}.json")
    vid = f"{_vid_number(record.split, record.index):06d}"
    return Video(record.name, frames, source, {"vid_id": vid})


def _save_sidecar(record: VideoRecord, cfg: SyntheticConfig, ann_dir: str) -> None:
    T, P = record.visible.shape[:2]
    np.savez_compressed(
        os.path.join(ann_dir, f"{record.name}_3d.npz"),
        joints_world=record.joints_world,
        joints_camera=record.joints_camera,
        joints_2d=record.keypoints,
        visible=record.visible,
        annotated=annotated(record),
        intrinsics=record.K[0],
        intrinsics_per_frame=record.K,
        extrinsics=record.extrinsics,
        track_ids=np.arange(P),
        image_ids=np.array([image_id(record.split, record.index, f) for f in range(T)]),
        image_size=np.array([cfg.width, cfg.height]),
        fps=np.array(cfg.fps),
        **record.conditions,
    )


def load_sidecar(root: str, split: str, video: str) -> dict[str, np.ndarray]:
    """The 3D sidecar of one video (T frames, P people, 17 joints).

    Keys: joints_world, joints_camera float64 [T, P, 17, 3] (metres; world Y up, ground Y = 0;
    camera x right, y down, z forward); joints_2d float64 [T, P, 17, 2] pixels of every joint
    (ears and hidden ones too); visible bool [T, P, 17]; annotated bool [T, P] (person written
    to the JSON); intrinsics [3, 3] of the first frame, intrinsics_per_frame [T, 3, 3] (they
    differ when the camera zooms); extrinsics [T, 3, 4] world -> camera [R | t]; track_ids
    [P]; image_ids [T]; image_size (width, height); fps.

    The conditions each frame and joint was rendered under (``SyntheticConfig``'s hard
    conditions; ``eval.conditions`` breaks scores down by them):

      cond_speed float32 [T, P, 17]: image speed in head sizes per frame (``joint_speed``).
      cond_occlusion int8 [T, P, 17]: what hides the joint, ``scene.OCCLUSION_CODES`` (0
        visible, 1 own body, 2 another person, 3 an object, 4 out of view).
      cond_blurred bool [T]: a long-exposure frame; cond_exposure float32 [T] its exposure in
        frame intervals (0: sharp); cond_subframes int [T] renders averaged;
        cond_blur_px float32 [T, P, 17] each joint's image path over the exposure.
      cond_defocus float32 [T]: defocus disk radius in pixels (0: in focus).
      cond_zoom float32 [T]: focal length factor; cond_camera_moves [k] str: "pan", "zoom",
        "shake" when the video has them.
      cond_source_quality: quality of the low-bitrate encode (0: none).
      cond_roles [P] str: "group" or "passerby"; cond_activities [P] str: the person's fast
        activity or "".
    """
    path = os.path.join(root, "annotations", split, f"{video}_3d.npz")
    if not storage.isfile(path):
        raise FileNotFoundError(f"3D sidecar not found: {path}")
    source = io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path
    with np.load(source, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _render_task(task: tuple[dict, str, int, str]) -> VideoRecord:
    cfg, split, index, root = task
    return render_video(SyntheticConfig.from_dict(cfg), split, index, root)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


# ----------------------------------------------------------------------------- data set


def _read_info(root: str) -> dict | None:
    path = os.path.join(root, "info.json")
    if not storage.isfile(path):
        return None
    try:
        info = json.loads(storage.read_text(path))
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and info.get("generator") == _GENERATOR else None


def matches(root: str, cfg: SyntheticConfig) -> bool:
    """Whether ``root`` holds the complete data set of ``cfg`` from this generator version."""
    info = _read_info(root)
    return (
        info is not None
        and info.get("version") == GENERATOR_VERSION
        and _stored_config(info) == cfg
        and all(storage.isdir(os.path.join(root, "annotations", s)) for s in SPLITS)
    )


def _stored_config(info: dict) -> SyntheticConfig | None:
    """The config an ``info.json`` records; a field it predates takes its default (a field
    added with a default that keeps the files as they were, e.g. ``label_occluded``)."""
    try:
        return SyntheticConfig.from_dict(info.get("config") or {})
    except (TypeError, ValueError):
        return None


def preset_name(cfg: SyntheticConfig) -> str | None:
    """The preset ``cfg`` equals, if any."""
    return next((name for name, p in PRESETS.items() if p == cfg), None)


def generate(
    root: str,
    config: SyntheticConfig | str = "default",
    *,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> str:
    """Makes sure ``root`` holds the synthetic data set of ``config``; returns ``root``.

    Returns at once when ``root/info.json`` records the same generator version and config
    (unless ``force``). Otherwise everything is generated into a temporary sibling directory
    that then replaces ``root``; a lock file ``.<root name>.lock`` beside it makes concurrent
    callers wait for one another. A non-empty ``root`` that is not a synthetic data set is
    never overwritten (ValueError).

    Args:
      root: output directory.
      config: a ``SyntheticConfig`` or a preset name (``tiny``, ``default``, ``large``).
      workers: processes rendering videos in parallel (1 = in this process); None picks 2,
        or 1 for a job so small that starting processes would cost more than it saves. The
        files do not depend on it.
      progress: show a tqdm progress bar.
      force: regenerate even when ``root`` matches.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    if not isinstance(cfg, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig or a preset name, got {type(cfg)}")
    root = storage.abspath(root)
    if workers is None:
        frames = (cfg.num_train_videos + cfg.num_val_videos) * cfg.max_frames
        workers = 1 if frames * cfg.width * cfg.height < 100 * 320 * 240 else 2
    if not force and matches(root, cfg):
        return root
    if storage.is_remote(root):
        return _generate_remote(root, cfg, workers=workers, progress=progress)
    parent, name = os.path.dirname(root), os.path.basename(root)
    os.makedirs(parent, exist_ok=True)
    # Concurrent callers (e.g. parallel test workers) wait here and then find the data ready.
    with open(os.path.join(parent, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Leftovers of a generation killed midway (holding the lock, nobody else writes).
        for kind in ("partial", "old"):
            for leftover in glob.glob(os.path.join(parent, f".{glob.escape(name)}.{kind}-*")):
                shutil.rmtree(leftover, ignore_errors=True)
        if not force and matches(root, cfg):
            return root
        if os.path.exists(root):
            if not os.path.isdir(root):
                raise ValueError(f"{root}: exists and is not a directory")
            if os.listdir(root) and _read_info(root) is None:
                raise ValueError(
                    f"{root}: not empty and has no synthetic data set info.json; refusing to "
                    "overwrite it (choose another --root or empty it)"
                )
        tmp = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            info = _generate_into(tmp, cfg, workers=workers, progress=progress)
            fileio.write_json(os.path.join(tmp, "info.json"), info, indent=1)
            old = None
            if os.path.exists(root):
                old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
                os.rename(root, old)
            os.rename(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def _generate_remote(root: str, cfg: SyntheticConfig, *, workers: int, progress: bool) -> str:
    """``generate`` into a bucket (``gs://``, ``s3://``): the data set is made in a local
    temporary folder, then uploaded file by file with ``info.json`` last, so that ``matches``
    sees it only once complete (an interrupted upload is made and uploaded again)."""
    if storage.listdir_or_empty(root) and _read_info(root) is None:
        raise ValueError(
            f"{root}: not empty and has no synthetic data set info.json; refusing to "
            "overwrite it (choose another --root or empty it)"
        )
    with tempfile.TemporaryDirectory(prefix="posewarper-synthetic-") as tmp:
        local = os.path.join(tmp, "data")
        info = _generate_into(local, cfg, workers=workers, progress=progress)
        fileio.write_json(os.path.join(local, "info.json"), info, indent=1)
        storage.remove(os.path.join(root, "info.json"))  # incomplete until uploaded again
        storage.upload_tree(local, root, last=("info.json",))
    return root


def _generate_into(root: str, cfg: SyntheticConfig, *, workers: int, progress: bool) -> dict:
    """Renders every video into ``root`` and writes the annotations; returns the info dict."""
    tasks = [
        (cfg.to_dict(), split, i, root)
        for split in SPLITS
        for i in range(cfg.num_train_videos if split == "train" else cfg.num_val_videos)
    ]
    for split in SPLITS:
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="synthetic videos", unit="video")
    records: list[VideoRecord] = []
    try:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                records.append(_render_task(task))
                if bar is not None:
                    bar.update()
        else:
            # "spawn": the parent may run JAX, whose threads do not survive fork().
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
                for record in pool.imap_unordered(_render_task, tasks):
                    records.append(record)
                    if bar is not None:
                        bar.update()
    finally:
        if bar is not None:
            bar.close()
    records.sort(key=lambda r: (_SPLIT_CODE[r.split], r.index))

    counts = {}
    for split in SPLITS:
        ann_dir = os.path.join(root, "annotations", split)
        split_records = [r for r in records if r.split == split]
        videos = [to_video(r, cfg, ann_dir) for r in split_records]
        if videos:
            posetrack18.write_posetrack18(VideoDataset(videos, "posetrack18", root), ann_dir)
        for r in split_records:
            _save_sidecar(r, cfg, ann_dir)
        counts[split] = {
            "videos": len(videos),
            "frames": sum(v.nframes for v in videos),
            "labeled_frames": sum(f.is_labeled for v in videos for f in v.frames),
            "person_annotations": sum(len(f.people) for v in videos for f in v.frames),
        }
    return {
        "generator": _GENERATOR,
        "version": GENERATOR_VERSION,
        "preset": preset_name(cfg),
        "config": cfg.to_dict(),
        "splits": counts,
    }


def load_split(root: str, split: str, *, check_images: bool = False) -> VideoDataset:
    """Reads one split of a generated data set with the PoseTrack18 reader."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    return posetrack18.load_posetrack18(
        os.path.join(root, "annotations", split), root, check_images=check_images
    )


def default_root(preset: str = "default") -> str:
    """Where a preset is kept unless told otherwise: ``$POSEWARPER_SYNTHETIC_ROOT/<preset>``, or
    ``~/.cache/posewarper_jax/synthetic/<preset>``."""
    base = os.environ.get("POSEWARPER_SYNTHETIC_ROOT") or os.path.join(
        os.path.expanduser("~"), ".cache", "posewarper_jax", "synthetic"
    )
    return os.path.join(base, preset)


# ----------------------------------------------------------------------------- preview


def contact_sheet(root: str, split: str = "val", num: int = 8, columns: int = 4) -> np.ndarray:
    """A grid of frames read back from the written JSON with their labels drawn: uint8 BGR.

    Frames are spread over the split's videos; labeled joints are dots (left side red, right
    side blue, centre green), limbs lines, person boxes white and head boxes yellow.
    """
    ds = load_split(root, split)
    frames = [(v, f) for v in ds.videos for f in v.frames if f.is_labeled]
    if not frames:
        raise ValueError(f"{root}: split {split!r} has no labeled frames")
    picks = [frames[i] for i in np.linspace(0, len(frames) - 1, num).round().astype(int)]
    tiles = []
    for video, frame in picks:
        img = cv2.imread(frame.path)
        if img is None:
            raise FileNotFoundError(f"cannot read image {frame.path}")
        for person in frame.people:
            k = person.keypoints
            x, y, w, h = person.bbox
            cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), (255, 255, 255), 1)
            if person.head_bbox is not None:
                x, y, w, h = person.head_bbox
                cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), (0, 255, 255), 1)
            for a, b in SKELETON:
                if k[a, 2] > 0 and k[b, 2] > 0:
                    pa, pb = (
                        tuple(np.round(k[a, :2]).astype(int)),
                        tuple(np.round(k[b, :2]).astype(int)),
                    )
                    cv2.line(img, pa, pb, (0, 255, 0), 1, cv2.LINE_AA)
            for j in range(NUM_JOINTS):
                if k[j, 2] > 0:
                    color = (0, 255, 0) if j < 3 else ((0, 0, 255) if j % 2 else (255, 0, 0))
                    cv2.circle(img, tuple(np.round(k[j, :2]).astype(int)), 2, color, -1)
        cv2.putText(img, f"{video.name} #{frame.index}", (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
        tiles.append(img)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + columns], 1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, 0)
