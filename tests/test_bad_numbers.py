"""Non-finite or out-of-range numbers in annotations, predictions and detections are errors
naming the file, the record and the field, in every reader (PoseTrack17, PoseTrack18, COCO
keypoints, detections) and through ``python -m posewarper_jax.evaluate``."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import COCO_FILE, PT17, PT18

from posewarper_jax import evaluate
from posewarper_jax.data.coco import load_coco_keypoints
from posewarper_jax.data.detections import load_detections
from posewarper_jax.data.formats import AnnotationError
from posewarper_jax.data.posetrack17 import load_posetrack17
from posewarper_jax.data.posetrack18 import load_posetrack18

PT18_FILE = os.path.join("annotations", "val", "000001_bonn_test.json")
PT17_FILE = os.path.join("annotations", "val", "000003_mpii_relpath_5sec_testsub.json")
NAN, INF = float("nan"), float("inf")


def _copy(tmp_path, root, rel):
    dest = tmp_path / os.path.basename(root)
    shutil.copytree(root, dest)
    path = dest / rel
    return dest, path, json.loads(path.read_text())


def _set(data, keys, value):
    node = data
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


@pytest.mark.parametrize(
    ("keys", "value", "message"),
    [
        (("annotations", 0, "keypoints", 0), NAN, r"joint 0 \(nose\) has x = nan"),
        (("annotations", 0, "keypoints", 4), INF, r"joint 1 \(head_bottom\) has y = inf"),
        (("annotations", 0, "keypoints", 2), 3, r"joint 0 \(nose\) has visibility flag v = 3"),
        (("annotations", 0, "keypoints", 5), -1, r"visibility flag v = -1"),
        (("annotations", 0, "bbox_head", 2), -8, r"'bbox_head' .* negative width or height"),
        (("annotations", 0, "bbox_head", 0), NAN, r"'bbox_head' holds nan at position 0"),
        (("annotations", 0, "bbox", 3), -1, r"'bbox' .* negative width or height"),
        (("annotations", 0, "scores"), [0.5] * 3 + [NAN] * 14, r"'scores' holds nan at position 3"),
        (("annotations", 0, "score"), INF, r"'score' is inf, not a finite number"),
        (("images", 0, "ignore_regions_x"), [[1, NAN, 3]], r"ignore_regions_x\[0\]' holds nan"),
    ],
)
def test_posetrack18_bad_numbers_name_file_record_and_field(tmp_path, keys, value, message):
    root, path, data = _copy(tmp_path, PT18, PT18_FILE)
    if keys[-1] == "ignore_regions_x":
        data["images"][0]["ignore_regions_y"] = [[1, 2, 3]]
    _set(data, keys, value)
    path.write_text(json.dumps(data))  # Python's JSON writes NaN and Infinity, and reads them
    with pytest.raises(AnnotationError, match=message) as err:
        load_posetrack18(str(path), str(root))
    assert str(path) in str(err.value)
    assert f"{keys[0]}[{keys[1]}]" in str(err.value)


def _first_rect(data):
    return next(e["annorect"][0] for e in data["annolist"] if e["annorect"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["annopoints"][0]["point"][0].update(x=[NAN]), r"point\[0\]: field 'x' is nan"),
        (lambda r: r["annopoints"][0]["point"][1].update(y=[INF]), r"point\[1\]: field 'y' is inf"),
        (
            lambda r: r["annopoints"][0]["point"][2].update(is_visible=[5]),
            r"point\[2\]: field 'is_visible' is 5; expected 0, 1 or 2",
        ),
        (lambda r: r.update(x2=[2]), r"head box corners .* x2=2, y2=12: .* left of or above"),
        (lambda r: r.update(y1=[NAN]), r"field 'y1' is nan"),
    ],
)
def test_posetrack17_bad_numbers_name_file_record_and_field(tmp_path, change, message):
    root, path, data = _copy(tmp_path, PT17, PT17_FILE)
    change(_first_rect(data))
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=message) as err:
        load_posetrack17(str(path), str(root))
    assert str(path) in str(err.value) and "annorect[0]" in str(err.value)


@pytest.mark.parametrize(
    ("index", "field", "value", "message"),
    [
        (0, "keypoints", NAN, r"annotations\[0\] .* joint 0 \(nose\) has x = nan"),
        (2, "keypoints", 7, r"annotations\[0\] .* joint 0 \(nose\) has visibility flag v = 7"),
        (1, "bbox", -3, r"annotations\[0\]: field 'bbox' .* negative width or height"),
        (3, "bbox", INF, r"annotations\[0\]: field 'bbox' holds inf at position 3"),
    ],
)
def test_coco_bad_numbers_name_file_record_and_field(tmp_path, index, field, value, message):
    data = json.loads(open(COCO_FILE).read())
    ann = data["annotations"][0]
    if field == "bbox" and index == 1:
        ann["bbox"][3] = value
    else:
        ann[field][index] = value
    path = tmp_path / "person_keypoints_val.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=message) as err:
        load_coco_keypoints(str(path), str(tmp_path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("score", NAN, r"record 0: field 'score' is nan"),
        ("bbox", [1, 2, INF, 4], r"record 0: field 'bbox' holds inf at position 2"),
        ("bbox", [1, 2, -5, 4], r"record 0: field 'bbox' .* negative width or height"),
    ],
)
def test_detections_bad_numbers_name_file_record_and_field(tmp_path, field, value, message):
    ds = load_posetrack18(os.path.join(PT18, PT18_FILE), PT18)
    frame = ds.videos[0].frames[0]
    record = {"image_id": frame.image_id, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}
    record[field] = value
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(AnnotationError, match=message) as err:
        load_detections(str(path), ds)
    assert str(path) in str(err.value)
    # A box of size zero is still dropped (nothing to crop), not an error.
    record.update(bbox=[1, 2, 0, 4], score=0.9)
    path.write_text(json.dumps([record]))
    assert load_detections(str(path), ds).videos[0].frames[0].people == []


def test_evaluate_refuses_nan_in_predictions_and_ground_truth(tmp_path, capsys):
    """Before: a NaN predicted joint scored as a miss, a NaN head box lowered the mAP."""
    gt = tmp_path / "gt"
    pred = tmp_path / "pred"
    shutil.copytree(os.path.join(PT18, "annotations", "val"), gt)
    shutil.copytree(os.path.join(PT18, "annotations", "val"), pred)
    for path in pred.iterdir():  # predictions: every joint scored
        data = json.loads(path.read_text())
        for ann in data["annotations"]:
            ann["scores"] = [0.5] * 17
        path.write_text(json.dumps(data))
    name = os.path.basename(PT18_FILE)
    assert evaluate.main(["--gt", str(gt), "--pred", str(pred)]) == 0
    capsys.readouterr()

    data = json.loads((pred / name).read_text())
    data["annotations"][1]["keypoints"][3] = NAN
    (pred / name).write_text(json.dumps(data))
    assert evaluate.main(["--gt", str(gt), "--pred", str(pred)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert str(pred / name) in err and "annotations[1]" in err and "x = nan" in err

    data["annotations"][1]["keypoints"][3] = 1.0
    (pred / name).write_text(json.dumps(data))
    data = json.loads((gt / name).read_text())
    data["annotations"][0]["bbox_head"][3] = NAN
    (gt / name).write_text(json.dumps(data))
    assert evaluate.main(["--gt", str(gt), "--pred", str(pred)]) == 2
    err = capsys.readouterr().err
    assert str(gt / name) in err and "'bbox_head' holds nan at position 3" in err
