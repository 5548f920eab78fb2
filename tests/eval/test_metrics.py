"""Metric functions against hand-computed examples."""

import math

import numpy as np
import pytest
import torch

from loftup.eval import metrics as M


def test_miou_leaves_absent_classes_out():
    pred = np.array([[0, 0], [1, 1]])
    target = np.array([[0, 1], [1, 1]])
    # class 0: tp 1, union 2 -> 1/2; class 1: tp 2, union 3 -> 2/3; class 2 absent from both
    s = M.segmentation_scores(M.confusion_matrix(pred, target, num_classes=3))
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # not /3 (absent = 0) nor +1 (absent = 1)
    assert s["per_class_iou"][2] is None
    assert s["classes_present"] == 2
    assert s["pixel_acc"] == pytest.approx(3 / 4)
    assert M.mean_iou(torch.tensor(pred), torch.tensor(target), 3) == pytest.approx(7 / 12)


def test_miou_counts_predicted_but_absent_class_and_ignores_255():
    pred = np.array([[0, 2], [1, 1], [1, 0]])
    target = np.array([[0, 1], [1, 1], [255, 255]])
    # ignored row dropped; class 2 predicted once where gt is 1: IoU 0 and counted
    s = M.segmentation_scores(M.confusion_matrix(pred, target, 3))
    assert s["per_class_iou"] == [pytest.approx(1.0), pytest.approx(2 / 3), pytest.approx(0.0)]
    assert s["miou"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert M.pixel_accuracy(pred, target) == pytest.approx(3 / 4)


def test_confusion_matrix_accumulates():
    cm = M.ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 0]))
    cm.update(np.array([1]), np.array([1]))
    assert cm.matrix.tolist() == [[1, 1], [0, 1]]
    assert cm.compute()["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_depth_rmse_and_delta_recalls():
    gt = np.array([1.0, 1.0, 1.0, 1.0, 0.0])  # the last pixel is invalid
    pred = np.array([1.0, 1.9, 2.0, 0.5, 7.0])
    # ratios 1, 1.9, 2.0, 2.0 -> delta_3 (1.953125): 2 of 4; delta_1 (1.25): 1 of 4
    assert M.delta_recall(pred, gt) == pytest.approx(0.5)
    assert M.delta_recall(pred, gt, 1.25) == pytest.approx(0.25)
    assert M.depth_rmse(pred, gt) == pytest.approx(math.sqrt((0 + 0.81 + 1 + 0.25) / 4))
    s = M.depth_scores(pred, gt)
    assert s["d2"] == pytest.approx(0.25)  # 1.25^2 = 1.5625: only the exact pixel
    assert s["d3"] == pytest.approx(0.5)


def test_delta_recall_counts_nonpositive_predictions_as_misses():
    assert M.delta_recall(np.array([0.0, -1.0, 1.0]), np.array([1.0, 1.0, 1.0])) == pytest.approx(1 / 3)


def test_depth_meter_averages_per_image():
    meter = M.DepthMeter()
    meter.update(np.array([[[1.0, 1.0]], [[2.0, 2.0]]]), np.array([[[1.0, 1.0]], [[1.0, 1.0]]]))
    out = meter.compute()
    assert out["images"] == 2
    assert out["rmse"] == pytest.approx((0 + 1) / 2)  # mean of per-image RMSEs
    assert out["d3"] == pytest.approx((1 + 0) / 2)


def test_angular_error_and_normal_scores():
    assert M.angular_error([1, 0, 0], [1, 1, 0]) == pytest.approx(45)
    assert M.angular_error([0, 0, 1], [0, 0, -1]) == pytest.approx(180)
    assert M.angular_error([0, 2, 0], [0, 1, 0]) == pytest.approx(0)  # lengths do not matter
    c = math.cos(math.radians(20))
    s20 = math.sin(math.radians(20))
    gt = np.array([[[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]]], dtype=float)  # last: invalid
    pred = np.array([[[0, 0, 1], [1, 0, 1], [1, 0, 0], [s20, 0, c], [1, 0, 0]]], dtype=float)
    s = M.normal_scores(pred, gt)  # errors 0, 45, 90, 20
    assert s["rmse"] == pytest.approx(math.sqrt((0 + 45**2 + 90**2 + 20**2) / 4))
    assert s["recall_30"] == pytest.approx(2 / 4)
    assert s["recall_11.25"] == pytest.approx(1 / 4)
    assert s["recall_22.5"] == pytest.approx(2 / 4)


def _square(H, W, top, left, k):
    m = np.zeros((H, W), dtype=bool)
    m[top : top + k, left : left + k] = True
    return m


def test_mask_boundary_of_a_square():
    b = M.mask_boundary(_square(40, 40, 10, 10, 10))
    # inside: last row + last column (2k - 1 = 19); outside: the row above (k + 1) and the column left (k)
    assert b.sum() == 19 + 11 + 10
    assert b[19, 10:20].all() and b[10:20, 19].all() and b[9, 9:20].all() and b[10:20, 9].all()


def test_davis_boundary_tolerance():
    assert M.boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert M.boundary_tolerance((40, 40)) == 1
    assert M.boundary_tolerance((40, 40), bound_th=3) == 3


def test_boundary_f_on_known_contours():
    gt = _square(40, 40, 10, 10, 10)
    assert M.boundary_f_measure(gt, gt) == (1.0, 1.0, 1.0)
    # shifted by one pixel: every boundary pixel is within the 1-pixel tolerance
    assert M.boundary_f_measure(_square(40, 40, 10, 11, 10), gt)[0] == pytest.approx(1.0)
    # far away: nothing matches
    assert M.boundary_f_measure(_square(40, 40, 25, 25, 10), gt) == (0.0, 0.0, 0.0)
    # gt plus a far 2x2 blob (boundary 3 + 5 = 8 px): precision 40/48, recall 1, F = 10/11
    pred = gt.copy()
    pred[30:32, 30:32] = True
    f, p, r = M.boundary_f_measure(pred, gt)
    assert (p, r) == (pytest.approx(40 / 48), pytest.approx(1.0))
    assert f == pytest.approx(10 / 11)
    # one mask empty: F = 0
    assert M.boundary_f_measure(np.zeros_like(gt), gt)[0] == 0.0


def test_region_similarity():
    a = _square(10, 10, 0, 0, 4)  # 16 px
    b = _square(10, 10, 2, 2, 4)  # overlap 2x2 = 4, union 28
    assert M.region_similarity(a, b) == pytest.approx(4 / 28)
    assert M.region_similarity(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_video_meter_skips_first_and_last_frames_and_averages_objects():
    gt = np.zeros((4, 40, 40), dtype=int)
    gt[:, 5:15, 5:15] = 1
    gt[:, 25:35, 25:35] = 2
    pred = gt.copy()
    pred[1][gt[1] == 2] = 0  # frame 1: object 2 lost (J = F = 0)
    pred[3] = 0  # the last frame is wrong but not scored
    meter = M.VideoMeter()
    assert list(meter.scored_frames(4)) == [1, 2]
    meter.update("v", pred, gt, 2)
    out = meter.compute()
    assert out["objects"] == 2
    assert out["J"] == pytest.approx((1.0 + 0.5) / 2)  # object 1: 1, 1; object 2: 0, 1
    assert out["F"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["JF"] == pytest.approx(0.75)
    every = M.j_and_f(pred, gt, 2)  # all frames scored: object 2 fails in frames 1 and 3
    assert every["J"] == pytest.approx((3 / 4 + 2 / 4) / 2)


def test_matting_meter():
    m = M.MattingMeter()
    m.update(np.array([0.0, 0.5]), np.array([0.0, 1.0]))
    m.update(np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    assert m.compute()["mse"] == pytest.approx((0 + 0.25 + 0 + 1) / 4)
    assert m.compute()["mae"] == pytest.approx((0 + 0.5 + 0 + 1) / 4)
