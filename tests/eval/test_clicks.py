"""Click simulation and interactive metrics against hand-made masks and hand computation."""

import numpy as np
import pytest
import torch

from loftup.eval import clicks as C
from loftup.eval.interactive import normalized_focal_loss


def square(shape, top, left, size):
    m = np.zeros(shape, dtype=np.int64)
    m[top : top + size, left : left + size] = 1
    return m


def test_first_click_is_the_object_pixel_farthest_from_the_boundary():
    gt = square((11, 11), 2, 2, 7)  # rows / cols 2..8: the centre (5, 5) is 4 px from the outside
    c = C.first_click(gt)
    assert (c.y, c.x, c.positive) == (5, 5, True)
    dist = C.distance_to_boundary(gt == 1)
    assert dist[5, 5] == 4 and dist[5, 4] == 3 and dist[2, 2] == 1 and dist.max() == 4


def test_first_click_in_an_l_shape_lies_in_its_thick_part():
    gt = np.zeros((20, 20), dtype=np.int64)
    gt[2:18, 2:6] = 1  # a 4 px wide bar
    gt[10:18, 2:18] = 1  # an 8 px tall foot: the thickest part, its centre row 13/14
    c = C.first_click(gt)
    assert gt[c.y, c.x] == 1 and c.y >= 10  # in the foot, not the bar
    dist = C.distance_to_boundary(gt == 1)
    assert dist[c.y, c.x] == 4 == dist.max() and dist[5, 3] == 2  # the bar is 2 px from its edges at most
    assert (c.y, c.x) == (13, 5)  # the first of the maxima in row-major order


def test_the_image_border_is_a_boundary_too():
    gt = np.zeros((9, 20), dtype=np.int64)
    gt[:, :12] = 1  # touches the top, bottom and left borders
    c = C.first_click(gt)
    assert c.y == 4 and C.distance_to_boundary(gt == 1)[c.y, c.x] == 5  # 5 px from the top and bottom borders
    assert c.x == 4  # first of the row-major maxima (x 4..7 are all 5 px from a border or the right edge)


def test_next_click_goes_to_the_thickest_error_and_skips_clicked_pixels():
    gt = square((30, 30), 2, 2, 10)
    pred = gt.astype(bool).copy()
    pred[15:29, 15:29] = True  # a 14 x 14 false positive: thicker than any false negative
    pred[2:12, 2:4] = False  # a 2 px wide false negative strip
    c = C.next_click(gt, pred)
    assert not c.positive and (c.y, c.x) == (21, 21)  # centre of the false positive (7 px from its edge)
    clicked = np.zeros(gt.shape, bool)
    clicked[21, 21] = True
    c2 = C.next_click(gt, pred, clicked)
    assert not c2.positive and (c2.y, c2.x) != (21, 21) and C.distance_to_boundary(pred & (gt == 0))[c2.y, c2.x] == 7
    only_fn = gt.astype(bool).copy()
    only_fn[2:12, 2:4] = False
    c3 = C.next_click(gt, only_fn)
    assert c3.positive and gt[c3.y, c3.x] == 1 and not only_fn[c3.y, c3.x]
    assert C.next_click(gt, gt.astype(bool)) is None  # nothing left to click on


def test_iou_skips_the_ignore_band_by_hand():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[0, :] = 1
    gt[1, :] = C.IGNORE
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = True
    pred[1, :] = True  # predicted object in the ignored band: not counted
    pred[2, 0] = True  # one false positive
    assert C.iou(gt, pred) == pytest.approx(2 / 5)  # intersection 2, union 4 + 1
    assert C.iou(np.zeros((2, 2), np.int64), np.zeros((2, 2), bool)) == 1.0


def test_noc_and_the_meter_by_hand():
    assert C.noc([0.5, 0.86, 0.91], 0.85) == 2 and C.noc([0.5, 0.86, 0.91], 0.90) == 3
    assert C.noc([0.5, 0.6], 0.85) == 20 and C.noc([0.95], 0.9) == 1 and C.noc([0.5], 0.85, max_clicks=5) == 5
    m = C.InteractiveMeter()
    m.add([0.5, 0.86, 0.91])
    m.add([0.95])
    m.add([0.2] * 20)  # never reaches 0.85
    out = m.compute()
    assert out["objects"] == 3 and out["clicks"] == 24
    assert out["iou@1"] == pytest.approx((0.5 + 0.95 + 0.2) / 3)
    assert out["noc@85"] == pytest.approx((2 + 1 + 20) / 3) and out["noc@90"] == pytest.approx((3 + 1 + 20) / 3)
    assert out["nof@85"] == 1 and out["nof@90"] == 1


def test_click_maps_are_disks_of_radius_5():
    maps = C.click_maps([C.Click(10, 10, True), C.Click(0, 0, False)], (30, 30))
    assert maps.shape == (2, 30, 30) and maps.dtype == np.float32
    assert maps[0].sum() == 81  # integer points with y^2 + x^2 <= 25
    assert maps[0, 10, 15] == 1 and maps[0, 10, 16] == 0 and maps[0, 14, 13] == 1 and maps[0, 14, 14] == 0
    assert maps[1].sum() == 26 and maps[1, 0, 0] == 1 and maps[0, 0, 0] == 0  # a quarter disk at the corner: 6 + 5 + 5 + 5 + 4 + 1 pixels


def test_training_clicks_fall_where_they_belong():
    obj = square((40, 40), 10, 10, 16).astype(bool)
    others = square((40, 40), 30, 0, 8).astype(bool)
    rng = np.random.default_rng(0)
    n_pos, n_neg = [], []
    for _ in range(50):
        cl = C.TrainClickSampler().sample(obj, others, None, rng)
        pos = [c for c in cl if c.positive]
        neg = [c for c in cl if not c.positive]
        assert 1 <= len(pos) <= 24 and len(neg) <= 24
        assert all(obj[c.y, c.x] for c in pos) and not any(obj[c.y, c.x] for c in neg)
        n_pos.append(len(pos))
        n_neg.append(len(neg))
    assert np.mean(n_pos) < 6 and min(n_neg) == 0  # p(k) ~ 0.8^k: few clicks are the rule
    again = C.TrainClickSampler().sample(obj, others, None, np.random.default_rng(3))
    assert again == C.TrainClickSampler().sample(obj, others, None, np.random.default_rng(3))


def test_normalized_focal_loss_by_hand():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])
    target = torch.tensor([[[1, 0], [C.IGNORE, 0]]])
    p = torch.sigmoid(logits)[0]
    pt = torch.tensor([p[0, 0], 1 - p[0, 1], 1 - p[1, 1]])  # the 3 valid pixels
    a = torch.tensor([0.5, 0.5, 0.5])
    beta = (1 - pt) ** 2
    w = beta * 3 / beta.sum()
    expected = (a * w * -torch.log(pt)).sum() / 3
    assert float(normalized_focal_loss(logits, target)) == pytest.approx(float(expected), rel=1e-5)
    a2 = torch.tensor([0.25, 0.75, 0.75])
    expected2 = (a2 * w * -torch.log(pt)).sum() / 3
    assert float(normalized_focal_loss(logits, target, alpha=0.25)) == pytest.approx(float(expected2), rel=1e-5)
    sure = normalized_focal_loss(torch.tensor([[[20.0, -20.0]]]), torch.tensor([[[1, 0]]]))
    assert float(sure) < 1e-6
    logits.requires_grad_(True)
    normalized_focal_loss(logits, target).backward()
    assert logits.grad[0, 1, 0] == 0 and logits.grad[0, 0, 0] < 0 < logits.grad[0, 0, 1]  # ignored pixel: no gradient
