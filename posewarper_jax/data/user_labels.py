"""Labels of one's own video: the empty annotation files to fill, and reading them back.

``label_templates`` writes what an annotator fills for the frames chosen to label (every
k-th, ``frames_to_label``): the same frames in two forms, with the 17-joint skeleton and the
PoseTrack18 joint names (``types.JOINT_NAMES``):

* COCO keypoints: ``images`` (one per frame to label, ``file_name`` the extracted frame,
  ``id`` = frame index + 1), no ``annotations``, one ``person`` category with ``keypoints``
  and ``skeleton``. CVAT ("COCO Keypoints 1.0"), Label Studio and hand editing read it.
* PoseTrack18: every frame of the video in ``images`` (``is_labeled`` true on the frames to
  label), no ``annotations``.

``load_labels`` reads a filled file back for a ``video_frames.FrameSource``, in any of these
forms: COCO keypoints, PoseTrack18, and CVAT's "COCO Keypoints 1.0" export (track ids in each
annotation's ``attributes.track_id``, frames named ``frame_000014.jpg``):

* Frames. An image's frame is the file of a frame directory with the same name, else the last
  number of its file name read as the 0-based frame index (``000014.jpg``, ``frame_000014.jpg``
  -> 14). COCO: every listed image is a labeled frame (one without annotations holds nobody).
  PoseTrack18: the images with ``is_labeled`` (without the flag: those with annotations).
* Joints. The category's ``keypoints`` names map the file's joints to the 17 PoseTrack18
  slots: PoseTrack18 names (``neck`` = ``head_bottom``) or COCO's 17 names (the eyes are
  dropped; head_bottom and head_top stay unlabeled). Exactly 17 joints. Files whose joints are
  unnamed or named otherwise (CVAT numbers a new skeleton's points 1, 2, ...) are read with
  ``joint_order="posetrack18"``: the 17 joints in ``JOINT_NAMES`` order. A joint is labeled
  when ``v > 0`` (COCO, CVAT) or when any of (x, y, v) is non-zero (PoseTrack18, poseval's
  rule).
* People. ``track_id`` (PoseTrack18) or ``attributes.track_id`` (CVAT); a file without any
  track id gives every labeled person its own track (people are then not linked across
  labeled frames); a file where only some people have one is an error. Box: ``bbox`` when it
  has a positive size, else the labeled joints' box enlarged 1.3x; ``bbox_head`` is kept.
  People without labeled joints are dropped.

Errors (``formats.AnnotationError``, a ``ValueError``) name the file, the record and what is
wrong: a frame the video does not have, a joint count other than 17, joint names that do not
map, a track id twice on one frame, no labeled person at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from posewarper_jax.data.coco import COCO_JOINT_NAMES
from posewarper_jax.data.formats import (
    AnnotationError,
    _box,
    _flag,
    _get,
    _image_record,
    _integer,
    _records,
    box_from_keypoints,
    person_category,
    read_json,
)
from posewarper_jax.data.types import JOINT_NAMES, NUM_JOINTS, Frame, Person, Video, VideoDataset
from posewarper_jax.data.video_frames import FrameSource, frame_number

__all__ = [
    "JOINT_ORDERS",
    "frames_to_label",
    "label_templates",
    "load_labels",
]

JOINT_ORDERS = ("names", "posetrack18")
_ALIASES = {"neck": "head_bottom"}
_COCO_ONLY = {"left_eye", "right_eye"}


def frames_to_label(nframes: int, every: int, first: int = 0) -> list[int]:
    """Frames ``first, first + every, ...`` below ``nframes``."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    if not 0 <= first < max(nframes, 1):
        raise ValueError(f"first={first} is outside the video's frames 0..{nframes - 1}")
    return list(range(first, nframes, every))


