"""The synthetic data set: geometry against independent references, visibility, files on disk."""

from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest

from posewarper_jax.data import posetrack18
from posewarper_jax.data import synthetic as syn
from posewarper_jax.data.synthetic import __main__ as cli
from posewarper_jax.data.synthetic import body, render
from posewarper_jax.data.synthetic import dataset as gen
from posewarper_jax.data.synthetic import scene as scene_lib
from posewarper_jax.data.types import JOINT_NAMES, SKELETON

J = {name: i for i, name in enumerate(JOINT_NAMES)}
W, H = 200, 150

# ----------------------------------------------------------------------------- helpers


def _bright(shape: body.BodyShape) -> body.BodyShape:
    """Plain bright colours everywhere, so that any body pixel stands out on black."""
    colors = np.tile(np.array([200.0, 180.0, 160.0], np.float32), (body.NUM_PARTS, 1))
    return dataclasses.replace(
        shape,
        colors=colors,
        color2=colors,
        patterns=np.full(body.NUM_PARTS, body.PATTERN_PLAIN),
    )


def _scene(people, occluders=(), eye=(0.0, 1.2, 6.0), target=(0.0, 0.95, 0.0), focal=300.0):
    """One-frame scene on a black background; people: list of (shape, motion)."""
    R, t = render.look_at(np.array(eye), np.array(target))
    ext = np.concatenate([R, t[:, None]], 1)[None]
    return scene_lib.Scene(
        W, H,
        tuple(s for s, _ in people),
        tuple(body.pose_body(s, m) for s, m in people),
        render.intrinsics(focal, W, H), ext, None, tuple(occluders),
        flat_color=(0.0, 0.0, 0.0),
    )  # fmt: skip


def _person(height=1.75, seed=0, **kw):
    shape = _bright(body.sample_body(np.random.default_rng(seed), height=height))
    return shape, body.static_motion(1, **kw)


def _pixel(uv):
    return int(np.floor(uv[1] + 0.5)), int(np.floor(uv[0] + 0.5))


def _person_of(ids, p):
    lo = render.person_part_id(p, 0)
    return (ids >= lo) & (ids < lo + body.NUM_PARTS)


def _ray_hits_box(origin, target, lo, hi):
    """Slab test: does the segment origin -> target (world) pass through the box [lo, hi]?"""
    d = target - origin
    with np.errstate(divide="ignore"):
        t1, t2 = (lo - origin) / d, (hi - origin) / d
    t_near = np.max(np.minimum(t1, t2))
    t_far = np.min(np.maximum(t1, t2))
    return t_near <= t_far and 0 < t_far and t_near < 1


# ----------------------------------------------------------------------------- geometry


