"""COCO OKS AP through pycocotools, OKS NMS and rescoring.

References: pycocotools' own file path (``COCO(file)``, ``loadRes(file)``) on JSON written here
by hand, which must give the in-memory numbers exactly; OKS and NMS against per-element NumPy
loops of HRNet's / COCO's formulas (rtol 1e-12).
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from posewarper_jax.data.types import Frame, Person, Video, VideoDataset
from posewarper_jax.eval.coco import COCO_STATS, coco_dicts, coco_keypoint_ap, read_coco_areas
from posewarper_jax.eval.nms import (
    COCO_SIGMAS,
    POSETRACK_SIGMAS,
    apply_oks_nms,
    nms_people,
    oks_iou,
    oks_nms,
    rescore,
    soft_oks_nms,
)


def make_person(rng, *, score=None, drop=(), box=None):
    center = rng.uniform(100, 500, size=2)
    kp = np.zeros((17, 3), np.float32)
    kp[:, :2] = center + rng.uniform(-60, 60, size=(17, 2))
    kp[:, 2] = 1
    kp[[3, 4, *drop], :] = 0  # ears are never labeled in PoseTrack
    if box is None:
        lo, hi = kp[kp[:, 2] > 0, :2].min(0), kp[kp[:, 2] > 0, :2].max(0)
        box = [*lo, *(hi - lo)]
    bbox = np.array(box, np.float32)
    ks = None if score is None else np.full(17, 0.9, np.float32)
    return Person(kp, bbox, None, -1, 1.0 if score is None else score, -1, ks)


def scene(seed=0, nframes=4):
    rng = np.random.default_rng(seed)
    gt_frames, pr_frames = [], []
    for i in range(nframes):
        gts = [make_person(rng) for _ in range(rng.integers(1, 4))]
        if i == 1:
            gts.append(make_person(rng, drop=range(17), box=[0, 0, 50, 50]))  # ignored by COCO
        preds = []
        for g in gts:
            if not g.keypoints[:, 2].any():
                continue
            p = Person(g.keypoints.copy(), g.bbox.copy(), None, -1, float(rng.uniform(0.3, 1)))
            p.keypoints[:, 2] = 1
            preds.append(p)
        gt_frames.append(gts)
        pr_frames.append(preds)

    def ds(frames):
        fr = [Frame(f"/d/v/{i:06d}.jpg", i, 500 + i, True, p, []) for i, p in enumerate(frames)]
        return VideoDataset([Video("v", fr, "/a/v.json")], "posetrack18", "/d")

    return ds(gt_frames), ds(pr_frames)


def perturbed(pred, seed=1, sd=6.0, spurious=True):
    rng = np.random.default_rng(seed)
    for frame in pred.videos[0].frames:
        for p in frame.people:
            p.keypoints[:, :2] += rng.normal(0, sd, size=(17, 2)).astype(np.float32)
        if spurious:
            frame.people.append(make_person(rng, score=float(rng.uniform(0, 1))))
    return pred


def test_perfect_predictions_give_ap_one():
    gt, pred = scene()
    stats = coco_keypoint_ap(gt, pred)
    assert list(stats) == list(COCO_STATS)
    for k in ("AP", "AP50", "AP75", "AR", "AR50", "AR75"):
        assert stats[k] == pytest.approx(1.0, abs=1e-12), k


def test_perturbed_predictions_match_pycocotools_file_path(tmp_path):
    gt, pred = scene(3)
    pred = perturbed(pred)
    ours = coco_keypoint_ap(gt, pred)
    assert 0.2 < ours["AP"] < 0.95  # a real, non-trivial number

    # Second way: JSON files written here straight from the data sets, read by pycocotools.
    images, anns, results = [], [], []
    for k, (g, p) in enumerate(zip(gt.videos[0].frames, pred.videos[0].frames)):
        images.append({"id": 100 + k})
        for person in g.people:
            vis = (person.keypoints[:, 2] > 0).astype(float)
            kp = np.concatenate([person.keypoints[:, :2] * vis[:, None], 2 * vis[:, None]], 1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + k,
                    "category_id": 1,
                    "keypoints": kp.reshape(-1).tolist(),
                    "num_keypoints": int(vis.sum()),
                    "area": float(person.bbox[2] * person.bbox[3]),
                    "bbox": person.bbox.tolist(),
                    "iscrowd": 0,
                }
            )
        for person in p.people:
            results.append(
                {
                    "image_id": 100 + k,
                    "category_id": 1,
                    "keypoints": person.keypoints.reshape(-1).tolist(),
                    "score": person.score,
                }
            )
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
    categories = [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(17)]}]
    gt_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )
    res_file.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(str(res_file))
        ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = POSETRACK_SIGMAS
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for name, value in zip(COCO_STATS, ev.stats):
        assert ours[name] == pytest.approx(float(value), abs=1e-6), name  # float32 round trip


def ref_coco_oks(gt_kp, gt_area, dt_kp, sigmas):
    """COCO's OKS for one pair, element by element (GT-labeled joints only)."""
    total, count = 0.0, 0
    for k in range(len(sigmas)):
        if gt_kp[k, 2] > 0:
            d2 = (dt_kp[k, 0] - gt_kp[k, 0]) ** 2 + (dt_kp[k, 1] - gt_kp[k, 1]) ** 2
            total += math.exp(-d2 / (2 * (gt_area + np.spacing(1)) * (2 * sigmas[k]) ** 2))
            count += 1
    return total / count


