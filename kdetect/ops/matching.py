"""Matching predictions to ground truth, and balanced sampling: shared by the RPN and RoI stages.

Both work on padded, batched tensors with static shapes so that the training step can be
XLA-compiled: nothing here changes a tensor's size depending on the data.
"""

from __future__ import annotations

import keras
from keras import ops

#: ``Matcher`` result for a prediction whose best IoU is below the background threshold.
BELOW_LOW_THRESHOLD = -1
#: ``Matcher`` result for a prediction between the two thresholds (ignored in training).
BETWEEN_THRESHOLDS = -2


class Matcher:
    """Assigns each prediction (anchor or proposal) the ground-truth box it overlaps most.

    For an IoU matrix ``[B, N, M]`` (N predictions, M ground-truth boxes, padded rows invalid)
    returns ``matches`` int32 [B, N]: the index of the matched ground truth when the best IoU is
    ``>= high_threshold``, ``BELOW_LOW_THRESHOLD`` when it is ``< low_threshold`` and
    ``BETWEEN_THRESHOLDS`` otherwise.

    With ``allow_low_quality_matches`` (the RPN's setting) every ground-truth box also claims the
    predictions that reach its own highest IoU, even below ``high_threshold``, so that no object is
    left without a positive anchor. Those predictions keep their best-IoU ground truth as match
    (torchvision's and Detectron2's rule). A ground truth whose best IoU is 0 claims nothing.
    """

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ):
        if low_threshold > high_threshold:
            raise ValueError(
                f"low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou, gt_valid):
        """``iou`` float [B, N, M]; ``gt_valid`` bool [B, M]. Returns int32 [B, N]."""
        iou = ops.where(ops.expand_dims(gt_valid, 1), iou, -1.0)
        best_iou = ops.max(iou, axis=-1)  # [B, N]; -1 when an image has no ground truth
        best_gt = ops.cast(ops.argmax(iou, axis=-1), "int32")
        matches = ops.where(
            best_iou >= self.high_threshold,
            best_gt,
            ops.where(best_iou < self.low_threshold, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS),
        )
        if self.allow_low_quality_matches:
            best_per_gt = ops.max(iou, axis=1, keepdims=True)  # [B, 1, M]
            is_best = (iou == best_per_gt) & (best_per_gt > 0.0)
            low_quality = ops.any(is_best, axis=-1)
            matches = ops.where(low_quality, best_gt, matches)
        return ops.cast(matches, "int32")


class BalancedPositiveNegativeSampler:
    """Samples up to ``batch_size_per_image`` predictions per image, at most
    ``positive_fraction`` of them positive, the rest negative (fewer positives leave room for more
    negatives). Chosen uniformly at random within each group.

    Works on masks so shapes stay static: random keys are drawn for every candidate, and the
    ``k`` candidates of a group with the largest keys are kept, where ``k`` varies per image.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    @staticmethod
    def _keep_random(mask, count, seed):
        """Keep ``count[b]`` randomly chosen True entries of ``mask[b]``."""
        keys = keras.random.uniform(ops.shape(mask), seed=seed)
        keys = ops.where(mask, keys, -1.0)
        # Rank each key within its row (0 = largest) without a data-dependent shape.
        order = ops.argsort(-keys, axis=-1)
        ranks = ops.argsort(order, axis=-1)
        return mask & (ranks < ops.expand_dims(count, -1))

    def __call__(self, positive, negative, seed=None):
        """``positive``/``negative`` bool [B, N] candidates; returns the sampled subsets."""
        num_pos_wanted = int(self.batch_size_per_image * self.positive_fraction)
        num_pos = ops.minimum(ops.sum(ops.cast(positive, "int32"), axis=-1), num_pos_wanted)
        num_neg = ops.minimum(
            ops.sum(ops.cast(negative, "int32"), axis=-1), self.batch_size_per_image - num_pos
        )
        sampled_pos = self._keep_random(positive, num_pos, seed)
        sampled_neg = self._keep_random(negative, num_neg, seed)
        return sampled_pos, sampled_neg
