"""Faster R-CNN's training: the four losses, and Keras' train / test steps around them.

The losses follow torchvision: the RPN's objectness (binary cross-entropy) and box regression
(smooth L1, positives only) over the sampled anchors, then the box head's classification
(softmax cross-entropy) and class-specific box regression (foreground only) over the sampled
RoIs; each is a sum divided by the number sampled.
"""

from __future__ import annotations

import warnings

import keras
from keras import ops

from kdetect import tf_ops
from kdetect.backbones import preprocess_images
from kdetect.models import LOSS_NAMES

#: Smooth L1's ``beta`` for both box losses (torchvision's 1 / 9).
_SMOOTH_L1_BETA = 1.0 / 9.0

#: Room in the samplers' seed counter for the random draws of one training step (four today:
#: positives and negatives of the RPN and of the RoI sampler).
_DRAWS_PER_STEP = 1024


def smooth_l1(diff, beta: float):
    """Huber-like loss used for box regression: quadratic below ``beta``, linear above."""
    diff = ops.abs(diff)
    return ops.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def _sample_count(weights):
    """The number of sampled rows to divide a summed loss by, at least 1.

    Under a ``tf.distribute`` strategy each replica sees part of the batch; dividing by the
    replicas' mean count (and the loss by the replica count in ``train_step``) makes the summed
    gradients those of the global batch, even when images have different numbers of samples.
    """
    return ops.maximum(tf_ops.replica_mean(ops.stop_gradient(ops.sum(weights))), 1.0)


