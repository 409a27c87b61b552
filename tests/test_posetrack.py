"""PoseTrack17/18 and COCO readers and writers, detections, on the hand-made fixtures.

Expected values are written out by hand from the fixture files (tests/fixtures/make_fixtures.py
describes them). Coordinates read from the files are compared exactly; boxes the reader derives
(1.3 x the tight box of the joints) are compared with atol 1e-5 (float32 rounding).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import COCO, COCO_FILE, PT17, PT18

from posewarper_jax.data.annotations import detect_format, load_dataset
from posewarper_jax.data.coco import load_coco_keypoints
from posewarper_jax.data.detections import boxes_for_pair, load_detections
from posewarper_jax.data.formats import AnnotationError, box_from_keypoints
from posewarper_jax.data.posetrack17 import load_posetrack17, write_posetrack17
from posewarper_jax.data.posetrack18 import load_posetrack18, write_posetrack18
from posewarper_jax.data.types import JOINT_NAMES, PT17_TO_PT18

PT18_ANN = os.path.join(PT18, "annotations", "val")
PT18_A = os.path.join(PT18_ANN, "000001_bonn_test.json")
PT18_B = os.path.join(PT18_ANN, "000002_mpii_test.json")
PT17_FILE = os.path.join(PT17, "annotations", "val", "000003_mpii_relpath_5sec_testsub.json")
DETECTIONS = os.path.join(PT18, "detections_val.json")
EARS = [JOINT_NAMES.index("left_ear"), JOINT_NAMES.index("right_ear")]


def canon(dataset, *, with_source: bool = False):
    """A plain, comparable form of a data set (arrays as lists, dtypes checked)."""

    def array(a, shape):
        if a is None:
            return None
        assert a.dtype == np.float32 and a.shape == shape, (a.dtype, a.shape)
        return a.tolist()

    videos = []
    for video in dataset.videos:
        frames = []
        for i, f in enumerate(video.frames):
            assert f.index == i
            people = [
                (
                    array(p.keypoints, (17, 3)),
                    array(p.bbox, (4,)),
                    array(p.head_bbox, (4,)),
                    p.track_id,
                    p.score,
                    p.annotation_id,
                    array(p.keypoint_scores, (17,)),
                )
                for p in f.people
            ]
            regions = [r.tolist() for r in f.ignore_regions]
            frames.append((f.path, f.index, f.image_id, f.is_labeled, people, regions))
        videos.append((video.name, frames, video.extra, video.source if with_source else None))
    return dataset.fmt, dataset.root, dataset.extra, videos


def load_json(path):
    with open(path) as f:
        return json.load(f)


def dump_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


# ------------------------------------------------------------------------------------------------
# PoseTrack18.
# ------------------------------------------------------------------------------------------------


def test_posetrack18_reader_known_values():
    ds = load_posetrack18(PT18_ANN, PT18)
    assert ds.fmt == "posetrack18" and ds.root == PT18
    assert [v.name for v in ds.videos] == ["000001_bonn_test", "000002_mpii_test"]
    a, b = ds.videos
    assert (a.nframes, b.nframes) == (8, 6)
    assert a.extra == {"vid_id": "000001"} and a.source == PT18_A
    # Every frame is present, labeled or not, in order.
    assert [f.is_labeled for f in a.frames] == [True, False] * 4
    assert [f.is_labeled for f in b.frames] == [False, True, True, True, True, False]
    assert a.frames[3].path == os.path.join(PT18, "images/val/000001_bonn_test/000003.jpg")
    assert [f.image_id for f in b.frames] == [10000020000 + i for i in range(6)]
    assert all(not f.people for f in a.frames[1::2])
    assert [len(f.people) for f in b.frames] == [0, 1, 1, 2, 0, 0]  # Frame 4: labeled, empty.
    assert [p.track_id for p in b.frames[3].people] == [3, 5]

    p0, p1 = a.frames[2].people
    assert a.frames[2].image_id == 20000010002
    assert (p0.track_id, p0.annotation_id, p0.score) == (0, 2000001000200, 1.0)
    np.testing.assert_array_equal(p0.keypoints[JOINT_NAMES.index("left_wrist")], [31.25, 22, 1])
    np.testing.assert_array_equal(p0.keypoints[EARS], np.zeros((2, 3)))
    np.testing.assert_array_equal(p0.bbox, [20.25, 2, 20, 36])
    np.testing.assert_array_equal(p0.head_bbox, [21.25, 7, 8, 7])
    assert p0.keypoint_scores is None  # "scores": [] in ground truth.
    assert p0.keypoints.dtype == np.float32 and p0.keypoints.shape == (17, 3)
    # Track 1 on frame 2 has unlabeled ankles.
    np.testing.assert_array_equal(p1.keypoints[[15, 16]], np.zeros((2, 3)))
    assert (p1.keypoints[:15, 2] > 0).sum() == 13
    # v = 0 with coordinates counts as labeled (the official evaluation keeps such joints).
    np.testing.assert_array_equal(a.frames[6].people[0].keypoints[13], [39.25, 30, 1])
    # No "bbox": 1.3 x the tight box of the joints x 46.5..54.5, y 6..38.
    np.testing.assert_allclose(a.frames[6].people[1].bbox, [45.3, 1.2, 10.4, 41.6], atol=1e-5)
    # Ignore regions become [N, 2] polygons; empty lists give none.
    assert len(a.frames[4].ignore_regions) == 1
    np.testing.assert_array_equal(
        a.frames[4].ignore_regions[0], [[1, 2], [10, 2], [10, 12.5], [1, 12.5]]
    )
    assert a.frames[0].ignore_regions == [] and a.frames[1].ignore_regions == []


def test_posetrack18_single_file_and_guessed_root():
    ds = load_dataset(PT18_B)
    assert ds.fmt == "posetrack18" and ds.root == PT18  # Nearest ancestor holding the images.
    full = load_posetrack18(PT18_ANN, PT18)
    assert canon(ds, with_source=True)[3] == canon(full, with_source=True)[3][1:]
    load_posetrack18(PT18_ANN, PT18, check_images=True)  # All fixture images exist.


def test_posetrack18_write_read_round_trip_is_exact(tmp_path):
    ds = load_posetrack18(PT18_ANN, PT18)
    paths = write_posetrack18(ds, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [
        os.path.basename(PT18_A),
        "000002_mpii_test.json",
    ]
    again = load_posetrack18(str(tmp_path), PT18)
    assert canon(again) == canon(ds)
    # Writing the re-read data gives the same bytes.
    paths2 = write_posetrack18(again, str(tmp_path / "again"))
    for p, q in zip(paths, paths2):
        assert open(p).read() == open(q).read()

    # The files follow the official schema.
    data = load_json(paths[0])
    assert data["categories"][0]["keypoints"] == list(JOINT_NAMES)
    image = data["images"][4]
    assert image["file_name"] == "images/val/000001_bonn_test/000004.jpg"
    assert (image["id"], image["frame_id"], image["vid_id"]) == (20000010004, 20000010004, "000001")
    assert (image["nframes"], image["is_labeled"]) == (8, True)
    assert image["ignore_regions_x"] == [[1, 10, 10, 1]]
    assert image["ignore_regions_y"] == [[2, 2, 12.5, 12.5]]
    ann = data["annotations"][0]
    assert ann["image_id"] == 20000010000 and ann["id"] == 2000001000000
    assert len(ann["keypoints"]) == 51 and ann["keypoints"][9:15] == [0] * 6  # Ears.
    assert ann["keypoints"][:3] == [20.25, 4, 1]
    assert ann["bbox_head"] == [19.25, 7, 8, 7] and "scores" not in ann


def test_posetrack18_predictions_round_trip(tmp_path):
    ds = load_posetrack18(PT18_A, PT18)
    rng = np.random.default_rng(0)
    people = [p for f in ds.videos[0].frames for p in f.people]
    for p in people:
        p.keypoint_scores = rng.random(17).astype(np.float32)
        p.score = float(rng.random())  # A float64 box score is written in full.
        p.keypoints[:, :2] += rng.random((17, 2)).astype(np.float32) * (p.keypoints[:, 2:] > 0)
    people[0].annotation_id = -1  # Predictions without ids get image_id * 100 + position.
    (path,) = write_posetrack18(ds, str(tmp_path))
    data = load_json(path)
    ann = data["annotations"][0]
    assert len(ann["scores"]) == 17 and ann["id"] == 20000010000 * 100
    assert ann["score"] == people[0].score
    again = load_posetrack18(path, PT18)
    people_again = [p for f in again.videos[0].frames for p in f.people]
    for p, q in zip(people, people_again):
        np.testing.assert_array_equal(p.keypoints, q.keypoints)
        np.testing.assert_array_equal(p.keypoint_scores, q.keypoint_scores)
        assert p.score == q.score
    assert people_again[0].annotation_id == 20000010000 * 100


# ------------------------------------------------------------------------------------------------
# PoseTrack17.
# ------------------------------------------------------------------------------------------------


def test_posetrack17_reader_known_values():
    ds = load_posetrack17(PT17_FILE, PT17, check_images=True)
    assert ds.fmt == "posetrack17"
    (video,) = ds.videos
    assert video.name == "000003_mpii" and video.nframes == 5
    assert video.frames[0].path.endswith("images/bonn_mpii_test_5sec/000003_mpii/00000001.jpg")
    # poseval's image ids: source 1 (mpii), sequence 000003, 0-based frame index.
    assert [f.image_id for f in video.frames] == [10000030000 + i for i in range(5)]
    # is_labeled from the field, or (frame 5, no field) from the annotations.
    assert [f.is_labeled for f in video.frames] == [False, True, False, True, False]

    a, b = video.frames[1].people
    ids = {name: i for i, name in enumerate(JOINT_NAMES)}
    kp = a.keypoints
    np.testing.assert_array_equal(kp[ids["right_ankle"]], [12, 20, 1])  # PT17 id 0.
    np.testing.assert_array_equal(kp[ids["head_bottom"]], [24, 32, 1])  # id 12 (neck).
    np.testing.assert_array_equal(kp[ids["nose"]], [25, 33, 1])  # id 13.
    np.testing.assert_array_equal(kp[ids["head_top"]], [26, 34, 1])  # id 14.
    # is_visible = 0 points are labeled: ids 3 (left_hip) and 7 (right_elbow).
    np.testing.assert_array_equal(kp[ids["left_hip"]], [15, 23, 1])
    np.testing.assert_array_equal(kp[ids["right_elbow"]], [19, 27, 1])
    np.testing.assert_array_equal(kp[EARS], np.zeros((2, 3)))
    assert (kp[:, 2] > 0).sum() == 15
    np.testing.assert_array_equal(a.head_bbox, [10, 3, 8.5, 9])  # x1 10, y1 3, x2 18.5, y2 12.
    # Person box: tight box x 12..26, y 20..34 scaled 1.3 about its centre (19, 27).
    np.testing.assert_allclose(a.bbox, [9.9, 17.9, 18.2, 18.2], atol=1e-5)
    np.testing.assert_allclose(a.bbox, box_from_keypoints(kp), atol=0)
    assert (a.track_id, a.score, a.keypoint_scores) == (0, 1.0, None)

    # annopoints given as a bare object, track_id not wrapped in a list.
    assert b.track_id == 1 and (b.keypoints[:, 2] > 0).sum() == 6
    np.testing.assert_array_equal(b.keypoints[ids["right_shoulder"]], [56, 18, 1])  # id 8.
    # A person without annopoints: no joints, box = head box.
    c = video.frames[3].people[1]
    assert c.track_id == 2 and not c.keypoints.any()
    np.testing.assert_array_equal(c.bbox, [50, 2, 8, 7])
    # ignore_regions given as a bare object.
    (region,) = video.frames[3].ignore_regions
    np.testing.assert_array_equal(region, [[0, 0], [5, 0], [5, 5]])


def _points(data):
    """Per frame, per person: sorted (id, x, y) of the annolist points."""
    out = []
    for entry in data["annolist"]:
        rects = entry["annorect"]
        frame = []
        for r in rects:
            annopoints = r.get("annopoints") or []
            annopoints = [annopoints] if isinstance(annopoints, dict) else annopoints
            points = annopoints[0]["point"] if annopoints else []
            frame.append(sorted((p["id"][0], p["x"][0], p["y"][0]) for p in points))
        out.append(frame)
    return out


def test_posetrack17_round_trip_through_17_joints(tmp_path):
    ds = load_posetrack17(PT17_FILE, PT17)
    (path,) = write_posetrack17(ds, str(tmp_path))
    assert os.path.basename(path) == os.path.basename(PT17_FILE)  # Pairs with the GT by name.
    again = load_posetrack17(path, PT17)
    assert canon(again) == canon(ds)
    written, original = load_json(path), load_json(PT17_FILE)
    assert _points(written) == _points(original)
    for w, o in zip(written["annolist"], original["annolist"]):
        assert w["image"][0]["name"] == o["image"][0]["name"]
        assert w["imgnum"] == o["imgnum"]
        for rw, ro in zip(w["annorect"], o["annorect"]):
            assert [rw[k] for k in ("x1", "y1", "x2", "y2")] == [
                ro[k] for k in ("x1", "y1", "x2", "y2")
            ]


def test_posetrack17_via_posetrack18_files(tmp_path):
    ds = load_posetrack17(PT17_FILE, PT17)
    write_posetrack18(ds, str(tmp_path / "pt18"))
    as18 = load_posetrack18(str(tmp_path / "pt18"), PT17)
    # PoseTrack17 has no annotation ids: the writer numbers them image_id * 100 + position.
    people = [p for f in as18.videos[0].frames for p in f.people]
    assert [p.annotation_id for p in people] == [
        1000003000100,
        1000003000101,
        1000003000300,
        1000003000301,
    ]
    for p in people:
        p.annotation_id = -1
    # 8-digit, 1-based file names still give 0-based indices; everything else carries over.
    assert canon(as18)[3] == [(n, f, {"vid_id": "000003"}, s) for n, f, _, s in canon(ds)[3]]
    write_posetrack17(as18, str(tmp_path / "pt17"))
    back = load_json(os.path.join(tmp_path, "pt17", os.path.basename(PT17_FILE)))
    assert _points(back) == _points(load_json(PT17_FILE))


def test_pt17_joint_map_is_a_bijection_onto_non_ear_slots():
    assert sorted(PT17_TO_PT18) == sorted(set(range(17)) - set(EARS))


# ------------------------------------------------------------------------------------------------
# COCO and format detection.
# ------------------------------------------------------------------------------------------------


def test_coco_reader_maps_joints_by_name():
    ds = load_coco_keypoints(COCO_FILE, os.path.join(COCO, "val"), check_images=True)
    assert ds.fmt == "coco"
    assert [v.name for v in ds.videos] == ["000000000139", "000000000285"]
    assert all(v.nframes == 1 and v.frames[0].is_labeled for v in ds.videos)
    assert ds.videos[0].extra == {"width": 64, "height": 48}
    (person,) = ds.videos[0].frames[0].people  # The crowd annotation is skipped.
    kp = person.keypoints
    # COCO joint j is at (6 + j, 3 + 2 j). Eyes (1, 2) have no slot; head_bottom/top unlabeled.
    np.testing.assert_array_equal(kp[0], [6, 3, 1])
    np.testing.assert_array_equal(kp[1:3], np.zeros((2, 3)))
    np.testing.assert_array_equal(kp[3], [9, 9, 1])  # left_ear, COCO v = 1: labeled.
    np.testing.assert_array_equal(kp[16], [0, 0, 0])  # right_ankle, v = 0.
    assert (kp[:, 2] > 0).sum() == 11
    np.testing.assert_array_equal(person.bbox, [4, 2, 30, 40])
    assert person.annotation_id == 1 and ds.videos[0].frames[0].image_id == 139


def test_load_dataset_detects_each_format():
    assert detect_format(PT18_ANN) == "posetrack18"
    assert detect_format(PT17_FILE) == "posetrack17"
    assert detect_format(COCO_FILE) == "coco"
    coco = load_dataset(COCO_FILE)
    assert coco.fmt == "coco" and coco.root == os.path.join(COCO, "val")
    pt17 = load_dataset(os.path.dirname(PT17_FILE))
    assert pt17.fmt == "posetrack17" and pt17.root == PT17
    with pytest.raises(ValueError, match="fmt='mpii'"):
        load_dataset(PT18_ANN, fmt="mpii")
    with pytest.raises(AnnotationError, match="detections_val.json: a JSON list"):
        load_dataset(DETECTIONS)


# ------------------------------------------------------------------------------------------------
# Detections.
# ------------------------------------------------------------------------------------------------


def test_detections_threshold_and_matching():
    ds = load_posetrack18(PT18_ANN, PT18)
    det = load_detections(DETECTIONS, ds, score_threshold=0.1)
    counts = [[len(f.people) for f in v.frames] for v in det.videos]
    # Frame A0: 0.9 and 0.3; A1: 0.05 < 0.1 and a category-2 box; B3: one box, one of zero width.
    assert counts == [[2, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]]
    first = det.videos[0].frames[0].people[0]
    np.testing.assert_array_equal(first.bbox, [18, 2, 22, 38])
    assert first.bbox.dtype == np.float32
    assert (first.score, first.annotation_id) == (0.9, 0) and not first.keypoints.any()
    # Frames carry over; the ground truth is untouched.
    assert [f.is_labeled for f in det.videos[0].frames] == [
        f.is_labeled for f in ds.videos[0].frames
    ]
    assert len(ds.videos[0].frames[1].people) == 0
    low = load_detections(DETECTIONS, ds, score_threshold=0.0)
    assert [p.score for p in low.videos[0].frames[1].people] == [0.05]
    assert (
        load_detections(DETECTIONS, ds, score_threshold=0.5).videos[0].frames[0].people[0].score
        == 0.9
    )
    # The reference frame's boxes crop both frames of a pair.
    pair = boxes_for_pair(det, 0, 0, 2)
    assert [p.annotation_id for p in pair] == [0, 1]
    with pytest.raises(IndexError, match="sup_index=8"):
        boxes_for_pair(det, 0, 0, 8)


def test_detections_errors(tmp_path):
    ds = load_posetrack18(PT18_ANN, PT18)
    bad = tmp_path / "other.json"
    dump_json(bad, [{"image_id": 5, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.9}])
    with pytest.raises(AnnotationError, match=r"other.json: none of its 1 records"):
        load_detections(str(bad), ds)
    dump_json(bad, [{"image_id": 20000010000, "category_id": 1, "score": 0.9}])
    with pytest.raises(
        AnnotationError, match=r"other.json: record 0: missing required field 'bbox'"
    ):
        load_detections(str(bad), ds)


# ------------------------------------------------------------------------------------------------
# Errors name the file, the record and the field.
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def pt18_copy(tmp_path):
    root = tmp_path / "pt18"
    shutil.copytree(PT18, root)
    return root, root / "annotations" / "val" / "000001_bonn_test.json"


def test_malformed_json_names_file_and_position(pt18_copy):
    root, path = pt18_copy
    text = path.read_text()
    path.write_text(text[:200])
    with pytest.raises(
        AnnotationError, match=r"000001_bonn_test.json: malformed JSON at line 1 column"
    ):
        load_posetrack18(str(path), str(root))


@pytest.mark.parametrize(
    ("section", "index", "field"),
    [("images", 3, "file_name"), ("images", 0, "id"), ("annotations", 2, "keypoints"),
     ("annotations", 5, "image_id")],
)  # fmt: skip
def test_missing_field_names_file_record_and_field(pt18_copy, section, index, field):
    root, path = pt18_copy
    data = load_json(path)
    del data[section][index][field]
    dump_json(path, data)
    with pytest.raises(AnnotationError) as err:
        load_posetrack18(str(path), str(root))
    message = str(err.value)
    assert str(path) in message
    assert f"{section}[{index}]" in message and f"missing required field '{field}'" in message


def test_keypoint_count_names_annotation_and_count(pt18_copy):
    root, path = pt18_copy
    data = load_json(path)
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:48]
    dump_json(path, data)
    with pytest.raises(AnnotationError) as err:
        load_posetrack18(str(path), str(root))
    message = str(err.value)
    assert str(path) in message and "annotations[0]" in message
    assert "annotation id 2000001000000" in message and "holds 48 numbers, expected 51" in message


def test_nframes_and_missing_frames(pt18_copy):
    root, path = pt18_copy
    data = load_json(path)
    dump_json(path, dict(data, images=data["images"][:-1]))  # Last frame not listed.
    with pytest.raises(
        AnnotationError, match=r"images\[0\]: video '000001_bonn_test' has nframes=8 but 7"
    ):
        load_posetrack18(str(path), str(root))
    dump_json(path, dict(data, images=data["images"][:3] + data["images"][4:]))
    with pytest.raises(
        AnnotationError, match=r"not contiguous; frame numbers \[3\] are not listed"
    ):
        load_posetrack18(str(path), str(root))


def test_unknown_image_id_and_joint_names(pt18_copy):
    root, path = pt18_copy
    data = load_json(path)
    data["annotations"][1]["image_id"] = 123
    dump_json(path, data)
    with pytest.raises(AnnotationError, match=r"annotations\[1\]: image_id 123 matches no entry"):
        load_posetrack18(str(path), str(root))
    data = load_json(os.path.join(PT18_A))
    data["categories"][0]["keypoints"][1] = "left_eye"
    dump_json(path, data)
    with pytest.raises(AnnotationError, match=r"categories\[0\]: unknown keypoint name 'left_eye'"):
        load_posetrack18(str(path), str(root))


def test_missing_image_only_checked_when_asked(pt18_copy):
    root, path = pt18_copy
    image = root / "images" / "val" / "000001_bonn_test" / "000003.jpg"
    image.unlink()
    load_posetrack18(str(path), str(root))  # Not checked by default.
    with pytest.raises(AnnotationError) as err:
        load_posetrack18(str(path), str(root), check_images=True)
    message = str(err.value)
    assert str(path) in message and "frame 3" in message and str(image) in message


def test_posetrack17_errors(tmp_path):
    data = load_json(PT17_FILE)
    path = tmp_path / "bad.json"
    point = data["annolist"][1]["annorect"][0]["annopoints"][0]["point"][4]
    point["id"] = [15]
    dump_json(path, data)
    with pytest.raises(
        AnnotationError,
        match=r"bad.json: annolist\[1\].annorect\[0\].annopoints\[0\].point\[4\]: joint id 15",
    ):
        load_posetrack17(str(path), str(tmp_path))
    del point["id"]
    dump_json(path, data)
    with pytest.raises(AnnotationError, match=r"point\[4\]: missing required field 'id'"):
        load_posetrack17(str(path), str(tmp_path))
    dump_json(path, {"annolists": []})
    with pytest.raises(AnnotationError, match=r"bad.json: missing required field 'annolist'"):
        load_posetrack17(str(path), str(tmp_path))


# poseval's 15 joint ids (eval_helpers.Joint / convert.POSETRACK18_LM_NAMES), written out here
# independently of types.PT17_TO_PT18.
POSEVAL_JOINTS = [
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "head_bottom", "nose", "head_top",
]  # fmt: skip


def _poseval_points_from_pt18(data):
    """poseval's PoseTrack18 -> 17 conversion rules: joints by category name, ears dropped,
    (0, 0, 0) joints skipped, score from ``scores``. Per frame, per person: sorted points."""
    names = data["categories"][0]["keypoints"]
    table = [POSEVAL_JOINTS.index(n) if n in POSEVAL_JOINTS else None for n in names]
    by_image = {image["id"]: [] for image in data["images"]}
    for ann in data["annotations"]:
        points = []
        for i, (x, y, v) in enumerate(np.array(ann["keypoints"]).reshape(len(names), 3)):
            if table[i] is not None and not (x == 0 and y == 0 and v == 0):
                points.append((table[i], float(x), float(y), ann["scores"][i]))
        by_image[ann["image_id"]].append(sorted(points))
    return [by_image[image["id"]] for image in data["images"]]


def test_prediction_files_agree_with_poseval_conversion(tmp_path):
    ds = load_posetrack18(PT18_ANN, PT18)
    rng = np.random.default_rng(1)
    for video in ds.videos:
        for frame in video.frames:
            for p in frame.people:
                p.keypoint_scores = rng.random(17).astype(np.float32)
                p.score = float(rng.random())
    paths18 = write_posetrack18(ds, str(tmp_path / "pt18"))
    paths17 = write_posetrack17(ds, str(tmp_path / "pt17"))
    for p18, p17 in zip(paths18, paths17):
        assert os.path.basename(p18) == os.path.basename(p17)
        annolist = load_json(p17)["annolist"]
        from17 = [
            [
                sorted(
                    (q["id"][0], q["x"][0], q["y"][0], q["score"][0])
                    for q in r["annopoints"][0]["point"]
                )
                for r in entry["annorect"]
            ]
            for entry in annolist
        ]
        assert _poseval_points_from_pt18(load_json(p18)) == from17
        # Every frame is written, in order, with a per-person score.
        assert [e["imgnum"][0] for e in annolist] == list(range(1, len(annolist) + 1))
        assert all("score" in r for e in annolist for r in e["annorect"])
    # PoseTrack17 predictions read back with their scores.
    again = load_posetrack17(str(tmp_path / "pt17"), PT18)
    for v, w in zip(ds.videos, again.videos):
        for f, g in zip(v.frames, w.frames):
            for p, q in zip(f.people, g.people, strict=True):
                expected = p.keypoint_scores.copy()
                expected[p.keypoints[:, 2] == 0] = 0  # Ears and unlabeled ankles: no point.
                np.testing.assert_array_equal(q.keypoint_scores, expected)
                assert q.score == p.score


def test_posetrack17_empty_annopoints_object(tmp_path):
    data = load_json(PT17_FILE)
    data["annolist"][1]["annorect"][0]["annopoints"] = [{}]  # poseval treats it as no points.
    dump_json(tmp_path / "empty.json", data)
    person = load_posetrack17(str(tmp_path / "empty.json"), PT17).videos[0].frames[1].people[0]
    assert not person.keypoints.any()
    np.testing.assert_array_equal(person.bbox, person.head_bbox)
