"""The synthetic data's hard conditions (exposure, camera moves, fast motions, occlusion,
compression), their records, and the scores broken down by them."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from posewarper_jax.apps import report as report_lib
from posewarper_jax.apps import report_conditions
from posewarper_jax.data import synthetic as syn
from posewarper_jax.data.synthetic import body, render
from posewarper_jax.data.synthetic import scene as scene_lib
from posewarper_jax.data.types import JOINT_NAMES, Frame, Person, Video, VideoDataset
from posewarper_jax.eval import conditions
from posewarper_jax.eval.posetrack_map import COLUMNS

J = {name: i for i, name in enumerate(JOINT_NAMES)}
W, H = 120, 90


def _bright(shape: body.BodyShape, color=(200.0, 180.0, 160.0)) -> body.BodyShape:
    colors = np.tile(np.array(color, np.float32), (body.NUM_PARTS, 1))
    return dataclasses.replace(
        shape, colors=colors, color2=colors, patterns=np.full(body.NUM_PARTS, body.PATTERN_PLAIN)
    )


def _scene(people, T, occluders=(), eye=(0.0, 1.2, 6.0), **kw):
    """T frames of a still camera on a black background; people: (shape, motion) pairs."""
    R, t = render.look_at(np.array(eye), np.array([0.0, 0.95, 0.0]))
    ext = np.tile(np.concatenate([R, t[:, None]], 1)[None], (T, 1, 1))
    return scene_lib.Scene(
        W, H, tuple(s for s, _ in people), tuple(body.pose_body(s, m) for s, m in people),
        render.intrinsics(160.0, W, H), ext, None, tuple(occluders), flat_color=(0.0, 0.0, 0.0),
        **kw,
    )  # fmt: skip


def _walker(T, x0=-0.6, speed=0.15, seed=0, z=0.0):
    """A person sliding sideways by ``speed`` metres per frame."""
    shape = _bright(body.sample_body(np.random.default_rng(seed), height=1.75))
    m = body.static_motion(T, root=(x0, z))
    root = m.root.copy()
    root[:, 0] += speed * np.arange(T)
    return shape, dataclasses.replace(m, root=root)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("name", syn.config.RATES)
def test_every_rate_is_validated(name):
    with pytest.raises(ValueError, match=name):
        syn.SyntheticConfig(**{name: 1.5})
    with pytest.raises(ValueError, match=name):
        syn.SyntheticConfig(**{name: -0.1})


def test_other_new_options_are_validated_and_hard_raises_every_rate():
    with pytest.raises(ValueError, match="blur_subframes"):
        syn.SyntheticConfig(blur_subframes=4)
    with pytest.raises(ValueError, match="compression_quality"):
        syn.SyntheticConfig(compression_quality=(50, 20))
    hard, default = syn.get_config("hard"), syn.get_config("default")
    for name in syn.config.RATES:
        assert getattr(hard, name) > getattr(default, name), name
    assert syn.SyntheticConfig.from_dict(hard.to_dict()) == hard


def test_long_exposure_is_the_mean_of_its_subframe_renders():
    T = 4
    exposure = np.array([0.0, 0.0, 1.0, 0.0])
    sc = _scene([_walker(T, speed=0.12)], T, exposure=exposure, exposure_spin=np.zeros((T, 3)),
                max_subframes=7)  # fmt: skip
    times = scene_lib.exposure_times(sc, 2)
    # 0.12 m/frame at 6 m and f = 160: 3.2 px per frame -> 3 sub-frames 1.6 px apart
    assert len(times) == 3 and times[0] == pytest.approx(1.5) and times[-1] == pytest.approx(2.5)
    res = scene_lib.render_frame(sc, 2)
    sharp = scene_lib.render_frame(sc, 2, effects=False)
    sub = scene_lib.exposure_scene(sc, 2, times)
    mean = np.mean([scene_lib.render_frame(sub, k, effects=False).canvas.color
                    for k in range(len(times))], axis=0)  # fmt: skip
    # equal up to the final rounding to uint8
    assert np.abs(res.image.astype(np.float64) - mean).max() <= 0.5 + 1e-4
    assert np.abs(res.image.astype(int) - sharp.image.astype(int)).max() > 50  # really blurred
    np.testing.assert_array_equal(res.keypoints, sharp.keypoints)  # labels: the frame's time
    np.testing.assert_array_equal(res.visible, sharp.visible)
    assert res.subframes == 3 and sharp.subframes == 1
    # each joint moved 0.12 m (= 3.2 px) during the exposure
    assert np.nanmedian(res.blur_px) == pytest.approx(160 * 0.12 / 6.0, rel=0.1)
    # a sharp frame is the instantaneous render
    assert scene_lib.render_frame(sc, 1).subframes == 1


def test_more_motion_takes_more_subframes_up_to_the_cap():
    T = 3
    for speed, n in ((0.02, 3), (0.3, 5), (1.0, 5)):
        sc = _scene([_walker(T, speed=speed)], T, exposure=np.ones(T),
                    exposure_spin=np.zeros((T, 3)), max_subframes=5)  # fmt: skip
        assert len(scene_lib.exposure_times(sc, 1)) == n, speed


def test_shake_moves_the_whole_image():
    """With shake_rate 1 the camera turns from frame to frame; the backdrop moves with it."""
    base = syn.get_config("tiny", pan_rate=0.0, zoom_rate=0.0, min_frames=12, max_frames=12)
    scenes = {}
    for rate in (0.0, 1.0):
        rng = np.random.default_rng(5)
        scenes[rate] = scene_lib.sample_scene(rng, dataclasses.replace(base, shake_rate=rate), 12)
    assert "shake" in scenes[1.0].camera_moves and not scenes[0.0].camera_moves
    calm, shaken = scenes[0.0], scenes[1.0]
    # the same camera position, another direction: a turn of the whole view
    np.testing.assert_allclose(calm.camera(6).center, shaken.camera(6).center, atol=1e-9)
    turn = [np.degrees(np.arccos(np.clip((np.trace(calm.camera(f).R.T @ shaken.camera(f).R)
                                          - 1) / 2, -1, 1))) for f in range(12)]  # fmt: skip
    assert 0.05 < np.max(turn) < 3.0
    f = int(np.argmax(turn))
    # the calm video's backdrop and lens seen along both paths (later draws differ)
    turned = render.Camera(calm.K, shaken.camera(f).R, shaken.camera(f).t)
    a = render.render_backdrop(calm.backdrop, calm.camera(f), base.width, base.height)
    b = render.render_backdrop(calm.backdrop, turned, base.width, base.height)
    far = np.array([0.0, 1.0, -30.0])  # a point far away moves as the whole image does
    dx, dy = turned.project(far) - calm.camera(f).project(far)
    assert np.hypot(dx, dy) > 1.0
    moved = cv2.warpAffine(a, np.float32([[1, 0, dx], [0, 1, dy]]), (base.width, base.height))
    m = int(np.ceil(np.hypot(dx, dy))) + 4  # compare away from the borders
    err = lambda x: float(np.abs(x[m:-m, m:-m] - b[m:-m, m:-m]).mean())  # noqa: E731
    assert err(moved) < 0.3 * err(a)  # the shaken view is the calm one moved as a whole


def test_zoom_scales_the_image_about_its_centre():
    T = 2
    sc = _scene([_walker(T, speed=0.0)], T, zoom=np.array([1.0, 1.5]))
    uv = sc.project_joints()
    c = np.array([(W - 1) / 2, (H - 1) / 2])
    np.testing.assert_allclose(uv[1] - c, 1.5 * (uv[0] - c), atol=1e-9)
    r0, r1 = (scene_lib.render_frame(sc, f, effects=False) for f in range(T))
    assert r1.area[0] > 2.0 * r0.area[0]  # 1.5^2 = 2.25 times the pixels


def test_occlusion_codes_follow_what_covers_the_joint():
    """An occluder box and a nearer person in front of someone: every joint's code names
    what the id buffer shows at its pixel."""
    back = _walker(1, x0=0.0, speed=0.0, seed=1)
    front = _walker(1, x0=0.3, speed=0.0, seed=2, z=2.0)
    box = render.Occluder(x=np.array([-0.35]), z=1.5, width=0.4, height=3.0, depth=0.1,
                          bottom=0.0, color=np.full(3, 90.0, np.float32),
                          color2=np.full(3, 90.0, np.float32), stripe=0.0)  # fmt: skip
    sc = _scene([back, front], 1, occluders=(box,))
    res = scene_lib.render_frame(sc, 0, effects=False)
    ids = res.canvas.ids
    codes = res.occlusion[0]
    assert (codes == scene_lib.OBJECT_OCCLUDED).any() and (codes == scene_lib.PERSON_OCCLUDED).any()
    for j in range(len(JOINT_NAMES)):
        r, c = (int(np.floor(v + 0.5)) for v in res.keypoints[0, j, ::-1])
        pid = ids[r, c]
        if codes[j] == scene_lib.OBJECT_OCCLUDED:
            assert pid == render.occluder_id(0)
        elif codes[j] == scene_lib.PERSON_OCCLUDED:
            assert render.person_part_id(1, 0) <= pid < render.person_part_id(2, 0)
        else:
            assert pid < render.OCCLUDER_ID_BASE
            assert not render.person_part_id(1, 0) <= pid < render.person_part_id(2, 0)
        assert (codes[j] == scene_lib.VISIBLE) == res.visible[0, j]


def test_compression_is_a_jpeg_round_trip():
    T = 1
    clean = _scene([_walker(T, speed=0.0)], T)
    packed = dataclasses.replace(clean, source_quality=25)
    a = scene_lib.render_frame(clean, 0).image
    b = scene_lib.render_frame(packed, 0).image
    ok, buf = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, 25])
    np.testing.assert_array_equal(b, cv2.imdecode(buf, cv2.IMREAD_COLOR))
    assert np.abs(a.astype(int) - b.astype(int)).max() > 5


@pytest.mark.parametrize("kind", body.FAST_ACTIVITIES)
def test_fast_motions_are_fast(kind):
    """Each sports-like motion beats the everyday ones at what makes it fast."""
    fps, T = 25.0, 75
    rng = np.random.default_rng(3)
    shape = body.sample_body(rng)
    m = body.sample_motion(rng, T, fps, (0.0, 0.0), 0.0, activities=(kind,), bounds=(50, 50))
    pose = body.pose_body(shape, m)
    speed = np.linalg.norm(np.diff(pose.joints, axis=0), axis=-1) * fps  # m/s [T-1, 17]
    if kind == "run":
        assert np.linalg.norm(np.diff(m.root, axis=0), axis=-1).mean() * fps > 2.4
    elif kind == "jump":
        assert m.lift.max() > 0.14
        feet = pose.part_b[:, [18, 19], 1]  # toes
        assert feet.min(1).max() > 0.1  # both feet off the ground in flight
    elif kind == "swing":
        assert speed[:, [J["left_wrist"], J["right_wrist"]]].max() > 4.0
    else:
        assert np.abs(np.diff(m.yaw)).max() * fps > 4.0
    with pytest.raises(ValueError, match="whole program"):
        body.sample_motion(rng, T, fps, (0.0, 0.0), 0.0, activities=(kind, "wave"))


def test_passerby_walks_between_camera_and_group():
    cfg = syn.get_config("tiny", passerby_rate=1.0, min_frames=10, max_frames=10)
    sc = scene_lib.sample_scene(np.random.default_rng(2), cfg, 10)
    assert sc.roles[-1] == "passerby" and set(sc.roles[:-1]) == {"group"}
    cam = sc.joints_camera()[:, :, 0, 2]  # depth of the nose
    assert cam[:, -1].mean() < cam[:, :-1].min()  # nearer than everyone of the group
    x = sc.poses[-1].joints[:, 0, 0]
    assert abs(x[-1] - x[0]) > 0.3  # it crosses


# ----------------------------------------------------------------------------- records


_REC = syn.SyntheticConfig(
    num_train_videos=1, num_val_videos=1, min_frames=4, max_frames=4, width=128, height=96,
    occluder_prob=1.0, passerby_rate=1.0, motion_blur_rate=0.6, defocus_rate=0.5,
    compression_rate=1.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def rec_root(tmp_path_factory):
    return syn.generate(str(tmp_path_factory.mktemp("cond") / "d"), _REC, workers=1,
                        progress=False)  # fmt: skip


def test_condition_records_are_written_and_read_back(rec_root):
    ds = syn.load_split(rec_root, "val")  # the PoseTrack18 reader is untouched by them
    video = ds.videos[0]
    side = syn.load_sidecar(rec_root, "val", video.name)
    T, P = side["annotated"].shape
    assert side["cond_speed"].shape == side["cond_occlusion"].shape == (T, P, 17)
    assert side["cond_blurred"].shape == side["cond_defocus"].shape == (T,)
    assert side["cond_roles"][-1] == "passerby" and int(side["cond_source_quality"]) > 0
    np.testing.assert_array_equal(side["cond_occlusion"] == 0, side["visible"])
    np.testing.assert_array_equal(side["cond_blurred"], side["cond_exposure"] > 0)
    assert ((side["cond_subframes"] > 1) == side["cond_blurred"]).all()
    assert side["intrinsics_per_frame"].shape == (T, 3, 3)
    # speed: the central difference of the joints over poseval's head size
    heads = {}
    for f in video.frames:
        for p in f.people:
            heads[f.index, p.track_id] = 0.6 * np.hypot(p.head_bbox[2], p.head_bbox[3])
    (f, p), head = next(iter(heads.items()))
    uv = side["joints_2d"][:, p]
    lo, hi = max(f - 1, 0), min(f + 1, T - 1)
    v = np.linalg.norm((uv[hi] - uv[lo]) / (hi - lo), axis=-1) / head
    np.testing.assert_allclose(side["cond_speed"][f, p], v, rtol=1e-3)
    records = conditions.load_conditions(rec_root, "val", ds)
    assert set(records) == {video.name}
    np.testing.assert_array_equal(records[video.name].blurred, side["cond_blurred"])


def test_no_records_no_breakdown(tmp_path):
    gt = _dataset([[_gt_person(_pose())]])
    assert conditions.load_conditions(str(tmp_path), "val", gt) == {}
    assert report_conditions.measure(str(tmp_path), "val", gt, {"copy_nearest": gt}) is None


# ----------------------------------------------------------------------------- breakdown

_HEAD = np.array([0, 0, 10, 10], np.float32)  # head size 0.6 * sqrt(200) = 8.49 px


def _pose(shift=0.0, joints=None):
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = 20 + 10 * np.arange(17)
    kp[:, 1] = 50
    kp[:, 2] = 1
    kp[[3, 4], :] = 0  # ears: never labeled
    if joints is not None:
        kp[joints, 0] += shift
    else:
        kp[:, 0] += shift * (kp[:, 2] > 0)
    return kp


def _gt_person(kp):
    return Person(keypoints=kp, bbox=np.array([0, 0, 200, 100], np.float32), head_bbox=_HEAD,
                  track_id=0)  # fmt: skip


def _pred_person(kp):
    return Person(keypoints=kp, bbox=np.array([0, 0, 200, 100], np.float32),
                  keypoint_scores=np.where(kp[:, 2] > 0, 0.9, 0).astype(np.float32))  # fmt: skip


def _dataset(frames_people, name="v"):
    frames = [Frame(f"/x/{i}.jpg", i, i + 1, True, list(pp))
              for i, pp in enumerate(frames_people)]  # fmt: skip
    return VideoDataset([Video(name, frames, f"{name}.json")], "posetrack18")


def _records(T, **kw):
    base = dict(
        speed=np.zeros((T, 1, 17)), occlusion=np.zeros((T, 1, 17), int),
        blurred=np.zeros(T, bool), defocused=np.zeros(T, bool),
        joints_2d=np.stack([_pose()[:, :2]] * T)[:, None].astype(np.float64),
    )  # fmt: skip
    base.update(kw)
    return {"v": conditions.VideoConditions(**base)}


def test_frame_subsets_score_their_frames_only():
    gt = _dataset([[_gt_person(_pose())] for _ in range(4)])
    pred = _dataset([[_pred_person(_pose(0 if i < 2 else 30))] for i in range(4)])
    rec = _records(4, blurred=np.array([1, 1, 0, 0], bool), defocused=np.array([0, 0, 0, 1], bool))
    out = conditions.condition_views(gt, pred, rec)
    assert out["blurred"]["pckh"]["Total"] == 100 and out["blurred"]["map"]["Total"] == 100
    assert out["sharp"]["pckh"]["Total"] == 0 and out["sharp"]["map"]["Total"] == 0
    assert out["defocused"]["pckh"]["Total"] == 0
    assert out["in_focus"]["pckh"]["Total"] == pytest.approx(100 * 2 / 3)
    assert out["blurred"]["frames"] == 2 and out["blurred"]["gt_joints"] == 2 * 15
    assert out["in_focus"]["frames"] == 3


def test_joint_subsets_keep_the_pairing_and_count_their_joints():
    """Speed bins: the slow joints are hit, the fast ones missed; occlusion nearby; a hidden
    joint is scored against its true position."""
    slow = [0, 1, 2, 5, 6]  # nose, head_bottom, head_top, shoulders
    fast = [j for j in range(17) if j not in slow + [3, 4]]
    speed = np.zeros((3, 1, 17))
    speed[:, 0, fast] = 0.5
    speed[:, 0, [5, 6]] = 0.1  # shoulders in the second bin
    occlusion = np.zeros((3, 1, 17), int)
    occlusion[0, 0, J["left_knee"]] = scene_lib.PERSON_OCCLUDED  # frame 0: hidden by someone
    occlusion[2, 0, J["right_knee"]] = scene_lib.OBJECT_OCCLUDED  # frame 2: behind an object
    gt_frames, pred_frames = [], []
    for f in range(3):
        kp = _pose()
        hidden = {0: J["left_knee"], 2: J["right_knee"]}.get(f)
        if hidden is not None:
            kp[hidden] = 0
        gt_frames.append([_gt_person(kp)])
        pk = _pose(30.0, joints=fast)  # fast joints 30 px off: misses
        if f == 0:
            pk[J["left_knee"], :2] = _pose()[J["left_knee"], :2]  # hidden one placed right
        pred_frames.append([_pred_person(pk)])
    rec = _records(3, speed=speed, occlusion=occlusion)
    out = conditions.condition_views(_dataset(gt_frames), _dataset(pred_frames), rec)
    assert out["speed <0.05"]["pckh"]["Total"] == 100
    assert out["speed <0.05"]["gt_joints"] == 3 * 3
    assert out["speed 0.05-0.15"]["pckh"]["Total"] == 100
    assert out["speed >=0.4"]["pckh"]["Total"] == 0
    assert out["speed >=0.4"]["gt_joints"] == 3 * len(fast) - 2  # two knees unlabeled
    assert "speed 0.15-0.4" not in out
    # both knees are occluded within 3 frames of every frame; labeled ones are near-occlusion
    near = out["visible_near_occlusion"]
    assert near["gt_joints"] == 4 and near["pckh"]["Total"] == 0
    assert out["visible_clear"]["gt_joints"] == 3 * 15 - 2 - 4
    assert out["hidden_by_person"]["pckh"]["Total"] == 100
    assert out["hidden_by_person"]["gt_joints"] == 1
    assert out["hidden_by_object"]["pckh"]["Total"] == 0  # predicted 30 px off
    assert out["hidden_by_person"]["map"] is None


def test_report_section_round_trip(tmp_path):
    gt = _dataset([[_gt_person(_pose())] for _ in range(2)])
    rec = _records(2, blurred=np.array([1, 0], bool))
    views = conditions.condition_views(gt, _dataset([[_pred_person(_pose())]] * 2), rec)
    views["sharp"]["pckh"]["Elbow"] = float("nan")
    section = {"split": "test", "speed_bins": [0.05, 0.15, 0.4], "occlusion_window": 3,
               "methods": {"copy_nearest": views, "farneback": views}}  # fmt: skip
    table = dict.fromkeys(COLUMNS, 50.0)
    results = {
        "propagation": dict.fromkeys(report_lib.PROPAGATION_METHODS, table),
        "detection": dict.fromkeys(report_lib.DETECTION_METHODS, table),
        report_conditions.KEY: section,
    }
    built = report_lib.build_report(results, {}, {})
    assert list(built[report_conditions.KEY]["methods"]) == ["copy_nearest", "farneback"]
    assert built[report_conditions.KEY]["methods"]["farneback"]["sharp"]["pckh"]["Elbow"] is None
    md = report_lib.render_markdown(built)
    assert "## Propagation by condition (test)" in md
    assert "| motion-blurred frames (long exposure) | 1 | 15 | **100.0** | **100.0** |" in md
    assert "mAP (Total, %), frame subsets:" in md
    bad = dict(section, methods={"copy_nearest": {"bogus": views["sharp"]}})
    with pytest.raises(ValueError, match="bogus"):
        report_lib.build_report(dict(results, **{report_conditions.KEY: bad}), {}, {})
    path = tmp_path / "report.json"
    import json

    path.write_text(json.dumps(built))
    back = report_lib.load_report(str(path))
    assert math.isnan(back[report_conditions.KEY]["methods"]["farneback"]["sharp"]["pckh"]["Elbow"])