def test_projection_against_cv2():
    """Labels are the pinhole projection of the 3D joints (reference: cv2.projectPoints)."""
    rng = np.random.default_rng(1)
    shape = body.sample_body(rng)
    motion = body.sample_motion(rng, 4, 6.0, (0.3, -0.2), 0.7)
    sc = _scene([(shape, motion)])
    res = scene_lib.render_frame(sc, 0, effects=False)
    cam = sc.camera(0)
    rvec, _ = cv2.Rodrigues(cam.R)
    ref, _ = cv2.projectPoints(sc.poses[0].joints[0], rvec, cam.t, sc.K, None)
    np.testing.assert_allclose(res.keypoints[0], ref[:, 0], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_joints_and_limbs_lie_on_the_rendered_body(seed):
    """A lone person on black: every visible joint's pixel and the mid-point of every limb
    with both ends visible show that person (id buffer) in the body's colour."""
    rng = np.random.default_rng(seed)
    shape = _bright(body.sample_body(rng))
    motion = body.sample_motion(rng, 12, 6.0, (0.0, 0.0), rng.uniform(-np.pi, np.pi))
    sc = _scene([(shape, motion)], focal=400.0)
    ext = []
    for pelvis in sc.poses[0].part_a[:, 0]:  # the camera follows the person
        target = np.array([pelvis[0], 0.95, pelvis[2]])
        R, t = render.look_at(target + [0.0, 0.25, 6.0], target)
        ext.append(np.concatenate([R, t[:, None]], 1))
    sc = dataclasses.replace(sc, extrinsics=np.stack(ext))
    for frame in (0, 7, 11):
        res = scene_lib.render_frame(sc, frame, effects=False)
        mine = _person_of(res.canvas.ids, 0)
        vis, uv = res.visible[0], res.keypoints[0]
        assert vis.sum() >= 8, f"frame {frame}: only {vis.sum()} visible joints"
        for j in np.flatnonzero(vis):
            y, x = _pixel(uv[j])
            assert mine[y, x], f"joint {JOINT_NAMES[j]} not on the body"
            # (> 20: eye dots, drawn on the face, are dark grey; the background is black)
            assert res.image[y, x].max() > 20, f"joint {JOINT_NAMES[j]} shows background colour"
        for a, b in SKELETON:
            if vis[a] and vis[b]:
                y, x = _pixel(0.5 * (uv[a] + uv[b]))
                assert mine[y, x], f"limb {JOINT_NAMES[a]}-{JOINT_NAMES[b]} mid-point off body"
        # The body is drawn around its joints: the silhouette stays inside the labeled box.
        bx, by, bw, bh = res.bbox[0]
        ys, xs = np.nonzero(mine)
        assert xs.min() >= bx - 1 and xs.max() <= bx + bw + 1
        assert ys.min() >= by - 1 and ys.max() <= by + bh + 1
        hx, hy, hw, hh = res.head_bbox[0]
        for j in (J["nose"], J["head_top"]):
            assert hx - 1 <= uv[j, 0] <= hx + hw + 1 and hy - 1 <= uv[j, 1] <= hy + hh + 1


def test_capsule_depth_and_coverage_against_ray_casting():
    """Depth and coverage of a drawn capsule match exact ray / sphere-swept-segment hits."""
    K = render.intrinsics(120.0, 80, 60)
    a, b, r = np.array([-0.3, -0.2, 3.0]), np.array([0.4, 0.25, 3.6]), 0.15
    canvas = render.Canvas.from_background(np.zeros((60, 80, 3), np.float32))
    surf = render.Surface(np.ones(3) * 200, np.ones(3) * 200)
    render.draw_capsule(canvas, K, a, b, r, r, surf, pid=7)
    # Reference: ray-march each pixel ray and take the first point within r of the segment.
    ts = np.linspace(2.0, 4.5, 5001)
    errors, mismatched = [], 0
    for v in range(0, 60, 3):
        for u in range(0, 80, 3):
            ray = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
            pts = ts[:, None] * ray
            s = np.clip((pts - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
            dist = np.linalg.norm(pts - (a + s[:, None] * (b - a)), axis=1)
            inside = np.flatnonzero(dist <= r)
            hit = inside.size > 0
            drawn = canvas.ids[v, u] == 7
            if hit != drawn:
                # Only silhouette pixels may disagree (perspective of the cross-sections).
                mismatched += 1
                assert 0.8 * r < dist.min() < 1.25 * r, (u, v)
            elif hit:
                errors.append(abs(ts[inside[0]] - canvas.depth[v, u]))
    assert mismatched <= 6
    assert np.max(errors) < 2e-3  # metres (the reference marches in 0.5 mm steps)


# ----------------------------------------------------------------------------- visibility


def test_lone_person_facing_the_camera_shows_every_joint():
    res = scene_lib.render_frame(_scene([_person()]), 0, effects=False)
    assert res.visible[0].all()


def _box(x, z, width, height, depth):
    return render.Occluder(
        x=np.array([x]), z=z, width=width, height=height, depth=depth, bottom=0.0,
        color=np.array([0.0, 90.0, 0.0]), color2=np.zeros(3), stripe=0.0,
    )  # fmt: skip


def test_joints_behind_an_occluder_are_invisible():
    """A thin pole and a crate between camera and person hide exactly the joints whose line
    of sight they cross (reference: slab test of each joint's ray against each box)."""
    occluders = [_box(0.0, 2.5, 0.06, 4.0, 0.06), _box(0.0, 2.5, 1.5, 0.65, 0.4)]
    sc = _scene([_person()], occluders)
    res = scene_lib.render_frame(sc, 0, effects=False)
    eye = sc.camera(0).center
    expected_hidden = np.zeros(17, bool)
    for occ in occluders:
        c = occ.corners(0)
        expected_hidden |= [
            _ray_hits_box(eye, X, c.min(0), c.max(0)) for X in sc.poses[0].joints[0]
        ]
    assert expected_hidden.sum() >= 4 and (~expected_hidden).sum() >= 8
    np.testing.assert_array_equal(res.visible[0], ~expected_hidden)
    for j in np.flatnonzero(expected_hidden):
        y, x = _pixel(res.keypoints[0, j])
        assert res.canvas.ids[y, x] in (render.occluder_id(0), render.occluder_id(1))


def test_joints_behind_another_person_are_invisible():
    """Person B stands one metre behind A, shifted to the image's left: B's left side is
    hidden behind A, B's right side is not."""
    a = _person(height=1.75, seed=1)
    b = _person(height=1.75, seed=2, root=(-0.35, -1.0))
    res = scene_lib.render_frame(_scene([a, b]), 0, effects=False)
    vis_b = res.visible[1]
    assert not vis_b[J["left_shoulder"]]
    for name in ("right_hip", "right_shoulder", "right_ankle"):
        assert vis_b[J[name]], name
    assert res.visible[0].all()
    assert 3 <= (~vis_b).sum() <= 14
    covered_by_a = _person_of(res.canvas.ids, 0)
    for j in range(17):
        y, x = _pixel(res.keypoints[1, j])
        assert vis_b[j] == (not covered_by_a[y, x]), JOINT_NAMES[j]


def test_joints_outside_the_image_are_invisible():
    """The camera looks past the person: the part outside the frame is invisible."""
    sc = _scene([_person()], target=(-2.0, 0.95, 0.0))
    res = scene_lib.render_frame(sc, 0, effects=False)
    uv = res.keypoints[0]
    inside = (uv[:, 0] > -0.5) & (uv[:, 0] < W - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < H - 0.5)
    assert 3 <= inside.sum() <= 14
    np.testing.assert_array_equal(res.visible[0], inside)


def test_self_occlusion_in_profile_and_from_behind():
    # yaw = +90 degrees: the person faces world +X (screen right); the left side is far. The
    # arms point forward, so that the near arm does not cover the near hip.
    arms = dict(shoulder_flex_l=1.4, shoulder_flex_r=1.4)
    res = scene_lib.render_frame(_scene([_person(yaw=np.pi / 2, **arms)]), 0, effects=False)
    v = res.visible[0]
    for name in ("left_shoulder", "left_hip", "left_elbow", "left_ear", "left_knee"):
        assert not v[J[name]], name
    for name in ("right_shoulder", "right_hip", "right_elbow", "right_wrist", "right_ear",
                 "right_knee", "nose", "head_top"):  # fmt: skip
        assert v[J[name]], name
    res = scene_lib.render_frame(_scene([_person(yaw=np.pi)]), 0, effects=False)
    v = res.visible[0]
    assert not v[J["nose"]]
    assert v[J["head_top"]] and v[J["left_shoulder"]] and v[J["right_hip"]]


def test_face_detail_marks_only_the_front_of_the_head_and_chest():
    """``face_detail`` adds a nose (a capsule with the head's id), a mouth and a neckline
    (colour only). Every changed pixel shows the person's head, neck or torso (or the nose's
    soft edge), an id changes
    only to the head's (the nose) and joint visibility stays. Facing the camera, the
    neckline's pixels take the skin's hue; in profile the nose juts out of the head's
    outline; from behind nothing of it shows."""
    shape, _ = _person()
    skin = np.array([90.0, 140.0, 200.0], np.float32)
    colors = shape.colors.copy()
    colors[body.HEAD_PART] = skin
    shape = dataclasses.replace(shape, colors=colors)
    head = render.person_part_id(0, body.HEAD_PART)
    names = ("spine", "neck", "shoulder_left", "shoulder_right", "head")
    allowed = [render.person_part_id(0, body.PART_NAMES.index(n)) for n in names]
    spine = render.person_part_id(0, body.PART_NAMES.index("spine"))
    for view, yaw in (("front", 0.0), ("profile", np.pi / 2), ("back", np.pi)):
        base = _scene(
            [(shape, body.static_motion(1, yaw=yaw))],
            eye=(0.0, 1.55, 3.0),
            target=(0.0, 1.55, 0.0),
            focal=600.0,
        )  # head and chest, the head about 40 px wide
        plain = scene_lib.render_frame(base, 0, effects=False)
        detail = scene_lib.render_frame(
            dataclasses.replace(base, face_detail=True), 0, effects=False
        )
        changed = np.abs(detail.canvas.color - plain.canvas.color).max(-1) > 1.0
        new_ids = detail.canvas.ids != plain.canvas.ids
        np.testing.assert_array_equal(detail.visible, plain.visible)
        # (or the nose's anti-aliased edge, at most a pixel outside it)
        own = cv2.dilate(np.isin(detail.canvas.ids, allowed).astype(np.uint8), np.ones((3, 3)))
        assert own[changed].all(), view
        assert (detail.canvas.ids[new_ids] == head).all(), view
        if view == "back":
            assert not changed.any() and not new_ids.any()
        elif view == "profile":
            assert (new_ids & (plain.canvas.ids == 0)).sum() >= 2  # the nose over background
        else:
            neck = changed & (detail.canvas.ids == spine)
            assert neck.sum() > 5
            col = detail.canvas.color[neck]
            cos = (col @ skin) / (np.linalg.norm(col, axis=-1) * np.linalg.norm(skin))
            assert np.median(cos) > 0.99


# ----------------------------------------------------------------------------- data set on disk

_SMALL = syn.SyntheticConfig(
    num_train_videos=1, num_val_videos=1, min_frames=3, max_frames=4, width=128, height=96,
    occluder_prob=1.0, motion_blur_rate=0.5, defocus_rate=0.3,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return syn.generate(str(tmp_path_factory.mktemp("syn") / "tiny"), "tiny", workers=1,
                        progress=False)  # fmt: skip


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = os.path.join(dirpath, n)
    return out


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    r1 = syn.generate(str(tmp_path / "a"), _SMALL, workers=1, progress=False)
    r2 = syn.generate(str(tmp_path / "b"), _SMALL, workers=2, progress=False)
    r3 = syn.generate(
        str(tmp_path / "c"), dataclasses.replace(_SMALL, seed=1), workers=1, progress=False
    )
    f1, f2, f3 = _files(r1), _files(r2), _files(r3)
    assert sorted(f1) == sorted(f2)
    for rel in f1:
        if rel.endswith(".json"):
            assert open(f1[rel], "rb").read() == open(f2[rel], "rb").read(), rel
        elif rel.endswith(".jpg"):
            np.testing.assert_array_equal(cv2.imread(f1[rel]), cv2.imread(f2[rel]), err_msg=rel)
    other = [rel for rel in f1 if rel.endswith(".jpg") and rel in f3]
    assert other
    assert not any(np.array_equal(cv2.imread(f1[r]), cv2.imread(f3[r])) for r in other)
    ann = "annotations/val/020000_synth_val.json"
    assert open(f1[ann], "rb").read() != open(f3[ann], "rb").read()


def test_written_json_reads_back(tiny_root):
    cfg = syn.get_config("tiny")
    info = json.load(open(os.path.join(tiny_root, "info.json")))
    assert info["preset"] == "tiny" and info["version"] == syn.GENERATOR_VERSION
    for split, n_videos in (("train", cfg.num_train_videos), ("val", cfg.num_val_videos)):
        ds = posetrack18.load_posetrack18(
            os.path.join(tiny_root, "annotations", split), tiny_root, check_images=True
        )
        assert len(ds.videos) == n_videos == info["splits"][split]["videos"]
        assert sum(v.nframes for v in ds.videos) == info["splits"][split]["frames"]
        for video in ds.videos:
            side = syn.load_sidecar(tiny_root, split, video.name)
            T, P = side["annotated"].shape
            assert cfg.min_frames <= video.nframes == T <= cfg.max_frames
            assert 1 <= P <= cfg.max_people + 1  # the group and maybe a passer-by
            assert [f.image_id for f in video.frames] == side["image_ids"].tolist()
            for frame in video.frames:
                assert frame.is_labeled
                assert cv2.imread(frame.path).shape == (cfg.height, cfg.width, 3)
                assert sorted(p.track_id for p in frame.people) == list(
                    np.flatnonzero(side["annotated"][frame.index])
                )
                for person in frame.people:
                    k = person.keypoints
                    assert not k[[J["left_ear"], J["right_ear"]], 2].any()
                    np.testing.assert_array_equal(
                        k[:, 2] > 0, side["visible"][frame.index, person.track_id] & gen._LABELED
                    )
                    head = person.head_bbox
                    assert head is not None and head[2] > 2 and head[3] > 2
                    x, y, w, h = person.bbox
                    lab = k[:, 2] > 0
                    assert (k[lab, 0] >= x - 0.5).all() and (k[lab, 0] <= x + w + 0.5).all()
                    assert (k[lab, 1] >= y - 0.5).all() and (k[lab, 1] <= y + h + 0.5).all()


def test_sidecar_projects_to_the_2d_labels(tiny_root):
    """K [R | t] X_world reproduces every labeled keypoint to < 0.5 px (float32 JSON)."""
    ds = syn.load_split(tiny_root, "train")
    worst = 0.0
    for video in ds.videos:
        side = syn.load_sidecar(tiny_root, "train", video.name)
        K, E, Xw = side["intrinsics"], side["extrinsics"], side["joints_world"]
        Xc = np.einsum("tij,tpkj->tpki", E[:, :, :3], Xw) + E[:, None, None, :, 3]
        np.testing.assert_allclose(Xc, side["joints_camera"], atol=1e-9)
        uvw = Xc @ K.T
        uv = uvw[..., :2] / uvw[..., 2:]
        for frame in video.frames:
            for person in frame.people:
                lab = person.keypoints[:, 2] > 0
                err = np.abs(person.keypoints[lab, :2] - uv[frame.index, person.track_id, lab])
                worst = max(worst, float(err.max(initial=0.0)))
    assert worst < 0.5
    assert worst < 1e-3  # in fact only float32 rounding


def test_matching_root_is_reused_and_other_config_regenerates(tiny_root, tmp_path):
    info = os.path.join(tiny_root, "info.json")
    img = os.path.join(tiny_root, "images", "val", "020000_synth_val", "000000.jpg")
    before = (os.stat(info).st_mtime_ns, os.stat(img).st_mtime_ns, os.stat(img).st_ino)
    assert syn.generate(tiny_root, syn.get_config("tiny"), progress=False) == tiny_root
    assert (os.stat(info).st_mtime_ns, os.stat(img).st_mtime_ns, os.stat(img).st_ino) == before

    root = str(tmp_path / "regen")
    syn.generate(root, _SMALL, workers=1, progress=False)
    frames_before = sorted(_files(root))
    changed = dataclasses.replace(_SMALL, min_frames=2, max_frames=2, seed=5)
    syn.generate(root, changed, workers=1, progress=False)
    assert json.load(open(os.path.join(root, "info.json")))["config"] == changed.to_dict()
    assert sorted(_files(root)) != frames_before
    assert syn.matches(root, changed) and not syn.matches(root, _SMALL)
    assert all(v.nframes == 2 for v in syn.load_split(root, "val").videos)
    assert sorted(os.listdir(tmp_path)) == [".regen.lock", "regen"]  # no partial or old copies


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail(*args, **kw):
        calls.append(1)
        raise RuntimeError("interrupted")

    monkeypatch.setattr(gen.posetrack18, "write_posetrack18", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        syn.generate(str(tmp_path / "x"), _SMALL, workers=1, progress=False)
    assert calls and os.listdir(tmp_path) == [".x.lock"]


def test_refuses_to_overwrite_foreign_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        syn.generate(str(tmp_path), _SMALL, workers=1, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_command_line_reuses_existing_root(tiny_root, capsys, tmp_path):
    preview = str(tmp_path / "sheet.png")
    assert cli.main(["--root", tiny_root, "--preset", "tiny", "--preview", preview]) == 0
    out = capsys.readouterr().out
    assert "already holds this data set" in out
    sheet = cv2.imread(preview)
    assert sheet is not None and sheet.shape[1] == 4 * syn.get_config("tiny").width


@pytest.mark.parametrize(
    "field, value",
    [("min_frames", 100), ("width", 8), ("label_stride", 0), ("occluder_prob", 1.5),
     ("person_height_frac", (0.8, 0.2)), ("max_people", 0)],
)  # fmt: skip
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        syn.SyntheticConfig(**{field: value})


def test_unknown_preset_and_fields():
    with pytest.raises(ValueError, match="huge"):
        syn.get_config("huge")
    with pytest.raises(ValueError, match="colour"):
        syn.SyntheticConfig.from_dict({"colour": 1})


def test_label_stride_marks_sparse_frames():
    cfg = dataclasses.replace(_SMALL, label_stride=2)
    rec = gen.VideoRecord(
        "val", 0, "020000_synth_val", [f"/x/{i:06d}.jpg" for i in range(5)],
        np.zeros((5, 1, 17, 2)), np.ones((5, 1, 17), bool), np.ones((5, 1, 4)),
        np.ones((5, 1, 4)), np.ones((5, 1), int), np.zeros((5, 1, 17, 3)),
        np.zeros((5, 1, 17, 3)), np.eye(3), np.zeros((5, 3, 4)),
    )  # fmt: skip
    video = gen.to_video(rec, cfg, "/ann")
    assert [f.is_labeled for f in video.frames] == [True, False, True, False, True]
    assert [len(f.people) for f in video.frames] == [1, 0, 1, 0, 1]


def test_label_occluded_labels_hidden_joints_in_the_image():
    """Visible joints only by default; with ``label_occluded`` also the joints hidden by the
    body, another person or an object, never one out of view nor an ear."""
    occ = np.zeros((1, 1, 17), np.int64)
    occ[0, 0, J["left_shoulder"]] = 1  # own body
    occ[0, 0, J["left_knee"]] = 2  # another person
    occ[0, 0, J["left_wrist"]] = 3  # an object
    occ[0, 0, J["left_ankle"]] = 4  # out of view
    occ[0, 0, J["left_ear"]] = 1
    visible = occ == 0
    kp = np.arange(17 * 2, dtype=np.float64).reshape(1, 1, 17, 2) + 10
    rec = gen.VideoRecord(
        "val", 0, "020000_synth_val", ["/x/000000.jpg"], kp, visible, np.ones((1, 1, 4)),
        np.ones((1, 1, 4)), np.ones((1, 1), int), np.zeros((1, 1, 17, 3)),
        np.zeros((1, 1, 17, 3)), np.eye(3), np.zeros((1, 3, 4)),
        conditions={"cond_occlusion": occ},
    )  # fmt: skip
    hidden = [J["left_shoulder"], J["left_knee"], J["left_wrist"]]
    for label_occluded, extra in ((False, []), (True, hidden)):
        cfg = dataclasses.replace(_SMALL, label_occluded=label_occluded)
        k = gen.to_video(rec, cfg, "/ann").frames[0].people[0].keypoints
        want = visible[0, 0] & gen._LABELED
        want[extra] = True
        np.testing.assert_array_equal(k[:, 2] > 0, want)
        np.testing.assert_array_equal(k[want, :2], kp[0, 0, want].astype(np.float32))
        assert not k[[J["left_ankle"], J["left_ear"]], 2].any()


def test_label_occluded_reaches_the_files_and_the_pretraining_set(tmp_path):
    """``data.synthetic_overrides=label_occluded=true``: the written labels are the visible and
    the hidden in-view joints (sidecar), and the pre-training set follows the convention."""
    from test_training import _config_module

    from posewarper_jax import experiment

    c = _config_module().get_config("runlocal")
    c.data.root = str(tmp_path / "data")
    c.data.synthetic_overrides = "label_occluded=true"
    experiment.ensure_data(c, progress=False)
    for root in (c.data.root, c.data.root + "_stills"):
        info = json.load(open(os.path.join(root, "info.json")))
        assert info["config"]["label_occluded"] is True
    hidden_labeled = 0
    for video in syn.load_split(c.data.root, "train").videos:
        side = syn.load_sidecar(c.data.root, "train", video.name)
        in_view = np.isin(side["cond_occlusion"], (1, 2, 3)) | side["visible"]
        for frame in video.frames:
            for person in frame.people:
                want = in_view[frame.index, person.track_id] & gen._LABELED
                np.testing.assert_array_equal(person.keypoints[:, 2] > 0, want)
                hidden_labeled += int((want & ~side["visible"][frame.index, person.track_id]).sum())
    assert hidden_labeled > 0