def test_oks_of_one_pair_matches_formula():
    gt, pred = scene(5, nframes=1)
    pred = perturbed(pred, spurious=False)
    gt_dict, results = coco_dicts(gt, pred)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="keypoints")
        ev.params.kpt_oks_sigmas = POSETRACK_SIGMAS
        ev.evaluate()
    frame, pframe = gt.videos[0].frames[0], pred.videos[0].frames[0]
    ious = ev.ious[(1, 1)]  # [detections by decreasing score, ground truths]
    order = np.argsort([-p.score for p in pframe.people], kind="mergesort")
    ref = np.array(
        [
            [
                ref_coco_oks(
                    g.keypoints.astype(np.float64),
                    float(g.bbox[2] * g.bbox[3]),
                    pframe.people[i].keypoints,
                    POSETRACK_SIGMAS,
                )
                for g in frame.people
            ]
            for i in order
        ]
    )
    assert ious.shape == ref.shape and ref.max() > 0.3 and ref.min() < 0.1
    np.testing.assert_allclose(ious, ref, rtol=1e-6, atol=1e-12)


def test_areas_override_and_reader(tmp_path):
    gt, pred = scene(8)
    pred = perturbed(pred, spurious=False)
    ids = 0
    for frame in gt.videos[0].frames:
        for p in frame.people:
            p.annotation_id = ids = ids + 1
    big = {i: 1e7 for i in range(1, ids + 1)}  # huge areas: every noisy pose matches at 0.95
    assert coco_keypoint_ap(gt, pred, areas=big)["AP"] == pytest.approx(1.0)
    assert coco_keypoint_ap(gt, pred)["AP"] < 0.99
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"annotations": [{"id": 4, "area": 12.5}]}))
    assert read_coco_areas(str(path)) == {4: 12.5}
    path.write_text(json.dumps({"annotations": [{"id": 4}]}))
    with pytest.raises(ValueError, match=r"a\.json: annotations\[0\]"):
        read_coco_areas(str(path))


def test_no_predictions_and_bad_sigmas():
    gt, pred = scene(2)
    for frame in pred.videos[0].frames:
        frame.people = []
    stats = coco_keypoint_ap(gt, pred)
    assert stats["AP"] == 0.0 and stats["AR"] == 0.0
    with pytest.raises(ValueError, match="sigmas"):
        coco_keypoint_ap(gt, pred, sigmas=COCO_SIGMAS[:15])


# ----------------------------------------------------------------------------- OKS NMS