def label_templates(
    source: FrameSource, frames: Sequence[int], image_name: str = "{index:06d}.jpg"
) -> tuple[dict, dict]:
    """(COCO keypoints, PoseTrack18) annotation files to fill for ``frames`` of ``source``.

    Args:
      source: the video.
      frames: the frames to label (0-based).
      image_name: the file name of frame ``index`` (as the frames were extracted).
    """
    names = {i: image_name.format(index=i) for i in range(source.nframes)}
    coco = {
        "info": {
            "description": f"frames {list(frames)} of {source.name} to label",
            "video": os.path.basename(source.path),
            "nframes": source.nframes,
        },
        "images": [
            {"id": i + 1, "file_name": names[i], "width": source.width, "height": source.height}
            for i in frames
        ],
        "annotations": [],
        "categories": [person_category()],
    }
    wanted = set(frames)
    posetrack = {
        "images": [
            {
                "id": i + 1,
                "frame_id": i + 1,
                "file_name": f"{source.name}/{names[i]}",
                "vid_id": source.name,
                "nframes": source.nframes,
                "is_labeled": i in wanted,
            }
            for i in range(source.nframes)
        ],
        "annotations": [],
        "categories": [person_category()],
    }
    return coco, posetrack


def _slots(category: dict, where: str, joint_order: str) -> np.ndarray:
    """File joint k -> JOINT_NAMES slot (-1: dropped)."""
    names = category.get("keypoints")
    if joint_order == "posetrack18":
        count = len(names) if isinstance(names, list) else NUM_JOINTS
        if count != NUM_JOINTS:
            raise AnnotationError(
                f"{where}: {count} joints in 'keypoints', expected {NUM_JOINTS} (PoseTrack18: "
                f"{', '.join(JOINT_NAMES)})"
            )
        return np.arange(NUM_JOINTS)
    if not isinstance(names, list) or not names:
        raise AnnotationError(
            f"{where}: no joint names ('keypoints'); name the {NUM_JOINTS} joints with the "
            "PoseTrack18 names, or pass --joint-order posetrack18 to take them in that order"
        )
    if len(names) != NUM_JOINTS:
        raise AnnotationError(
            f"{where}: {len(names)} joints in 'keypoints', expected {NUM_JOINTS} (PoseTrack18: "
            f"{', '.join(JOINT_NAMES)})"
        )
    slots = []
    for name in names:
        key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
        if key in JOINT_NAMES:
            slots.append(JOINT_NAMES.index(key))
        elif key in _COCO_ONLY and set(map(str, names)) <= set(COCO_JOINT_NAMES):
            slots.append(-1)
        else:
            raise AnnotationError(
                f"{where}: joint name {name!r} maps to no PoseTrack18 joint (known: "
                f"{', '.join(JOINT_NAMES)}; or COCO's 17 names); rename the joints or pass "
                "--joint-order posetrack18 to take them in PoseTrack18 order"
            )
    used = [s for s in slots if s >= 0]
    if len(set(used)) != len(used):
        raise AnnotationError(f"{where}: a joint appears twice in 'keypoints'")
    return np.asarray(slots, np.int64)


def _keypoints(values, slots: np.ndarray, where: str, rule: str) -> np.ndarray:
    out = np.zeros((NUM_JOINTS, 3), np.float32)
    if isinstance(values, list) and not values:
        return out
    if not isinstance(values, list) or len(values) != 3 * len(slots):
        found = len(values) if isinstance(values, list) else type(values).__name__
        raise AnnotationError(
            f"{where}: 'keypoints' holds {found} numbers, expected {3 * len(slots)} "
            f"({len(slots)} joints x (x, y, v))"
        )
    try:
        array = np.asarray(values, np.float64).reshape(len(slots), 3)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: 'keypoints' must hold numbers only") from None
    if not np.all(np.isfinite(array)):
        raise AnnotationError(f"{where}: 'keypoints' holds a non-finite number")
    labeled = np.any(array != 0, axis=1) if rule == "posetrack" else array[:, 2] > 0
    keep = labeled & (slots >= 0)
    out[slots[keep], :2] = array[keep, :2]
    out[slots[keep], 2] = 1.0
    return out


