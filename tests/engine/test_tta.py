"""Test-time augmentation: the six views hand-checked on a pattern image, their weights,
and the least-confident subset."""

from __future__ import annotations

import pytest
import torch

from fastcifar.engine.tta import tta_logits, tta_views


def _pattern() -> torch.Tensor:
    return torch.arange(16.0).view(1, 1, 4, 4)  # x[r, c] = 4 r + c


def test_six_views_by_hand():
    views = tta_views(_pattern(), "flip_translate")
    assert [w for _, w in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    images = [v[0, 0].tolist() for v, _ in views]
    assert images[0] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert images[1] == [[3, 2, 1, 0], [7, 6, 5, 4], [11, 10, 9, 8], [15, 14, 13, 12]]
    # shifted one pixel right and down; the new first row/column reflects row/column 1
    assert images[2] == [[5, 4, 5, 6], [1, 0, 1, 2], [5, 4, 5, 6], [9, 8, 9, 10]]
    assert images[3] == [[6, 5, 4, 5], [2, 1, 0, 1], [6, 5, 4, 5], [10, 9, 8, 9]]
    # shifted one pixel left and up; the new last row/column reflects row/column 2
    assert images[4] == [[5, 6, 7, 6], [9, 10, 11, 10], [13, 14, 15, 14], [9, 10, 11, 10]]
    assert images[5] == [[6, 7, 6, 5], [10, 11, 10, 9], [14, 15, 14, 13], [10, 11, 10, 9]]


@pytest.mark.parametrize("mode", ["none", "flip", "flip_translate"])
def test_logits_are_the_weighted_mean_of_the_views(mode):
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(3 * 8 * 8, 10, generator=torch.Generator().manual_seed(1))

    def forward(v):
        return v.flatten(1) @ weight

    expected = sum(w * forward(v) for v, w in tta_views(x, mode))
    got = tta_logits(forward, x, mode, batch_size=2)  # in chunks of 2 images
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


def test_views_go_only_to_the_least_confident_fraction():
    n = 8
    x = torch.zeros(n, 1, 4, 4)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)  # image i carries its index
    x[:, 0, 0, 3] = 100.0  # a flip moves this pixel: flipped views are recognisable

    def forward(v):
        logits = torch.zeros(len(v), 10)
        logits[:, 0] = v[:, 0, 0, 0]  # the index: image 0 least confident, 7 most
        logits[:, 1] = v[:, 0, 0, 3] / 100  # a flipped view swaps the two pixels
        return logits

    base = forward(x)
    out = tta_logits(forward, x, "flip", uncertain_fraction=0.25)  # ceil(0.25 * 8) = 2
    changed = (out != base).any(1)
    assert changed.tolist() == [True, True] + [False] * 6  # the two least confident only
    torch.testing.assert_close(out[:2], tta_logits(forward, x[:2], "flip"))


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="flip_translate"):
        tta_logits(lambda v: v, torch.zeros(2, 1, 2, 2), "mirror", uncertain_fraction=0.5)