class DetectorTraining:
    """The training half of :class:`~kdetect.models.faster_rcnn.FasterRCNN` (a mixin of it)."""

    def compute_losses(self, images, bounding_boxes, training=True):
        """The four Faster R-CNN loss terms and their sum, as a dict of scalars (``LOSS_NAMES``).

        Proposals always come from the training counts (``test_step`` too), so validation
        losses measure what training optimises.
        """
        gt_boxes = ops.cast(bounding_boxes["boxes"], "float32")
        gt_labels = ops.cast(bounding_boxes["labels"], "int32")
        inputs = preprocess_images(images, self.backbone_name)
        rpn_features, roi_features = self._feature_maps(inputs, training)
        logits, deltas = self.rpn_head(rpn_features)
        logits, deltas = ops.cast(logits, "float32"), ops.cast(deltas, "float32")
        anchors = self._anchors(inputs, rpn_features)
        rpn_cls_loss, rpn_box_loss = self._rpn_losses(logits, deltas, anchors, gt_boxes, gt_labels)
        frame = ops.shape(images)[1:3]
        proposals, valid = self.proposal_generator(
            logits, deltas, anchors, image_size=frame, training=True
        )
        samples = self.roi_sampler(proposals, valid, gt_boxes, gt_labels, seed=self.seed_generator)
        class_logits, box_deltas = self._box_branch(roi_features, samples["rois"], training)
        rcnn_cls_loss, rcnn_box_loss = self._rcnn_losses(class_logits, box_deltas, samples)
        terms = (rpn_cls_loss, rpn_box_loss, rcnn_cls_loss, rcnn_box_loss)
        return dict(zip(LOSS_NAMES, (sum(terms),) + terms, strict=True))

    def _rpn_losses(self, logits, deltas, anchors_per_level, gt_boxes, gt_labels):
        """Objectness and box losses of the RPN over the sampled anchors."""
        anchors = ops.concatenate(anchors_per_level, axis=0)
        labels, box_targets = self.rpn_target_assigner(
            anchors, gt_boxes, gt_labels >= 0, seed=self.seed_generator
        )
        sampled = ops.cast(labels >= 0, "float32")
        positive = ops.cast(labels > 0, "float32")
        count = _sample_count(sampled)
        cls = ops.binary_crossentropy(ops.maximum(labels, 0.0), logits, from_logits=True)
        box = ops.sum(smooth_l1(deltas - box_targets, _SMOOTH_L1_BETA), axis=-1)
        return ops.sum(cls * sampled) / count, ops.sum(box * positive) / count

    def _rcnn_losses(self, class_logits, box_deltas, samples):
        """Classification and box losses of the box head over the sampled RoIs; the box loss
        reads the deltas of each RoI's own class."""
        class_logits = ops.cast(class_logits, "float32")
        box_deltas = ops.cast(box_deltas, "float32")
        labels, weights = samples["labels"], samples["weights"]
        count = _sample_count(weights)
        cls = ops.sparse_categorical_crossentropy(labels, class_logits, from_logits=True)
        class_index = ops.maximum(labels - 1, 0)
        picked = ops.take_along_axis(box_deltas, class_index[:, :, None, None], axis=2)[:, :, 0, :]
        foreground = ops.cast(labels > 0, "float32") * weights
        box = ops.sum(smooth_l1(picked - samples["box_targets"], _SMOOTH_L1_BETA), axis=-1)
        return ops.sum(cls * weights) / count, ops.sum(box * foreground) / count

    def compile(self, optimizer="sgd", jit_compile=False, **kwargs):
        """Compile with an optimizer; the loss is the model's own, so no ``loss`` argument."""
        if kwargs.get("loss") is not None:
            raise ValueError("FasterRCNN computes its own multi-task loss; do not pass `loss`")
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        """Re-compile a loaded model with its saved optimizer (Keras skips models whose
        ``compile`` is overridden unless they say how)."""
        try:
            config = keras.saving.deserialize_keras_object(config)
        except (TypeError, ValueError) as exc:  # e.g. a custom schedule not registered here
            warnings.warn(
                f"the saved optimizer was not restored ({exc}); call compile()", stacklevel=2
            )
            return
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def _update_trackers(self, losses):
        for name, value in losses.items():
            self.loss_trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        if tf_ops.is_multi_worker():
            # Keras reduces step outputs across workers with ``strategy.reduce(MEAN, axis=0)``,
            # which needs a batch axis: give each scalar one (the reduction returns a scalar).
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    @staticmethod
    def _unpack(data):
        if isinstance(data, (tuple, list)):
            data = data[0]
        return data["images"], data["bounding_boxes"]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skip Keras' symbolic build under a strategy: the detector is built in ``__init__``.

        Keras (3.15, TensorFlow trainer) builds a model created in a strategy's scope by pulling a
        batch from the distributed iterator and ``strategy.reduce``-ing it, which fails for dict
        batches under ``MultiWorkerMirroredStrategy``. Only the optimizer needs building here.
        """
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)

    def _mark_xla_step(self, xla: bool) -> None:
        """Record (while a step is traced) whether XLA compiles it; see ``FasterRCNN.xla_step``.
        A TPU compiles every step with XLA whatever ``jit_compile`` says."""
        self.xla_step = bool(xla or tf_ops.is_tpu())

    def _key_samplers(self):
        """Start the samplers' draws of this step at ``(seed, optimizer step)``: the draws of
        step ``t`` do not depend on how many steps (or validation batches) this process has
        run before, so a resumed run samples as the uninterrupted run did. (The seed
        generator's state is not among the saved weights; the optimizer's step count is.)"""
        state = self.seed_generator.state
        step = ops.cast(self.optimizer.iterations, state.dtype)
        state.assign(ops.stack([state[0], step * _DRAWS_PER_STEP]))

    def train_step(self, data):
        self._mark_xla_step(self.jit_compile)
        self._key_samplers()
        images, bounding_boxes = self._unpack(data)
        trainable = self.trainable_variables
        replicas = tf_ops.num_replicas_in_sync()

        def scaled_loss():
            losses = self.compute_losses(images, bounding_boxes, training=True)
            # Each replica sees 1/replicas of the global batch and the optimizer sums their
            # gradients: scale so the sum is the gradient of the global batch's mean loss.
            loss = losses["loss"] / replicas if replicas > 1 else losses["loss"]
            return self.optimizer.scale_loss(loss), losses

        losses, grads = tf_ops.loss_and_gradients(scaled_loss, trainable)
        self.optimizer.apply(grads, trainable)
        return self._update_trackers(losses)

    def test_step(self, data):
        self._mark_xla_step(self.jit_compile)
        images, bounding_boxes = self._unpack(data)
        losses = self.compute_losses(images, bounding_boxes, training=False)
        return self._update_trackers(losses)