def _track_id(annotation: dict, where: str) -> int | None:
    value = annotation.get("track_id")
    attributes = annotation.get("attributes")
    if value is None and isinstance(attributes, dict):
        value = attributes.get("track_id")
    if value is None:
        return None
    track = _integer(value, where, "track_id")
    if track < 0:
        raise AnnotationError(f"{where}: track_id {track} must be >= 0")
    return track


def _frame_of(name: str, source: FrameSource, by_file: dict, where: str, path: str) -> int:
    base = os.path.basename(name)
    if base in by_file:
        return by_file[base]
    number = frame_number(base)
    if number is None:
        raise AnnotationError(f"{where}: cannot tell which frame {name!r} is (no number in it)")
    if not 0 <= number < source.nframes:
        raise AnnotationError(
            f"{where}: {name!r} is frame {number}, but {source.path} has {source.nframes} "
            f"frames (0..{source.nframes - 1}); are these labels for another video?"
        )
    return number


def load_labels(
    path: str,
    source: FrameSource,
    *,
    frame_paths: Sequence[str] | None = None,
    root: str | None = None,
    joint_order: str = "names",
    boxes_only: bool = False,
) -> VideoDataset:
    """Reads the labels of ``source``'s frames (module docstring) as a one-video data set.

    Args:
      path: the JSON file (COCO keypoints, PoseTrack18 or CVAT's COCO Keypoints 1.0).
      source: the video they label.
      frame_paths: the image file of every frame (default ``source.files``, or the file
        names ``<index>.png`` under ``root`` for a video file).
      root: the data set's root (default: the frames' folder's parent).
      joint_order: "names" (map joints by the category's names) or "posetrack18" (take the
        17 joints in PoseTrack18 order).
      boxes_only: read a file of people boxes (e.g. the ground truth of every frame, for
        ``propagate --boxes``): people without labeled joints are kept, and need a box.

    Returns:
      A ``VideoDataset`` (fmt "posetrack18") with one video named ``source.name``: every
      frame (``image_id`` = index + 1), the labeled ones with ``is_labeled`` and their people.

    Raises:
      formats.AnnotationError: see the module docstring.
    """
    if joint_order not in JOINT_ORDERS:
        raise ValueError(f"joint_order must be one of {JOINT_ORDERS}, got {joint_order!r}")
    if not os.path.isfile(path):
        raise AnnotationError(f"{path}: no such labels file")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(
            f"{path}: not a COCO keypoints or PoseTrack18 file (expected an object with "
            "'images', 'annotations' and 'categories')"
        )
    images = _records(data["images"], path, "images")
    annotations = _records(data.get("annotations"), path, "annotations")
    posetrack = any(
        isinstance(im, dict) and any(k in im for k in ("vid_id", "nframes", "frame_id"))
        for im in images
    )
    rule = "posetrack" if posetrack else "coco"
    slots_by_category: dict[int, np.ndarray] = {}
    for c, category in enumerate(_records(data.get("categories"), path, "categories")):
        cwhere = f"{path}: categories[{c}]"
        if not isinstance(category, dict):
            raise AnnotationError(f"{cwhere}: expected an object")
        if "keypoints" not in category and joint_order == "names":
            continue
        cid = _integer(_get(category, "id", cwhere), cwhere, "id")
        slots_by_category[cid] = _slots(category, cwhere, joint_order)
    if not slots_by_category:
        if joint_order == "names":
            raise AnnotationError(
                f"{path}: no category gives joint names ('keypoints'); name the {NUM_JOINTS} "
                "joints with the PoseTrack18 names, or pass --joint-order posetrack18"
            )
        slots_by_category[-1] = np.arange(NUM_JOINTS)

    by_file = {os.path.basename(f): i for i, f in enumerate(source.files)}
    frame_of_image: dict[int, int] = {}
    labeled: set[int] = set()
    for i, image in enumerate(images):
        where = f"{path}: images[{i}]"
        name, image_id = _image_record(image, where, frame_of_image)
        frame = _frame_of(name, source, by_file, where, path)
        frame_of_image[image_id] = frame
        flag = image.get("is_labeled")
        if (not posetrack) or (flag is not None and _flag(flag)):
            labeled.add(frame)

    people: dict[int, list[Person]] = {}
    tracks_given: list[bool] = []
    for j, annotation in enumerate(annotations):
        where = f"{path}: annotations[{j}]"
        if not isinstance(annotation, dict):
            raise AnnotationError(f"{where}: expected an object")
        image_id = _integer(_get(annotation, "image_id", where), where, "image_id")
        if image_id not in frame_of_image:
            raise AnnotationError(f"{where}: image_id {image_id} matches no entry of 'images'")
        cid = annotation.get("category_id")
        if -1 in slots_by_category:
            slots = slots_by_category[-1]
        elif cid is None and len(slots_by_category) == 1:
            slots = next(iter(slots_by_category.values()))
        else:
            cid = _integer(cid, where, "category_id")
            if cid not in slots_by_category:
                continue  # another category (e.g. CVAT's point labels)
            slots = slots_by_category[cid]
        kpts = _keypoints(_get(annotation, "keypoints", where), slots, where, rule)
        frame = frame_of_image[image_id]
        if not np.any(kpts[:, 2] > 0) and not boxes_only:
            continue
        track = _track_id(annotation, where)
        tracks_given.append(track is not None)
        bbox = _box(annotation.get("bbox"), where, "bbox")
        if bbox is None or not (bbox[2] > 0 and bbox[3] > 0) or not np.all(np.isfinite(bbox)):
            bbox = box_from_keypoints(kpts)
        if bbox is None:
            raise AnnotationError(f"{where}: a person without a box (bbox) or labeled joints")
        people.setdefault(frame, []).append(
            Person(
                keypoints=kpts,
                bbox=np.asarray(bbox, np.float32),
                head_bbox=_box(annotation.get("bbox_head"), where, "bbox_head"),
                track_id=-1 if track is None else track,
                annotation_id=j,
            )
        )
    if not people:
        raise AnnotationError(
            f"{path}: no labeled person (no annotation with a labeled joint on the "
            f"{len(labeled)} labeled frame(s)); label at least one person first"
        )
    if any(tracks_given) and not all(tracks_given):
        missing = tracks_given.index(False)
        raise AnnotationError(
            f"{path}: some people have a track_id and some not (the {missing + 1}th labeled "
            "person has none); give every person a track id, or none"
        )
    if not any(tracks_given):
        next_id = 0
        for frame in sorted(people):
            for person in people[frame]:
                person.track_id = next_id
                next_id += 1
    for frame, group in people.items():
        ids = [p.track_id for p in group]
        if len(set(ids)) != len(ids):
            dup = sorted({t for t in ids if ids.count(t) > 1})
            raise AnnotationError(
                f"{path}: frame {frame} holds track id(s) {dup} twice; each person of a frame "
                "needs its own track id"
            )
        labeled.add(frame)

    if frame_paths is None:
        if source.kind == "frames":
            frame_paths = list(source.files)
        else:
            base = root or os.path.dirname(os.path.abspath(source.path))
            frame_paths = [
                os.path.join(base, source.name, f"{i:06d}.png") for i in range(source.nframes)
            ]
    if len(frame_paths) != source.nframes:
        raise ValueError(f"{len(frame_paths)} frame paths for {source.nframes} frames")
    if root is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(frame_paths[0])))
    frames = [
        Frame(os.path.abspath(frame_paths[i]), i, i + 1, i in labeled, list(people.get(i, [])))
        for i in range(source.nframes)
    ]
    video = Video(source.name, frames, os.path.abspath(path), {"vid_id": source.name})
    return VideoDataset([video], "posetrack18", os.path.abspath(root))
