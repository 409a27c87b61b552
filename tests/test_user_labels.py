"""Labeling one's own video: frame sources, the ``label`` command, and reading filled label
files (COCO keypoints, PoseTrack18, CVAT's COCO Keypoints 1.0 export) with their errors."""

from __future__ import annotations

import copy
import json
import os

import cv2
import numpy as np
import pytest

from posewarper_jax import label
from posewarper_jax.data import user_labels, video_frames
from posewarper_jax.data.coco import COCO_JOINT_NAMES
from posewarper_jax.data.formats import AnnotationError
from posewarper_jax.data.types import JOINT_NAMES, NUM_JOINTS

H, W, N = 48, 64, 16


def write_video(path: str, n: int = N, size=(H, W)) -> str:
    """An mp4 (mp4v) of ``n`` frames whose brightness encodes the frame index."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25, (size[1], size[0]))
    assert writer.isOpened()
    for t in range(n):
        frame = np.full((*size, 3), 8 * t + 4, np.uint8)
        writer.write(frame)
    writer.release()
    return path


def write_frames(folder: str, n: int = N, start: int = 1) -> str:
    os.makedirs(folder, exist_ok=True)
    for t in range(n):
        cv2.imwrite(
            os.path.join(folder, f"{t + start:08d}.png"), np.full((H, W, 3), 8 * t, np.uint8)
        )
    return folder


def test_frame_sources(tmp_path):
    video = video_frames.open_frames(write_video(str(tmp_path / "clip.mp4")))
    assert (video.kind, video.name, video.nframes, video.width, video.height) == (
        "file", "clip", N, W, H)  # fmt: skip
    # Frames come out in order (brightness 8 t + 4, up to codec error).
    means = [float(f.mean()) for _, f in video_frames.iter_frames(video)]
    assert np.all(np.diff(means) > 4)
    np.testing.assert_allclose(means, 8 * np.arange(N) + 4, atol=6)
    paths = video_frames.extract(video, str(tmp_path / "x"), [3, 0])
    assert [os.path.basename(p) for p in paths] == ["000000.png", "000003.png"]
    assert abs(float(cv2.imread(paths[1]).mean()) - 28) < 6

    folder = video_frames.open_frames(write_frames(str(tmp_path / "f")))
    assert (folder.kind, folder.name, folder.nframes) == ("frames", "f", N)
    assert os.path.basename(folder.files[0]) == "00000001.png"  # ordered by number
    assert float(video_frames.read_frame(folder, 5).mean()) == 40


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.mp4", "no such video file"),
        (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "unsupported video"),
        (lambda p: (p / "broken.mp4").write_text("not a video") and p / "broken.mp4",
         "cannot be read as a video"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no frame images"),
    ],
)  # fmt: skip
def test_bad_video_is_named(tmp_path, make, message):
    path = str(make(tmp_path))
    with pytest.raises(video_frames.VideoError, match=message) as e:
        video_frames.open_frames(path)
    assert path in str(e.value)


def test_label_command_on_a_video_and_a_frame_directory(tmp_path, capsys):
    clip = write_video(str(tmp_path / "clip.mp4"))
    out = tmp_path / "job"
    assert label.main(["--video", clip, "--every", "7", "--out", str(out)]) == 0
    assert sorted(os.listdir(out / "frames")) == ["000000.jpg", "000007.jpg", "000014.jpg"]
    coco = json.load(open(out / "labels_coco.json"))
    assert [im["file_name"] for im in coco["images"]] == ["000000.jpg", "000007.jpg", "000014.jpg"]
    assert coco["categories"][0]["keypoints"] == list(JOINT_NAMES)
    assert coco["annotations"] == []
    pt = json.load(open(out / "labels_posetrack18.json"))
    assert len(pt["images"]) == N
    assert [im["is_labeled"] for im in pt["images"]].count(True) == 3
    assert "16 frames; 3 to label" in capsys.readouterr().out
    # Empty templates read back: nobody labeled yet.
    source = video_frames.open_frames(clip)
    for name in ("labels_coco.json", "labels_posetrack18.json"):
        with pytest.raises(AnnotationError, match="no labeled person"):
            user_labels.load_labels(str(out / name), source)

    frames = write_frames(str(tmp_path / "frames_in"))
    assert label.main(["--video", frames, "--every", "5", "--first", "2", "--out", str(out)]) == 0
    assert sorted(os.listdir(out / "frames")) == ["000002.jpg", "000007.jpg", "000012.jpg"]


def test_label_command_errors_leave_nothing(tmp_path, capsys):
    out = tmp_path / "job"
    code = label.main(["--video", str(tmp_path / "nope.mp4"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "nope.mp4" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and os.listdir(tmp_path) == []
    clip = write_video(str(tmp_path / "clip.mp4"))
    assert label.main(["--video", clip, "--every", "0", "--out", str(out)]) == 2
    assert "every must be a positive integer" in capsys.readouterr().err
    assert not out.exists()


def _pose(cx, cy):
    kp = np.zeros((NUM_JOINTS, 3))
    kp[:, 0] = cx + np.arange(NUM_JOINTS)
    kp[:, 1] = cy + np.arange(NUM_JOINTS) * 0.5
    kp[:, 2] = 2
    kp[[3, 4]] = 0
    return kp


def _flat(cx):
    return _pose(cx, 5).reshape(-1).tolist()


def _filled_coco(tmp_path):
    clip = write_video(str(tmp_path / "clip.mp4"))
    label.main(["--video", clip, "--every", "7", "--out", str(tmp_path / "job")])
    coco = json.load(open(tmp_path / "job" / "labels_coco.json"))
    for k, image in enumerate(coco["images"]):
        for track, cx in ((3, 10.0), (5, 30.0)):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image["id"], "category_id": 1,
                "keypoints": _pose(cx + k, 5.0).reshape(-1).tolist(), "track_id": track,
                "bbox": [cx - 2, 2, 20, 14],
            })  # fmt: skip
    return clip, coco


def _write(tmp_path, data, name="filled.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_read_filled_coco_and_posetrack18(tmp_path):
    clip, coco = _filled_coco(tmp_path)
    source = video_frames.open_frames(clip)
    ds = user_labels.load_labels(_write(tmp_path, coco), source)
    (video,) = ds.videos
    assert video.name == "clip" and video.nframes == N
    assert [f.index for f in video.frames if f.is_labeled] == [0, 7, 14]
    people = video.frames[7].people
    assert [p.track_id for p in people] == [3, 5]
    expect = _pose(11.0, 5.0)
    np.testing.assert_allclose(
        people[0].keypoints[:, :2][expect[:, 2] > 0], expect[expect[:, 2] > 0, :2]
    )
    assert people[0].keypoints[3, 2] == 0 and people[0].keypoints[0, 2] == 1
    np.testing.assert_allclose(people[1].bbox, [28, 2, 20, 14])

    # The same people in the PoseTrack18 template.
    pt = json.load(open(tmp_path / "job" / "labels_posetrack18.json"))
    for a in coco["annotations"]:
        a = dict(a, image_id=a["image_id"])
        a["keypoints"] = [
            v if (i % 3 != 2) else (1 if v else 0) for i, v in enumerate(a["keypoints"])
        ]
        pt["annotations"].append(a)
    ds18 = user_labels.load_labels(_write(tmp_path, pt, "pt.json"), source)
    for f, g in zip(ds.videos[0].frames, ds18.videos[0].frames):
        assert f.is_labeled == g.is_labeled
        for p, q in zip(f.people, g.people):
            np.testing.assert_array_equal(p.keypoints, q.keypoints)


def test_read_cvat_coco_keypoints_export(tmp_path):
    """CVAT's export: frame_%06d names, ids from 1, point labels numbered 1..17 in their own
    categories, the skeleton category, track ids in ``attributes``, v in 0/1/2."""
    clip = write_video(str(tmp_path / "clip.mp4"))
    source = video_frames.open_frames(clip)
    cats = [{"id": k + 2, "name": str(k + 1), "supercategory": "person"} for k in range(17)]
    numbered = [str(k + 1) for k in range(17)]
    cats.insert(0, {"id": 1, "name": "person", "keypoints": numbered, "skeleton": [[1, 2]]})
    data = {
        "licenses": [], "info": {}, "categories": cats,
        "images": [{"id": 1, "file_name": "frame_000003.jpg", "width": W, "height": H},
                   {"id": 2, "file_name": "frame_000010.jpg", "width": W, "height": H}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "keypoints": _flat(10),
             "num_keypoints": 15, "bbox": [8, 3, 22, 14], "iscrowd": 0, "area": 0,
             "attributes": {"occluded": False, "track_id": 0, "keyframe": True}},
            {"id": 2, "image_id": 2, "category_id": 1, "keypoints": _flat(14),
             "num_keypoints": 15, "bbox": [12, 3, 22, 14], "iscrowd": 0, "area": 0,
             "attributes": {"occluded": False, "track_id": 0, "keyframe": True}},
        ],
    }  # fmt: skip
    path = _write(tmp_path, data)
    with pytest.raises(AnnotationError, match=r"categories\[0\]: joint name '1' maps to no"):
        user_labels.load_labels(path, source)
    ds = user_labels.load_labels(path, source, joint_order="posetrack18")
    video = ds.videos[0]
    assert [f.index for f in video.frames if f.is_labeled] == [3, 10]
    assert video.frames[10].people[0].track_id == 0
    np.testing.assert_allclose(video.frames[10].people[0].keypoints[0, :2], [14, 5])
    # COCO's own 17 names: eyes dropped, the rest by name.
    data["categories"][0]["keypoints"] = list(COCO_JOINT_NAMES)
    ds = user_labels.load_labels(_write(tmp_path, data), source)
    kp = ds.videos[0].frames[3].people[0].keypoints
    assert kp[JOINT_NAMES.index("head_bottom"), 2] == 0  # COCO's left_eye slot is dropped
    np.testing.assert_allclose(kp[JOINT_NAMES.index("left_shoulder"), :2], [15, 7.5])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["images"][0].update(file_name="000099.jpg"),
         r"'000099.jpg' is frame 99, but .*clip.mp4 has 16 frames"),
        (lambda d: d["categories"][0].update(keypoints=list(JOINT_NAMES)[:16]),
         r"categories\[0\]: 16 joints in 'keypoints', expected 17"),
        (lambda d: d["categories"][0].pop("keypoints"), "no category gives joint names"),
        (lambda d: d["categories"][0]["keypoints"].__setitem__(5, "shoulder_l"),
         "joint name 'shoulder_l' maps to no PoseTrack18 joint"),
        (lambda d: d.update(annotations=[]), "no labeled person"),
        (lambda d: d["annotations"][1].update(track_id=3),
         r"frame 0 holds track id\(s\) \[3\] twice"),
        (lambda d: d["annotations"][1].pop("track_id"), "some people have a track_id and some not"),
        (lambda d: d["annotations"][0].update(keypoints=[1, 2, 2]), "'keypoints' holds 3 numbers"),
    ],
)  # fmt: skip
def test_bad_labels_name_file_and_fault(tmp_path, mutate, message):
    clip, coco = _filled_coco(tmp_path)
    data = copy.deepcopy(coco)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(AnnotationError, match=message) as e:
        user_labels.load_labels(path, video_frames.open_frames(clip))
    assert str(e.value).startswith(path)


def test_labels_without_track_ids_get_one_each(tmp_path):
    clip, coco = _filled_coco(tmp_path)
    for a in coco["annotations"]:
        a.pop("track_id")
    ds = user_labels.load_labels(_write(tmp_path, coco), video_frames.open_frames(clip))
    ids = [p.track_id for f in ds.videos[0].frames for p in f.people]
    assert ids == list(range(6))
