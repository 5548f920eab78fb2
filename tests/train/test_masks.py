"""Mask refinement against hand-computed values, both overlap semantics; superpixel masks."""

import numpy as np
import pytest
import torch

from loftup.train.masks import mask_refine, superpixel_masks
from loftup.train.stage1 import mask_bicubic_target

# one image, one channel, 1 x 4 pixels: values 0, 2, 4, 8; mask A = pixels {0, 1}, B = {1, 2}
F0 = torch.tensor([0.0, 2.0, 4.0, 8.0]).view(1, 1, 1, 4)
A = [1, 1, 0, 0]
B = [0, 1, 1, 0]


def masks(*rows):
    return torch.tensor(rows, dtype=torch.bool).view(1, len(rows), 1, 4)


def test_single_mask_is_the_paper_formula():
    out = mask_refine(F0, masks(A), alpha=0.8)
    # mean over A = 1: 0.8 * 1 + 0.2 * x inside, unchanged outside
    assert torch.allclose(out.flatten(), torch.tensor([0.8, 1.2, 4.0, 8.0]))
    assert torch.equal(out, mask_refine(F0, masks(A), alpha=0.8, mode="sequential"))


def test_overlap_vectorised_averages_the_means_of_covering_masks():
    out = mask_refine(F0, masks(A, B), alpha=0.5, mode="vectorised")
    # means from the unrefined features: A 1, B 3. pixel 1 is in both: target (1 + 3) / 2 = 2
    expected = [0.5 * 1 + 0.5 * 0, 0.5 * 2 + 0.5 * 2, 0.5 * 3 + 0.5 * 4, 8.0]
    assert torch.allclose(out.flatten(), torch.tensor(expected))
    # order-independent
    assert torch.allclose(out, mask_refine(F0, masks(B, A), alpha=0.5))


def test_overlap_sequential_is_the_official_in_place_order():
    out = mask_refine(F0, masks(A, B), alpha=0.5, mode="sequential")
    # A first: mean 1 -> [0.5, 1.5, 4, 8]; then B over the refined values: mean (1.5 + 4) / 2 = 2.75
    expected = [0.5, 0.5 * 2.75 + 0.5 * 1.5, 0.5 * 2.75 + 0.5 * 4, 8.0]
    assert torch.allclose(out.flatten(), torch.tensor(expected))
    # ... and the order matters: B first: mean 3 -> [0, 2.5, 3.5, 8]; A: mean 1.25 -> [0.625, 1.875, 3.5, 8]
    rev = mask_refine(F0, masks(B, A), alpha=0.5, mode="sequential")
    assert torch.allclose(rev.flatten(), torch.tensor([0.625, 1.875, 3.5, 8.0]))


def test_modes_agree_without_overlap_and_ignore_empty_masks():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    m = torch.stack([labels == i for i in range(4)], 1)
    m = torch.cat([m, torch.zeros(2, 2, 5, 6, dtype=torch.bool)], 1)  # padding
    a = mask_refine(f, m, 0.8, "vectorised")
    b = mask_refine(f, m, 0.8, "sequential")
    assert torch.allclose(a, b, atol=1e-6)
    # every mask's mean is preserved, and pixels move 80 % of the way to it
    for i in range(4):
        sel = m[0, i]
        if sel.any():
            mean = f[0][:, sel].mean(1)
            assert torch.allclose(a[0][:, sel].mean(1), mean, atol=1e-5)
            assert torch.allclose(a[0][:, sel], 0.8 * mean[:, None] + 0.2 * f[0][:, sel], atol=1e-5)
    # no masks at all: unchanged
    assert torch.equal(mask_refine(f, m[:, :0], 0.8), f)


def test_pseudo_gt_is_bicubic_then_refined():
    torch.manual_seed(0)
    lr = torch.randn(1, 4, 3, 3)
    m = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    m[0, 0, :6] = True
    t = mask_bicubic_target(lr, m, (12, 12), alpha=1.0)
    up = torch.nn.functional.interpolate(lr, size=(12, 12), mode="bicubic", align_corners=False)
    assert torch.allclose(t[0, :, :6], up[0, :, :6].mean((1, 2))[:, None, None].expand(4, 6, 12), atol=1e-6)
    assert torch.allclose(t[0, :, 6:], up[0, :, 6:])


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_superpixels_partition_the_image(method):
    import skimage.data
    from PIL import Image

    img = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((56, 56)))
    m = superpixel_masks(img, method, max_masks=150)
    assert m.dtype == bool and m.shape[1:] == (56, 56) and 3 <= len(m) <= 150
    assert (m.sum(0) == 1).all()  # a partition
    areas = m.sum((1, 2))
    assert (np.diff(areas) <= 0).all()  # largest first
    assert len(superpixel_masks(img, method, max_masks=2)) == 2
