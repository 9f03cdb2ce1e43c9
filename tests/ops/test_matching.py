"""Matcher and BalancedPositiveNegativeSampler (kdetect.ops.matching) against NumPy references."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kdetect.ops.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    BalancedPositiveNegativeSampler,
    Matcher,
)

# --------------------------------------------------------------------------------------------
# Reference: torchvision's Matcher, one image at a time with loops; only valid gt columns exist.


def ref_match(iou, gt_valid, high, low, allow_low_quality):
    """iou [N, M] float64, gt_valid [M] bool -> matches [N] int."""
    n, m = iou.shape
    cols = [j for j in range(m) if gt_valid[j]]
    matches = np.empty(n, np.int64)
    best_gt = np.zeros(n, np.int64)
    for i in range(n):
        if not cols:
            matches[i] = BELOW_LOW_THRESHOLD
            continue
        best_j, best_v = cols[0], iou[i, cols[0]]
        for j in cols[1:]:
            if iou[i, j] > best_v:
                best_j, best_v = j, iou[i, j]
        best_gt[i] = best_j
        if best_v >= high:
            matches[i] = best_j
        elif best_v < low:
            matches[i] = BELOW_LOW_THRESHOLD
        else:
            matches[i] = BETWEEN_THRESHOLDS
    if allow_low_quality:
        for j in cols:
            col_best = max(iou[i, j] for i in range(n))
            if col_best <= 0:
                continue
            for i in range(n):
                if iou[i, j] == col_best:
                    matches[i] = best_gt[i]
    return matches


def random_iou(rng, b, n, m):
    iou = rng.uniform(0, 1, (b, n, m)) ** 2  # skewed low so all three outcomes occur
    iou[rng.uniform(size=iou.shape) < 0.3] = 0.0
    return iou.astype(np.float32)


@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_matcher_vs_numpy_random(allow_low_quality):
    rng = np.random.default_rng(0)
    b, n, m = 4, 60, 7
    iou = random_iou(rng, b, n, m)
    gt_valid = np.ones((b, m), bool)
    gt_valid[1, 4:] = False  # padded columns
    gt_valid[2, :] = False  # image without ground truth
    gt_valid[3, [0, 2, 5]] = False  # holes anywhere
    # Padded columns hold large IoUs: they must still never be matched.
    iou[~np.broadcast_to(gt_valid[:, None, :], iou.shape)] = 0.95
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=allow_low_quality)
    got = np.asarray(matcher(iou, gt_valid))
    assert got.dtype == np.int32 and got.shape == (b, n)
    for i in range(b):
        want = ref_match(iou[i].astype(np.float64), gt_valid[i], 0.7, 0.3, allow_low_quality)
        np.testing.assert_array_equal(got[i], want)
        matched = got[i][got[i] >= 0]
        assert np.all(gt_valid[i][matched]), "a padded gt column was matched"
    assert np.all(got[2] == BELOW_LOW_THRESHOLD)
    # The test data exercises every outcome.
    assert {BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS} <= set(got[0].tolist())
    assert np.any(got[0] >= 0)


def test_matcher_low_quality_rescues_every_gt():
    # gt 0's best IoU is 0.4 (between thresholds), tied at predictions 1 and 3; gt 1 is
    # well matched; gt 2 overlaps nothing and must claim nothing.
    iou = np.array(
        [
            [0.1, 0.0, 0.0],
            [0.4, 0.0, 0.0],
            [0.2, 0.8, 0.0],
            [0.4, 0.5, 0.0],  # best gt is 1 (0.5): low-quality match keeps gt 1
            [0.0, 0.1, 0.0],
        ],
        np.float32,
    )[None]
    valid = np.ones((1, 3), bool)
    plain = np.asarray(Matcher(0.7, 0.3)(iou, valid))[0]
    np.testing.assert_array_equal(plain, [-1, -2, 1, -2, -1])
    lq = np.asarray(Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou, valid))[0]
    np.testing.assert_array_equal(lq, [-1, 0, 1, 1, -1])


def test_matcher_thresholds_are_inclusive_as_in_torchvision():
    iou = np.array([[[0.7], [0.3], [0.2999], [0.6999]]], np.float32)
    got = np.asarray(Matcher(0.7, 0.3)(iou, np.ones((1, 1), bool)))[0]
    np.testing.assert_array_equal(got, [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, -2])
    with pytest.raises(ValueError):
        Matcher(0.3, 0.7)


def test_matcher_no_ground_truth_all_below():
    iou = np.zeros((2, 10, 3), np.float32)
    got = np.asarray(Matcher(0.7, 0.3, True)(iou, np.zeros((2, 3), bool)))
    assert np.all(got == BELOW_LOW_THRESHOLD)
    # Even with (meaningless) overlaps in the padded columns.
    got = np.asarray(Matcher(0.5, 0.5, True)(iou + 0.9, np.zeros((2, 3), bool)))
    assert np.all(got == BELOW_LOW_THRESHOLD)


# --------------------------------------------------------------------------------------------
# Sampler


def _masks(rng, b, n, p_pos, p_neg):
    u = rng.uniform(size=(b, n))
    positive = u < p_pos
    negative = (u >= p_pos) & (u < p_pos + p_neg)
    return positive, negative


@pytest.mark.parametrize("p_pos, p_neg", [(0.05, 0.6), (0.6, 0.3), (0.02, 0.03), (0.0, 0.5)])
def test_sampler_counts_and_subsets(p_pos, p_neg):
    rng = np.random.default_rng(1)
    b, n = 5, 300
    positive, negative = _masks(rng, b, n, p_pos, p_neg)
    positive[0] = False  # an image without positives
    negative[1] = False  # and one without negatives
    sampler = BalancedPositiveNegativeSampler(64, 0.25)
    sp, sn = sampler(positive, negative, seed=keras.random.SeedGenerator(3))
    sp, sn = np.asarray(sp), np.asarray(sn)
    assert sp.shape == sn.shape == (b, n)
    for i in range(b):
        want_pos = min(positive[i].sum(), int(64 * 0.25))
        want_neg = min(negative[i].sum(), 64 - want_pos)
        assert sp[i].sum() == want_pos
        assert sn[i].sum() == want_neg
        assert not np.any(sp[i] & ~positive[i])
        assert not np.any(sn[i] & ~negative[i])
        assert not np.any(sp[i] & sn[i])


def test_sampler_randomness_across_seeds():
    rng = np.random.default_rng(2)
    positive, negative = _masks(rng, 2, 500, 0.2, 0.7)
    sampler = BalancedPositiveNegativeSampler(32, 0.5)
    a = [np.asarray(x) for x in sampler(positive, negative, seed=keras.random.SeedGenerator(1))]
    b = [np.asarray(x) for x in sampler(positive, negative, seed=keras.random.SeedGenerator(1))]
    c = [np.asarray(x) for x in sampler(positive, negative, seed=keras.random.SeedGenerator(2))]
    np.testing.assert_array_equal(a[0], b[0])  # same seed, same sample
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])
    gen = keras.random.SeedGenerator(5)
    d1 = np.asarray(sampler(positive, negative, seed=gen)[0])
    d2 = np.asarray(sampler(positive, negative, seed=gen)[0])
    assert not np.array_equal(d1, d2), "a SeedGenerator must advance between calls"


def test_sampler_is_uniform_within_a_group():
    # 400 identical images with 10 positives; 2 kept each time: each kept with p = 0.2.
    positive = np.zeros((400, 30), bool)
    positive[:, 5:15] = True
    negative = ~positive
    sampler = BalancedPositiveNegativeSampler(8, 0.25)
    sp, sn = sampler(positive, negative, seed=keras.random.SeedGenerator(7))
    freq = np.asarray(sp).mean(axis=0)[5:15]
    assert np.all(np.abs(freq - 0.2) < 0.08), freq  # ~4 sigma
    freq_neg = np.asarray(sn).mean(axis=0)[~positive[0]]
    assert np.all(np.abs(freq_neg - 6 / 20) < 0.1), freq_neg