def ref_oks_iou(g, d, a_g, a_d, sigmas, vis_thr=None):
    out = []
    for n in range(len(d)):
        terms = []
        for k in range(len(sigmas)):
            if vis_thr is not None and not d[n, k, 2] > vis_thr:
                continue
            d2 = (d[n, k, 0] - g[k, 0]) ** 2 + (d[n, k, 1] - g[k, 1]) ** 2
            var = (2 * sigmas[k]) ** 2
            terms.append(math.exp(-d2 / var / ((a_g + a_d[n]) / 2 + np.spacing(1)) / 2))
        out.append(sum(terms) / len(terms) if terms else 0.0)
    return np.array(out)


def test_oks_iou_matches_loop_reference():
    rng = np.random.default_rng(0)
    g = np.concatenate([rng.uniform(0, 100, (17, 2)), rng.uniform(0, 1, (17, 1))], 1)
    d = g[None] + np.concatenate([rng.normal(0, 5, (4, 17, 2)), np.zeros((4, 17, 1))], 2)
    d[..., 2] = rng.uniform(0, 1, (4, 17))
    d[3, :, 2] = 0.0  # no joint above the threshold: OKS 0 with vis_thr
    a_d = rng.uniform(2000, 9000, 4)
    for vis in (None, 0.2):
        got = oks_iou(g, d, 5000.0, a_d, POSETRACK_SIGMAS, vis)
        np.testing.assert_allclose(
            got, ref_oks_iou(g, d, 5000.0, a_d, COCO_SIGMAS, vis), rtol=1e-12
        )
    # Only the other pose's joint scores are thresholded (HRNet's `a and b` on two lists).
    g_low = g.copy()
    g_low[:, 2] = 0.0
    np.testing.assert_array_equal(
        oks_iou(g_low, d, 5000.0, a_d, None, 0.2), oks_iou(g, d, 5000.0, a_d, None, 0.2)
    )


def test_oks_nms_keeps_the_best_of_duplicates():
    rng = np.random.default_rng(1)
    base = np.concatenate([rng.uniform(0, 100, (17, 2)), np.ones((17, 1))], 1)
    far = base + [300, 0, 0]
    poses = np.stack([base, base + [0.5, 0, 0], far, base + [1.0, 0.5, 0]])
    scores = np.array([0.8, 0.9, 0.5, 0.7])
    areas = np.full(4, 4000.0)
    assert oks_nms(poses, scores, areas, 0.9) == [1, 2]  # 0 and 3 duplicate 1 (OKS > 0.9)
    assert oks_nms(poses, scores, areas, 1.0) == [1, 0, 3, 2]  # nothing above 1: keep all
    soft = soft_oks_nms(poses, scores, areas, 0.3)
    assert soft[:1] == [1] and sorted(soft) == [0, 1, 2, 3]
    # After the first pick the distinct pose (OKS ~0) keeps 0.5 and outranks the decayed ones.
    assert soft[1] == 2
    assert soft_oks_nms(poses, scores, areas, 0.3, max_dets=2) == [1, 2]


def test_rescore_and_people_nms():
    ks = np.array([[0.9, 0.1, 0.5], [0.1, 0.15, 0.2], [0.3, 0.3, 0.3]])
    np.testing.assert_allclose(
        rescore(ks, [1.0, 0.5, 2.0], vis_thr=0.2), [0.7, 0.0, 0.6], rtol=1e-12
    )
    rng = np.random.default_rng(2)
    p1 = make_person(rng, score=0.6)
    p2 = Person(p1.keypoints + 0.5, p1.bbox, None, -1, 0.9, -1, p1.keypoint_scores)
    p3 = make_person(rng, score=0.1)
    p3.keypoints[:, 0] += 1000
    kept = nms_people([p1, p2, p3])
    assert kept == [p2, p3]
    frames = [Frame("/x/0.jpg", 0, 1, True, [p1, p2, p3], [])]
    out = apply_oks_nms(VideoDataset([Video("x", frames, "s")], "posetrack18"))
    assert out.videos[0].frames[0].people == [p2, p3] and frames[0].people == [p1, p2, p3]
